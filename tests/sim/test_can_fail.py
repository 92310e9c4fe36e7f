"""The simulator can fail: deliberately broken agents are caught by the invariant checker.

A simulator that never reports anything proves nothing; here the real code is
monkeypatched into plausible bugs - a decision without the staleness check, a restart
without the silence check, a clock skew beyond the bound, a fence that does not check
the lease, an agent that does not report its late writes - and crafted schedules must
produce violations (with a replayable report). Each crafted schedule also runs clean
with the real code, so the violation is the bug's, not the schedule's.
"""

from __future__ import annotations

import pytest

import agent.config
import agent.cycle.restarts
import agent.decide
from agent.aws.fence import Fence
from agent.cycle.ec2view import Ec2View
from agent.cycle.restarts import Restarter
from agent.cycle.tables import TableWriter
from coordinator.items import RestartItem
from tests.sim.scenario import Fault, Scenario
from tests.sim.world import run

TWO = ("i-a", "i-b")
TABLES = {"i-a": ("rtb-0",), "i-b": ("rtb-1",)}
THREE = ("i-a", "i-b", "i-c")
TABLES3 = {"i-a": ("rtb-0",), "i-b": ("rtb-1",), "i-c": ("rtb-2",)}


def partition_scenario(seed: int) -> Scenario:
    # The members cannot probe each other for 5 s; both keep heartbeating: nobody may move anything.
    return Scenario(seed, TWO, TABLES, {"i-a": 1.0, "i-b": 1.0}, (Fault("partition", 3.0, 5.0, "i-a", "i-b"),))


def frozen_taker(seed: int, holder_tag: bool = False) -> Scenario:
    """i-b's NAT dies; i-c, next in line, takes rtb-1 and freezes for 5 s between its lease check
    and the send of its route write. i-a takes the table from the silent i-c; i-c then wakes and
    its write leaves - long after its lease - and lands on top of i-a's."""
    faults = (Fault("nat_down", 3.0, 30.0, "i-b"), Fault("hang", 3.0, 5.0, "i-c", point="ec2_gap", op="ReplaceRoute"))
    return Scenario(seed, THREE, TABLES3, dict.fromkeys(THREE, 1.0), faults, holder_tag=holder_tag)


def test_real_agent_keeps_routes_in_a_probe_partition() -> None:
    r = run(partition_scenario(1))
    assert r.ok, r.report()
    assert sum(r.route_changes.values()) == 0


def test_decide_without_the_staleness_check_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bug: a peer is taken over on failed probes alone (heartbeat age ignored).
    monkeypatch.setattr(agent.decide._View, "stale", lambda self, m: True)
    r = run(partition_scenario(1))
    assert not r.ok
    assert any("took" in v and "still valid" in v for v in r.violations), r.report()
    report = r.report()
    assert "replay: pytest tests/sim --sim-seed 1" in report and "FAULT start partition" in report


def test_restart_without_the_silence_check_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bug: a peer is stopped on failed probes alone (its heartbeat is not looked at) and the
    # re-read right before the stop is skipped.
    def evidence(v: agent.decide._View, t: agent.config.Timing, peer: str) -> str | None:
        return "probes fail" if v.probe_down(peer) and v.obs.instance_states.get(peer) == "running" else None

    def stop_unchecked(self: Restarter, item: RestartItem, health: object, progress: object) -> str:
        self.ctx.ec2.tag_stop_by(item.target, self.ctx.holder)  # (issue 17) no expiry, no checks at the send
        self.ctx.ec2.stop(item.target)
        return ""

    monkeypatch.setattr(agent.decide, "_restart_evidence", evidence)
    monkeypatch.setattr(Restarter, "still_silent", lambda self, target, snapshot: True)
    monkeypatch.setattr(Restarter, "_stop_peer", stop_unchecked)
    monkeypatch.setattr(agent.cycle.restarts, "probe_silence", lambda *args, **kwargs: "")  # nor how long
    monkeypatch.setattr(Ec2View, "refresh", _refresh_always(Ec2View.refresh))
    # Whether a schedule exposes it depends on timing: the checker must catch it in some of a few.
    results = [run(partition_scenario(seed)) for seed in range(4)]
    assert any("stop landed" in v and "heartbeated" in v for r in results for v in r.violations), results[0].report()


def _refresh_always(real):  # type: ignore[no-untyped-def]
    """Read instance states every cycle (the real agent only does so for long-silent peers)."""

    def refresh(self, now, snapshot, probes, *rest):  # type: ignore[no-untyped-def]
        real(self, now, snapshot, probes, *rest)
        peers = [p for p in self.ctx.members if p != self.ctx.me]
        self.ctx.memory.instance_states.update(self.ctx.ec2.instance_states(peers))

    return refresh


def isolated_scenario(seed: int, rate_a: float, rate_b: float) -> Scenario:
    # i-a loses DynamoDB and its probes at once: i-b takes i-a's table over once i-a is silent.
    faults = (Fault("store_isolated", 3.0, 3.0, "i-a"), Fault("partition", 3.0, 3.0, "i-a", "i-b"))
    return Scenario(seed, TWO, TABLES, {"i-a": rate_a, "i-b": rate_b}, faults)


def test_clock_skew_within_the_bound_is_safe() -> None:
    for seed in range(4):
        r = run(isolated_scenario(seed, 0.965, 1.035))
        assert r.ok, r.report()
        assert r.route_changes.get("rtb-0", 0) >= 1  # it did take over


def test_clock_skew_beyond_the_bound_is_caught() -> None:
    # i-a's clock runs 25 % slow (it believes in its session 1.33 s), i-b's 20 % fast (it
    # waits 0.92 s): the lease cannot protect against that, and the checker must say so.
    results = [run(isolated_scenario(seed, 0.75, 1.2)) for seed in range(4)]
    assert any(not r.ok for r in results)
    assert any("still valid" in v for r in results for v in r.violations)


def test_a_write_frozen_between_the_lease_check_and_the_send_is_reported_and_corrected() -> None:
    r = run(frozen_taker(1))
    assert r.ok, r.report()
    assert r.freezes_triggered == 1 and r.late_sends == 1 and r.strays == 1
    assert r.stray_corrections and max(r.stray_corrections) < 1.0


def test_with_holder_tags_the_frozen_write_is_refused_by_aws() -> None:
    r = run(frozen_taker(1, holder_tag=True))
    assert r.ok, r.report()
    assert r.late_sends == 1 and r.strays == 0 and r.iam_refusals >= 1


def test_an_agent_that_does_not_report_its_late_write_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bug: the late write is not reported: the holder learns of it only at its next EC2 check
    # (ec2_reconcile_interval, 5 s), far more than 1 s after the stray landed.
    monkeypatch.setattr(TableWriter, "on_overrun", lambda self, permit: None)
    r = run(frozen_taker(1))
    assert any("(a) stray write to rtb-1" in v and "corrected" in v for v in r.violations), r.report()


def test_a_fence_that_does_not_check_the_lease_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bug: the transport's check passes whatever the lease: the frozen taker's write goes out
    # after its session ended, unseen by the fence.
    real = Fence.authorize

    def authorize(self: Fence, operation: str) -> float:
        remaining = self.remaining
        self.remaining = lambda: 10.0  # type: ignore[method-assign]
        permit = self._armed()
        if permit is not None:
            permit.confirm = None  # (issue 17) nor confirms the write against DynamoDB
        try:
            return real(self, operation)
        finally:
            self.remaining = remaining  # type: ignore[method-assign]

    monkeypatch.setattr(Fence, "authorize", authorize)
    r = run(Scenario(1, THREE, TABLES3, dict.fromkeys(THREE, 1.0), (
        Fault("nat_down", 3.0, 30.0, "i-b"), Fault("hang", 3.0, 5.0, "i-c", point="ec2_prep"),
    ), holder_tag=False))  # fmt: skip
    assert any("(a)" in v and ("ran out" in v or "did not see it" in v) for v in r.violations), r.report()
