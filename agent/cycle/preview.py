"""``nat-ha agent --once``: the decision the agent running for this instance would make now.

It used to print only "not starting a session: another agent of i-... renewed 0.3 s ago" beside
a running agent - never the decision it promised. Now it decides as the running agent's session
(taken in memory only, :meth:`coordinator.leases.Coordinator.preview_as`), after reading EC2 as
the agent does: which tables that session holds, where EC2 routes them, what it would do. It
writes nothing: no session, no lease, no EC2 write (``run_cycle(act=False)`` acts on nothing).
One look: timers that need history (the fail-back hold-down, claim staggers) start at this look.
"""

from __future__ import annotations

from agent.cycle.agent import Agent
from agent.decide import Decision
from coordinator.errors import StoreConfigError, StoreUnavailable
from coordinator.items import MEMBER_ALIVE


def preview(agent: Agent) -> tuple[Decision, str]:
    """(the decision, the running agent's session it was made as; "" when no agent runs here)."""
    coordinator = agent.coordinator
    try:
        snapshot = coordinator.read_group()
    except (StoreUnavailable, StoreConfigError):
        return agent.run_cycle(act=False), ""
    me = snapshot.members.get(agent.me)
    running = ""
    if coordinator.session is None and me is not None and me.state == MEMBER_ALIVE:
        coordinator.preview_as(me)
        running = me.session
    ctx = agent.ctx
    ctx.last_snapshot = snapshot
    now = ctx.clock.monotonic()
    agent.observer.track_holdings(snapshot, now)
    agent.ec2_view.refresh(now, snapshot, agent.probes.snapshot(), None)  # reads only, never renews
    return agent.run_cycle(act=False), running
