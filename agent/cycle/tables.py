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
* every write is confirmed against DynamoDB right before its send (we still own the table in
  the term, our session was not expired), in addition to the lease: by a consistent read then
  (``Coordinator.confirm``); a move's write (:meth:`TableWriter._moving`) by a
  renewal DynamoDB accepted within ``store_timeout_max`` with the table shown ours (our claim,
  a read), else by a renewal or a read made then (:meth:`TableWriter._confirm`);
* a write of ours that left after its deadline (the process was frozen in between), or across a
  pause our clock did not count, is reported as a stray, so the holder writes the table again; a
  write not acknowledged is in doubt until its deadline plus ``ec2_apply_horizon``: EC2 is read
  then, and what it shows repaired;
* the holder tags the table (and, egress_ip = follow, its Elastic IP) with its ARN before writing
  it, and again on every repair (EnsureRoute, EnsureAddress: the settle write after the horizon, a
  stray report, a read that shows it elsewhere), so a stale holder's late CreateTags cannot keep
  the table's AWS-side fence pointing at it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from agent.aws.ec2 import Ec2Error, api_name
from agent.aws.fence import Confirmed, FenceRefused, Permit
from agent.cycle.context import Context
from agent.cycle.memory import Held
from agent.cycle.session import SessionKeeper
from agent.cycle.standing import NO_ANSWER, NOT_APPLIED, ROUTE_WRITES, Ec2Standing, action_of
from agent.decide import Ec2Address, Ec2Route, EnsureAddress, EnsureRoute, HandOver, Release, RouteToGateway, TakeOver
from coordinator.errors import CoordinatorError, SessionLost, StoreUnavailable
from coordinator.items import Health, RouteItem

log = logging.getLogger("nat_ha.agent")

T = TypeVar("T")


class TableWriter:
    def __init__(self, ctx: Context, session: SessionKeeper, standing: Ec2Standing) -> None:
        self.ctx = ctx
        self.session = session
        self.standing = standing
        self._expired_now: set[str] = set()  # members whose session this cycle expired
        self._failover = False  # the writes in progress move a table to another NAT (see _moving)
        self._claimed: dict[str, RouteItem | CoordinatorError] = {}  # claimed ahead this cycle (claim_ahead)

    def begin_cycle(self) -> None:
        self._expired_now = set()
        self._claimed = {}

    def claim_ahead(self, takeovers: list[TakeOver], health: Health) -> None:
        """Claim every table of this cycle's takeovers before writing any of them.

        A move's writes are confirmed by a renewal DynamoDB accepted within ``store_timeout_max``
        (:meth:`_confirm`): claimed one by one, each table costs a claim and a renewal before its
        writes; claimed first, one renewal confirms the writes of them all. Where DynamoDB's round
        trips are slow (a member's own path), that is one round trip per table less. A claim that
        fails is the note of its own action (:meth:`take_over`).
        """
        for a in takeovers:
            if a.route_table in self._claimed:
                continue
            try:
                self._claimed[a.route_table] = self._claim(a, health)
            except (StoreUnavailable, SessionLost) as exc:
                self._claimed[a.route_table] = exc
                return  # the next claim would fare no better: each action tries its own
            except CoordinatorError as exc:
                self._claimed[a.route_table] = exc

    # ------------------------------------------------------------ stray writes
    def on_overrun(self, permit: Permit) -> None:
        """A write of ours left after its deadline (or maybe did, across a pause): the holder must write
        the table again."""
        ctx = self.ctx
        if permit.paused:
            log.warning(
                "%s on %s may have left across a pause of this host: it may land outside the lease",
                permit.operation,
                permit.resource,
            )
        else:
            log.warning(
                "%s on %s left %.3f s after its deadline (this process was paused): it may land outside the lease",
                permit.operation,
                permit.resource,
                permit.sent_at - permit.deadline,
            )
        note = permit.note
        if isinstance(note, tuple) and len(note) == 3:
            rt, term, target = note
            ctx.memory.stray_reports.append((str(rt), int(term), str(target)))
        ctx.on_event("late_write", {"operation": permit.operation, "resource": permit.resource})
        if ctx.metrics is not None:
            ctx.metrics.ec2_late_writes.inc()

    def on_doubt(self, permit: Permit) -> None:
        """A write of ours left but was not acknowledged: it may land until its deadline plus the horizon.

        Read EC2 then (the holder acts on what it shows, as after any write in doubt)."""
        mem = self.ctx.memory
        mem.ec2_rechecks.append(permit.deadline + self.ctx.timings.ec2_apply_horizon)

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
    def _table_write(
        self, operation: str, route_table: str, term: int, target: str, health: Health, *, actions: tuple[str, ...]
    ) -> Iterator[None]:
        """The frame of every write of ours to a table (route or Elastic IP), around the fenced call.

        Nothing is sent while we back off after AWS throttled one of ``actions`` (the EC2 actions
        the write will call; each has a bucket of its own) or while the lease is shorter than a
        call's deadline (renewed first). A failure is booked by whose it is (agent.cycle.standing:
        only failures of our own make us hand tables over), and a failed write pointing the table
        at a peer may still land: EC2 is read again (:meth:`_recheck_after_unknown_write`).
        """
        ctx = self.ctx
        clock = ctx.clock
        now = clock.monotonic()
        for action in actions:
            self.standing.hold_back(action, operation, now)
        if not self.session.may_act(health):
            raise FenceRefused(api_name(operation), "the lease is too short; renewing first", renewable=True)
        within = ctx.timings.store_timeout_max
        failover = self._failover

        def confirm(_operation: str) -> str | Confirmed:
            try:
                if not failover:
                    return ctx.coordinator.confirm(route=(route_table, term))
                return self._confirm(route_table, term, health, within)
            except StoreUnavailable:
                ctx.memory.unanswered(clock.monotonic())
                raise

        assert ctx.fence is not None
        try:
            with ctx.fence.frame(confirm=confirm, note=(route_table, term, target)):
                yield
        except Ec2Error as exc:
            if target != ctx.me:
                self._recheck_after_unknown_write(route_table)
            address = operation == "associate_address"
            held = ctx.memory.held.get(route_table)
            self.standing.failed(exc, clock.monotonic(), write=True, held=held, address=address)
            raise

    @contextmanager
    def _moving(self, yes: bool) -> Iterator[None]:
        """The writes inside move a table from one NAT to another (a takeover from a peer, a hand-over):
        the table has no working route, or its traffic no public address, until they land. They are
        confirmed by :meth:`_confirm`. Every other write (repairs, settles, a table resumed from our own
        instance's earlier session) is confirmed by a consistent read at its send, which also covers two
        agent processes of one instance racing (the lifetime lock and the wait for the earlier one's
        silence keep that from happening)."""
        before, self._failover = self._failover, yes
        try:
            yield
        finally:
            self._failover = before

    def _confirm(self, route_table: str, term: int, health: Health, within: float) -> str | Confirmed:
        """DynamoDB's confirmation of a move's write to ``route_table`` in ``term``, right before its send.

        An answer of the last ``within`` seconds (``store_timeout_max``: no older than a confirmation
        read's own answer may be) that showed our session alive, with DynamoDB having shown the table
        ours in that term (our claim, a read), confirms it without a new round trip
        (coordinator.leases.Evidence says why). Otherwise one round trip: a conditional renewal where
        DynamoDB showed the table ours (it confirms the session and keeps the lease), else a
        consistent read of the group (``Coordinator.confirm``).
        """
        coordinator = self.ctx.coordinator
        since = coordinator.confirmed(route_table, term, within)
        if since is None and coordinator.knows(route_table, term):
            self.session.renew(health)
            since = coordinator.confirmed(route_table, term, within)
        if since is not None:
            return Confirmed(since)
        return coordinator.confirm(route=(route_table, term))

    @contextmanager
    def _holder_tagged(
        self, h: Held | None, tag: Callable[[], None] | None, *, address: bool = False
    ) -> Iterator[None]:
        """Around a write of the table's route (``address``: its Elastic IP): IAM lets only the instance the
        holder tag names make it, so the holder tags it first - once per term, on every repair, a hand-over's
        giver too (``tag``; None: tagged already). A refusal may mean a late tag write named someone else:
        tag again before the next write - unless it came while IAM may still be catching up with our own
        tag write (agent.cycle.standing: tag propagation), when the write alone is retried shortly."""
        try:
            if tag is not None and h is not None:
                tag()
                now = self.ctx.clock.monotonic()
                self.standing.succeeded("CreateTags", now)
                h.mark_tagged(now, address=address)
            yield
        except Ec2Error as exc:
            now = self.ctx.clock.monotonic()
            refused = h is not None and exc.code == "UnauthorizedOperation"
            if refused and h is not None and not self.standing.propagating(h, now, address=address):
                h.untag(address=address)
            raise

    def _route_here(self, route_table: str, term: int, target: str, health: Health) -> str:
        """Tag (once per term) and write the route, each a fenced write; returns what was done."""
        ctx = self.ctx
        mem = ctx.memory
        h = mem.held.get(route_table)
        current = mem.ec2.get(route_table)
        missing = current is not None and current.state == "missing"
        tag = bool(ctx.holder) and h is not None and not h.tagged
        t0 = ctx.clock.monotonic()
        actions = ("CreateRoute" if missing else "ReplaceRoute",) + (("CreateTags",) if tag else ())
        try:
            with (
                self._table_write("replace_route", route_table, term, target, health, actions=actions),
                self._holder_tagged(h, (lambda: ctx.ec2.tag_holder(route_table, ctx.holder)) if tag else None),
            ):
                done = ctx.ec2.point_route(route_table, target, missing=missing)
        except Ec2Error as exc:
            if h is not None and action_of(exc.operation) in ROUTE_WRITES and exc.code not in NOT_APPLIED:
                h.reached = True  # sent and not refused: it may have landed, or may still land
            raise
        self.standing.succeeded("ReplaceRoute", ctx.clock.monotonic())
        log.debug("trace routed %s tag %s took %.4f", route_table, tag, ctx.clock.monotonic() - t0)
        mem.ec2[route_table] = Ec2Route(target, "active")
        if h is not None:
            h.reached = True
            h.last_write = ctx.clock.monotonic()
            h.first_tagged_at = -1e18  # written: a later tag write starts a new propagation excuse
            h.propagation_refusals = 0
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
    def claimed_ahead(self, action: object) -> bool:
        """``action`` is a takeover whose table :meth:`claim_ahead` claimed in this cycle."""
        return isinstance(action, TakeOver) and isinstance(self._claimed.get(action.route_table), RouteItem)

    def _claim(self, a: TakeOver, health: Health) -> RouteItem:
        """Expire the table's dead owner (once per member and cycle) and claim the table.

        Renewed first where the lease is down to a slow call's budget (``store_timeout_max``): a store call
        gets what is left of the lease minus a renewal's share (coordinator.leases.StoreBudget), and a claim
        late in the lease would give up on a member whose round trips are slow but answer."""
        ctx = self.ctx
        mem = ctx.memory
        clock = ctx.clock
        if a.expire is not None and a.expire.instance not in self._expired_now:
            self.session.keep_through(ctx.timings.store_timeout_max, health)
            t0 = clock.monotonic()
            ctx.coordinator.expire_member(a.expire)
            log.debug("trace expired %s rtt %.4f", a.expire.instance, clock.monotonic() - t0)
            self._expired_now.add(a.expire.instance)  # one expiry per member, however many tables it held
            mem.dead_since.setdefault(a.expire.instance, clock.monotonic())
            ctx.on_event("peer_expired", {"peer": a.expire.instance})
        self.session.keep_through(ctx.timings.store_timeout_max, health)
        t0 = clock.monotonic()
        route = ctx.coordinator.claim_route(a.route_table, a.route, ctx.homes.get(a.route_table, ""))
        now = clock.monotonic()
        log.debug("trace claimed %s rtt %.4f", a.route_table, now - t0)
        previous = a.route.owner if a.route else ""
        horizon = now + ctx.timings.ec2_apply_horizon
        mem.held[a.route_table] = Held(route.term, now, horizon, reached=False, taken_from=a.taken_from(ctx.me))
        mem.relinquished.pop(a.route_table, None)
        ctx.on_event("claimed", {"route_table": a.route_table, "term": route.term, "from": previous})
        ctx.flows.taking(a.route_table, previous)
        return route

    def take_over(self, a: TakeOver, health: Health) -> str:
        ctx = self.ctx
        mem = ctx.memory
        clock = ctx.clock
        started = mem.suspect_since.get(a.route.owner, clock.monotonic()) if a.route else None
        claimed = self._claimed.pop(a.route_table, None)
        if isinstance(claimed, CoordinatorError):
            raise claimed
        route = claimed if claimed is not None else self._claim(a, health)
        previous = a.route.owner if a.route else ""
        if not a.write_route:  # paused: the lease only; the route is written when the pause ends
            return ""
        before = mem.ec2.get(a.route_table)
        with self._moving(bool(a.taken_from(ctx.me))):
            done, note = self._move(a.route_table, route.term, ctx.me, health, "takeover", started)
        moved = before is None or before.target != ctx.me  # a claim of a table EC2 already routes here moves nothing
        if ctx.metrics is not None and moved:
            ctx.metrics.failovers.labels(a.route_table, "takeover", a.reason).inc()
            if started is not None:
                ctx.metrics.failover_duration.labels("takeover").observe(clock.monotonic() - started)
        ctx.on_event(
            "route_moved",
            {
                "route_table": a.route_table,
                "to": ctx.me,
                "done": done,
                "verified": True,
                "kind": "takeover",
                "from": previous,
                "why": a.why,
                "seconds": clock.monotonic() - started if started is not None else None,
                "moved": moved,
            },
        )
        return note

    def ensure_route(self, a: EnsureRoute, health: Health) -> str:
        ctx = self.ctx
        mem = ctx.memory
        rt = a.route_table
        stray = ctx.last_snapshot.strays.get(rt) if ctx.last_snapshot else None
        h = mem.held.get(rt)
        fresh_stray = stray is not None and stray.token not in mem.strays_handled
        if h is not None and (fresh_stray or not self.standing.propagating(h, ctx.clock.monotonic())):
            # A repair tags again: a stale holder's late CreateTags may have landed. Not while our own
            # tag write is still reaching IAM and nobody reported a late write: that retry is the
            # write alone (a new tag write would not reach IAM sooner).
            h.tagged = False
        # The takeover's own write not landed yet (IAM refused it during tag propagation, it failed), or
        # the first write of a table a peer handed us lease-first: it moves the table here, and is
        # confirmed as a move's write is.
        with self._moving(self._move_pending(h, a.route.term, a.again, address=False)):
            done = self._route_here(rt, a.route.term, ctx.me, health)
        if h is not None:
            if fresh_stray and stray is not None:
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

    @staticmethod
    def _move_pending(h: Held | None, term: int, again: bool, *, address: bool) -> bool:
        """A write to a held table (its route, ``address``: its Elastic IP) still moves it here from a peer.

        Our takeover's own write that has not landed (refused during tag propagation, failed), or the first
        write of a table a peer handed us (``Held.taken_from``) when the giver did not make it (a lease-first
        hand-over: a giver whose own path loses packets or whose EC2 writes fail, agent.decide): until it
        lands the table has no working route, or its traffic no public address, as in a takeover (sim
        seed 8244: each such write waited for a consistent read over a slow DynamoDB path). The Elastic IP
        of a table taken from a peer, until our first association in the term lands, whatever became of
        the route: until then the table's traffic leaves without its public address (sim seed 6041: a
        takeover whose route writes IAM refused at first, each association and its holder tag later
        waited for a consistent read of their own over a slow DynamoDB path). Not a write made again (a
        settle, a stray report): that repairs, it does not move."""
        if h is None or not h.taken_from or h.term != term:
            return False
        if not h.reached:
            return True
        first = h.last_address_write if address else h.last_write
        return (h.handed or address) and first < -1e17 and not again

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
            {
                "route_table": a.route_table,
                "to": a.gateway,
                "done": done,
                "verified": True,
                "kind": "last_resort",
                "from": ctx.me,
                "why": a.why,
                "seconds": ctx.clock.monotonic() - t0,
            },
        )
        return ""

    def ensure_address(self, a: EnsureAddress, health: Health) -> str:
        ctx = self.ctx
        rt = a.route_table
        held = ctx.memory.held.get(rt)
        if held is not None and (a.again or not self.standing.propagating(held, ctx.clock.monotonic(), address=True)):
            held.address_tagged = False  # a repair tags the Elastic IP again, as a route repair tags the table
        try:
            with self._moving(self._move_pending(held, a.route.term, a.again, address=True)):
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
            try:
                return self._once_more(lambda: self._route_here(rt, term, target, health)), note
            except Ec2Error as exc:
                if note or exc.code not in NO_ANSWER:
                    raise
                # Half moved: the Elastic IP is with ``target``, the route's answer was lost on the way (a
                # lossy path). Written once more now, before the cycle goes on to other tables: until it
                # lands the table's traffic leaves without its public address (sim seed 3263: the rest of
                # a long takeover cycle, and a decision after it, came first - 3 s).
                return self._route_here(rt, term, target, health), note
        done = self._once_more(lambda: self._route_here(rt, term, target, health))
        return done, self._try_address(rt, term, target, health, kind, t0)

    @staticmethod
    def _once_more(write: Callable[[], T]) -> T:
        """One write of a move, armed once more at once if it was not sent for want of DynamoDB's word.

        The lease was short and the renewal before the write went unanswered, or its confirmation did
        (``FenceRefused.renewable``): over a lossy path a round trip is lost now and then, and the next
        one gets through. Left to the next cycle, the move stays half done - the Elastic IP on one NAT,
        the route on another: the table's traffic without its public address - for the rest of this
        cycle, which on that path is seconds of other tables' moves (sim seed 1540: two tables of a
        takeover so, one each way, 4 s, when their old NAT came back). The second try renews first
        where the lease is short (``SessionKeeper.may_act``); once is enough: a path that loses both
        is one a lossy holder hands tables over for (agent.decide._plan_half_moved).
        """
        try:
            return write()
        except FenceRefused as exc:
            if not exc.renewable:
                raise
        return write()

    def _fresh_at_me(self, rt: str) -> bool:
        """A DescribeAddresses of the last two cycles showed ``rt``'s Elastic IP on our address for it.

        (A session starts in one cycle and claims in the next: the read of the first one counts.)
        """
        mem = self.ctx.memory
        seen = mem.egress_read.get(rt)
        age = self.ctx.clock.monotonic() - mem.egress_read_at
        return seen is not None and seen.holder == self.ctx.me and age <= 2 * self.ctx.timings.cycle_interval

    def _try_address(self, rt: str, term: int, target: str, health: Health, kind: str, started: float) -> str:
        """A move's association (:meth:`_once_more`); a note when it failed: it never holds the route back."""
        try:
            self._once_more(lambda: self._address_here(rt, term, target, health, kind, started))
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
        h = mem.held.get(rt)
        tag = bool(ctx.holder) and h is not None and not h.address_tagged
        actions = ("AssociateAddress",) + (("CreateTags",) if tag else ())
        try:
            with (
                self._table_write("associate_address", rt, term, target, health, actions=actions),
                self._holder_tagged(
                    h, (lambda: ctx.ec2.tag_address_holder(rt, ctx.holder)) if tag else None, address=True
                ),
            ):
                ctx.ec2.associate_address(rt, target)
        except Ec2Error as exc:
            if h is not None and action_of(exc.operation) == "AssociateAddress" and exc.code not in NOT_APPLIED:
                h.reached = True  # sent and not refused: it may have landed, or may still land
            raise
        now = ctx.clock.monotonic()
        self.standing.succeeded("AssociateAddress", now)
        mem.egress[rt] = Ec2Address(target, before.public_ip if before is not None else "")
        h = mem.held.get(rt)
        if h is not None:
            h.reached = True
            h.last_address_write = now
            h.address_first_tagged_at = -1e18  # associated: a later tag write starts a new propagation excuse
            h.address_propagation_refusals = 0
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
            with self._moving(True):
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
            {
                "route_table": a.route_table,
                "to": a.successor.instance,
                "done": done,
                "verified": True,
                "kind": a.kind,
                "from": ctx.me,
                "why": a.why,
                "seconds": ctx.clock.monotonic() - t0,
                "moved": a.reason != "retry",
            },
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
