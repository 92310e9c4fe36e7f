"""Seeds that found bugs in agent/ or coordinator/, kept after the fix.

Each entry names the bug and the commit that fixed it; the seed must stay clean.
Replay one with ``pytest tests/sim --sim-seed N`` to see its trace.
"""

from __future__ import annotations

import pytest

from tests.sim.world import run_seed

REGRESSIONS = {
    # point_route reads the route (DescribeRouteTables) and then writes it; the lease was
    # checked only before the read, so with slow EC2 calls the ReplaceRoute landed after
    # the session ran out (fixed: agent/cycle.py passes a guard, re-checked before the write).
    4523: "route write after the session ran out: lease checked before the read, not before the write",
    2462: "same, with ambiguous store writes and a crash",
    3835: "same, during a hand-over with EC2 errors",
    5350: "same, hand-over to a successor",
    5651: "same, with EC2 throttling",
    5716: "same, with clock stall and store throttling",
    # The snapshot's versions were recorded as first seen at the *start* of the cycle, before
    # the renewal and the read: after a pause (or a slow renewal) a peer's fresh heartbeat
    # looked stale and was expired while valid (fixed: first seen when the read returned).
    2189: "fresh heartbeat judged stale: observation time taken before the read",
}


@pytest.mark.parametrize("seed", sorted(REGRESSIONS))
def test_regression_seed(seed: int) -> None:
    r = run_seed(seed)
    assert r.ok, f"{REGRESSIONS[seed]}\n{r.report()}"
