"""Real Prometheus and Alertmanager scrape and alert on three real agents (moto server as AWS).

One NAT instance dies (its agent is SIGKILLed): the expected alerts reach
Alertmanager, its inhibition rules apply, the critical one is delivered to the
pager webhook, and every query of the Grafana dashboard returns data.

For a test of seconds instead of minutes, Prometheus scrapes and evaluates
every second and loads a copy of dashboards/prometheus/alerts.yml in which
every ``for:`` is cut to 1 s (promstack.shorten_for); the expressions are the
shipped ones. Alertmanager runs dashboards/alertmanager/example.yml with its
receivers pointed at a webhook server in this test and its waits cut to 1 s.
The group's peer-restart is pushed past the test's end so the dead NAT stays dead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import promql, promstack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(150)]

# Series only an agent with egress_ip = "follow" exports (the dashboard's Egress IP row).
EGRESS_ONLY = {
    "nat_ha_route_table_egress_ok",
    "nat_ha_route_table_egress_ip_info",
    "nat_ha_egress_ip_moves_total",
    "nat_ha_egress_ip_move_duration_seconds_bucket",
}


@pytest.fixture(scope="module")
def stack_installed() -> None:
    reason = promstack.ensure_installed()
    if reason:
        pytest.skip(f"Prometheus/Alertmanager unavailable: {reason}")


def _alerts(am: promstack.Alertmanager, name: str, since: float, **labels: str) -> list[dict[str, Any]]:
    """Alerts ``name`` in Alertmanager that started after ``since`` (unix s) and carry ``labels``."""
    out = []
    for alert in am.alerts():
        lab = alert["labels"]
        if lab.get("alertname") != name or any(lab.get(k) != v for k, v in labels.items()):
            continue
        started = alert["startsAt"]
        # "2024-01-01T00:00:00.123Z": compare as unix time
        started_s = time.mktime(time.strptime(started[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if started_s >= since - 1:
            out.append(alert)
    return out


def _wait(what: str, probe: Callable[[], Any], timeout_s: float) -> Any:
    return promstack.wait_until(what, probe, timeout_s, interval_s=0.25)


def test_dead_nat_alerts_reach_alertmanager_and_no_dashboard_panel_is_dead(
    tmp_path: Path, stack_installed: None
) -> None:
    from agent.lab.localgroup import LocalGroup

    t0 = time.monotonic()
    rules = tmp_path / "alerts.yml"
    rules.write_text(promstack.shorten_for(promql.ALERTS.read_text(), "1s"))
    with (
        promstack.webhook_receiver() as hook,
        LocalGroup(tmp_path / "group", n=3, metrics=True, timing={"restart_after": 600.0}) as group,
        promstack.alertmanager(
            tmp_path / "am", promstack.alertmanager_config_for_test(promql.ALERTMANAGER_EXAMPLE, hook.url)
        ) as am,
        promstack.prometheus(
            tmp_path / "prom", group.metrics_targets, rule_files=[rules], alertmanager_url=am.url, interval="1s"
        ) as prom,
    ):
        # ---- a healthy group, scraped: every agent up, every route table held once
        _wait("3 agents scraped and up", lambda: prom.targets_up() == 3, 30)
        _wait("all route tables at home", group.at_home, 30)
        _wait(
            "each route table held by one agent",
            lambda: len(prom.query("sum by (route_table) (nat_ha_route_table_owned) == 1")) == 3,
            15,
        )
        # start-up noise (pre-created zeros under a 1 s "for:") must be gone before the kill
        _wait(
            "no down alerts before the kill",
            lambda: not prom.query('ALERTS{alertname=~"NatHaAgentDown|NatHaPeerDown|NatHaSplitBrain"}'),
            20,
        )
        ready_s = time.monotonic() - t0

        # ---- the NAT instance of route table 0 dies
        victim = group.members[0]
        victim_rtb = group.nat(victim).route_table
        killed_at = time.time()
        group.kill(victim)
        assert group.wait_for(lambda: group.route_targets()[victim_rtb] not in ("", victim), 20), (
            f"{victim_rtb} still routed to the dead {victim}: {group.route_targets()}"
        )

        agent_down = _wait(
            "NatHaAgentDown in Alertmanager",
            lambda: _alerts(am, "NatHaAgentDown", killed_at, nat_instance=victim),
            20,
        )
        peer_down = _wait(
            "NatHaPeerDown in Alertmanager", lambda: _alerts(am, "NatHaPeerDown", killed_at, peer=victim), 20
        )
        failover = _wait(
            "NatHaFailover in Alertmanager",
            lambda: _alerts(am, "NatHaFailover", killed_at, route_table=victim_rtb, kind="takeover"),
            20,
        )
        alerted_s = time.time() - killed_at

        assert agent_down[0]["labels"]["severity"] == "critical"
        assert agent_down[0]["labels"]["group"] == group.group
        assert agent_down[0]["status"]["state"] == "active"
        assert agent_down[0]["annotations"]["runbook_url"].endswith("#nathaagentdown")
        # inhibition: the dead agent explains "peer down" about it, and "peer down" explains the failover
        _wait(
            "NatHaPeerDown inhibited by NatHaAgentDown",
            lambda: _alerts(am, "NatHaPeerDown", killed_at, peer=victim)[0]["status"]["state"] == "suppressed",
            10,
        )
        _wait(
            "NatHaFailover inhibited by NatHaPeerDown",
            lambda: all(
                a["status"]["state"] == "suppressed"
                for a in _alerts(am, "NatHaFailover", killed_at, route_table=victim_rtb)
            ),
            10,
        )
        assert peer_down[0]["labels"]["severity"] == "warning"
        assert failover[0]["labels"]["severity"] == "info"
        assert failover[0]["labels"]["reason"] == "peer_dead"
        # only the surviving route tables' owners: no split brain, and the takeover left an owner
        assert not prom.query('ALERTS{alertname="NatHaSplitBrain", alertstate="firing"}')
        # the critical alert was delivered to the pager receiver
        pages = _wait(
            "a page for NatHaAgentDown",
            lambda: [
                p
                for path, p in hook.received()
                if path == "/pager" and any(a["labels"]["alertname"] == "NatHaAgentDown" for a in p["alerts"])
            ],
            10,
        )
        assert pages[0]["status"] == "firing"

        # ---- no dead panel: every dashboard query returns data from the live Prometheus
        dashboard = promql.load_dashboard()
        variables: dict[str, str] = {}
        for name, query in promql.variable_queries(dashboard).items():
            selector, label = promql.parse_label_values(promql.substitute(query, variables))
            values = prom.label_values(label, selector)
            assert values, f"dashboard variable {name} ({query}) has no values"
            variables[name] = "(" + "|".join(values) + ")"
        assert variables["group"] == f"({group.group})"
        empty = []
        for where, expr in promql.dashboard_exprs(dashboard):
            live = promql.substitute(expr, variables, rate_interval="1m", rng="5m")
            if not prom.query(live):
                if promql.metric_names(expr) <= EGRESS_ONLY:
                    continue  # the Egress IP row: this group runs without egress_ip = follow (tests/lab has it)
                if all(n.startswith("nat_ha_conntrack_sync_") for n in promql.metric_names(expr)):
                    continue  # the Connection sync row: no conntrack_sync here (tests/lab/test_flows.py has it)
                empty.append(f"{where}: {live}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    total_s = time.monotonic() - t0
    print(f"ready {ready_s:.1f} s, alerts {alerted_s:.1f} s after the kill, total {total_s:.1f} s")
