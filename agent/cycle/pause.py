"""A pause of the group or of single route tables (``nat-ha pause``), as the cycle sees it.

The agent keeps its session, its leases and its probes, and writes nothing to EC2 for a paused
table (for the group's pause: nothing at all, restarts included). Three places enforce it:

* the decision (``Observation.paused``): no route, Elastic IP or gateway write is decided for a
  paused table; lease moves go on, the lease only;
* the fence (:meth:`PauseGate.hold`, where every EC2 write passes): any write for a paused table,
  or any write at all while the group is paused, is refused before it is sent;
* the heartbeat says the agent sees the pause, and ``nat-ha pause`` waits until every live agent
  says so: only then is a route changed by hand safe from being written back.

The pause in force is the one of the last read of the group: when the store cannot be read, the
last known pause holds (a pause is never lifted by a failed read).
"""

from __future__ import annotations

import logging

from agent.cycle.context import Context
from coordinator.items import GROUP_PAUSE, GroupSnapshot, RequestItem

log = logging.getLogger("nat_ha.agent")


def _who(r: RequestItem) -> str:
    """``by alice@laptop: moving to a NAT gateway`` (for the decision line and the fence's refusal)."""
    who = f"by {r.by}" if r.by else "by an operator"
    return who + (f": {r.why}" if r.why else "")


class PauseGate:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def update(self, snapshot: GroupSnapshot) -> None:
        """The pauses of this read of the group (every cycle); said in the log when they change."""
        mem = self.ctx.memory
        group = snapshot.requests.get(GROUP_PAUSE)
        group_paused = _who(group) if group is not None and group.value == "on" else ""
        paused = {}
        for rt in self.ctx.homes:
            r = snapshot.pause_of(rt)
            if r is not None:
                paused[rt] = _who(r)
        if (paused, group_paused) != (mem.paused, mem.group_paused):
            if group_paused and not mem.group_paused:
                log.warning(
                    "group paused %s: no EC2 write until `nat-ha resume`; leases and probes go on", group_paused
                )
            for rt in sorted(set(paused) - set(mem.paused)):
                if not group_paused:
                    log.warning("%s paused %s: no EC2 write for it until `nat-ha resume`", rt, paused[rt])
            if mem.group_paused and not group_paused:
                log.info("pause of the group ended: writing to EC2 again")
            for rt in sorted(set(mem.paused) - set(paused)):
                log.info("pause of %s ended: writing its route again", rt)
        mem.paused, mem.group_paused = paused, group_paused

    def hold(self, operation: str, resource: str) -> str:
        """The fence's question: why ``operation`` on ``resource`` must not be sent now ("" when it may)."""
        mem = self.ctx.memory
        if mem.group_paused:
            return f"the group is paused ({mem.group_paused})"
        why = mem.paused.get(resource, "")
        return f"{resource} is paused ({why})" if why else ""
