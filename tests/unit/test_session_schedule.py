"""When the agent renews on the group's wall grid (agent.cycle.session.SessionKeeper.heartbeat_due
with the service's Plan): on the renewal instants, never more than heartbeat_interval apart."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from agent.config import Timing
from agent.cycle.memory import Memory
from agent.cycle.session import Plan, SessionKeeper
from coordinator.items import Health

T = Timing()  # cycle 0.35 s, heartbeat 0.7 s
HEALTH = Health(True)


def keeper() -> SessionKeeper:
    ctx = SimpleNamespace(timings=T, memory=Memory(), last_snapshot=None)
    s = SessionKeeper(ctx, 0.6)  # type: ignore[arg-type]
    ctx.memory.last_health = HEALTH
    return s


def renewals(first: float, extra: float | None, until: float) -> list[float]:
    """Cycles on the grid k x 0.35 (renewal instants: even k), the last renewal at ``first``, one renewal
    off the grid at ``extra`` (a health change); the times renewed."""
    s = keeper()
    mem = s.ctx.memory
    mem.last_heartbeat = first
    out = [first]
    cycles = sorted({round(k * T.cycle_interval, 6) for k in range(1, int(until / T.cycle_interval) + 1)}
                    | ({extra} if extra is not None else set()))  # fmt: skip
    for now in cycles:
        on_grid = now != extra
        k = round(now / T.cycle_interval)
        nxt = (k + 1) * T.cycle_interval if on_grid else (int(now / T.cycle_interval) + 1) * T.cycle_interval
        s.schedule = Plan(nxt, on_grid and k % 2 == 0)
        if now == extra or s.heartbeat_due(now, HEALTH):
            mem.last_heartbeat = now
            out.append(now)
    return out


def test_renewals_fall_on_the_group_instants() -> None:
    assert renewals(0.0, None, 3.0) == [0.0, 0.7, 1.4, 2.1, 2.8]


def test_a_renewal_off_the_grid_never_stretches_the_next_gap_and_the_grid_comes_back() -> None:
    """A health change renews at once, between two cycles; the next renewal still comes within
    heartbeat_interval, and the one after is on the group's instants again. (Undo: drop the
    next-cycle rule of heartbeat_due; a renewal 0.6 s into the period waits 0.85 s for its successor.)"""
    for extra in (0.1, 0.2, 0.3, 0.45, 0.6, 0.65):
        times = renewals(0.0, extra, 4.0)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) <= T.heartbeat_interval + 1e-9, (extra, times)
        assert [t for t in times if t >= 2.0] == [2.1, 2.8, 3.5], (extra, times)
