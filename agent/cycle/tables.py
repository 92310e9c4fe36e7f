"""Our writes to route tables: routes and (with ``egress_ip = "follow"``) Elastic IPs.

Every write goes through the agent's :class:`~agent.aws.fence.Fence` (the lease checked right
before the send, one write per check, a hard deadline on the whole call) inside one frame
(:meth:`TableWriter._table_write`): nothing is sent while we back off after throttling or while
the lease is shorter than a call's deadline; a failure is booked; a failed write pointing a table
we hold at a peer may still land, so EC2 is read again.

* a table is written blindly when it is taken (a DescribeRouteTables may be stale), and once more
  ``ec2_apply_horizon`` after it was taken, when no write of the previous holder can land any more
  (and again after a stray report);
* a route write whose reply was lost is retried, never concluded "not applied";
* a hand-over whose outcome is unknown keeps this session off the table in that term;
* the table's Elastic IP is associated with the holder's address for the table when it takes it
  (before or after the route: ``egress_order``), moved to the successor's address before a
  hand-over, associated again after the horizon and after a stray report. A failed association
  never holds a route back (the route is what keeps traffic flowing); only refusals of our own
  (access denied) count as failing writes, as for routes;
* a write of ours that left after its deadline (the process was frozen in between) is reported
  as a stray, so the holder writes the table again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from agent.aws.ec2 import Ec2Error, api_name
from agent.aws.fence import FenceRefused, Permit
from agent.cycle.context import Context
from agent.cycle.memory import Held
from agent.cycle.session import SessionKeeper
from agent.cycle.standing import Ec2Standing
from agent.decide import Ec2Address, Ec2Route, EnsureAddress, EnsureRoute, HandOver, Release, RouteToGateway, TakeOver
from coordinator.errors import CoordinatorError, StoreUnavailable
from coordinator.items import Health

log = logging.getLogger("nat_ha.agent")


class TableWriter:
    def __init__(self, ctx: Context, session: SessionKeeper, standing: Ec2Standing) -> None:
        self.ctx = ctx
        self.session = session
        self.standing = standing
        self._writing: tuple[str, int, str] | None = None  # the write in flight: (table, term, target)
        self._expired_now: set[str] = set()  # members whose session this cycle expired

    def begin_cycle(self) -> None:
        self._expired_now = set()

    # ------------------------------------------------------------ stray writes
    def on_overrun(self, permit: Permit) -> None:
        """A write of ours left after its deadline: the holder must write the table again."""
        ctx = self.ctx
        log.warning(
            "%s on %s left %.3f s after its deadline (this process was paused): it may land outside the lease",
            permit.operation,
            permit.resource,
            permit.sent_at - permit.deadline,
        )
        if self._writing is not None and permit.resource == self._writing[0]:
            ctx.memory.stray_reports.append(self._writing)
        ctx.on_event("late_write", {"operation": permit.operation, "resource": permit.resource})
        if ctx.metrics is not None:
            ctx.metrics.ec2_late_writes.inc()

    def send_stray_reports(self) -> None:
        """Write pending stray reports (they need no session; retried until the store takes them)."""
        pending = self.ctx.memory.stray_reports
        while pending:
            rt, term, target = pending[0]
            try:
                self.ctx.coordinator.report_stray(rt, term, target)
            except CoordinatorError as exc:
                self.ctx.error_once("store:stray", f"cannot report a late write to {rt} ({exc}); will retry")
                return
            pending.pop(0)

    # ------------------------------------------------------------ the frame
    @contextmanager
    def _table_write(self, operation: str, route_table: str, term: int, target: str, health: Health) -> Iterator[None]:
        """The frame of every write of ours to a table (route or Elastic IP), around the fenced call.

        Nothing is sent while we back off after throttling or while the lease is shorter than a
        call's deadline (renewed first). A failure is booked (refusals of our own make us hand
        tables over), and a failed write pointing the table at a peer may still land: EC2 is read
        again (:meth:`_recheck_after_unknown_write`).
        """
        clock = self.ctx.clock
        if self.standing.quiet(clock.monotonic()):
            raise Ec2Error(operation, "RequestLimitExceeded", "backing off after throttling")
        if not self.session.may_act(health):
            raise FenceRefused(api_name(operation), "the lease is too short; renewing first")
        self._writing = (route_table, term, target)
        try:
            yield
        except Ec2Error as exc:
            if target != self.ctx.me:
                self._recheck_after_unknown_write(route_table)
            self.standing.failed(exc, clock.monotonic(), write=True)
            raise
        finally:
            self._writing = None

    def _route_here(self, route_table: str, term: int, target: str, health: Health) -> str:
        """Tag (once per term) and write the route, each a fenced write; returns what was done."""
        ctx = self.ctx
        mem = ctx.memory
        with self._table_write("replace_route", route_table, term, target, health):
            h = mem.held.get(route_table)
            try:
                # IAM lets only the instance the table's tag names write its route, whatever the
                # target: the holder tags it first, once per term (a hand-over's giver too).
                if ctx.holder and h is not None and not h.tagged:
                    ctx.ec2.tag_holder(route_table, ctx.holder)
                    h.tagged = True
                current = mem.ec2.get(route_table)
                missing = current is not None and current.state == "missing"
                done = ctx.ec2.point_route(route_table, target, missing=missing)
            except Ec2Error as exc:
                if h is not None and exc.code == "UnauthorizedOperation":
                    h.tagged = False  # the holder tag may name someone else (a late tag write): tag again first
                raise
        self.standing.succeeded()
        mem.ec2[route_table] = Ec2Route(target, "active")
        if h is not None:
            h.last_write = ctx.clock.monotonic()
        ctx.error_cleared("ec2:")
        return done

    def _recheck_after_unknown_write(self, route_table: str) -> None:
        """A write pointing a table we hold at a peer failed; it may have landed, or still land.

        Read EC2 at the next cycle and again once the write can no longer land, rather than write
        blindly: if it landed, the table's route (or Elastic IP) is with the peer, and the holder
        either finishes the hand-over or takes both back (agent.decide).
        """
        t = self.ctx.timings
        mem = self.ctx.memory
        now = self.ctx.clock.monotonic()
        mem.ec2_rechecks += [now, now + t.ec2_apply_horizon + t.cycle_interval]
        mem.handover_doubt[route_table] = now

    # ------------------------------------------------------------ actions
    def take_over(self, a: TakeOver, health: Health) -> str:
        ctx = self.ctx
        mem = ctx.memory
        clock = ctx.clock
        started = mem.suspect_since.get(a.route.owner, clock.monotonic()) if a.route else None
        if a.expire is not None and a.expire.instance not in self._expired_now:
            ctx.coordinator.expire_member(a.expire)
            self._expired_now.add(a.expire.instance)  # one expiry per member, however many tables it held
            mem.dead_since.setdefault(a.expire.instance, clock.monotonic())
            ctx.on_event("peer_expired", {"peer": a.expire.instance})
        route = ctx.coordinator.claim_route(a.route_table, a.route, ctx.homes.get(a.route_table, ""))
        now = clock.monotonic()
        mem.held[a.route_table] = Held(route.term, now, now + ctx.timings.ec2_apply_horizon)
        mem.relinquished.pop(a.route_table, None)
        previous = a.route.owner if a.route else ""
        ctx.on_event("claimed", {"route_table": a.route_table, "term": route.term, "from": previous})
        ctx.flows.taking(a.route_table, previous)
        before = mem.ec2.get(a.route_table)
        done, note = self._move(a.route_table, route.term, ctx.me, health, "takeover", started)
        moved = before is None or before.target != ctx.me  # a claim of a table EC2 already routes here moves nothing
        if ctx.metrics is not None and moved:
            ctx.metrics.failovers.labels(a.route_table, "takeover", a.reason).inc()
            if started is not None:
                ctx.metrics.failover_duration.labels("takeover").observe(clock.monotonic() - started)
        ctx.on_event(
            "route_moved",
            {"route_table": a.route_table, "to": ctx.me, "done": done, "verified": True, "kind": "takeover"},
        )
        return note

    def ensure_route(self, a: EnsureRoute, health: Health) -> str:
        ctx = self.ctx
        mem = ctx.memory
        rt = a.route_table
        stray = ctx.last_snapshot.strays.get(rt) if ctx.last_snapshot else None
        done = self._route_here(rt, a.route.term, ctx.me, health)
        h = mem.held.get(rt)
        if h is not None:
            if stray is not None and stray.token not in mem.strays_handled:
                # The late write may still be in flight: write once more after the horizon.
                mem.strays_handled.add(stray.token)
                h.settled = False
                h.settle_at = ctx.clock.monotonic() + ctx.timings.ec2_apply_horizon
                if rt in ctx.egress_tables:  # the late write may have been an association
                    h.address_settled = False
                    h.address_due = f"{stray.writer} reported a late write (term {stray.term})"
            elif ctx.clock.monotonic() >= h.settle_at:
                h.settled = True
        ctx.on_event("route_moved", {"route_table": rt, "to": ctx.me, "done": done, "verified": True, "kind": "repair"})
        return ""

    def route_to_gateway(self, a: RouteToGateway, health: Health) -> str:
        """The last resort: the table's route to the NAT gateway, the lease kept (decide brings it back)."""
        ctx = self.ctx
        t0 = ctx.clock.monotonic()
        done = self._route_here(a.route_table, a.route.term, a.gateway, health)
        ctx.memory.ec2[a.route_table] = Ec2Route(f"other:{a.gateway}", "active")  # as DescribeRouteTables shows it
        if ctx.metrics is not None:
            ctx.metrics.failovers.labels(a.route_table, "last_resort", "no_nat").inc()
            ctx.metrics.failover_duration.labels("last_resort").observe(ctx.clock.monotonic() - t0)
        ctx.on_event(
            "route_moved",
            {"route_table": a.route_table, "to": a.gateway, "done": done, "verified": True, "kind": "last_resort"},
        )
        return ""

    def ensure_address(self, a: EnsureAddress, health: Health) -> str:
        ctx = self.ctx
        rt = a.route_table
        try:
            self._address_here(rt, a.route.term, ctx.me, health, "repair", ctx.clock.monotonic())
        except Ec2Error as exc:
            ctx.error_once(f"eip:{exc.code}", f"{exc}; will retry next cycle")
            return str(exc)
        h = ctx.memory.held.get(rt)
        if h is not None:
            h.address_due = ""
            if ctx.clock.monotonic() >= h.settle_at:
                h.address_settled = True
        return ""

    def _move(
        self, rt: str, term: int, target: str, health: Health, kind: str, started: float | None
    ) -> tuple[str, str]:
        """Route ``rt`` (and its Elastic IP, egress_ip = follow) to ``target`` in ``egress_order``.

        Returns what the route write did and a note when the association failed: it never holds
        the route back (address-first goes on to the route; route-first has routed already).
        """
        ctx = self.ctx
        if rt not in ctx.egress_tables:
            return self._route_here(rt, term, target, health), ""
        if target == ctx.me and self._fresh_at_me(rt):
            # Claimed where EC2 has just shown it with us (start-up, a claim of our own table):
            # no remap now; the settle association after the horizon is blind all the same.
            return self._route_here(rt, term, target, health), ""
        t0 = ctx.clock.monotonic() if started is None else started
        if ctx.config.egress_order == "address-first":
            note = self._try_address(rt, term, target, health, kind, t0)
            return self._route_here(rt, term, target, health), note
        done = self._route_here(rt, term, target, health)
        return done, self._try_address(rt, term, target, health, kind, t0)

    def _fresh_at_me(self, rt: str) -> bool:
        """A DescribeAddresses of the last two cycles showed ``rt``'s Elastic IP on our address for it.

        (A session starts in one cycle and claims in the next: the read of the first one counts.)
        """
        mem = self.ctx.memory
        seen = mem.egress_read.get(rt)
        age = self.ctx.clock.monotonic() - mem.egress_read_at
        return seen is not None and seen.holder == self.ctx.me and age <= 2 * self.ctx.timings.cycle_interval

    def _try_address(self, rt: str, term: int, target: str, health: Health, kind: str, started: float) -> str:
        try:
            self._address_here(rt, term, target, health, kind, started)
        except FenceRefused as exc:
            return f"{rt}'s Elastic IP not moved: {exc.reason}"
        except Ec2Error as exc:
            self.ctx.error_once(f"eip:{exc.code}", f"{exc}; will retry next cycle")
            return f"{rt}'s Elastic IP not moved: {exc}"
        return ""

    def _address_here(self, rt: str, term: int, target: str, health: Health, kind: str, started: float) -> None:
        """Associate ``rt``'s Elastic IP with ``target``'s address for it: one fenced write.

        Its failures back off on throttling like every EC2 call. A refusal of our own (access
        denied, our credentials) counts as a failing write, as a route write's does: a holder that
        may not associate its table's Elastic IP leaves the table without a public address, and
        a peer can serve it whole. Other failures (AWS's errors, timeouts) do not.
        """
        ctx = self.ctx
        mem = ctx.memory
        before = mem.egress.get(rt)
        with self._table_write("associate_address", rt, term, target, health):
            ctx.ec2.associate_address(rt, target)
        now = ctx.clock.monotonic()
        self.standing.association_succeeded()
        mem.egress[rt] = Ec2Address(target, before.public_ip if before is not None else "")
        h = mem.held.get(rt)
        if h is not None:
            h.last_address_write = now
        ctx.error_cleared("eip:")
        if before is None or before.holder != target:
            if ctx.metrics is not None:
                ctx.metrics.egress_moves.labels(rt, kind).inc()
                ctx.metrics.egress_move_duration.labels(kind).observe(max(0.0, now - started))
            ctx.on_event("egress_moved", {"route_table": rt, "to": target, "from": before.holder if before else "?"})

    def hand_over(self, a: HandOver, health: Health) -> str:
        ctx = self.ctx
        mem = ctx.memory
        t0 = ctx.clock.monotonic()
        done = "lease only"
        note = ""
        if a.write_route:
            # Planned: the successor gets the table's connection-tracking state before the route
            # moves (bounded; the hand-over is retried next cycle while it waits).
            waiting = ctx.flows.handover_wait(a.route_table, a.successor.instance, t0)
            if waiting:
                return waiting
            done, note = self._move(a.route_table, a.route.term, a.successor.instance, health, a.kind, t0)
        try:
            ctx.coordinator.hand_over_route(a.route, a.successor)
        except StoreUnavailable:
            # It may still land: this session stays off the table in this term (decide retries it).
            mem.relinquished[a.route_table] = a.route.term
            raise
        mem.held.pop(a.route_table, None)
        ctx.flows.released(a.route_table, a.successor.instance)
        if ctx.metrics is not None and a.reason != "retry":
            ctx.metrics.failovers.labels(a.route_table, a.kind, a.reason).inc()
            ctx.metrics.failover_duration.labels(a.kind).observe(ctx.clock.monotonic() - t0)
        ctx.on_event(
            "route_moved",
            {"route_table": a.route_table, "to": a.successor.instance, "done": done, "verified": True, "kind": a.kind},
        )
        return note

    def release(self, a: Release) -> str:
        mem = self.ctx.memory
        try:
            self.ctx.coordinator.release_route(a.route)
        except StoreUnavailable:
            mem.relinquished[a.route_table] = a.route.term  # it may still land
            raise
        mem.held.pop(a.route_table, None)
        return ""
