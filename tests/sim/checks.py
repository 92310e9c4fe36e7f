"""The invariants, checked at every step of a simulated run, and the figures measured along the way.

(a) Exactly one writer per term, and no EC2 write outside its writer's authority:
    every EC2 write is authorized (the fence's check) by the process that holds the
    route item (owner and session) - or the restart item, for stop/start and a tag on a
    peer; its own session for a tag on itself - while its session is valid, on its own
    clock **and in true time** (a clock stopped by a VM pause does not extend a session);
    a term has one writer; a write whose bytes reached AWS after its writer's lease (a
    freeze between the check and the send, the kernel's send queue, retransmissions, a VM
    that held the bytes) and that AWS applied must have been reported by its writer
    (the fence's late_write or a stray report) within 1 s. A write that lands after a
    write of a newer term is a *stray*: it must be overwritten by the newest term within
    1 s of its **landing**.
(b) Liveness during faults: while a member could serve (it forwards, its agent runs
    unfrozen, it reaches AWS - whatever its session) and AWS itself works, no route table
    points at a NAT that does not forward for more than 3 s (more when a member runs a
    slower timing: 3 s + the larger of its lease + margin - 1.1 s and its
    silent_owner_after - 2 s). Every such interval is measured. The clock stops while
    AWS refuses the account the writes a takeover needs (their token buckets are dry),
    and while IAM does not yet see the holder tag the table's holder wrote (EC2 applied
    it: tag propagation, AWS's delay - no write of the holder's can go through before it,
    and no agent can make IAM see a tag sooner); each is reported on its own. While every
    member that could take the table has a slow DynamoDB path, the limit grows by the
    takeover's chain of round trips (``slow_store_allowance``), reported on its own too.
(c) Per fault, a table moves at most once plus one fail-back; a healthy NAT's home
    table never moves away from it unless an operator asked - healthy for 5 s: it forwards,
    its agent runs, its own AWS path answers (DynamoDB within 300 ms), whatever its session.
(d) No NAT that answered probes, or heartbeated, within its lease before a stop was sent is
    stopped (EC2 has no conditional stop: no race before the send is excused); one that came
    back only after the send (no agent can see it in time) is counted apart. Restarts never
    exceed the cap.
    The last-resort NAT gateway forwards; a table routed to it while a healthy member could
    serve the table must come back within 3 s of counted time.
(e) Egress follows the table (egress_ip = follow): while a table's route points at a NAT that
    forwards, the table's Elastic IP sits on that NAT's address for the table, or is moved there
    within 3 s (counted as (b)'s clock is: not while AWS refuses the account the takeover's
    writes); an association that lands after one of a newer term is a stray, overwritten within
    1 s of its landing as in (a); a healthy NAT's home table keeps its Elastic IP; an Elastic IP
    moves at most twice per fault. Every mismatch is measured.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.aws.ec2 import HOLDER_TAG
from agent.config import Timing
from tests.sim.aws import Call, arn

if TYPE_CHECKING:
    from tests.sim.world import World

OUTAGE_LIMIT = 3.0
LAST_RESORT_LIMIT = OUTAGE_LIMIT  # (b): back from the NAT gateway within this once a member can serve
EGRESS_LIMIT = 3.0  # (e): a table's traffic leaves a forwarding NAT without its own Elastic IP at most this long
STRAY_CORRECTION_LIMIT = 1.0
NORMAL_STORE_RTT = 0.012  # a DynamoDB round trip on a normal path (the simulator's longest: STORE_LATENCY)
TIMING_DEFAULT = Timing()  # the bound of 3 s is stated for it
HEALTHY_WINDOW = 5.0  # (c): a home table may not move while its home has been healthy this long


@dataclass
class Stray:
    table: str
    term: int
    target: str
    landed: float
    bound: float
    newest_term: int
    corrected: float = -1.0
    kind: str = "route"  # route | address (an Elastic IP association)


@dataclass
class LateArrival:
    """A write whose bytes reached AWS after its writer's lease."""

    call: Call
    arrived: float
    applied: bool = False
    reported: bool = False
    judged: bool = False


@dataclass
class Outage:
    table: str
    target: str
    started: float
    counted: float = 0.0  # seconds during which a healthy member existed
    taker: str = ""  # a member that took the table but could not act: the clock restarted then
    slow_store: float = 0.0  # the limit's allowance while every member that could take it had a slow DynamoDB path


@dataclass
class Mismatch:
    """(e): a table routed to a forwarding NAT whose address for the table does not hold its Elastic IP."""

    table: str
    target: str  # where the route points
    started: float
    counted: float = 0.0
    owner: str = ""  # a lease holder that could not act: the clock restarted then


@dataclass
class Checker:
    w: World
    violations: list[str] = field(default_factory=list)
    by_invariant: Counter[str] = field(default_factory=Counter)
    term_writers: dict[tuple[str, int], set[tuple[str, str]]] = field(default_factory=dict)
    newest_term: dict[str, int] = field(default_factory=dict)  # table -> newest term whose write landed
    newest_target: dict[str, str] = field(default_factory=dict)  # table -> where that term's last write points
    strays: list[Stray] = field(default_factory=list)
    outages: dict[str, Outage] = field(default_factory=dict)
    outage_samples: list[float] = field(default_factory=list)
    route_changes: Counter[str] = field(default_factory=Counter)
    address_changes: Counter[str] = field(default_factory=Counter)
    stray_changes: Counter[str] = field(default_factory=Counter)  # route/EIP changes by strays and their fixes
    newest_addr_term: dict[str, int] = field(default_factory=dict)  # table -> newest term whose association landed
    newest_addr_target: dict[str, str] = field(default_factory=dict)
    mismatches: dict[str, Mismatch] = field(default_factory=dict)
    mismatch_samples: list[float] = field(default_factory=list)
    mismatch_throttled: float = 0.0  # seconds of mismatch not counted: AWS throttled the account's writes
    outage_throttled: float = 0.0  # seconds of (b) outage not counted: the same
    # Seconds not counted because IAM did not yet see the holder tag the table's holder wrote (tag propagation).
    mismatch_tag_propagation: float = 0.0
    outage_tag_propagation: float = 0.0
    outage_slow_store_seconds: float = 0.0  # (b) limits grown by slow_store_allowance, summed
    slow_store_outage_samples: list[float] = field(default_factory=list)  # the outages whose limit grew so
    on_gateway: dict[str, float] = field(default_factory=dict)  # table -> seconds counted on the NAT gateway now
    gateway_samples: list[float] = field(default_factory=list)  # every stay on the NAT gateway (all of it)
    gateway_since: dict[str, float] = field(default_factory=dict)
    stops: int = 0
    starts: int = 0
    healthy_nat_stops: int = 0
    stops_after_send_recovery: int = 0  # stops sent to a silent NAT that came back before they landed
    healthy_home_moves: int = 0
    late_sends: int = 0
    late_arrivals: list[LateArrival] = field(default_factory=list)
    reports: list[tuple[str, str, float]] = field(default_factory=list)  # (writer, resource, when)
    iam_refusals: int = 0
    stops_since_healthy: Counter[str] = field(default_factory=Counter)
    healthy_since: dict[str, float] = field(default_factory=dict)  # member -> continuously healthy since
    healthy: dict[str, bool] = field(default_factory=dict)  # member -> could serve, as of the last sample
    max_cycle: float = 0.0

    def violation(self, what: str, invariant: str) -> None:
        """Record a broken invariant: ``invariant`` is a, b, c or d (the module docstring)."""
        self.violations.append(f"t={self.w.k.now:.3f}: ({invariant}) {what}")
        self.by_invariant[invariant] += 1
        self.w.log(f"!!! VIOLATION ({invariant}) {what}")

    # ------------------------------------------------------------- (a) writes
    def authorized(self, call: Call) -> None:
        """The fence checked the lease; the caller must hold what it writes, in a valid session."""
        w = self.w
        if not w.is_main_process(call.process):
            self.violation(f"{call.process} (nat-ha agent --once) sent {call.op} {call.params}", "a")
            return
        resource = str((call.params.get("Resources") or [""])[0])
        if call.op in ("StopInstances", "StartInstances") or (resource.startswith("i-") and resource != call.caller):
            target = resource if resource.startswith("i-") else call.params["InstanceIds"][0]
            item = w.store.raw_get(w.group, "restart#" + target) or {}
            holder = (str(item.get("owner", "")), str(item.get("owner_session", "")))
        elif resource == call.caller:  # a tag on its own instance: its own session authorizes it
            holder = (call.caller, call.session)
        else:
            if call.op == "AssociateAddress":  # the table whose Elastic IP it is: its lease authorizes it
                table = w.alloc_table[call.params["AllocationId"]]
            elif resource.startswith("eipalloc-"):  # the holder tag on a table's Elastic IP: the same lease
                table = w.alloc_table.get(resource, resource)
            else:
                table = call.params.get("RouteTableId") or resource
            item = w.store.raw_get(w.group, "route#" + table) or {}
            holder = (str(item.get("owner", "")), str(item.get("owner_session", "")))
            term = int(item.get("term", 0))
            call.info.update(table=table, term=term)
            if call.op not in ("CreateTags", "DeleteTags"):
                writers = self.term_writers.setdefault((table, term), set())
                writers.add((call.caller, call.session))
                if len(writers) > 1:
                    named = sorted(f"{who} ({w.sname(session)})" for who, session in writers)
                    self.violation(f"{table} written by {', '.join(named)} in one term {term}", "a")
        if holder != (call.caller, call.session):
            self.violation(
                f"{call.caller} ({w.sname(call.session)}) authorized {call.op} {call.params} but the holder is "
                f"{holder[0] or 'nobody'} ({w.sname(holder[1])})",
                "a",
            )
        left = w.session_left(call.caller, call.session)
        true_left = w.session_true_left(call.caller, call.session)
        call.info["lease_end"] = w.k.now + min(left / w.clocks[call.caller].rate, true_left)
        if left <= 0:
            self.violation(f"{call.caller} authorized {call.op} after its session {w.sname(call.session)} ran out", "a")
        elif true_left <= 0:
            self.violation(
                f"{call.caller} authorized {call.op} {-true_left:.3f} s after its session {w.sname(call.session)} ran "
                f"out in true time (its own clock says {left:.3f} s left: it missed a pause)",
                "a",
            )

    def arrived(self, call: Call) -> None:
        """A write reached AWS: after its writer's lease it must be reported if AWS applies it."""
        w = self.w
        if w.k.now <= call.info.get("lease_end", float("inf")):
            return
        self.late_sends += 1
        self.late_arrivals.append(LateArrival(call, w.k.now))
        lease_end = call.info.get("lease_end", 0.0)
        w.log(
            f"{call.process}: {call.op} reached AWS {w.k.now - lease_end:.3f} s after its writer's lease "
            f"(sendall returned {call.sent_at - lease_end:+.3f} s from it)"
        )

    def applied(self, call: Call) -> None:
        for x in self.late_arrivals:
            if x.call is call:
                x.applied = True

    def reported(self, writer: str, resource: str) -> None:
        """The writer reported a late write (the fence's overrun, or a stray report in the table)."""
        self.reports.append((writer, resource, self.w.k.now))

    def _judge_late(self) -> None:
        now = self.w.k.now
        for x in self.late_arrivals:
            if x.judged or not x.applied:
                continue
            call = x.call
            resource = str(call.info.get("table") or (call.params.get("InstanceIds") or [""])[0])
            names = {resource, str(call.params.get("RouteTableId", "")), *map(str, call.params.get("Resources", []))}
            x.reported = x.reported or any(
                wr == call.caller and res in names and at >= call.checked_at for wr, res, at in self.reports
            )
            if x.reported:
                x.judged = True
            elif now - x.arrived > STRAY_CORRECTION_LIMIT:
                x.judged = True
                self.violation(
                    f"{call.caller}'s {call.op} {call.params} reached AWS {x.arrived - call.info['lease_end']:.3f} s "
                    f"after its lease and was applied, and its writer did not report it (sendall returned "
                    f"{call.sent_at - call.info['lease_end']:+.3f} s from the lease's end)",
                    "a",
                )

    def route_applied(self, call: Call, table: str, target: str, before: str) -> None:
        """A route write landed (EC2 state changed now)."""
        self._landed(call, "route", table, target, (self.newest_term, self.newest_target), table, "a")
        if target != before:
            self.route_changes[table] += 1
            self._moved(table, before, target, call)

    def _landed(
        self,
        call: Call,
        kind: str,
        table: str,
        target: str,
        newest: tuple[dict[str, int], dict[str, str]],
        what: str,
        invariant: str,
    ) -> None:
        """(a)'s stray rule for a write of ``kind`` that landed now: older than the newest term's and
        elsewhere, it is a stray; one of the newest term corrects the strays before it, within the limit."""
        w = self.w
        now = w.k.now
        term = int(call.info.get("term", 0))
        newest_term, newest_target = newest
        last = newest_term.get(table, 0)
        noun = "write to" if kind == "route" else "association of"
        if term < last and target != newest_target.get(table, ""):
            self.strays.append(Stray(table, term, target, now, now, last, kind=kind))
            self.stray_changes[table] += 2  # its landing and its correction: not flapping, (a) judges them
            w.log(f"STRAY {call.process}: {what} -> {target} (term {term}) landed under term {last}")
        elif term >= last:
            newest_term[table] = term
            newest_target[table] = target
            for s in self.strays:
                if s.table == table and s.kind == kind and s.corrected < 0:
                    s.corrected = now
                    late = now - s.bound
                    if late > STRAY_CORRECTION_LIMIT:
                        self.violation(
                            f"stray {noun} {what} (term {s.term} -> {s.target}) corrected {late:.3f} s after "
                            f"it landed (limit {STRAY_CORRECTION_LIMIT} s)",
                            invariant,
                        )

    def address_applied(self, call: Call, table: str, holder: str, before: str) -> None:
        """An association landed: (a)'s stray rule for it, (c)'s home rule, and its count for flapping."""
        newest = (self.newest_addr_term, self.newest_addr_target)
        self._landed(call, "address", table, holder, newest, f"{table}'s Elastic IP", "e")
        if holder != before:
            self.address_changes[table] += 1
            self._moved(table, before, holder, call, f"{table}'s Elastic IP", "e")

    def tagged(self, call: Call, resource: str, key: str, value: str | None, lag: float) -> None:
        shown = "(deleted)" if value is None else value.rsplit("/", 1)[-1]
        seen = f" (IAM sees it in {lag:.3f} s)" if lag else ""
        self.w.log(f"{call.process}: tagged {resource} {key}={shown}{seen}")

    def refused_by_iam(self, call: Call, refused: str, resources: list[tuple[str, dict[str, str]]]) -> None:
        self.iam_refusals += 1
        tags = dict(resources).get(refused, {})
        seen = ", ".join(f"{k}={v.rsplit('/', 1)[-1]}" for k, v in sorted(tags.items()) if k != "nat-ha:group")
        self.w.log(f"IAM refused {call.process}'s {call.op} on {refused} (IAM sees {seen or 'no tags'})")

    # ------------------------------------------------------------ (c) moves
    def _moved(self, table: str, before: str, after: str, call: Call, what: str = "", invariant: str = "c") -> None:
        """(c), and (e) for Elastic IPs: a healthy NAT's home table keeps its route (its EIP) - ``what`` moved."""
        w = self.w
        home = w.homes[table]
        if before != home or any(s.table == table and w.k.now in (s.landed, s.corrected) for s in self.strays):
            return  # a stray, or the newest term correcting one: (a)'s business
        if invariant == "e" and w.cloud.target(table) == after:
            return  # the Elastic IP follows a route already moved (judged by (c) when it moved)
        since = self.healthy_since.get(home)
        if since is None or w.k.now - since < HEALTHY_WINDOW or not w.healthy_member(home):
            return
        if w.operator_touched(home, table, HEALTHY_WINDOW):
            return
        self.healthy_home_moves += 1
        self.violation(
            f"{call.caller} moved {what or table} away from its home {home}, healthy for {w.k.now - since:.1f} s, "
            f"to {after}",
            invariant,
        )

    # ------------------------------------------------------------ (d) stops
    def stopped(self, call: Call, target: str) -> None:
        """A stop landed on ``target``: it may not have answered probes or heartbeated within its lease
        before the stop was **sent** (the stopper's bytes left; after that nothing of the stopper's can
        call it back, and the stop-by tag is AWS's last word). A NAT that came back only after the send
        is counted apart (``stops_after_send_recovery``): no agent can observe it in time."""
        w = self.w
        now = w.k.now
        lease = w.timing(target).lease
        sent = call.sent_at if call.sent_at >= 0 else now
        heartbeat = now - w.self_write_at.get(target, -1e9)
        silent = now - w.probe_silent_since.get(target, now)  # 0 while it answers
        before = w.answered_between(target, sent - lease, sent) or w.heartbeated_between(target, sent - lease, sent)
        if before:
            if w.forwards(target):
                self.healthy_nat_stops += 1
            why = "answers probes" if silent == 0 else f"answered probes {silent:.3f} s ago"
            self.violation(
                f"{call.caller}'s stop landed on {target}, which {why} and heartbeated {heartbeat:.3f} s ago "
                f"(its lease {lease} s; it answered or heartbeated within it before the stop was sent "
                f"{now - sent:.3f} s ago){' and forwards' if w.forwards(target) else ''}",
                "d",
            )
        elif w.answered_between(target, sent, now) or w.heartbeated_between(target, sent, now):
            self.stops_after_send_recovery += 1
            w.log(
                f"{call.caller}'s stop landed on {target}, which came back after the stop was sent "
                f"{now - sent:.3f} s ago (silent for its lease before the send: unobservable, counted apart)"
            )
        self.stops += 1
        self.stops_since_healthy[target] += 1
        cap = w.timing(call.caller).restart_max_attempts
        if self.stops_since_healthy[target] > cap:
            self.violation(
                f"{target} stopped {self.stops_since_healthy[target]} times without recovering (cap {cap})", "d"
            )

    # ------------------------------------------------------- (b) liveness
    def sample(self, dt: float) -> None:
        """Called every ``dt`` of virtual time: outages, health streaks."""
        w = self.w
        now = w.k.now
        if self.late_arrivals:
            self._judge_late()
        healthy = self.healthy = {m: w.healthy_member(m) for m in w.sc.members}
        for m, ok in healthy.items():
            if ok:
                self.healthy_since.setdefault(m, now)
                if now - self.healthy_since[m] >= w.timing(m).failback_hold_down:
                    self.stops_since_healthy[m] = 0
            else:
                self.healthy_since.pop(m, None)
        can_act = any(ok and w.observing(m) for m, ok in healthy.items()) and w.aws_works()
        # AWS refusing the account the writes a takeover needs (their token buckets are dry: another
        # tenant, or the group itself, drained them) is AWS not accepting writes: (b) and (e) stop
        # their clocks while it lasts (not for any back-off of the agent's after); the time is reported.
        throttled = w.cloud.writes_refused()
        if throttled:
            w.cloud.throttled_s += dt
        for table in w.homes:
            target = w.cloud.target(table)
            bad = not target or not w.forwards(target)
            o = self.outages.get(table)
            if bad and o is None:
                o = self.outages[table] = Outage(table, target, now)
            if bad and o is not None:
                item = w.store.raw_get(w.group, "route#" + table) or {}
                owner = str(item.get("owner", ""))
                taker = owner != target or target != o.target  # not the NAT whose failure began it
                if owner and taker and self._cannot_act(owner, o.taker, o.started):
                    # The member that took the table over cannot act (a fault of its own, before or
                    # after it took it, or while its route write was in flight): a second failure,
                    # with a clock of its own from now on.
                    self._outage_sample(o)
                    o = self.outages[table] = Outage(table, target, now, taker=owner)
            if bad and o is not None and can_act:
                if throttled:
                    self.outage_throttled += dt
                elif self._propagating(table, table):
                    self.outage_tag_propagation += dt
                else:
                    o.counted += dt
                    alike = sum(1 for x in self.outages.values() if x.target == target)
                    slow = self.slow_store_allowance(target, alike)
                    if slow > o.slow_store:
                        self.outage_slow_store_seconds += slow - o.slow_store
                        o.slow_store = slow
                    limit = self.outage_limit() + o.slow_store
                    if o.counted > limit and o.counted - dt <= limit:
                        self.violation(
                            f"{table} has pointed at {target or 'nothing'}, which does not forward, for "
                            f"{o.counted:.2f} s while a member could take it (limit {limit:.2f} s)",
                            "b",
                        )
            if not bad and o is not None:
                self._outage_sample(o)
                del self.outages[table]
        for table in w.homes:
            self._sample_gateway(table, dt, can_act and not throttled)
        for table in w.egress:
            self._sample_egress(table, dt, can_act, throttled)

    def _cannot_act(self, owner: str, restarted_for: str, since: float) -> bool:
        """The table's lease holder cannot act - a second failure, whose clock starts now - unless the
        clock already restarted for it (``restarted_for``): it cannot serve now, or its agent process was
        killed since the clock started (``since``: a crash, a config change, a restart), even when a new
        one started at once: the new process acts only once its predecessor's session has been silent for
        its lease and margin, and its peers take the table only after the silence they tolerate. Sampling
        "could serve" every 50 ms cannot see an instant kill and start (sim seed 7595: a taker's agent
        restarted twice by a config rollout while IAM held its write back)."""
        if owner == restarted_for:
            return False
        if not self.healthy.get(owner, False):
            return True
        run = self.w.running.get(owner)
        return run is not None and run.started > since

    def _propagating(self, table: str, resource: str) -> bool:
        """IAM does not see yet the holder tag that ``table``'s lease holder wrote on ``resource`` (the table,
        or its Elastic IP) and EC2 applied: until it does, IAM refuses every write of the holder's to it.

        That is AWS's tag propagation, not the agent's delay: the holder tags before it writes, and
        nothing it can do makes IAM see the tag sooner. Only the holder's own tag counts, only from
        when EC2 applied it: a holder that has not tagged yet, or a tag of someone else's, stops no clock.
        """
        w = self.w
        if not w.sc.holder_tag or not w.sc.tag_lag:
            return False
        owner = str((w.store.raw_get(w.group, "route#" + table) or {}).get("owner", ""))
        if not owner:
            return False
        now = w.k.now
        mine = arn(owner)
        tags = w.cloud.tags
        return tags.ec2(resource, now).get(HOLDER_TAG) == mine and tags.iam(resource, now).get(HOLDER_TAG) != mine

    def _mismatch_propagating(self, table: str, owner: str, target: str) -> bool:
        """IAM does not see yet the lease holder's own tag on a resource whose write would close the mismatch.

        The holder closes it by bringing both to itself: the Elastic IP (its tag on the allocation) when
        the address is elsewhere, the route (its tag on the table) when the route is elsewhere - a holder
        whose Elastic IP is already on its address needs the route write, which IAM refuses until it sees
        the table's tag (sim seed 3029), exactly as (b) excuses it.
        """
        w = self.w
        if owner != w.cloud.eip_holder(table) and self._propagating(table, w.egress[table].allocation_id):
            return True
        return owner != target and self._propagating(table, table)

    def _outage_sample(self, o: Outage) -> None:
        """An outage ended (or a second failure restarted its clock): into the distribution; apart too
        when its limit grew for slow DynamoDB paths (``slow_store_allowance``)."""
        self.outage_samples.append(o.counted)
        if o.slow_store > 0:
            self.slow_store_outage_samples.append(o.counted)

    def slow_store_allowance(self, failed: str, tables: int) -> float:
        """(b)'s extra time while every member that could take ``failed``'s tables has a slow DynamoDB path.

        A takeover is a chain of DynamoDB round trips, each waiting for the one before: the read that
        shows the owner's heartbeat unchanged, the expiry, one claim per table, the renewal that confirms
        the writes. No agent makes a member's round trips shorter than its path (as no agent makes AWS
        faster: a DynamoDB slow for everyone stops the clock, ``World.aws_works``). So the limit grows by
        that chain's length times the excess of the fastest such member's round trip over a normal one -
        at 300 ms and three tables, 1.7 s - and only while no member with a normal path could act.
        """
        w = self.w
        rtts = []
        for m, ok in self.healthy.items():
            if m == failed or not ok or not w.observing(m):
                continue
            f = w.faulty("store_slow_member", m)
            if f is None:
                return 0.0
            rtts.append(f.rate)
        if not rtts:
            return 0.0
        return (3 + max(1, tables)) * max(0.0, min(rtts) - NORMAL_STORE_RTT)

    def outage_limit(self) -> float:
        """3 s at the default timing. A member running a slower timing (a rolling upgrade) waits longer by
        its own configuration before it may take a table: a dead owner for its lease + margin (1.1 s by
        default), a silent owner whose NAT answers probes for its ``silent_owner_after`` (2 s by default).
        The bound grows by the larger of the two differences, no more: the user configured that wait."""
        base = TIMING_DEFAULT
        extra = max(
            max(t.lease + t.margin - (base.lease + base.margin), t.silent_owner_after - base.silent_owner_after)
            for t in self.w.sc.all_timings
        )
        return OUTAGE_LIMIT + max(0.0, extra)

    def _sample_gateway(self, table: str, dt: float, can_act: bool) -> None:
        """(b) for the last resort: a table on the NAT gateway while a member could serve it comes back."""
        w = self.w
        now = w.k.now
        on = w.cloud.target(table).startswith("nat-")
        if not on:
            if table in self.gateway_since:
                self.gateway_samples.append(now - self.gateway_since.pop(table))
                self.on_gateway.pop(table, None)
            return
        self.gateway_since.setdefault(table, now)
        if not can_act or self._propagating(table, table):
            return  # counted as (b)'s clock is: not while AWS throttles or IAM lags the holder's tag
        counted = self.on_gateway.get(table, 0.0) + dt
        self.on_gateway[table] = counted
        limit = LAST_RESORT_LIMIT
        if counted > limit >= counted - dt:
            self.violation(
                f"{table} has been on the last-resort NAT gateway {counted:.2f} s while a healthy member could "
                f"serve it (limit {limit:.1f} s)",
                "b",
            )

    def _sample_egress(self, table: str, dt: float, can_act: bool, throttled: bool) -> None:
        """(e): the route's NAT forwards but its address for the table does not hold the table's Elastic IP."""
        w = self.w
        now = w.k.now
        target = w.cloud.target(table)
        # On the last-resort NAT gateway the table leaves with the gateway's address: not (e)'s business.
        gateway = target.startswith("nat-")
        wrong = bool(target) and not gateway and w.forwards(target) and w.cloud.eip_holder(table) != target
        x = self.mismatches.get(table)
        if x is not None and (not wrong or x.target != target):
            self.mismatch_samples.append(x.counted)
            del self.mismatches[table]
            x = None
        if not wrong:
            return
        item = w.store.raw_get(w.group, "route#" + table) or {}
        owner = str(item.get("owner", ""))
        if x is None:
            x = self.mismatches[table] = Mismatch(table, target, now)
        if owner and self._cannot_act(owner, x.owner, x.started):
            # The member that holds the table cannot act (a fault of its own): a second failure,
            # with a clock of its own from now on, as in (b).
            self.mismatch_samples.append(x.counted)
            x = self.mismatches[table] = Mismatch(table, target, now, owner=owner)
        if can_act and throttled:
            self.mismatch_throttled += dt
        elif can_act and self._mismatch_propagating(table, owner, target):
            self.mismatch_tag_propagation += dt
        elif can_act:
            x.counted += dt
            if x.counted > EGRESS_LIMIT and x.counted - dt <= EGRESS_LIMIT:
                where = w.cloud.eip_holder(table) or "nobody"
                self.violation(
                    f"{table} routes to {target}, which forwards, but its Elastic IP has been with {where} for "
                    f"{x.counted:.2f} s while a healthy member could act (limit {EGRESS_LIMIT} s)",
                    "e",
                )

    def finish(self) -> None:
        self._judge_late()
        for x in self.late_arrivals:
            if x.applied and not x.judged and not x.reported:
                x.judged = True
                self.violation(f"{x.call.caller}'s {x.call.op} reached AWS after its lease, unreported", "a")
        for o in self.outages.values():
            self._outage_sample(o)
        for x in self.mismatches.values():
            self.mismatch_samples.append(x.counted)
        for since in self.gateway_since.values():
            self.gateway_samples.append(self.w.k.now - since)
        for s in self.strays:
            if s.kind == "route" and s.corrected < 0 and self.w.cloud.target(s.table) == s.target:
                self.violation(f"stray write to {s.table} (term {s.term} -> {s.target}) never corrected", "a")
            if s.kind == "address" and s.corrected < 0 and self.w.cloud.eip_holder(s.table) == s.target:
                self.violation(f"stray association of {s.table}'s Elastic IP (term {s.term}) never corrected", "e")
