"""A released Elastic IP alerts within its ``for:`` window, with the shipped rules and real intervals.

    python bench/eip_alert.py [--scrape 15s] [--json eip_alert.json]

The loopback group with ``egress_ip = "follow"`` (three real agents, moto server as EC2 with
agent/lab/motofix.py), at the production EC2 reconcile interval (5 s), scraped by a real
Prometheus (Debian's ``prometheus``, on 127.0.0.1) every ``--scrape`` and evaluating the shipped
dashboards/prometheus/alerts.yml unchanged at the same interval. One table's Elastic IP is
disassociated and released, as a person or a stack deletion would; the figure is when
NatHaEgressIpUnusable became pending (the agents saw it and Prometheus scraped it) and when it
fired (``for: 30s`` later, give or take an evaluation interval). The CI test
(tests/integration/test_observability.py) does the same with every ``for:`` cut to 1 s.

Timing-sensitive: run it under the shared lock (flock /tmp/nat-ha-heavy.lock ...).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.lab.localgroup import LocalGroup  # noqa: E402
from bench.cli import BenchParser  # noqa: E402
from tests import promql, promstack  # noqa: E402

ALERT = "NatHaEgressIpUnusable"


def _state(prom: promstack.Prometheus, route_table: str) -> str:
    for alert in prom.alerts():
        labels = alert["labels"]
        if labels.get("alertname") == ALERT and labels.get("route_table") == route_table:
            return str(alert["state"])
    return ""


def run(workdir: Path, scrape: str) -> dict[str, Any]:
    rule_for = next(r["for"] for r in promql.load_rules() if r["alert"] == ALERT)
    with (
        LocalGroup(
            workdir / "group", n=3, metrics=True, egress_ip="follow", timing={"ec2_reconcile_interval": 5.0}
        ) as g,
        promstack.prometheus(workdir / "prom", g.metrics_targets, rule_files=[promql.ALERTS], interval=scrape) as prom,
    ):
        if not g.wait_for(g.at_home, 60):
            raise RuntimeError("the group did not settle")
        promstack.wait_until("3 agents scraped", lambda: prom.targets_up() == 3, 120)
        table = g.nats[2]
        ec2 = g.client("ec2")
        alloc = g.allocations[2]
        association = ec2.describe_addresses(AllocationIds=[alloc])["Addresses"][0]["AssociationId"]
        ec2.disassociate_address(AssociationId=association)
        ec2.release_address(AllocationId=alloc)
        released = time.monotonic()
        pending = firing = None
        while time.monotonic() - released < 300 and firing is None:
            state = _state(prom, table.route_table)
            now = time.monotonic() - released
            if state in ("pending", "firing") and pending is None:
                pending = now
            if state == "firing":
                firing = now
            time.sleep(0.5)
        return {
            "alert": ALERT,
            "for": rule_for,
            "scrape_and_evaluation_interval": scrape,
            "ec2_reconcile_interval_s": 5.0,
            "pending_after_s": round(pending, 1) if pending is not None else None,
            "firing_after_s": round(firing, 1) if firing is not None else None,
        }


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(prog="eip_alert.py", description=__doc__.splitlines()[0])
    p.add_argument("--scrape", default="15s", help="Prometheus scrape and evaluation interval (default 15s)")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    reason = promstack.ensure_installed()
    if reason:
        print(f"eip_alert.py: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nat-ha-eip-alert-") as tmp:
        result = run(Path(tmp), args.scrape)
    print(
        f"{ALERT} (for: {result['for']}, scrape and evaluation every {args.scrape}, EC2 read every 5 s): pending "
        f"{result['pending_after_s']} s after the Elastic IP was released, firing {result['firing_after_s']} s after"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["firing_after_s"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
