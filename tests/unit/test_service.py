"""The service's schedule (agent.service.ServiceLoop) on a fake clock and a stand-in agent."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

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
        self.timings = SimpleNamespace(cycle_interval=interval)
        self.coordinator: Any = SimpleNamespace(session="s-1")
        self.draining = False
        self.deadline: float | None = None
        self.cycles = 0
        self.renewed_before_exit = 0
        self.decision = Decision("holding", "holding rtb-a (term 1)")

    def run_cycle(self) -> Decision:
        self.cycles += 1
        return Decision("holding", "holding rtb-a (term 1)")

    def next_deadline(self) -> float | None:
        return self.deadline

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
