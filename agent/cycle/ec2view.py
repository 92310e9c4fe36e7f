"""Where EC2 actually routes our tables, where their Elastic IPs sit, and the state of silent
peers' instances: read every ``ec2_reconcile_interval`` (every second while EC2 does not answer
us, to see it back), and at once (and again after the horizon) after a write of ours to a peer
whose outcome is unknown, and after a peer whose session was expired shows life again
(:meth:`Ec2View._watch_expired_peers`). Each read waits only for its own action's throttling back-off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from agent.aws.ec2 import Ec2Error
from agent.cycle.context import Context
from agent.cycle.foreign import ForeignChanges
from agent.cycle.session import SessionKeeper
from agent.cycle.standing import Ec2Standing
from agent.decide import PeerProbe
from coordinator.items import MEMBER_EXPIRED, GroupSnapshot, Health

T = TypeVar("T")


class Ec2View:
    def __init__(self, ctx: Context, standing: Ec2Standing, session: SessionKeeper) -> None:
        self.ctx = ctx
        self.standing = standing
        self.foreign = ForeignChanges(ctx)
        self.session = session

    def refresh(self, now: float, snapshot: GroupSnapshot, probes: dict[str, PeerProbe], health: Health | None) -> None:
        """Read what is due; the lease is renewed first when a read running to its deadline would outlast it."""
        ctx = self.ctx
        t = ctx.timings
        mem = ctx.memory
        self._watch_expired_peers(now, snapshot, probes)
        due = [x for x in mem.ec2_rechecks if x <= now]
        quiet = self.standing.quiet("DescribeRouteTables", now)
        if (due or now - mem.ec2_read_at >= self.standing.read_interval(now)) and not quiet:
            mem.ec2_read_at = now
            self._keep(health)
            if self._refresh_routes(now, snapshot):
                mem.ec2_rechecks = [x for x in mem.ec2_rechecks if x > now]
            else:
                # A read after a write in doubt that failed (throttled, no answer) is read again next cycle
                # (after any throttling back-off), not left to the reconcile interval: meanwhile we act on a
                # view older than the write (sim seed 3442: a drain's route write landed late, the read
                # after it was throttled, and the holder took the Elastic IP back alone for 5 s).
                keep = t.ec2_reconcile_interval
                mem.ec2_rechecks = [x for x in mem.ec2_rechecks if x > now or now - x < keep]
            if ctx.egress_tables:
                self._keep(health)
                self._refresh_egress(now, snapshot)
        # Instance states only matter for restarts: read them when a peer has been silent a while.
        silent = [
            p
            for p in ctx.members
            if p != ctx.me and p in mem.suspect_since and now - mem.suspect_since[p] >= t.restart_after / 2
        ]
        held = [x.target for x in snapshot.restarts.values() if x.owner == ctx.me]
        wanted = sorted(set(silent) | set(held))
        if (
            wanted
            and now - mem.instances_read_at >= t.restart_poll_interval
            and not self.standing.quiet("DescribeInstances", now)
        ):
            mem.instances_read_at = now
            self._keep(health)
            states = self._read(
                "DescribeInstances", lambda: ctx.ec2.instance_states(wanted), "no peer restart until EC2 answers"
            )
            if states is not None:
                mem.instance_states.update(states)

    def _watch_expired_peers(self, now: float, snapshot: GroupSnapshot, probes: dict[str, PeerProbe]) -> None:
        """A peer whose session was expired may have stopped between a write's last check and its send
        (its VM paused). When it runs again the write leaves and lands outside its lease, and its writer
        reports it - unless it stops again before the report leaves: then only our next reconcile would
        see the write (sim seed 3476: 1.8 s after it landed). A paused VM answers no probe, so the moment
        it runs again shows: its probes answer again. Then the holder of a table that peer held before
        it reads EC2 at once and again once a write sent by then can no longer land
        (``ec2_apply_horizon``); a read of those showing the table with that peer is not discounted as
        read lag (:meth:`revived`): the holder writes the table back at once.

        A process paused on a NAT that answers probes shows nothing until it acts again: its late
        write is still seen only by its own report or our next reconcile."""
        ctx = self.ctx
        t = ctx.timings
        mem = ctx.memory
        for rt, r in snapshot.routes.items():
            if rt in ctx.homes and r.owner != ctx.me:
                mem.former_owners[rt] = r.owner
        for peer in list(mem.revived):
            if now - mem.revived[peer] > t.ec2_apply_horizon + t.ec2_consistency_window:
                del mem.revived[peer]
        for peer, probe in probes.items():
            was_up, mem.probes_up[peer] = mem.probes_up.get(peer), probe.up
            item = snapshot.members.get(peer)
            if item is None or item.state != MEMBER_EXPIRED or not probe.up or was_up is not False:
                continue
            if any(mem.former_owners.get(rt) == peer for rt in mem.held):
                mem.revived[peer] = now
                mem.ec2_rechecks += [now, now + t.ec2_apply_horizon]

    def revived(self, target: str) -> bool:
        """``target`` is a peer whose session was expired and that showed life again lately: a read that
        shows one of our tables with it may show its late write, not lag behind ours."""
        return target in self.ctx.memory.revived

    def _keep(self, health: Health | None) -> None:
        """Renew before a read that could outlast the lease; never for ``agent --once`` (health None: it
        previews as the running agent's session and must write nothing)."""
        if health is not None:
            self.session.keep_through(self.ctx.timings.ec2_timeout, health)

    def _read(self, action: str, call: Callable[[], T], meanwhile: str) -> T | None:
        """One EC2 read, booked (agent.cycle.standing); a failure is logged once, saying what we do meanwhile."""
        ctx = self.ctx
        key = f"ec2read:{action}"
        try:
            result = self.standing.booked(action, call)
        except Ec2Error as exc:
            ctx.error_once(key, f"{exc}; {meanwhile}")
            return None
        ctx.error_cleared(key)
        return result

    def _refresh_routes(self, now: float, snapshot: GroupSnapshot) -> bool:
        """Where EC2 routes our tables (one DescribeRouteTables; it lags our own writes); a route of a
        table we hold changed by someone else is a foreign change (agent.cycle.foreign). False: no answer."""
        ctx = self.ctx
        t = ctx.timings
        mem = ctx.memory
        homes = sorted(ctx.homes)
        read = self._read("DescribeRouteTables", lambda: ctx.ec2.routes(homes), "keeping the last known routes")
        if read is None:
            return False
        mem.routes_read_at = now
        for rt, view in read.items():
            h = mem.held.get(rt)
            # DescribeRouteTables lags writes: a read started soon after our own confirmed
            # write that still shows the old target says nothing about the table - unless a write
            # of ours to a peer is in doubt: sent before that write, it may have landed after it.
            lag = h is not None and now - h.last_write < t.ec2_consistency_window and view.target != ctx.me
            if lag and rt not in mem.handover_doubt and not self.revived(view.target):
                continue
            self.foreign.route(rt, mem.ec2.get(rt), view, now, snapshot)
            mem.ec2[rt] = view
        return True

    def _refresh_egress(self, now: float, snapshot: GroupSnapshot) -> None:
        """Where each table's Elastic IP sits (one DescribeAddresses; it lags associations like routes)."""
        ctx = self.ctx
        t = ctx.timings
        mem = ctx.memory
        if self.standing.quiet("DescribeAddresses", now):
            return
        read = self._read(
            "DescribeAddresses",
            lambda: ctx.ec2.egress_ips(sorted(ctx.egress_tables)),
            "keeping the last known Elastic IP associations",
        )
        if read is None:
            return
        mem.egress_read, mem.egress_read_at = read, now
        for rt, seen in read.items():
            h = mem.held.get(rt)
            lag = h is not None and now - h.last_address_write < t.ec2_consistency_window and seen.holder != ctx.me
            if lag and not self.revived(seen.holder):
                continue
            self.foreign.address(rt, mem.egress.get(rt), seen, now, snapshot)
            mem.egress[rt] = seen
