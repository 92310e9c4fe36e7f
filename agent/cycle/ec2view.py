"""Where EC2 actually routes our tables, where their Elastic IPs sit, and the state of silent
peers' instances: read every ``ec2_reconcile_interval``, and at once (and again after the
horizon) after a write of ours to a peer whose outcome is unknown.
"""

from __future__ import annotations

from agent.aws.ec2 import Ec2Error
from agent.cycle.context import Context
from agent.cycle.standing import Ec2Standing
from agent.decide import PeerProbe
from coordinator.items import GroupSnapshot


class Ec2View:
    def __init__(self, ctx: Context, standing: Ec2Standing) -> None:
        self.ctx = ctx
        self.standing = standing

    def refresh(self, now: float, snapshot: GroupSnapshot, probes: dict[str, PeerProbe]) -> None:
        ctx = self.ctx
        t = ctx.timings
        mem = ctx.memory
        due = [x for x in mem.ec2_rechecks if x <= now]
        if (due or now - mem.ec2_read_at >= t.ec2_reconcile_interval) and not self.standing.quiet(now):
            mem.ec2_read_at = now
            mem.ec2_rechecks = [x for x in mem.ec2_rechecks if x > now]
            try:
                read = ctx.ec2.routes(sorted(ctx.homes))
                ctx.error_cleared("ec2:describe_route_tables")
            except Ec2Error as exc:
                self.standing.failed(exc, now, write=False)
                ctx.error_once("ec2:describe_route_tables", f"{exc}; keeping the last known routes")
            else:
                for rt, view in read.items():
                    h = mem.held.get(rt)
                    # DescribeRouteTables lags writes: a read started soon after our own confirmed
                    # write that still shows the old target says nothing about the table.
                    if h is not None and now - h.last_write < t.ec2_consistency_window and view.target != ctx.me:
                        continue
                    mem.ec2[rt] = view
            if ctx.egress_tables:
                self._refresh_egress(now)
        # Instance states only matter for restarts: read them when a peer has been silent a while.
        silent = [
            p
            for p in ctx.members
            if p != ctx.me and p in mem.suspect_since and now - mem.suspect_since[p] >= t.restart_after / 2
        ]
        held = [x.target for x in snapshot.restarts.values() if x.owner == ctx.me]
        wanted = sorted(set(silent) | set(held))
        if wanted and now - mem.instances_read_at >= t.restart_poll_interval and not self.standing.quiet(now):
            mem.instances_read_at = now
            try:
                mem.instance_states.update(ctx.ec2.instance_states(wanted))
                ctx.error_cleared("ec2:describe_instances")
            except Ec2Error as exc:
                self.standing.failed(exc, now, write=False)
                ctx.error_once("ec2:describe_instances", f"{exc}; no peer restart until EC2 answers")

    def _refresh_egress(self, now: float) -> None:
        """Where each table's Elastic IP sits (one DescribeAddresses; it lags associations like routes)."""
        ctx = self.ctx
        t = ctx.timings
        mem = ctx.memory
        try:
            read = ctx.ec2.egress_ips(sorted(ctx.egress_tables))
            ctx.error_cleared("eipread:")
        except Ec2Error as exc:
            self.standing.failed(exc, now, write=False)
            ctx.error_once("eipread:", f"{exc}; keeping the last known Elastic IP associations")
            return
        mem.egress_read, mem.egress_read_at = read, now
        for rt, seen in read.items():
            h = mem.held.get(rt)
            if h is not None and now - h.last_address_write < t.ec2_consistency_window and seen.holder != ctx.me:
                continue
            mem.egress[rt] = seen
