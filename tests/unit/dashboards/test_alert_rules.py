"""Alert rules: valid for promtool, unit-tested by promtool, complete, with runbook sections; Alertmanager example."""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import urlparse

import pytest
import yaml

from tests import promql

RULES = promql.load_rules()
REQUIRED_ALERTS = {
    "NatHaAgentDown",
    "NatHaPeerDown",
    "NatHaFailover",
    "NatHaFlapping",
    "NatHaRouteTableNoLiveOwner",
    "NatHaSplitBrain",
    "NatHaEc2RouteMismatch",
    "NatHaEgressIpNotWithHolder",
    "NatHaLeaseRenewalsFailing",
    "NatHaPeerRestartLoop",
    "NatHaSelfCheckFailing",
    "NatHaConntrackSyncBroken",
}
RUNBOOK_BASE = "https://github.com/nat-ha/nat-ha/blob/main/dashboards/runbook.md"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)
needs_amtool = pytest.mark.skipif(
    shutil.which("amtool") is None, reason="amtool not installed (apt-get install prometheus-alertmanager)"
)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=promql.REPO)


@needs_promtool
def test_promtool_check_rules() -> None:
    proc = _run("promtool", "check", "rules", str(promql.ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in proc.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    proc = _run("promtool", "test", "rules", str(promql.ALERTS_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """alerts_test.yml expects every alert to fire once and to stay quiet once."""
    tests = yaml.safe_load(promql.ALERTS_TEST.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in RULES}
    assert names - fires == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a quiet case"


def test_every_alert_carries_the_group_label() -> None:
    """Alertmanager's example groups by ``group``; five alerts used to fire without it.

    promtool compares the whole label set of each expected alert, so the firing cases in
    alerts_test.yml prove what the rules produce. The one exception is NatHaAgentDown about a
    target that never exported nat_ha_build_info (or when no target exists): no group is known.
    """
    tests = yaml.safe_load(promql.ALERTS_TEST.read_text())["tests"]
    seen: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            for alert in check.get("exp_alerts") or []:
                labels = alert["exp_labels"]
                if check["alertname"] == "NatHaAgentDown" and "nat_instance" not in labels:
                    continue
                assert labels.get("group"), (case["name"], check["alertname"], labels)
                seen.add(check["alertname"])
    assert seen == {r["alert"] for r in RULES}
    for rule in RULES:
        assert "group" in str(rule["expr"]), rule["alert"]


def test_required_alerts_are_defined_once_in_group_nat_ha() -> None:
    data = yaml.safe_load(promql.ALERTS.read_text())
    assert [g["name"] for g in data["groups"]] == ["nat-ha"]
    names = [r["alert"] for r in RULES]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["alert"])
def test_alert_is_complete(rule: dict[str, object]) -> None:
    assert "for" in rule, "every alert needs for:"
    labels = rule["labels"]
    annotations = rule["annotations"]
    assert isinstance(labels, dict) and isinstance(annotations, dict)
    assert labels["severity"] in {"critical", "warning", "info"}
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"missing annotation {key}"
    url = urlparse(str(annotations["runbook_url"]))
    assert f"{url.scheme}://{url.netloc}{url.path}" == RUNBOOK_BASE
    assert url.fragment == str(rule["alert"]).lower()
    assert url.fragment in promql.runbook_anchors(), f"dashboards/runbook.md has no section #{url.fragment}"


def test_severities_route_to_three_receivers() -> None:
    config = yaml.safe_load(promql.ALERTMANAGER_EXAMPLE.read_text())
    by_severity = {r["matchers"][0]: r["receiver"] for r in config["route"]["routes"]}
    assert by_severity == {
        'severity="critical"': "pager",
        'severity="warning"': "chat",
        'severity="info"': "low-noise",
    }
    inhibits = {(r["source_matchers"][0], r["target_matchers"][0], tuple(r["equal"])) for r in config["inhibit_rules"]}
    assert ('alertname="NatHaAgentDown"', 'alertname="NatHaPeerDown"', ("nat_instance",)) in inhibits
    assert ('alertname="NatHaPeerDown"', 'alertname="NatHaFailover"', ("group",)) in inhibits
    # the labels the inhibitions compare are the ones the alerts carry
    exprs = {r["alert"]: r["expr"] for r in RULES}
    assert '"nat_instance"' in exprs["NatHaAgentDown"] and '"nat_instance"' in exprs["NatHaPeerDown"]
    assert "group_left (group)" in exprs["NatHaFailover"]


@needs_amtool
def test_amtool_check_config() -> None:
    proc = _run("amtool", "check-config", str(promql.ALERTMANAGER_EXAMPLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
