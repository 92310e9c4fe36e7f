"""The Grafana dashboard: provisioning-ready JSON whose every query uses metrics the agent exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from agent.metrics import Metrics, SyncMetrics
from tests import promql

DASH_TEXT = promql.DASHBOARD.read_text()
DASH = promql.load_dashboard()
EXPORTED = promql.exported_names()


def test_dashboard_is_raw_provisioning_json_with_a_stable_uid() -> None:
    assert DASH["id"] is None
    assert DASH["uid"] == "nat-ha"
    assert 36 <= DASH["schemaVersion"] <= 41
    assert "__inputs" not in DASH and "__requires" not in DASH
    assert "${DS_" not in DASH_TEXT


def test_datasource_group_and_instance_variables() -> None:
    variables = {v["name"]: v for v in DASH["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert promql.variable_queries(DASH) == {
        "group": "label_values(nat_ha_build_info, group)",
        "instance": 'label_values(nat_ha_build_info{group=~"$group"}, instance)',
    }
    for name in ("group", "instance"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variables[name]["includeAll"] and variables[name]["multi"]


def test_every_panel_has_a_target_on_the_datasource_variable() -> None:
    ids = set()
    for panel in promql.iter_panels(DASH):
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no target"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_required_panels_are_there() -> None:
    exprs = " ".join(expr for _where, expr in promql.dashboard_exprs(DASH))
    for needle in (
        "nat_ha_route_table_owner_info",
        "nat_ha_route_table_owned",
        "nat_ha_probes_lost_total",
        "nat_ha_probe_rtt_seconds_bucket",
        "nat_ha_failovers_total",
        "nat_ha_failover_duration_seconds_bucket",
        "nat_ha_recovery_duration_seconds_bucket",
        "nat_ha_route_table_term",
        "nat_ha_lease_renewals_total",
        "nat_ha_session_remaining_seconds",
        "nat_ha_peer_heartbeat_age_seconds",
        "nat_ha_self_check_ok",
        "nat_ha_aws_request_duration_seconds_bucket",
        "nat_ha_aws_errors_total",
        'up{job="nat-ha"',
        "nat_ha_agent_up",
        "nat_ha_decision",
        "nat_ha_bad_items",
        "nat_ha_route_table_egress_ok",
        "nat_ha_route_table_egress_ip_info",
        "nat_ha_egress_ip_moves_total",
        "nat_ha_egress_ip_move_duration_seconds_bucket",
    ):
        assert needle in exprs, needle
    types = {p["type"] for p in promql.iter_panels(DASH)}
    assert {"state-timeline", "table", "timeseries"} <= types
    annotations = [a for a in DASH["annotations"]["list"] if a.get("expr")]
    assert any("nat_ha_failovers_total" in a["expr"] for a in annotations)


def test_exported_names_include_suffixes() -> None:
    assert {
        "nat_ha_failovers_total",
        "nat_ha_failovers_created",
        "nat_ha_probe_rtt_seconds_bucket",
        "nat_ha_probe_rtt_seconds_sum",
        "nat_ha_probe_rtt_seconds_count",
        "nat_ha_build_info",
        "up",
    } <= EXPORTED
    assert promql.metric_names('sum by (le) (rate(foo_bucket{a="b{c}"}[5m])) * on (instance) bar') == {"foo_bucket"}


def test_every_metric_in_dashboard_and_rules_is_exported() -> None:
    used: list[tuple[str, str]] = list(promql.dashboard_exprs(DASH))
    used += [(f"variable {n}", promql.parse_label_values(q)[0]) for n, q in promql.variable_queries(DASH).items()]
    used += [(f"alert {r['alert']}", r["expr"]) for r in promql.load_rules()]
    unknown = {(where, name) for where, expr in used for name in promql.metric_names(expr) if name not in EXPORTED}
    assert not unknown, f"metrics not exported by agent.metrics: {sorted(unknown)}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each query (variables substituted) as a recording rule expression."""
    variables = {"group": ".+", "instance": ".+"}
    exprs = promql.dashboard_exprs(DASH)
    rules = [
        {"record": f"nat_ha:dashboard_query_{i}", "expr": promql.substitute(e, variables)}
        for i, (_w, e) in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_provisioning_examples() -> None:
    prov = promql.REPO / "dashboards" / "grafana" / "provisioning"
    dashboards = yaml.safe_load((prov / "dashboards.yaml").read_text())
    assert dashboards["apiVersion"] == 1
    provider = dashboards["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    datasources = yaml.safe_load((prov / "datasources.yaml").read_text())
    assert datasources["apiVersion"] == 1
    assert any(d["type"] == "prometheus" for d in datasources["datasources"])


def test_observability_doc_lists_every_agent_metric() -> None:
    doc = (promql.REPO / "dashboards" / "README.md").read_text()
    metrics = Metrics(CollectorRegistry(), process=False)
    SyncMetrics(metrics.registry, ["i-b"], ["rtb-a"]).stats = promql.SYNC_STATS  # conntrack_sync's series
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"| `{name}` |" in doc, f"dashboards/README.md does not list {name}"
