"""The lease protocol over a :class:`~coordinator.store.Store`.

A member's *session* is its lease: the member item is renewed by a conditional
heartbeat every ``heartbeat_interval``; the holder starts its clock *before*
sending and may act until ``t0 + lease``. A route item names its owner and the
owner's session; the owner may act on the route table only while that session is
valid on its own clock. Ownership changes only by a conditional write that bumps
``term`` (the fencing token); every write bumps ``version`` and carries a fresh
``token`` so that a write whose outcome is unknown is resolved by re-reading it.

A peer takes a route table from a silent owner in two single-item steps: it
expires the owner's session (conditional on the version it watched stay
unchanged for the declared lease plus a margin), then claims the route item
(conditional on the version it read). The owner's own renewal is conditional on
its last version, so it learns at once that it lost, and by then its own clock
has already told it to stop acting.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from coordinator.clock import Clock
from coordinator.errors import BadItem, Conflict, SessionLost, StoreUnavailable
from coordinator.items import (
    MEMBER_ALIVE,
    MEMBER_EXPIRED,
    MEMBER_LEFT,
    MEMBER_PREFIX,
    REQUEST_PREFIXES,
    RESTART_IDLE,
    Attrs,
    GroupSnapshot,
    Health,
    MemberItem,
    RequestItem,
    RestartItem,
    RouteItem,
    StrayItem,
    encode_member,
    encode_request,
    encode_restart,
    encode_route,
    encode_stray,
    parse_group,
    parse_member,
)
from coordinator.store import ConditionFailed, Expect, OutcomeUnknown, Store, Unavailable

# How long DynamoDB may keep a member item that nobody renews (TTL, GC only).
MEMBER_GC_SECONDS = 7 * 24 * 3600.0
STRAY_GC_SECONDS = 24 * 3600.0


def new_token() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class SessionState:
    """The holder's view of its own session."""

    session: str
    version: int
    started_at: float
    valid_until: float


@dataclass
class Evidence:
    """What DynamoDB last told us of our own session and tables: a confirmation that needs no new read.

    ``renewed_sent``: when our latest conditional renewal that DynamoDB accepted was sent (a
    heartbeat, a new or resumed session): our session was alive then, and every peer's watch of it
    started again (none can expire it within ``lease + margin`` of seeing that renewal). A store call
    that ended without an answer makes it stale: a pause our clock did not count may hide in its wait.
    ``tables``: the route tables DynamoDB showed held by this session, and in which term (our claim
    that succeeded, a consistent read); dropped when a read shows otherwise and before we hand one
    over or release it.

    Why the two together confirm a table as of ``renewed_sent``, whichever came first: no agent takes
    a table from a session that DynamoDB shows alive. A peer claims a table only when its owner's
    session is expired, superseded, left or gone, or after its own conditional write expired it
    (agent.decide's owner_state), and a session never comes back to life (a renewal is conditional
    on it being alive; a new session has a new id). So if DynamoDB showed the table ours in a term
    and, then or later, accepted our renewal, the table was still ours in that term then.
    """

    session: str = ""
    renewed_sent: float = float("-inf")
    tables: dict[str, int] = field(default_factory=dict)

    def _of(self, session: str) -> None:
        if session != self.session:
            self.forget()
            self.session = session

    def renewed(self, session: str, sent: float) -> None:
        self._of(session)
        self.renewed_sent = max(self.renewed_sent, sent)

    def stale(self) -> None:
        self.renewed_sent = float("-inf")

    def holds(self, session: str, table: str, term: int) -> None:
        self._of(session)
        self.tables[table] = term

    def drop(self, table: str) -> None:
        self.tables.pop(table, None)

    def forget(self) -> None:
        self.session = ""
        self.renewed_sent = float("-inf")
        self.tables.clear()


@dataclass(frozen=True)
class StoreBudget:
    """How long one store call may take: fitted to the lease, between ``least`` and ``most`` seconds.

    A call gets what is left of the lease minus ``least`` (the share of the renewal that follows
    it, so that it can still land in time), within those bounds. A renewal - the call that keeps
    the lease - gets ``most``, as does every call while no lease is held (nothing to protect).
    So a member whose round trips are slow but answer (up to about ``most``) keeps its session;
    where the store does not answer at all, a cycle still ends in bounded time.
    """

    least: float
    most: float

    def renewal(self) -> float:
        return self.most

    def call(self, remaining: float) -> float:
        if remaining <= 0:
            return self.most
        return min(self.most, max(self.least, remaining - self.least))


@dataclass(frozen=True)
class MemberInfo:
    """What a member writes about itself besides health."""

    agent_version: str = ""
    az: str = ""
    address: str = ""


class Coordinator:
    """One member's handle on its group: its session and every lease operation.

    ``lease_s`` is the session length this member declares; peers judge it stale
    only after seeing its version unchanged for that long plus their margin.
    """

    def __init__(
        self,
        store: Store,
        group: str,
        me: str,
        clock: Clock,
        lease_s: float,
        *,
        info: MemberInfo | None = None,
        token_factory: Callable[[], str] = new_token,
        on_session: Callable[[str], None] | None = None,
        budget: StoreBudget | None = None,
    ) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.budget = budget  # None: every call gets the store's own timeout
        self.store = store
        self.group = group
        self.me = me
        self.clock = clock
        self.lease_s = lease_s
        self.info = info or MemberInfo()
        self._token = token_factory
        # Told the session id whenever this member starts or resumes one (the agent records it for
        # the next process of this instance: agent/host/runstate.py).
        self._on_session = on_session or (lambda _session: None)
        self._session: SessionState | None = None
        self._recent_tokens: collections.deque[str] = collections.deque(maxlen=16)
        self._evidence = Evidence()

    # ------------------------------------------------------------------ reads
    def _timeout(self, *, renewal: bool = False) -> float | None:
        """The time the next store call may take (:class:`StoreBudget`); None without a budget."""
        if self.budget is None:
            return None
        return self.budget.renewal() if renewal else self.budget.call(self.remaining())

    def read_group(self) -> GroupSnapshot:
        """One consistent Query of the group; which of our tables it shows ours is kept (:class:`Evidence`)."""
        try:
            rows = self.store.query_group(self.group, timeout=self._timeout())
        except Unavailable as exc:
            self._evidence.stale()
            raise StoreUnavailable(f"cannot read group {self.group!r}: {exc}") from exc
        snapshot = parse_group(self.group, rows)
        self._saw(snapshot)
        return snapshot

    def _saw(self, snapshot: GroupSnapshot) -> None:
        """A consistent read: the tables it shows held by our session, and in which term (none if it is not alive)."""
        s = self._session
        ev = self._evidence
        if s is None:
            return
        mine = snapshot.members.get(self.me)
        if mine is None or mine.session != s.session or mine.state != MEMBER_ALIVE:
            ev.forget()
            return
        for table, r in snapshot.routes.items():
            if r.owner == self.me and r.owner_session == s.session:
                ev.holds(s.session, table, r.term)
            else:
                ev.drop(table)
        for table in [t for t in ev.tables if t not in snapshot.routes]:
            ev.drop(table)

    def confirmed(self, route_table: str, term: int, within: float) -> float | None:
        """When DynamoDB last confirmed, without a new read, that this session holds ``route_table`` in ``term``.

        The send time of our latest renewal that DynamoDB accepted (:class:`Evidence`), if it is no
        more than ``within`` ago on our clock and DynamoDB showed the table ours in that term; else None.
        """
        if not self.knows(route_table, term):
            return None
        sent = self._evidence.renewed_sent
        return sent if self.clock.monotonic() - sent <= within else None

    def knows(self, route_table: str, term: int) -> bool:
        """DynamoDB showed this session holding ``route_table`` in ``term`` (a renewal can then confirm it)."""
        s = self._session
        ev = self._evidence
        return s is not None and ev.session == s.session and ev.tables.get(route_table) == term

    def _get(self, key: str) -> Attrs | None:
        try:
            return self.store.get_item(self.group, key, timeout=self._timeout())
        except Unavailable as exc:
            self._evidence.stale()
            raise StoreUnavailable(f"cannot read {key!r}: {exc}", outcome_unknown=True) from exc

    # ---------------------------------------------------------------- session
    @property
    def session(self) -> SessionState | None:
        return self._session

    def remaining(self) -> float:
        """Seconds this member may still act on its leases (<= 0: must not act)."""
        if self._session is None:
            return 0.0
        return self._session.valid_until - self.clock.monotonic()

    def preview_as(self, item: MemberItem) -> None:
        """Take the running agent's session in memory only, to decide as it would (``nat-ha agent --once``).

        The caller never writes with it: it only observes and decides. Nothing is sent to the store.
        """
        now = self.clock.monotonic()
        self._session = SessionState(item.session, item.version, now, now + self.lease_s)

    def drop_session(self) -> None:
        """Stop acting at once (session lost, or shutting down)."""
        self._session = None
        self._evidence.forget()

    def lapse(self) -> None:
        """Our clock may have missed time (a pause it did not count): act on nothing until a renewal
        sent from now on succeeds. The session itself is kept: if no peer expired it, it renews."""
        s = self._session
        self._evidence.forget()  # what DynamoDB said before the pause says nothing of now
        if s is not None:
            self._session = replace(s, valid_until=min(s.valid_until, self.clock.monotonic()))

    def confirm(
        self,
        *,
        route: tuple[str, int] | None = None,
        restart: tuple[str, int] | None = None,
        unchanged: MemberItem | None = None,
    ) -> str:
        """Right before an EC2 write: "" when DynamoDB still says we may, else why not.

        One consistent read of the group (a Query of one partition). Our session must be alive
        there (no peer expired it: the local clock alone does not say so after a pause it did not
        count); ``route`` = (table, term): we still own the table in that term; ``restart`` =
        (target, term): we still hold its restart lease; ``unchanged``: that member item is still
        as we last saw (or wrote) it - a stop's target has not come back. Raises StoreUnavailable.
        """
        s = self._session
        if s is None:
            return "no session"
        snapshot = self.read_group()
        mine = snapshot.members.get(self.me)
        if mine is None or mine.session != s.session or mine.state != MEMBER_ALIVE:
            state = "gone" if mine is None else f"{mine.state}, session {mine.session[:8]}"
            return f"our session {s.session[:8]} is no longer alive in DynamoDB ({state})"
        if route is not None:
            table, term = route
            r = snapshot.routes.get(table)
            if r is None or r.owner != self.me or r.owner_session != s.session or r.term != term:
                held = "nobody" if r is None or not r.owner else f"{r.owner} in term {r.term}"
                return f"{table} is held by {held}, not by this session in term {term}"
        if restart is not None:
            target, term = restart
            x = snapshot.restarts.get(target)
            if x is None or x.owner != self.me or x.owner_session != s.session or x.term != term:
                return f"the restart lease on {target} is no longer ours in term {term}"
        if unchanged is not None:
            m = snapshot.members.get(unchanged.instance)
            if m is None or (m.session, m.version, m.state) != (unchanged.session, unchanged.version, unchanged.state):
                return f"{unchanged.instance} changed since (it is back, or someone wrote its item)"
        return ""

    def _member(
        self, session: str, version: int, state: str, health: Health, draining: bool, restart_grace_s: float = 0.0
    ) -> MemberItem:
        return MemberItem(
            instance=self.me,
            session=session,
            state=state,
            version=version,
            token=self._token(),
            lease_ms=round(self.lease_s * 1000),
            health=health,
            agent_version=self.info.agent_version,
            az=self.info.az,
            address=self.info.address,
            draining=draining,
            restart_grace_ms=round(restart_grace_s * 1000),
        )

    def start_session(self, health: Health, observed: MemberItem | None = None) -> MemberItem:
        """Begin a new session, superseding any earlier one of this member.

        The write is conditional on the member item as read (absent, or its
        version), so two processes claiming to be one member cannot both start.
        """
        t0 = self.clock.monotonic()
        key = MEMBER_PREFIX + self.me
        if observed is not None:
            expect, version = Expect.matches(version=observed.version), observed.version + 1
        else:
            current = self._get(key)
            if current is None:
                expect, version = Expect.item_absent(), 1
            else:
                old = current.get("version")
                if isinstance(old, bool) or not isinstance(old, int):
                    raise BadItem(key, "has no whole-number 'version'; delete the item to let the agent recreate it")
                expect, version = Expect.matches(version=old), old + 1
        session = uuid.uuid4().hex[:16]
        item = self._member(session, version, MEMBER_ALIVE, health, False)
        self._write(encode_member(item), expect, gc_after_s=MEMBER_GC_SECONDS, renewal=True)
        self._session = SessionState(session, version, t0, t0 + self.lease_s)
        self._evidence.renewed(session, t0)
        self._on_session(session)
        return item

    def resume_session(self, session: str, *, attempts: int = 3) -> MemberItem:
        """Continue ``session`` of this member, run by an earlier process that is provably gone.

        The caller proved that process has exited (the agent's lifetime lock). A renewal it sent
        may still land, so this is a conditional renewal like any heartbeat: on the version read
        here (consistently), the session and ``alive``. A conflict is read again: a newer version
        of the same live session can only be that late renewal (no other process knows the
        session), and the write is retried on it. Anything else - expired by a peer, superseded,
        gone, unreadable - raises :class:`SessionLost`: the caller starts a new session as usual.
        The lease clock starts before the successful write is sent, never at the earlier
        process's renewal. Health and draining are carried over as that process last reported
        them (the next regular renewal reports our own).
        """
        key = MEMBER_PREFIX + self.me
        for _ in range(attempts):
            current = self._get(key)
            try:
                old = parse_member(current) if current is not None else None
            except ValueError as exc:
                raise SessionLost(f"cannot resume session {session}: {key} is unreadable ({exc})") from None
            if old is None or old.session != session or old.state != MEMBER_ALIVE:
                why = "has no item" if old is None else f"runs session {old.session} ({old.state})"
                raise SessionLost(f"cannot resume session {session}: {self.me} {why}")
            item = replace(
                self._member(session, old.version + 1, MEMBER_ALIVE, old.health, old.draining),
                az=self.info.az or old.az,
                address=self.info.address or old.address,
            )
            t0 = self.clock.monotonic()
            try:
                self._write(
                    encode_member(item),
                    Expect.matches(session=session, state=MEMBER_ALIVE, version=old.version),
                    gc_after_s=MEMBER_GC_SECONDS,
                    renewal=True,
                )
            except Conflict:
                continue  # a late renewal of the earlier process (read again), or a peer expired it
            self._session = SessionState(session, item.version, t0, t0 + self.lease_s)
            self._evidence.renewed(session, t0)
            self._on_session(session)
            return item
        raise SessionLost(f"cannot resume session {session}: {key} kept changing")

    def heartbeat(
        self, health: Health, *, draining: bool = False, paused: bool = False, restart_grace_s: float = 0.0
    ) -> MemberItem:
        """Renew the session; raises :class:`SessionLost` if a peer expired it.

        ``paused``: this agent sees a pause of its group (or of a table) and writes nothing to EC2
        for it; ``nat-ha pause`` waits until every live member says so. ``restart_grace_s``: this
        process exits for a restart now; peers may wait this long for the next one while the NAT
        answers their probes (the next renewal clears it).
        """
        if self._session is None:
            raise SessionLost("no session")
        s = self._session
        t0 = self.clock.monotonic()  # the clock starts before the request is sent
        item = replace(
            self._member(s.session, s.version + 1, MEMBER_ALIVE, health, draining, restart_grace_s), paused=paused
        )
        expect = Expect.matches(session=s.session, state=MEMBER_ALIVE, version=s.version)
        try:
            self._write(encode_member(item), expect, gc_after_s=MEMBER_GC_SECONDS, renewal=True)
        except Conflict as exc:
            adopted = self._adopt_own_late_write(s)
            if adopted is None:
                self.drop_session()
                raise SessionLost(f"session {s.session} of {self.me} was expired or superseded") from exc
            item = replace(item, version=adopted + 1)
            self._session = replace(s, version=adopted)
            return self.heartbeat(health, draining=draining, paused=paused, restart_grace_s=restart_grace_s)
        self._session = replace(s, version=item.version, valid_until=t0 + self.lease_s)
        self._evidence.renewed(s.session, t0)
        return item

    def _adopt_own_late_write(self, s: SessionState) -> int | None:
        """An earlier heartbeat of ours, reported failed, may have landed later."""
        current = self._get(MEMBER_PREFIX + self.me)
        if current is None:
            return None
        if (
            current.get("token") in self._recent_tokens
            and current.get("session") == s.session
            and current.get("state") == MEMBER_ALIVE
            and isinstance(current.get("version"), int)
            and current["version"] > s.version
        ):
            return int(current["version"])
        return None

    def leave(self, health: Health) -> None:
        """Mark this member as gone (after handing its route tables over)."""
        if self._session is None:
            return
        s = self._session
        item = self._member(s.session, s.version + 1, MEMBER_LEFT, health, True)
        try:
            self._write(
                encode_member(item),
                Expect.matches(session=s.session, version=s.version),
                gc_after_s=MEMBER_GC_SECONDS,
                renewal=True,
            )
        finally:
            self.drop_session()

    def expire_member(self, observed: MemberItem) -> MemberItem:
        """Declare a silent peer's session dead (only after watching it stale)."""
        if observed.instance == self.me:
            raise ValueError("a member does not expire its own session")
        item = replace(
            observed,
            state=MEMBER_EXPIRED,
            version=observed.version + 1,
            token=self._token(),
            expired_by=self.me,
        )
        expect = Expect.matches(session=observed.session, state=MEMBER_ALIVE, version=observed.version)
        self._write(encode_member(item), expect, gc_after_s=MEMBER_GC_SECONDS)
        return item

    # ----------------------------------------------------------------- routes
    def _require_session(self) -> SessionState:
        if self._session is None or self.remaining() <= 0:
            raise SessionLost(f"{self.me} holds no valid session")
        return self._session

    def claim_route(self, route_table: str, observed: RouteItem | None, home: str = "") -> RouteItem:
        """Take a route table that has no live owner (new, released, orphaned, expired).

        The caller has judged from a consistent read that the owner's session is
        dead; the write is conditional on the version read, so at most one
        claimant wins each term.
        """
        s = self._require_session()
        item = RouteItem(
            route_table=route_table,
            owner=self.me,
            owner_session=s.session,
            term=(observed.term + 1) if observed is not None else 1,
            version=(observed.version + 1) if observed is not None else 1,
            token=self._token(),
            home=home or (observed.home if observed is not None else ""),
        )
        expect = Expect.matches(version=observed.version) if observed is not None else Expect.item_absent()
        self._write(encode_route(item), expect)
        self._evidence.holds(s.session, route_table, item.term)
        return item

    def _owned(self, route: RouteItem) -> tuple[SessionState, Expect]:
        s = self._require_session()
        if route.owner != self.me or route.owner_session != s.session:
            raise Conflict(f"{route.route_table} is not held by this session of {self.me}")
        return s, Expect.matches(owner=self.me, owner_session=s.session, term=route.term)

    def hand_over_route(self, route: RouteItem, successor: MemberItem) -> RouteItem:
        """Planned switchover: give a held route table to a named live successor."""
        _, expect = self._owned(route)
        if successor.state != MEMBER_ALIVE:
            raise ValueError(f"successor {successor.instance} has no live session")
        self._evidence.drop(route.route_table)  # no longer ours once this lands (it may, whatever we hear)
        item = replace(
            route,
            owner=successor.instance,
            owner_session=successor.session,
            term=route.term + 1,
            version=route.version + 1,
            token=self._token(),
        )
        self._write(encode_route(item), expect)
        return item

    def release_route(self, route: RouteItem) -> RouteItem:
        _, expect = self._owned(route)
        self._evidence.drop(route.route_table)  # no longer ours once this lands (it may, whatever we hear)
        item = replace(
            route, owner="", owner_session="", term=route.term + 1, version=route.version + 1, token=self._token()
        )
        self._write(encode_route(item), expect)
        return item

    # --------------------------------------------------------------- restarts
    def claim_restart(self, target: str, observed: RestartItem | None, cooldown_s: float) -> RestartItem:
        """Take the restart lease on ``target`` (the caller checked cooldown and cap)."""
        s = self._require_session()
        item = RestartItem(
            target=target,
            owner=self.me,
            owner_session=s.session,
            term=(observed.term + 1) if observed is not None else 1,
            version=(observed.version + 1) if observed is not None else 1,
            token=self._token(),
            phase=RESTART_IDLE,
            attempts=observed.attempts if observed is not None else 0,
            cooldown_ms=round(cooldown_s * 1000),
        )
        expect = Expect.matches(version=observed.version) if observed is not None else Expect.item_absent()
        self._write(encode_restart(item), expect)
        return item

    def set_restart_phase(self, item: RestartItem, phase: str, attempts: int | None = None) -> RestartItem:
        s = self._require_session()
        if item.owner != self.me or item.owner_session != s.session:
            raise Conflict(f"restart lease on {item.target} is not held by this session")
        new = replace(
            item,
            phase=phase,
            attempts=item.attempts if attempts is None else attempts,
            version=item.version + 1,
            token=self._token(),
        )
        self._write(encode_restart(new), Expect.matches(owner=self.me, owner_session=s.session, term=item.term))
        return new

    def reset_own_restart(self, item: RestartItem) -> RestartItem:
        """The restarted member, healthy again, clears its restart count."""
        if item.target != self.me:
            raise ValueError("only the target resets its restart count")
        new = replace(
            item,
            owner="",
            owner_session="",
            term=item.term + 1,
            attempts=0,
            phase=RESTART_IDLE,
            version=item.version + 1,
            token=self._token(),
        )
        self._write(encode_restart(new), Expect.matches(version=item.version))
        return new

    # ----------------------------------------------------------------- strays
    def report_stray(self, route_table: str, term: int, target: str) -> StrayItem:
        """Say that our write to ``route_table`` (as holder in ``term``) left after its deadline.

        Unconditional and needs no session: the writer's session has most likely been expired
        by then; the report only makes the current holder write its route again.
        """
        item = StrayItem(route_table, self.me, term, target, self._token())
        self._write(encode_stray(item), Expect.always(), gc_after_s=STRAY_GC_SECONDS)
        return item

    # --------------------------------------------------------------- requests
    def set_request(self, key: str, value: str, *, by: str = "", why: str = "") -> RequestItem:
        """Write an operator request (drain on/off, pin a route table, pause); last writer wins by design.

        ``since`` is when the request was made: kept from the item when only ``by``/``why`` change
        (the same request again), set now when it starts or ends.
        """
        current = self._get(key)
        prefix = next(p for p in REQUEST_PREFIXES if key.startswith(p))
        version = current.get("version") if current is not None else None
        if current is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise BadItem(key, "has no whole-number 'version'; delete it and retry")
        since = self.clock.wall()
        before = current.get("since") if current is not None else None
        if current is not None and current.get("owner", "") == value and isinstance(before, (int, float)) and before:
            since = float(before)
        item = RequestItem(key, key[len(prefix) :], value, (version or 0) + 1, self._token(), by, why, since)
        expect = Expect.item_absent() if current is None else Expect.matches(version=version)
        self._write(encode_request(item), expect)
        return item

    # ------------------------------------------------------------------ write
    def _write(self, attrs: Attrs, expect: Expect, *, gc_after_s: float | None = None, renewal: bool = False) -> None:
        """Conditional put whose unknown outcome is resolved by re-reading its token.

        ``renewal``: the write keeps our lease (a heartbeat, a new session): it gets the longest budget.
        """
        token = str(attrs["token"])
        key = str(attrs["item"])
        self._recent_tokens.append(token)
        try:
            self.store.put_item(
                self.group, attrs, expect, gc_after_s=gc_after_s, timeout=self._timeout(renewal=renewal)
            )
            return
        except ConditionFailed as exc:
            current = self._get(key)
            if current is not None and current.get("token") == token:
                return  # a retried attempt of ours had already applied it
            raise Conflict(f"{key} changed since it was read") from exc
        except OutcomeUnknown as exc:
            self._evidence.stale()  # no answer: a pause our clock missed may hide in the wait
            current = self._get(key)  # raises StoreUnavailable(outcome_unknown=True)
            if current is not None and current.get("token") == token:
                return
            raise StoreUnavailable(f"write of {key} was not applied: {exc}") from exc


__all__ = [
    "MEMBER_EXPIRED",
    "MEMBER_LEFT",
    "Coordinator",
    "Evidence",
    "MemberInfo",
    "SessionState",
    "StoreBudget",
    "new_token",
]
