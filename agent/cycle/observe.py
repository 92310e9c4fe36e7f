"""From a consistent read of the group, the probes and our health to the decision's input.

Keeps the agent's first-seen times (expiry by observation, never by stored timestamps), which
tables this session holds since when (a new holder writes again after the horizon), and when a
failing peer's session can next be expired (the daemon wakes for it).
"""

from __future__ import annotations

import dataclasses

from agent.cycle.context import Context
from agent.cycle.memory import Held
from agent.cycle.session import Plan
from agent.cycle.standing import dated_no_earlier
from agent.decide import (
    Ec2Address,
    Observation,
    PeerProbe,
    claimable_routes,
    judged_dead,
    judged_healthy,
    silence_tolerated,
)
from coordinator.items import MEMBER_ALIVE, GroupSnapshot, Health, RouteItem


class Observer:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def track_holdings(self, snapshot: GroupSnapshot, now: float, previous: GroupSnapshot | None = None) -> None:
        """Which tables this session holds, since when: a new term is written again after the horizon.

        ``previous``: our read before this one. A table it showed held by a peer that is ours now was
        handed to us by that peer (``Held.taken_from``): if the giver did not move it (a lease-first
        hand-over), our writes are the move (agent.cycle.tables)."""
        ctx = self.ctx
        mem = ctx.memory
        session = ctx.coordinator.session
        t = ctx.timings
        mine: dict[str, RouteItem] = {}
        if session is not None:
            mine = {
                rt: r
                for rt, r in snapshot.routes.items()
                if rt in ctx.homes and r.owner == ctx.me and r.owner_session == session.session
            }
        for rt in list(mem.held):
            if rt not in mine or mine[rt].term != mem.held[rt].term:
                del mem.held[rt]
        for rt, r in mine.items():
            if rt not in mem.held:
                # Written again once no write of an earlier term (or of this session's earlier
                # process) can land any more.
                settle_at = max(now + t.ec2_apply_horizon, mem.predecessor_writes_until)
                before = previous.routes.get(rt) if previous is not None else None
                giver = before.owner if before is not None and before.owner != ctx.me else ""
                mem.held[rt] = Held(r.term, now, settle_at, handed=True, taken_from=giver)
                if rt in ctx.egress_tables:
                    # Handed to us: the giver moved the Elastic IP here before the lease (make before
                    # break), as far as we know: an association costs a remap, a route write nothing.
                    # But a hand-over may come lease-first (a giver whose EC2 writes fail, one whose
                    # association failed): EC2 is read at once, and what it shows counts - no own write
                    # of ours to discount it as lag (sim seed 8812: the Elastic IP stayed with the
                    # table's previous NAT 3 s after the taker routed the table here).
                    seen = mem.egress.get(rt)
                    mem.egress[rt] = Ec2Address(ctx.me, seen.public_ip if seen is not None else "")
                    mem.ec2_rechecks.append(now)
                stray = snapshot.strays.get(rt)
                if stray is not None:
                    mem.strays_handled.add(stray.token)  # our first write and the settle cover it
        for rt, term in list(mem.relinquished.items()):
            route = snapshot.routes.get(rt)
            if route is None or route.term != term:
                del mem.relinquished[rt]  # the hand-over landed, or we took the table back

    def _reasserts(self, snapshot: GroupSnapshot, now: float) -> dict[str, str]:
        """Held tables whose route must be written again now, and why."""
        out: dict[str, str] = {}
        mem = self.ctx.memory
        for rt, h in mem.held.items():
            stray = snapshot.strays.get(rt)
            if stray is not None and stray.token not in mem.strays_handled:
                out[rt] = (
                    f"{stray.writer} reported a late write (term {stray.term}) that may point it at {stray.target}"
                )
            elif not h.settled and now >= h.settle_at:
                horizon = self.ctx.timings.ec2_apply_horizon
                out[rt] = f"writes of earlier terms can no longer land ({horizon:.1f} s after taking it)"
        return out

    def _address_reasserts(self, snapshot: GroupSnapshot, now: float) -> dict[str, str]:
        """Held tables whose Elastic IP must be associated again now, and why (egress_ip = follow)."""
        out: dict[str, str] = {}
        mem = self.ctx.memory
        for rt, h in mem.held.items():
            if rt not in self.ctx.egress_tables:
                continue
            stray = snapshot.strays.get(rt)
            if stray is not None and stray.token not in mem.strays_handled:
                out[rt] = f"{stray.writer} reported a late write (term {stray.term})"
            elif h.address_due:
                out[rt] = h.address_due
            elif not h.address_settled and now >= h.settle_at:
                horizon = self.ctx.timings.ec2_apply_horizon
                out[rt] = f"associations of earlier terms can no longer land ({horizon:.1f} s after taking it)"
        return out

    def handovers_in_doubt(self, now: float) -> frozenset[str]:
        """Held tables whose write to a successor failed lately (until the second EC2 read after it)."""
        t = self.ctx.timings
        mem = self.ctx.memory
        keep = t.ec2_apply_horizon + 3 * t.cycle_interval
        doubt = mem.handover_doubt
        for rt in [rt for rt, at in doubt.items() if now - at > keep or rt not in mem.held]:
            del doubt[rt]
        return frozenset(doubt)

    def unrouted(self, now: float) -> frozenset[str]:
        """Held tables we claimed whose every write since (route, Elastic IP) was never sent, throttled or
        refused (once no write of an earlier process of this session can land either), and that EC2 routes to
        their home as far as we know: our last read shows it there (or shows no route at all), or no read of
        ours has been answered since we claimed it (an outage: our view is older than the claim, it may well
        still be there). A read that failed says nothing: a restarted taker that never got one through, its
        view empty, took its attempts for a view and moved a healthy home's tables (sim seed 5910)."""
        mem = self.ctx.memory
        if now < mem.predecessor_writes_until:
            return frozenset()
        homes = self.ctx.homes
        out = set()
        for rt, h in mem.held.items():
            seen = mem.ec2.get(rt)
            at_home = seen is not None and seen.state == "active" and seen.target == homes.get(rt)
            # A read showing no default route says nothing against the home (DescribeRouteTables may
            # miss one that exists, sim seed 379): the home creates it as well as we would.
            missing = seen is not None and seen.state == "missing"
            if not h.reached and (at_home or missing or mem.routes_read_at < h.acquired_at):
                out.add(rt)
        return frozenset(out)

    def _store_measured_after(self, snapshot: GroupSnapshot) -> dict[str, float]:
        """Peer -> the earliest (our clock) its heartbeat's round-trip figure can have been measured: its
        newest renewal ended ``store_rtt_age`` before the heartbeat was written (agent.cycle.standing.
        dated_no_earlier). Absent where the heartbeat does not date it or we cannot bound its writing."""
        ctx = self.ctx
        out: dict[str, float] = {}
        for m in snapshot.members.values():
            age = m.health.store_rtt_age
            written_after = ctx.memory.observer.written_after(m.key)
            if m.instance != ctx.me and age is not None and written_after is not None:
                out[m.instance] = dated_no_earlier(written_after, age, ctx.timings)
        return out

    def observe(
        self, snapshot: GroupSnapshot, now: float, probes: dict[str, PeerProbe], health: Health, draining: bool
    ) -> Observation:
        ctx = self.ctx
        mem = ctx.memory
        present = set()
        for m in snapshot.members.values():
            mem.observer.observe(m.key, (m.session, m.version), now)
            present.add(m.key)
        for x in snapshot.restarts.values():
            mem.observer.observe(x.key, (x.owner_session, x.version), now)
            present.add(x.key)
        mem.observer.forget_missing(present)
        session = ctx.coordinator.session
        pins = {rt: to for rt, to in snapshot.pins().items() if rt in ctx.homes and to in ctx.members}
        for rt in list(mem.pins_since):
            if mem.pins_since[rt][0] != pins.get(rt):
                del mem.pins_since[rt]
        for rt, to in pins.items():
            mem.pins_since.setdefault(rt, (to, now))
        obs = Observation(
            now=now,
            me=ctx.me,
            members=ctx.members,
            homes=ctx.homes,
            snapshot=snapshot,
            heartbeat_age={m.instance: mem.observer.unchanged_for(m.key, now) for m in snapshot.members.values()},
            restart_age={x.target: mem.observer.unchanged_for(x.key, now) for x in snapshot.restarts.values()},
            probes=probes,
            health=health,
            session=session.session if session is not None else "",
            session_remaining=ctx.coordinator.remaining(),
            ec2=dict(mem.ec2),
            instance_states=dict(mem.instance_states),
            draining=draining,
            pins=pins,
            pins_since={rt: since for rt, (_, since) in mem.pins_since.items()},
            reassert=self._reasserts(snapshot, now),
            relinquished=dict(mem.relinquished),
            egress_tables=ctx.egress_tables,
            egress=dict(mem.egress),
            reassert_address=self._address_reasserts(snapshot, now),
            handovers_in_doubt=self.handovers_in_doubt(now),
            unrouted=self.unrouted(now),
            last_resort=ctx.config.ec2.last_resort_nat_gateway,
            paused=dict(mem.paused),
            group_paused=mem.group_paused,
            aws_answered_for=now - mem.aws_unanswered_at,
            store_rtt=max(mem.renewal_rtts, default=0.0),
            store_slow_since=mem.store_slow_since,
            store_measured_after=self._store_measured_after(snapshot),
            routes_unread=mem.routes_read_at < mem.session_started_at,
            handed_unread=frozenset(
                rt for rt, h in mem.held.items() if h.handed and mem.egress_read_at < h.acquired_at
            ),
        )
        self._track_peers(obs, snapshot, now, probes)
        if health.healthy:
            if mem.self_healthy_since is None:
                mem.self_healthy_since = now
            mem.self_unhealthy_since = None
        else:
            mem.self_healthy_since = None
            if mem.self_unhealthy_since is None:
                mem.self_unhealthy_since = now
        claimable = claimable_routes(obs, ctx.timings)
        for rt in list(mem.claimable_since):
            if rt not in claimable:
                del mem.claimable_since[rt]
        for rt in claimable:
            mem.claimable_since.setdefault(rt, now)
        return dataclasses.replace(
            obs,
            healthy_since=dict(mem.healthy_since),
            claimable_since=dict(mem.claimable_since),
            self_healthy_since=mem.self_healthy_since,
            self_unhealthy_since=mem.self_unhealthy_since,
        )

    def reread_at(self, snapshot: GroupSnapshot, cycle_start: float, seen: float, plan: Plan | None) -> float | None:
        """When to read the group once more: a live peer's renewal due at this grid instant is not in this read.

        Every member renews at the group's renewal instants and reads right after its own renewal, but a
        peer's renewal that lands after our read was served (it woke a little later, its round trip was
        longer) was sighted only at the next cycle, a whole ``cycle_interval`` later - and a dead peer's
        expiry counts from that sighting, so a crash's takeover came that much later in about half the
        lab's trials (bench/failover.py --trace). A renewal sent on time lands within its call deadline
        (``store_timeout``) or failed: one more read then sees it. Safety is unchanged (expiry still
        counts from a read that returned after the renewal was sent); the cost is one Query when a peer's
        renewal was missed, which is also while a peer is dead (until its expiry).
        """
        if plan is None or not plan.renewal_slot:
            return None
        ctx = self.ctx
        t = ctx.timings
        at = cycle_start + t.store_timeout
        if at <= seen:
            return None  # this read was served late enough already
        for peer in ctx.members:
            item = snapshot.members.get(peer)
            if peer == ctx.me or item is None or item.state != MEMBER_ALIVE:
                continue
            if ctx.memory.observer.unchanged_for(item.key, seen) >= t.cycle_interval / 2:
                return at  # its renewal of this instant is not in this read
        return None

    def sight(self, snapshot: GroupSnapshot, seen: float) -> None:
        """A read between cycles (:meth:`reread_at`): only the first-seen times of what changed move."""
        mem = self.ctx.memory
        for m in snapshot.members.values():
            mem.observer.observe(m.key, (m.session, m.version), seen)
        for x in snapshot.restarts.values():
            mem.observer.observe(x.key, (x.owner_session, x.version), seen)

    def _track_peers(self, obs: Observation, snapshot: GroupSnapshot, now: float, probes: dict[str, PeerProbe]) -> None:
        """Since when each peer is suspect, dead or healthy, and when a failing one can be expired."""
        ctx = self.ctx
        mem = ctx.memory
        t = ctx.timings
        mem.stale_deadlines.clear()
        for peer in ctx.members:
            if peer == ctx.me:
                continue
            p = probes.get(peer)
            peer_item = snapshot.members.get(peer)
            if peer_item is not None and peer_item.state == "alive":
                # The moment its session may be expired is known (probes failing: lease + margin;
                # answering: silent_owner_after); the daemon wakes for it instead of waiting for
                # the next regular cycle.
                silent = mem.observer.unchanged_for(peer_item.key, now)
                lease = peer_item.lease_ms / 1000
                probes_down = p is not None and not p.up
                left = (lease + t.margin if probes_down else silence_tolerated(peer_item, t)) - silent
                if left > 0 and (probes_down or silent >= lease):
                    mem.stale_deadlines[peer] = now + left
            suspect = (
                (p is not None and not p.up)
                or peer_item is None
                or mem.observer.unchanged_for(peer_item.key, now) >= peer_item.lease_ms / 1000 + t.margin
            )
            if suspect:
                mem.suspect_since.setdefault(peer, now)
            else:
                mem.suspect_since.pop(peer, None)
            if judged_dead(obs, t, peer):
                mem.dead_since.setdefault(peer, now)
            if judged_healthy(obs, t, peer):
                mem.healthy_since.setdefault(peer, now)
                since = mem.dead_since.pop(peer, None)
                if since is not None:
                    ctx.on_event("peer_recovered", {"peer": peer, "seconds": now - since})
                    if ctx.metrics is not None:
                        ctx.metrics.recovery_duration.observe(now - since)
            else:
                mem.healthy_since.pop(peer, None)
