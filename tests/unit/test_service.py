"""The service's schedule (agent.service.ServiceLoop) on a fake clock and a stand-in agent."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from agent.cycle.session import Plan
from agent.decide import Decision
from agent.service import ServiceLoop


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class StubAgent:
    """What ServiceLoop uses of agent.cycle.Agent: a cycle, the next takeover deadline, the drain."""

    def __init__(self, interval: float) -> None:
        self.timings = SimpleNamespace(cycle_interval=interval, heartbeat_interval=2 * interval)
        self.plans: list[Plan] = []
        self.coordinator: Any = SimpleNamespace(session="s-1")
        self.draining = False
        self.deadline: float | None = None
        self.cycles = 0
        self.renewed_before_exit = 0
        self.decision = Decision("holding", "holding rtb-a (term 1)")
        self.reread_at: float | None = None  # a read alone is due then (Agent.reread_due)
        self.rereads = 0

    def run_cycle(self) -> Decision:
        self.cycles += 1
        return Decision("holding", "holding rtb-a (term 1)")

    def next_deadline(self) -> float | None:
        return min((t for t in (self.deadline, self.reread_at) if t is not None), default=None)

    def reread_due(self, now: float) -> bool:
        if self.reread_at is None or now < self.reread_at - 0.005:
            return False
        self.reread_at = None
        return self.deadline is None or self.deadline > now + 0.005

    def reread(self) -> None:
        self.rereads += 1

    def plan(self, plan: Plan) -> None:
        self.plans.append(plan)

    def drained(self) -> bool:
        return True

    def leave(self) -> None:
        self.coordinator.session = None

    def renew_before_exit(self) -> bool:
        self.renewed_before_exit += 1
        return True


def test_cycles_keep_their_grid_when_on_time_or_late() -> None:
    clock, agent = Clock(), StubAgent(0.35)
    loop = ServiceLoop(agent, 10.0, clock)  # type: ignore[arg-type]
    assert loop.step().wake_at == pytest.approx(100.35)
    clock.now = 100.40  # a little late: the grid stays, no catching up beyond now
    assert loop.step().wake_at == pytest.approx(100.70)


def test_an_early_cycle_restarts_the_grid_so_cycles_are_never_further_apart() -> None:
    """A probe turning a peer down wakes the daemon before wake_at: the next cycle is one interval
    after that early one, not after the regular one it replaced (renewals ride on cycles)."""
    clock, agent = Clock(), StubAgent(0.35)
    loop = ServiceLoop(agent, 10.0, clock)  # type: ignore[arg-type]
    assert loop.step().wake_at == pytest.approx(100.35)
    clock.now = 100.10  # woken early
    step = loop.step()
    assert agent.cycles == 2 and step.wake_at == pytest.approx(100.45)


def test_a_takeover_deadline_before_the_next_cycle_brings_it_forward() -> None:
    clock, agent = Clock(), StubAgent(0.35)
    loop = ServiceLoop(agent, 10.0, clock)  # type: ignore[arg-type]
    agent.deadline = 100.20
    assert loop.step().wake_at == pytest.approx(100.205)


def test_a_restart_exits_at_once_after_one_renewal_without_a_cycle_or_a_drain() -> None:
    """SIGUSR2 (systemctl restart): nothing is started that the next process would have to finish."""
    clock, agent = Clock(), StubAgent(0.35)
    loop = ServiceLoop(agent, 10.0, clock)  # type: ignore[arg-type]
    loop.step()
    loop.request_restart()
    step = loop.step()
    assert (step.exit_code, step.restart) == (0, True)
    assert agent.cycles == 1 and agent.renewed_before_exit == 1
    assert not agent.draining and agent.coordinator.session == "s-1"  # not left: the session stays


def test_a_stop_wins_over_a_restart() -> None:
    clock, agent = Clock(), StubAgent(0.35)
    loop = ServiceLoop(agent, 10.0, clock)  # type: ignore[arg-type]
    loop.request_stop()
    loop.request_restart()
    step = loop.step()
    assert (step.exit_code, step.restart) == (0, False)
    assert agent.draining and agent.renewed_before_exit == 0 and agent.coordinator.session is None  # drained, left


def test_a_restart_waits_for_the_next_process_to_be_prepared_cycling_meanwhile() -> None:
    """After an upgrade the next process's AWS models are made first (agent.handoff.NextProcess): the
    agent goes on serving until they are."""
    clock, agent = Clock(), StubAgent(0.35)
    loop = ServiceLoop(agent, 10.0, clock)  # type: ignore[arg-type]
    answers = iter([False, False, True])
    loop.request_restart(lambda: next(answers))
    assert [loop.step().exit_code for _ in range(3)] == [None, None, 0]
    assert agent.cycles == 2 and agent.renewed_before_exit == 1


class Host:
    """One NAT's clocks: its own monotonic origin, a wall clock shared with the group (NTP)."""

    def __init__(self, world: list[float], origin: float) -> None:
        self.world, self.origin = world, origin

    def monotonic(self) -> float:
        return self.world[0] + self.origin

    def wall(self) -> float:
        return self.world[0] + 1_800_000_000.0


def run_loops(starts: dict[str, float], until: float, early: dict[str, float] | None = None) -> dict[str, Any]:
    """Loops of agents started at ``starts`` (world time) on hosts with unrelated monotonic clocks, run to
    ``until``; ``early``: an extra wake (a probe turning a peer down) of an agent at that world time.
    Returns, per agent, the world times of its cycles and of those its plan called renewal instants."""
    world = [0.0]
    hosts = {name: Host(world, 1000.0 * (i + 1) + 0.123 * i) for i, name in enumerate(starts)}
    agents = {name: StubAgent(0.35) for name in starts}
    loops: dict[str, ServiceLoop] = {}
    due = dict(starts)
    wakes = dict(early or {})
    cycles: dict[str, list[float]] = {name: [] for name in starts}
    slots: dict[str, list[float]] = {name: [] for name in starts}
    while True:
        name, at = min(due.items(), key=lambda kv: kv[1])
        if name in wakes and wakes[name] < at:
            at = wakes.pop(name)
        if at > until:
            break
        world[0] = at
        h = hosts[name]
        if name not in loops:
            loops[name] = ServiceLoop(agents[name], 10.0, h.monotonic, wall=h.wall)  # type: ignore[arg-type]
        step = loops[name].step()
        cycles[name].append(round(at, 6))
        if agents[name].plans and agents[name].plans[-1].renewal_slot:
            slots[name].append(round(at, 6))
        due[name] = at + (step.wake_at - h.monotonic())
    return {"cycles": cycles, "slots": slots}


def test_the_group_cycles_and_renews_on_one_wall_grid_whatever_its_members_start_times() -> None:
    """Every member reads the group right after the group's renewal instant: a peer's renewal is first
    seen one round trip after it was sent, not up to a cycle later (a crash's takeover counts its lease
    from that first sighting). (Undo: ServiceLoop ignores ``wall``; each grid starts at its first cycle.)"""
    out = run_loops({"i-a": 0.0, "i-b": 0.2, "i-c": 0.61}, until=5.0)
    regular = {name: [t for t in ts[1:] if t > 1.0] for name, ts in out["cycles"].items()}
    assert regular["i-a"] == regular["i-b"] == regular["i-c"]
    renewals = {name: [t for t in ts if t > 1.0] for name, ts in out["slots"].items()}
    assert renewals["i-a"] == renewals["i-b"] == renewals["i-c"]
    assert len(renewals["i-a"]) in (len(regular["i-a"]) // 2, (len(regular["i-a"]) + 1) // 2)  # every other one
    gaps = [b - a for a, b in zip(regular["i-a"], regular["i-a"][1:], strict=False)]
    assert max(gaps) == pytest.approx(0.35) and min(gaps) == pytest.approx(0.35)


def test_an_extra_cycle_on_the_wall_grid_moves_no_regular_one() -> None:
    """A probe turning a peer down wakes the agent at once; its regular cycles stay on the group's grid
    (the next one at most one interval later), and that extra cycle is no renewal instant."""
    out = run_loops({"i-a": 0.0, "i-b": 0.2}, until=4.0, early={"i-b": 2.13})
    assert 2.13 in out["cycles"]["i-b"] and 2.13 not in out["slots"]["i-b"]
    after = [t for t in out["cycles"]["i-b"] if t > 1.0 and t != 2.13]
    assert after == [t for t in out["cycles"]["i-a"] if t > 1.0]


def test_a_peers_missed_renewal_is_read_again_between_cycles_by_a_read_alone() -> None:
    """A renewal instant's read missed a peer's renewal (Agent.reread_due): the agent wakes to read the group
    again, and only that - no cycle out of turn (its EC2 reads and writes); the grid does not move.
    (Undo: drop the read-alone branch of ServiceLoop.step, and that wake runs a cycle.)"""
    clock = Clock()
    agent = StubAgent(0.35)
    loop = ServiceLoop(agent, 10.0, clock, wall=lambda: clock.now + 1_800_000_000.0)  # type: ignore[arg-type]
    step = loop.step()
    grid = step.wake_at
    clock.now = grid
    agent.reread_at = grid + 0.15
    step = loop.step()
    assert (agent.cycles, step.wake_at) == (2, pytest.approx(grid + 0.155))
    clock.now = step.wake_at
    step = loop.step()
    assert (agent.cycles, agent.rereads) == (2, 1)
    assert step.wake_at == pytest.approx(grid + 0.35)
