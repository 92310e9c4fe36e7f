"""Seeds that found bugs in agent/ or coordinator/, kept after the fix.

Each entry names the bug and the commit that fixed it; the seed must stay clean.
Replay one with ``pytest tests/sim --sim-seed N`` to see its trace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent.cycle import Agent
from agent.decide import Decision, Observation
from coordinator.items import GroupSnapshot, Health
from tests.sim.world import SimEc2, run_seed

# Seeds are those that fail with the fix undone under the current scenario generator
# (scenario.py): the seeds the bugs were first found with (4523 .. 5716 for the first,
# with margin 0.1 s) drew other schedules once the margin became 0.15 s.
REGRESSIONS = {
    # point_route reads the route (DescribeRouteTables) and then writes it; the lease was
    # checked only before the read, so with slow EC2 calls the ReplaceRoute landed after
    # the session ran out (fixed in f591dd5: the lease is checked again right before the write).
    110: "route write after the session ran out: lease checked before the read, not before the write",
    769: "same",
    1257: "same",
    1333: "same, writing the route to a successor (failback)",
    5651: "same, with EC2 throttling (found with margin 0.1 s; still reproduces)",
    # The snapshot's versions were recorded as first seen at the *start* of the cycle, before
    # the renewal and the read: after a pause (or a slow renewal) a peer's fresh heartbeat
    # looked stale and was expired while valid (fixed in ac02424: first seen when the read returned).
    2189: "fresh heartbeat judged stale: observation time taken before the read (found with this seed)",
    1437: "same",
}


@pytest.mark.parametrize("seed", sorted(REGRESSIONS))
def test_regression_seed(seed: int) -> None:
    r = run_seed(seed)
    assert r.ok, f"{REGRESSIONS[seed]}\n{r.report()}"


def test_seed_110_fails_without_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo the fix (point_route ignores the lease check before its write): the seed must fail."""
    real = SimEc2.point_route

    def unguarded(self: SimEc2, route_table: str, instance: str, *, guard: Callable[[], bool] | None = None) -> str:
        return real(self, route_table, instance)

    monkeypatch.setattr(SimEc2, "point_route", unguarded)
    r = run_seed(110)
    assert any("ran out" in v for v in r.violations), r.report()


def test_seed_2189_fails_with_the_cycle_start_as_observation_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo the fix (versions first seen at the cycle's start): the seed must fail."""
    real_run, real_observe = Agent.run_cycle, Agent._observe
    started: dict[int, float] = {}

    def run_cycle(self: Agent) -> Decision:
        started[id(self)] = self.clock.monotonic()
        return real_run(self)

    def observe(self: Agent, snapshot: GroupSnapshot, now: float, probes: Any, health: Health) -> Observation:
        return real_observe(self, snapshot, started.get(id(self), now), probes, health)

    monkeypatch.setattr(Agent, "run_cycle", run_cycle)
    monkeypatch.setattr(Agent, "_observe", observe)
    r = run_seed(2189)
    assert any("still valid" in v for v in r.violations), r.report()
