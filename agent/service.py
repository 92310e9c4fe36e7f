"""The service's schedule: a cycle every ``cycle_interval``, an early cycle when a failing peer
can be taken over, the planned shutdown (drain, then leave, then exit) and the exit for a
restart (no drain: one last renewal, then exit; the next process takes the session over). The daemon may also
call :meth:`ServiceLoop.step` before ``wake_at`` (a peer's probes just turned it down): the next
cycle is then due ``cycle_interval`` after that early one.

Pure of time and signals: the clock is passed in and :meth:`ServiceLoop.step` returns when
the next cycle is due, so ``nat-ha agent`` runs it on the real clock and the simulator
(tests/sim) on virtual time, with the same drain logic.

**One grid for the whole group** (``wall``, the host's wall clock, NTP-disciplined on EC2): regular
cycles fall on multiples of ``cycle_interval`` of the wall clock, and renewals on the cycles that
begin a ``heartbeat_interval`` (:class:`Plan`). Every member then renews at the same instants and
reads the group right after its own renewal, so a peer's renewal is first seen about one round
trip after it was sent. On grids of random phases that took anything up to a whole cycle more
(the read just before a renewal landed), and a dead peer's session is expired ``lease + margin``
after that first sighting: a crash's takeover came up to one cycle late, at random. Only the
schedule uses the wall clock; every lease and expiry stays on the monotonic clock, so a wrong wall
clock costs that cycle again, never safety.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from agent.cycle import Agent
from agent.cycle.session import Plan
from agent.decide import Decision

log = logging.getLogger("nat_ha.agent")

GRID_SLACK = 0.005  # seconds: a cycle this close before its grid instant is that instant's (timer rounding)


@dataclass(frozen=True)
class Step:
    decision: Decision
    wake_at: float  # monotonic time of the next cycle
    exit_code: int | None = None  # set once the service should exit
    restart: bool = False  # it exits for a restart: the session stays for the next process


class ServiceLoop:
    def __init__(
        self,
        agent: Agent,
        drain_timeout: float,
        monotonic: Callable[[], float],
        wall: Callable[[], float] | None = None,
    ) -> None:
        self.agent = agent
        self.interval = agent.timings.cycle_interval
        self.drain_timeout = drain_timeout
        self.monotonic = monotonic
        self.wall = wall  # None: the grid starts at the first cycle and restarts at every early one
        self.next_at = monotonic()
        self._grid_at = self.next_at  # the regular cycle due (next_at may be an earlier, extra one)
        self._grid_slot = False
        self.stop_requested = False
        self.restart_requested = False
        self._restart_ready: Callable[[], bool] = lambda: True
        self.drain_deadline: float | None = None

    @property
    def stopping(self) -> bool:
        return self.drain_deadline is not None

    def request_stop(self) -> None:
        """SIGTERM: hand every route table over, then leave and exit (checked at the next step)."""
        self.stop_requested = True

    def request_restart(self, ready: Callable[[], bool] | None = None) -> None:
        """SIGUSR2 (the unit's RestartKillSignal): exit without draining; a drain under way goes on.

        ``ready``: polled before each cycle; cycles go on as usual until it says the next process
        is prepared (agent.handoff.NextProcess), then the service exits.
        """
        self.restart_requested = True
        self._restart_ready = ready or (lambda: True)

    def step(self) -> Step:
        """Run one cycle; say when the next is due, or that the service should exit now."""
        agent = self.agent
        if self.restart_requested and not self.stop_requested and self._restart_ready():
            # No cycle: nothing is started that the next process would have to finish.
            kept = agent.renew_before_exit()
            log.info(
                "exiting for a restart without draining: %s",
                "session renewed, the next agent process takes it over"
                if kept
                else "no session to hand on (the next process starts one)",
            )
            return Step(agent.decision, self.monotonic(), 0, restart=True)
        between = self.wall is not None and self.monotonic() < self._grid_at - GRID_SLACK
        if between and agent.reread_due(self.monotonic()):
            # Between cycles, only a read of the group (a peer's renewal that this instant's read missed).
            agent.reread()
            return Step(agent.decision, self._wake_at())
        if self.wall is None:
            # Early (woken before next_at): the grid restarts here, so cycles - and the renewals they
            # carry - are never further apart than cycle_interval because of an extra cycle.
            self.next_at = min(self.next_at, self.monotonic())
        else:
            # On the wall grid an extra cycle moves no regular one: the next is at most one interval away.
            start = self.monotonic()
            regular = start >= self._grid_at - GRID_SLACK
            if not regular:
                log.debug("trace early cycle (%.4f s before the grid)", self._grid_at - start)
            upcoming, upcoming_slot = self._grid_after(start)
            agent.plan(Plan(upcoming, regular and self._grid_slot))
            self._grid_at, self._grid_slot = upcoming, upcoming_slot
        if self.stop_requested and self.drain_deadline is None:
            agent.draining = True
            self.drain_deadline = self.monotonic() + self.drain_timeout
        decision = agent.run_cycle()
        if self.drain_deadline is not None and agent.coordinator.session is not None and agent.drained():
            agent.leave()
            log.info("drained: every route table handed over; exiting")
            return Step(decision, self.monotonic(), 0)
        if self.drain_deadline is not None and self.monotonic() > self.drain_deadline:
            log.warning(
                "drain timed out after %.0f s; exiting with route tables still held (%s)",
                self.drain_timeout,
                decision.summary,
            )
            agent.leave()
            return Step(decision, self.monotonic(), 1)
        return Step(decision, self._wake_at())

    def _wake_at(self) -> float:
        """When the next step is due: the next regular cycle, or an earlier deadline of the agent's."""
        self.next_at = self._grid_at if self.wall is not None else self.next_at + self.interval
        deadline = self.agent.next_deadline()
        if deadline is not None and deadline + 0.005 < self.next_at:
            # A peer whose probes fail can be taken over at `deadline`: one extra read
            # then, rather than up to a whole cycle later (failures only; no cost otherwise).
            self.next_at = deadline + 0.005
        now = self.monotonic()
        if self.next_at < now:
            self.next_at = now  # late: run the next cycle at once, do not catch up
        return self.next_at

    def _grid_after(self, now: float) -> tuple[float, bool]:
        """The next instant of the wall grid after ``now`` (monotonic), and whether it is a renewal instant."""
        assert self.wall is not None
        hb = self.agent.timings.heartbeat_interval
        wall = self.wall()
        k = math.floor(wall / self.interval + GRID_SLACK / self.interval) + 1
        at = now + (k * self.interval - wall)

        def period(i: int) -> int:  # which heartbeat_interval of the wall clock grid instant i begins in
            return math.floor(i * self.interval / hb + 1e-6)

        return at, period(k) != period(k - 1)
