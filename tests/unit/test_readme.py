"""The README stays true: its config reference is the generated one, and its links resolve."""

from __future__ import annotations

import re
from pathlib import Path

from agent.config import reference_markdown

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_config_reference_is_current() -> None:
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    table = README[README.index(start) + len(start) : README.index(end)]
    assert table == reference_markdown(), "README's config table is stale: paste `nat-ha check-config --reference`"


def test_relative_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", README):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to missing {target}"


def test_every_subcommand_is_documented() -> None:
    from agent.commands.cli import COMMANDS

    for name in COMMANDS:
        assert f"`nat-ha {name}" in README, f"nat-ha {name} is not in the README's command table"


def test_no_file_cites_what_is_not_in_the_repository() -> None:
    """A user has the repository, not the notes it was written from: no DESIGN.md, research/ or ../shared."""
    import subprocess

    files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    pattern = re.compile(r"DESIGN\.md|\bresearch/|\.\./shared")
    me = Path(__file__).resolve()
    found = []
    for name in files:
        path = ROOT / name
        if path.resolve() == me or path.suffix not in {".md", ".py", ".yml", ".yaml", ".toml", ".sh", ".json", ""}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        found += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not found, f"references to files outside the repository: {found}"
