"""Whose EC2 failure it was, measured: issue 17's findings 6-9 as crafted simulator schedules.

    python bench/ec2_failures.py [--seeds 10] [--json F]

Runs the real agents in the simulator (tests/sim) on the schedules that showed the findings, each
under ``--seeds`` different seeds (the simulator's random timing), at production timings:

* outage_30s/60s/120s (finding 8): EC2 unreachable for every member for 30/60/120 s from 5 s; the
  NAT holding rtb-1 dies at 10 s. Measured: how long after EC2 answers again rtb-1 still points at
  the dead NAT (None: not within the run; before the fix members counted connection failures as
  their own and stayed out, at 120 s until the dead NAT itself came back).
* describe_drained (finding 7): another tenant drains only the Describe* buckets (3x their refill)
  from 2 s; rtb-1's NAT dies at 36 s. Measured: the longest outage of a table on a dead NAT.
* tag_lag (finding 6): IAM sees each holder-tag write up to 0.5 s late; rtb-1's NAT hangs 12 s.
  Measured: moves of a healthy home's table, and the writes IAM refused meanwhile.
* slow_store (finding 9): one member's DynamoDB round trips take 140-200 ms and 140-300 ms for
  60 s. Measured: moves of its healthy home table.

Every run is also checked by the simulator's invariants (``violating_runs``). Virtual time: the
figures are the agents' behaviour, not this machine's speed (a run takes a few seconds of CPU).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli import BenchParser
from tests.sim.scenario import Fault, Scenario
from tests.sim.world import Result, run

THREE = ("i-a", "i-b", "i-c")
TABLES = {"i-a": ("rtb-0",), "i-b": ("rtb-1",), "i-c": ("rtb-2",)}
MOVED = re.compile(r"^\s*([\d.]+) .*EC2 rtb-1: i-b -> (i-[ac])")


def three(seed: int, *faults: Fault, **kw: Any) -> Scenario:
    return Scenario(seed, THREE, TABLES, dict.fromkeys(THREE, 1.0), tuple(faults), **kw)


def moved_after(r: Result, t: float) -> float:
    """Seconds from ``t`` until rtb-1 was routed away from the dead i-b (inf: not within the run)."""
    for line in r.trace:
        m = MOVED.match(line)
        if m and float(m.group(1)) >= t - 1e-9:
            return float(m.group(1)) - t
    return float("inf")


def summary(values: list[float]) -> dict[str, Any]:
    """Median and max (None: not within the run, for at least half / one of the runs)."""

    def fig(x: float) -> float | None:
        return round(x, 3) if x != float("inf") else None

    return {"median": fig(statistics.median(values)), "max": fig(max(values)), "runs": len(values)}


def measure(seeds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for outage in (30.0, 60.0, 120.0):
        waits, bad = [], 0
        for s in range(1, seeds + 1):
            sc = three(s, Fault("ec2_outage", 5.0, outage), Fault("nat_down", 10.0, outage + 30.0, "i-b"))
            r = run(sc)
            waits.append(moved_after(r, 5.0 + outage))
            bad += not r.ok
        out[f"outage_{int(outage)}s"] = {"on_dead_nat_after_ec2_back_s": summary(waits), "violating_runs": bad}
    worst, bad = [], 0
    for s in range(1, seeds + 1):
        r = run(three(s, Fault("ec2_busy_describe", 2.0, 60.0, rate=30.0), Fault("nat_down", 36.0, 8.0, "i-b")))
        worst.append(max(r.outages, default=0.0))
        bad += not r.ok
    out["describe_drained"] = {"outage_s": summary(worst), "violating_runs": bad}
    moves, refused, bad = 0, 0, 0
    for s in range(1, seeds + 1):
        r = run(three(s, Fault("nat_down", 5.0, 12.0, "i-b"), tag_lag=0.5))
        moves += r.healthy_home_moves
        refused += r.iam_refusals
        bad += not r.ok
    out["tag_lag"] = {"healthy_home_moves": moves, "iam_refusals": refused, "runs": seeds, "violating_runs": bad}
    moves, bad, runs = 0, 0, 0
    for s in range(1, seeds + 1):
        for longest in (0.2, 0.3):
            r = run(three(s, Fault("store_slow_member", 3.0, 60.0, "i-a", rate=longest)))
            moves += r.healthy_home_moves
            bad += not r.ok
            runs += 1
    out["slow_store"] = {"healthy_home_moves": moves, "runs": runs, "violating_runs": bad}
    return out


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(prog="ec2_failures", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10, help="runs of each schedule (default 10)")
    p.add_argument("--json", default="", help="also write the figures to this file")
    args = p.parse_args(argv)
    if not 1 <= args.seeds <= 1000:
        p.error("--seeds must be between 1 and 1000")
    figures = measure(args.seeds)
    text = json.dumps(figures, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
