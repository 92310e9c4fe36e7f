"""dashboards/runbook_base.py: every runbook link of the rules (and the dashboard) can point at your own runbook."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import promql

SCRIPT = promql.REPO / "dashboards" / "runbook_base.py"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=30)


def test_every_alert_links_to_its_section_of_the_new_base(tmp_path: Path) -> None:
    base = "https://wiki.example.com/ops/nat-ha-runbook"
    done = run(base)
    assert done.returncode == 0, done.stderr
    rules = [r for g in yaml.safe_load(done.stdout)["groups"] for r in g["rules"]]
    assert len(rules) == len(promql.load_rules())
    for rule in rules:
        assert rule["annotations"]["runbook_url"] == f"{base}#{rule['alert'].lower()}"
    assert "github.com/nat-ha" not in done.stdout
    if shutil.which("promtool"):
        out = tmp_path / "nat-ha.yml"
        out.write_text(done.stdout)
        check = subprocess.run(["promtool", "check", "rules", str(out)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


def test_one_page_per_alert_and_the_dashboard() -> None:
    done = run("https://wiki.example.com/nat-ha/{alert}")
    assert "runbook_url: https://wiki.example.com/nat-ha/nathapaused\n" in done.stdout
    dash = run("--file", str(promql.DASHBOARD), "https://wiki.example.com/ops/runbook")
    assert dash.returncode == 0 and "https://wiki.example.com/ops/runbook" in dash.stdout
    assert "github.com/nat-ha" not in dash.stdout


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["ftp://x/runbook"], 2, "is not an http(s) address"),
        (["https://x/a b"], 2, "is not an http(s) address"),
        (["--file", "/nonexistent", "https://x/r"], 2, "/nonexistent: No such file or directory"),
        (["--file", __file__, "https://x/r"], 1, "has no link to"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], code: int, message: str) -> None:
    done = run(*argv)
    assert done.returncode == code and done.stdout == ""
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
