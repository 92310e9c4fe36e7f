"""A route (or an Elastic IP) of a table we hold, changed by someone else: said loudly, counted, put back.

The holder writes its table's route back whenever a read shows it elsewhere (that is its job),
and used to say so at INFO only, in a decision line. A person (the runbook's own stop-gap), a
Terraform apply or another tool fighting nat-ha then never alerted. A read that shows a table we
held, and had seen routed to us, now routed elsewhere - with no write of ours or of a former
holder to explain it - is a foreign change: a WARNING that names what to do instead
(``nat-ha pause``), ``nat_ha_route_table_foreign_changes_total``, and an entry in the history.

Not foreign: a read inside the consistency window of our own write (the caller skips those), a
table taken less than ``ec2_apply_horizon`` ago (a former holder's late write may still land), a
write of ours to a peer whose outcome is unknown, a reported stray write, a table shown with a peer
whose session was expired and that just showed life again (its late write: agent.cycle.ec2view), and
a paused table (changing a paused table by hand is what a pause is for).
"""

from __future__ import annotations

import logging

from agent.cycle.context import Context
from agent.decide import Ec2Address, Ec2Route
from coordinator.items import GroupSnapshot

log = logging.getLogger("nat_ha.agent")


class ForeignChanges:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _explained(self, rt: str, now: float, snapshot: GroupSnapshot, shown: str) -> bool:
        mem = self.ctx.memory
        h = mem.held.get(rt)
        if shown in mem.revived:
            return True  # a former holder back from a pause: its late write
        if h is None or now < h.settle_at or rt in mem.handover_doubt or rt in mem.paused or mem.group_paused:
            return True
        stray = snapshot.strays.get(rt)
        return stray is not None and stray.token not in mem.strays_handled

    def route(self, rt: str, before: Ec2Route | None, after: Ec2Route, now: float, snapshot: GroupSnapshot) -> None:
        """A read of ``rt``'s route: ``before`` is what we knew, ``after`` what EC2 shows now."""
        me = self.ctx.me
        if before is None or before.target != me or (after.target == me and after.state == "active"):
            return
        if self._explained(rt, now, snapshot, after.target):
            return
        shown = after.target.removeprefix("other:") or after.state
        self._book(
            rt,
            f"{rt}'s route was changed to {shown} by someone else (not nat-ha's holder): writing it back; "
            f"to change it by hand, pause first (nat-ha pause --route-table {rt})",
            shown,
        )

    def address(
        self, rt: str, before: Ec2Address | None, after: Ec2Address, now: float, snapshot: GroupSnapshot
    ) -> None:
        """A read of ``rt``'s Elastic IP (egress_ip = follow), likewise."""
        me = self.ctx.me
        if before is None or before.holder != me or after.holder == me or after.problem:
            return
        if self._explained(rt, now, snapshot, after.holder):
            return
        shown = after.holder.removeprefix("other:") or "unassociated"
        self._book(
            rt,
            f"{rt}'s Elastic IP {after.public_ip} was moved to {shown} by someone else: associating it back; "
            f"to move it by hand, pause first (nat-ha pause --route-table {rt})",
            f"Elastic IP to {shown}",
        )

    def _book(self, rt: str, message: str, to: str) -> None:
        ctx = self.ctx
        log.warning(message)
        if ctx.metrics is not None:
            ctx.metrics.route_foreign_changes.labels(rt).inc()
        ctx.on_event("foreign_change", {"route_table": rt, "to": to})
