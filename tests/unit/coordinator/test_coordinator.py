"""The coordinator's transitions and conditional failures, on both backends.

Every test runs on the in-memory store and on :class:`DynamoStore` against
moto's in-process ``mock_aws`` (pynamodb goes through botocore, so moto sees
real DynamoDB requests). Time is a :class:`FakeClock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeSerializer
from moto import mock_aws

from coordinator import (
    BadItem,
    ChangeObserver,
    Conflict,
    Coordinator,
    FakeClock,
    Health,
    MemberItem,
    RouteItem,
    SessionLost,
    StoreConfigError,
    StoreUnavailable,
)
from coordinator.dynamo import DynamoSettings, DynamoStore, init_table
from coordinator.items import MEMBER_ALIVE, MEMBER_EXPIRED, MEMBER_LEFT, RESTART_IDLE, RESTART_STOPPING, Attrs
from coordinator.memory import MemoryStore
from coordinator.store import ConditionFailed, Expect, OutcomeUnknown, Store, Unavailable

GROUP = "vpc-1"
LEASE = 1.0
OK = Health(True, {"probe": True}, ("i-b",))


# --------------------------------------------------------------------- backends
@dataclass
class Backend:
    name: str
    store: Store
    raw_put: Callable[[Attrs], None]


def _dynamo_value(value: Any) -> Any:
    return Decimal(str(value)) if isinstance(value, float) else value


@pytest.fixture(scope="module")
def moto_table() -> Iterator[tuple[DynamoStore, Any]]:
    """One mocked table per module (creating botocore clients is the slow part)."""
    with mock_aws():
        settings = DynamoSettings(table="nat-ha-unit")
        init_table(settings)
        yield DynamoStore(settings), boto3.client("dynamodb", region_name="us-east-1")


@pytest.fixture(params=["memory", "moto"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        mem = MemoryStore()
        yield Backend("memory", mem, lambda attrs: mem.raw_put(GROUP, attrs))
        return
    store, client = request.getfixturevalue("moto_table")
    table = store.settings.table
    for row in client.scan(TableName=table, ConsistentRead=True)["Items"]:  # a fresh group per test
        client.delete_item(TableName=table, Key={"group": row["group"], "item": row["item"]})
    ser = TypeSerializer()

    def raw_put(attrs: Attrs) -> None:
        item = {k: ser.serialize(_dynamo_value(v)) for k, v in attrs.items()}
        item["group"] = {"S": GROUP}
        client.put_item(TableName=table, Item=item)

    yield Backend("moto", store, raw_put)


class FaultyStore:
    """Wraps any store; ``plan`` maps an operation to a queue of faults to apply.

    Faults: ``"unavailable"`` (put: not applied, outcome unknown; reads: fail),
    ``"lost_reply"`` (put applied, then a timeout), ``"applied_then_conflict"``
    (put applied, the retry of it then fails its condition - botocore retrying a
    write whose first reply was lost), ``"tick"`` (advance the clock during the call).
    """

    def __init__(self, inner: Store, clock: FakeClock | None = None) -> None:
        self.inner = inner
        self.clock = clock
        self.plan: dict[str, list[str]] = {"put": [], "get": [], "query": []}

    def _next(self, op: str) -> str | None:
        return self.plan[op].pop(0) if self.plan[op] else None

    def query_group(self, group: str, *, timeout: float | None = None) -> list[Attrs]:
        if self._next("query") == "unavailable":
            raise Unavailable("injected")
        return self.inner.query_group(group)

    def get_item(self, group: str, item: str, *, timeout: float | None = None) -> Attrs | None:
        if self._next("get") == "unavailable":
            raise Unavailable("injected")
        return self.inner.get_item(group, item)

    def put_item(
        self, group: str, attrs: Attrs, expect: Expect, *, gc_after_s: float | None = None, timeout: float | None = None
    ) -> None:
        fault = self._next("put")
        if fault == "unavailable":
            raise OutcomeUnknown("injected: not applied")
        if fault == "tick" and self.clock is not None:
            self.clock.advance(0.3)
        self.inner.put_item(group, attrs, expect, gc_after_s=gc_after_s)
        if fault == "lost_reply":
            raise OutcomeUnknown("injected: applied, reply lost")
        if fault == "applied_then_conflict":
            raise ConditionFailed(str(attrs["item"]))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def member(store: Store, clock: FakeClock, me: str, lease: float = LEASE) -> Coordinator:
    return Coordinator(store, GROUP, me, clock, lease)


def started(store: Store, clock: FakeClock, me: str) -> Coordinator:
    c = member(store, clock, me)
    c.start_session(OK)
    return c


def snap_member(c: Coordinator, who: str) -> MemberItem:
    return c.read_group().members[who]


def snap_route(c: Coordinator, rtb: str) -> RouteItem:
    return c.read_group().routes[rtb]


# ---------------------------------------------------------------------- session
def test_start_session_fresh(backend: Backend, clock: FakeClock) -> None:
    a = member(backend.store, clock, "i-a")
    assert a.remaining() == 0.0
    item = a.start_session(OK)
    assert (item.version, item.state, item.lease_ms) == (1, MEMBER_ALIVE, 1000)
    assert a.remaining() == pytest.approx(LEASE)
    seen = snap_member(a, "i-a")
    assert seen.session == item.session and seen.token == item.token and seen.health == OK
    assert a.read_group().bad_items == ()


def test_start_session_supersedes_an_earlier_one(backend: Backend, clock: FakeClock) -> None:
    old = started(backend.store, clock, "i-a")
    new = member(backend.store, clock, "i-a")  # the agent restarted
    item = new.start_session(OK)
    assert item.version == 2 and item.session != old.session.session  # type: ignore[union-attr]
    with pytest.raises(SessionLost):
        old.heartbeat(OK)
    assert old.session is None and old.remaining() == 0.0
    assert new.heartbeat(OK).version == 3


def test_start_session_with_stale_observation_conflicts(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    seen = snap_member(a, "i-a")
    a.heartbeat(OK)
    twin = member(backend.store, clock, "i-a")
    with pytest.raises(Conflict):
        twin.start_session(OK, observed=seen)
    assert twin.session is None


def test_start_session_refuses_a_member_item_without_whole_version(backend: Backend, clock: FakeClock) -> None:
    backend.raw_put({"item": "member#i-a", "version": "seven", "state": "alive"})
    with pytest.raises(BadItem) as info:
        member(backend.store, clock, "i-a").start_session(OK)
    assert info.value.key == "member#i-a"


def test_heartbeat_renews_from_the_time_it_was_sent(backend: Backend, clock: FakeClock) -> None:
    faulty = FaultyStore(backend.store, clock)
    a = started(faulty, clock, "i-a")
    clock.advance(0.7)
    sent_at = clock.monotonic()
    faulty.plan["put"].append("tick")  # the request takes 0.3 s
    item = a.heartbeat(OK)
    assert item.version == 2 and snap_member(a, "i-a").version == 2
    assert a.session is not None and a.session.valid_until == pytest.approx(sent_at + LEASE)
    assert a.remaining() == pytest.approx(LEASE - 0.3)


def test_heartbeat_without_session_is_session_lost(backend: Backend, clock: FakeClock) -> None:
    with pytest.raises(SessionLost):
        member(backend.store, clock, "i-a").heartbeat(OK)


def test_session_runs_out_on_the_holders_clock(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    clock.advance(LEASE)
    assert a.remaining() <= 0
    with pytest.raises(SessionLost):
        a.claim_route("rtb-1", None)
    # a late heartbeat still renews if nobody expired the session meanwhile
    a.heartbeat(OK)
    assert a.remaining() == pytest.approx(LEASE)


def test_heartbeat_after_peer_expired_it_is_session_lost(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    expired = b.expire_member(snap_member(b, "i-a"))
    assert (expired.state, expired.expired_by, expired.version) == (MEMBER_EXPIRED, "i-b", 2)
    with pytest.raises(SessionLost):
        a.heartbeat(OK)
    assert a.session is None and a.remaining() == 0.0
    seen = snap_member(b, "i-a")
    assert seen.state == MEMBER_EXPIRED and seen.version == 2  # the failed renewal changed nothing
    again = member(backend.store, clock, "i-a")
    assert again.start_session(OK).version == 3  # it may come back with a new session


def test_heartbeat_adopts_its_own_late_landed_write(backend: Backend, clock: FakeClock) -> None:
    faulty = FaultyStore(backend.store, clock)
    a = started(faulty, clock, "i-a")
    faulty.plan["put"].append("lost_reply")
    faulty.plan["get"].append("unavailable")  # ... and the re-read fails too
    with pytest.raises(StoreUnavailable) as info:
        a.heartbeat(OK)
    assert info.value.outcome_unknown
    assert a.session is not None and a.session.version == 1  # not assumed
    assert snap_member(a, "i-a").version == 2  # but it did land
    item = a.heartbeat(OK)  # conflicts on version 1, recognises its token, renews on 2
    assert item.version == 3 and snap_member(a, "i-a").version == 3
    assert a.session is not None and a.session.version == 3


def test_heartbeat_does_not_adopt_a_foreign_write(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    twin = member(backend.store, clock, "i-a")
    twin.start_session(OK)
    with pytest.raises(SessionLost):
        a.heartbeat(OK)


# --------------------------------------------------------- resume (a restart)
class LandsFirst:
    """Wraps a store: ``before_put`` runs once, just before the next write (a late write landing first)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.before_put: Callable[[], None] | None = None

    def query_group(self, group: str, *, timeout: float | None = None) -> list[Attrs]:
        return self.inner.query_group(group)

    def get_item(self, group: str, item: str, *, timeout: float | None = None) -> Attrs | None:
        return self.inner.get_item(group, item)

    def put_item(
        self, group: str, attrs: Attrs, expect: Expect, *, gc_after_s: float | None = None, timeout: float | None = None
    ) -> None:
        hook, self.before_put = self.before_put, None
        if hook is not None:
            hook()
        self.inner.put_item(group, attrs, expect, gc_after_s=gc_after_s)


def test_resume_continues_the_session_on_our_own_clock(backend: Backend, clock: FakeClock) -> None:
    """A new process takes the dead one's session over: same session, next version, its own lease clock."""
    unwell = Health(False, {"ip_forward": False}, ())
    dead = member(backend.store, clock, "i-a")
    dead.start_session(unwell)
    dead.heartbeat(unwell, draining=True)
    clock.advance(0.9)  # it died 0.9 s after its last renewal: that lease is nearly spent
    told: list[str] = []
    new = Coordinator(backend.store, GROUP, "i-a", clock, LEASE, on_session=told.append)
    item = new.resume_session(dead.session.session)  # type: ignore[union-attr]
    assert item.session == dead.session.session and item.version == 3  # type: ignore[union-attr]
    assert new.remaining() == pytest.approx(LEASE)  # from this renewal, not the dead process's
    assert told == [item.session]
    seen = snap_member(new, "i-a")
    assert (seen.version, seen.session, seen.state) == (3, item.session, MEMBER_ALIVE)
    assert seen.health == unwell and seen.draining  # carried over until the next renewal reports ours
    assert new.heartbeat(OK).version == 4


def test_a_restart_announcement_is_stored_and_the_next_process_clears_it(backend: Backend, clock: FakeClock) -> None:
    """The exiting process's last renewal declares its grace (peers read it back); the resume clears it."""
    dead = started(backend.store, clock, "i-a")
    dead.heartbeat(OK, restart_grace_s=10.0)
    assert snap_member(dead, "i-a").restart_grace_ms == 10_000
    new = Coordinator(backend.store, GROUP, "i-a", clock, LEASE)
    new.resume_session(dead.session.session)  # type: ignore[union-attr]
    assert snap_member(new, "i-a").restart_grace_ms == 0
    new.heartbeat(OK, restart_grace_s=5.0)
    new.heartbeat(OK)
    assert snap_member(new, "i-a").restart_grace_ms == 0


def test_resume_refuses_a_session_a_peer_expired_meanwhile(backend: Backend, clock: FakeClock) -> None:
    dead = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    b.expire_member(snap_member(b, "i-a"))
    new = member(backend.store, clock, "i-a")
    with pytest.raises(SessionLost, match="expired"):
        new.resume_session(dead.session.session)  # type: ignore[union-attr]
    assert new.session is None
    assert snap_member(b, "i-a").state == MEMBER_EXPIRED  # untouched: the caller starts a new session
    assert new.start_session(OK).version == 3


def test_resume_refuses_a_stale_record(backend: Backend, clock: FakeClock) -> None:
    """The record names a session that is no longer this member's (superseded), or no item at all."""
    started(backend.store, clock, "i-a")
    new = member(backend.store, clock, "i-a")
    with pytest.raises(SessionLost, match="runs session"):
        new.resume_session("0123456789abcdef")
    with pytest.raises(SessionLost, match="has no item"):
        member(backend.store, clock, "i-z").resume_session("0123456789abcdef")
    assert new.session is None


def test_resume_after_a_late_renewal_of_the_dead_process(backend: Backend, clock: FakeClock) -> None:
    """The dead process's last renewal lands between our read and our write: ours is retried on it."""
    wrapped = LandsFirst(backend.store)
    dead = started(wrapped, clock, "i-a")
    new = member(wrapped, clock, "i-a")
    wrapped.before_put = lambda: dead.heartbeat(OK)  # in flight when it died; lands now (version 2)
    item = new.resume_session(dead.session.session)  # type: ignore[union-attr]
    assert item.version == 3 and snap_member(new, "i-a").version == 3
    with pytest.raises(SessionLost):  # anything else the dead process had in flight now fails its condition
        dead.heartbeat(OK)
    assert snap_member(new, "i-a").version == 3


def test_resume_loses_a_race_with_a_peer_expiring_it(backend: Backend, clock: FakeClock) -> None:
    wrapped = LandsFirst(backend.store)
    dead = started(wrapped, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    seen = snap_member(b, "i-a")
    wrapped.before_put = lambda: b.expire_member(seen)
    with pytest.raises(SessionLost, match="expired"):
        member(wrapped, clock, "i-a").resume_session(dead.session.session)  # type: ignore[union-attr]


def test_leave_marks_member_left_and_drops_session(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    a.leave(OK)
    seen = snap_member(a, "i-a")
    assert seen.state == MEMBER_LEFT and seen.draining and seen.version == 2
    assert a.session is None
    a.leave(OK)  # no session: nothing to do
    assert snap_member(a, "i-a").version == 2


# ----------------------------------------------------------------------- expire
def test_expire_member_conflicts_when_version_moved(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    watched = snap_member(b, "i-a")
    a.heartbeat(OK)  # it was alive after all
    with pytest.raises(Conflict):
        b.expire_member(watched)
    assert snap_member(b, "i-a").state == MEMBER_ALIVE
    a.heartbeat(OK)


def test_expire_member_conflicts_when_already_expired(backend: Backend, clock: FakeClock) -> None:
    started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    c = started(backend.store, clock, "i-c")
    watched = snap_member(b, "i-a")
    b.expire_member(watched)
    with pytest.raises(Conflict):
        c.expire_member(watched)
    with pytest.raises(Conflict):
        c.expire_member(snap_member(c, "i-a"))  # expired is not alive
    assert snap_member(c, "i-a").expired_by == "i-b"


def test_expire_member_refuses_self(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    with pytest.raises(ValueError):
        a.expire_member(snap_member(a, "i-a"))


# ----------------------------------------------------------------------- routes
def test_claim_absent_route(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    r = a.claim_route("rtb-1", None, home="i-a")
    assert (r.owner, r.term, r.version, r.home) == ("i-a", 1, 1, "i-a")
    assert a.session is not None and r.owner_session == a.session.session
    assert snap_route(a, "rtb-1") == r


def test_claim_absent_route_lost_race(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    a.claim_route("rtb-1", None)
    with pytest.raises(Conflict):
        b.claim_route("rtb-1", None)
    assert snap_route(b, "rtb-1").owner == "i-a"


def test_takeover_of_orphaned_route(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    held = a.claim_route("rtb-1", None, home="i-a")
    watcher = ChangeObserver()
    seen = snap_member(b, "i-a")
    watcher.observe(seen.key, (seen.session, seen.version), clock.monotonic())
    # a goes silent; b keeps its own session and watches a's version stand still
    for _ in range(3):
        clock.advance(0.5)
        b.heartbeat(OK)
    assert watcher.is_stale(seen.key, seen.lease_ms / 1000, 0.5, clock.monotonic())
    assert a.remaining() <= 0  # a's own clock already told it to stop
    b.expire_member(seen)
    taken = b.claim_route("rtb-1", snap_route(b, "rtb-1"))
    assert (taken.owner, taken.term, taken.version, taken.home) == ("i-b", 2, 2, "i-a")
    with pytest.raises(SessionLost):
        a.heartbeat(OK)
    with pytest.raises(SessionLost):
        a.release_route(held)


def test_claim_lost_race_on_observed_version(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    c = started(backend.store, clock, "i-c")
    a.claim_route("rtb-1", None)
    a_seen = snap_member(b, "i-a")
    route = snap_route(b, "rtb-1")
    b.expire_member(a_seen)
    won = b.claim_route("rtb-1", route)
    with pytest.raises(Conflict):
        c.claim_route("rtb-1", route)
    final = snap_route(c, "rtb-1")
    assert final == won and final.term == 2


def test_claim_needs_a_valid_session(backend: Backend, clock: FakeClock) -> None:
    a = member(backend.store, clock, "i-a")
    with pytest.raises(SessionLost):
        a.claim_route("rtb-1", None)
    a.start_session(OK)
    a.drop_session()
    with pytest.raises(SessionLost):
        a.claim_route("rtb-1", None)
    assert "rtb-1" not in a.read_group().routes


def test_hand_over_route(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    held = a.claim_route("rtb-1", None)
    given = a.hand_over_route(held, snap_member(a, "i-b"))
    assert (given.owner, given.term, given.version) == ("i-b", 2, 2)
    assert b.session is not None and given.owner_session == b.session.session
    assert snap_route(b, "rtb-1") == given
    with pytest.raises(Conflict):
        a.hand_over_route(held, snap_member(a, "i-b"))  # no longer a's
    with pytest.raises(Conflict):
        a.release_route(given)  # owned by b, not by a
    assert b.release_route(given).term == 3


def test_hand_over_refuses_a_dead_successor(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    held = a.claim_route("rtb-1", None)
    b.leave(OK)
    with pytest.raises(ValueError):
        a.hand_over_route(held, snap_member(a, "i-b"))
    assert snap_route(a, "rtb-1") == held


def test_hand_over_with_stale_route_conflicts(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    held = a.claim_route("rtb-1", None)
    b.expire_member(snap_member(b, "i-a"))
    taken = b.claim_route("rtb-1", held)
    a.start_session(OK)  # a comes back with a new session, still holding the old route object
    with pytest.raises(Conflict):
        a.hand_over_route(held, snap_member(a, "i-b"))
    assert snap_route(a, "rtb-1") == taken


def test_release_route(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    held = a.claim_route("rtb-1", None)
    released = a.release_route(held)
    assert (released.owner, released.owner_session, released.term, released.version) == ("", "", 2, 2)
    assert snap_route(b, "rtb-1") == released
    with pytest.raises(Conflict):
        a.release_route(held)  # stale object: the write's condition fails
    assert b.claim_route("rtb-1", released).term == 3


def test_release_by_a_new_session_of_the_owner_conflicts(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    held = a.claim_route("rtb-1", None)
    a.start_session(OK, observed=snap_member(a, "i-a"))  # new session: the old leases are gone
    with pytest.raises(Conflict):
        a.release_route(held)


# --------------------------------------------------------------------- restarts
def test_restart_lease_claim_phase_reset(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    lease = b.claim_restart("i-a", None, cooldown_s=300)
    assert (lease.owner, lease.term, lease.version, lease.phase, lease.attempts, lease.cooldown_ms) == (
        "i-b", 1, 1, RESTART_IDLE, 0, 300_000,
    )  # fmt: skip
    with pytest.raises(Conflict):
        a.claim_restart("i-a", None, cooldown_s=300)  # lost race on an absent item
    stopping = b.set_restart_phase(lease, RESTART_STOPPING, attempts=1)
    assert (stopping.phase, stopping.attempts, stopping.version, stopping.term) == (RESTART_STOPPING, 1, 2, 1)
    assert a.read_group().restarts["i-a"] == stopping
    with pytest.raises(Conflict):
        a.set_restart_phase(stopping, RESTART_IDLE)  # not the holder
    with pytest.raises(ValueError):
        b.reset_own_restart(stopping)  # only the target resets
    cleared = a.reset_own_restart(stopping)  # the recovered target also releases the lease (new term)
    assert (cleared.attempts, cleared.phase, cleared.version, cleared.owner, cleared.term) == (
        0,
        RESTART_IDLE,
        3,
        "",
        2,
    )
    with pytest.raises(Conflict):
        a.reset_own_restart(stopping)  # stale version
    c = started(backend.store, clock, "i-c")
    again = c.claim_restart("i-a", cleared, cooldown_s=60)
    assert (again.owner, again.term, again.version, again.attempts) == ("i-c", 3, 4, 0)
    with pytest.raises(Conflict):
        b.set_restart_phase(stopping, RESTART_IDLE)  # b lost the lease to c


def test_restart_claim_keeps_the_attempt_count(backend: Backend, clock: FakeClock) -> None:
    started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    lease = b.set_restart_phase(b.claim_restart("i-a", None, 300), RESTART_STOPPING, attempts=2)
    c = started(backend.store, clock, "i-c")
    assert c.claim_restart("i-a", lease, 300).attempts == 2
    with pytest.raises(Conflict):
        c.claim_restart("i-a", lease, 300)


# -------------------------------------------------------------- unknown outcomes
def test_lost_reply_is_resolved_as_success_by_token(backend: Backend, clock: FakeClock) -> None:
    faulty = FaultyStore(backend.store, clock)
    a = started(faulty, clock, "i-a")
    faulty.plan["put"].append("lost_reply")
    r = a.claim_route("rtb-1", None)
    assert snap_route(a, "rtb-1") == r


def test_applied_then_condition_failed_is_success(backend: Backend, clock: FakeClock) -> None:
    faulty = FaultyStore(backend.store, clock)
    a = started(faulty, clock, "i-a")
    faulty.plan["put"].append("applied_then_conflict")
    r = a.claim_route("rtb-1", None)
    assert snap_route(a, "rtb-1").token == r.token
    faulty.plan["put"].append("applied_then_conflict")
    assert a.heartbeat(OK).version == 2 and snap_member(a, "i-a").version == 2


def test_unapplied_write_is_store_unavailable(backend: Backend, clock: FakeClock) -> None:
    faulty = FaultyStore(backend.store, clock)
    a = started(faulty, clock, "i-a")
    faulty.plan["put"].append("unavailable")
    with pytest.raises(StoreUnavailable) as info:
        a.claim_route("rtb-1", None)
    assert not info.value.outcome_unknown  # the re-read showed it was not applied
    assert "rtb-1" not in a.read_group().routes
    faulty.plan["put"].append("unavailable")
    faulty.plan["get"].append("unavailable")
    with pytest.raises(StoreUnavailable) as info:
        a.claim_route("rtb-1", None)
    assert info.value.outcome_unknown


def test_failed_read_is_store_unavailable(backend: Backend, clock: FakeClock) -> None:
    faulty = FaultyStore(backend.store, clock)
    a = started(faulty, clock, "i-a")
    faulty.plan["query"].append("unavailable")
    with pytest.raises(StoreUnavailable):
        a.read_group()
    assert a.read_group().members["i-a"].version == 1


def test_memory_store_fault_hook_lost_reply_and_unavailable(clock: FakeClock) -> None:
    faults: list[str | None] = []
    store = MemoryStore(fault_hook=lambda op, group, item: faults.pop(0) if op == "put" and faults else None)
    a = started(store, clock, "i-a")
    faults.append("lost_reply")
    held = a.claim_route("rtb-1", None)
    assert store.get_item(GROUP, "route#rtb-1") is not None
    faults.append("unavailable")
    with pytest.raises(StoreUnavailable) as info:
        a.release_route(held)
    assert not info.value.outcome_unknown
    assert snap_route(a, "rtb-1") == held
    reads: list[str] = []
    store.fault_hook = lambda op, group, item: "unavailable" if op in reads else None
    reads.append("query")
    with pytest.raises(StoreUnavailable):
        a.read_group()


# -------------------------------------------------------------------- bad items
BAD_ROWS: list[Attrs] = [
    {"item": "member#i-x", "state": "alive", "session": "s", "version": "seven", "token": "t", "lease_ms": 1000,
     "health": '{"healthy": true}'},
    {"item": "member#i-y", "state": "zombie", "session": "s", "version": 1, "token": "t", "lease_ms": 1000,
     "health": '{"healthy": true}'},
    {"item": "member#i-z", "state": "alive", "session": "s", "version": 1, "token": "t", "lease_ms": 1000,
     "health": "not json"},
    {"item": "member#i-w", "state": "alive", "session": "s", "version": 1, "token": "t", "lease_ms": 1000,
     "health": "[1, 2]"},
    {"item": "member#i-v", "state": "alive", "session": "s", "version": 1.5, "token": "t", "lease_ms": 1000,
     "health": '{"healthy": true}'},
    {"item": "route#rtb-x", "owner": "i-a", "term": 1, "version": 1, "token": "t"},  # no owner_session
    {"item": "route#rtb-y", "term": -1, "version": 1, "token": "t"},
    {"item": "route#rtb-z", "term": True, "version": 1, "token": "t"},
    {"item": "restart#i-a", "phase": "exploding", "term": 1, "version": 1, "token": "t", "attempts": 0,
     "cooldown_ms": 0},
    {"item": "lock#anything", "version": 1},
    {"item": "member#", "version": 1},
]  # fmt: skip


def test_bad_items_are_reported_not_raised(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    a.claim_route("rtb-1", None)
    for row in BAD_ROWS:
        backend.raw_put(row)
    snap = a.read_group()
    assert set(snap.members) == {"i-a"} and set(snap.routes) == {"rtb-1"} and snap.restarts == {}
    bad = {b.key: b.problem for b in snap.bad_items}
    assert set(bad) == {str(row["item"]) for row in BAD_ROWS}
    assert "version" in bad["member#i-x"] and "state" in bad["member#i-y"]
    assert "unknown item kind" in bad["lock#anything"]
    assert all(problem for problem in bad.values())


def test_dynamo_items_with_wrong_attribute_types_are_reported() -> None:
    with mock_aws():
        settings = DynamoSettings(table="nat-ha-types")
        init_table(settings)
        client = boto3.client("dynamodb", region_name="us-east-1")
        rows = {
            "member#i-x": {"version": {"S": "1"}, "state": {"S": "alive"}},
            "member#i-y": {"version": {"N": "1"}, "state": {"S": "alive"}, "session": {"N": "5"},
                           "token": {"S": "t"}, "lease_ms": {"N": "1000"},
                           "health": {"M": {"healthy": {"BOOL": True}}}},
            "route#rtb-x": {"term": {"L": [{"N": "1"}]}, "version": {"N": "1"}, "token": {"S": "t"}},
            "route#rtb-y": {"term": {"N": "1"}, "version": {"B": b"\x01"}, "token": {"S": "t"}},
            "restart#i-a": {"term": {"NULL": True}, "version": {"N": "1"}, "token": {"S": "t"}, "phase": {"S": "idle"},
                            "attempts": {"SS": ["a"]}, "cooldown_ms": {"N": "0"}},
            "surprise": {"version": {"N": "1"}},
        }  # fmt: skip
        for key, attrs in rows.items():
            client.put_item(TableName=settings.table, Item={"group": {"S": GROUP}, "item": {"S": key}, **attrs})
        a = Coordinator(DynamoStore(settings), GROUP, "i-a", FakeClock(), LEASE)
        a.start_session(OK)
        snap = a.read_group()
        assert set(snap.members) == {"i-a"} and snap.routes == {} and snap.restarts == {}
        assert {b.key for b in snap.bad_items} == set(rows)


# ----------------------------------------------------------------------- table
def test_init_table_is_idempotent_on_demand() -> None:
    with mock_aws():
        settings = DynamoSettings(table="nat-ha-od")
        first = init_table(settings)
        second = init_table(settings)
        assert any("created table nat-ha-od (pay-per-request)" in line for line in first)
        assert any("table nat-ha-od exists" in line for line in second)
        assert not any("created" in line for line in second)
        desc = boto3.client("dynamodb", region_name="us-east-1").describe_table(TableName="nat-ha-od")["Table"]
        assert desc["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        assert {k["AttributeName"]: k["KeyType"] for k in desc["KeySchema"]} == {"group": "HASH", "item": "RANGE"}


def test_init_table_provisioned() -> None:
    with mock_aws():
        settings = DynamoSettings(table="nat-ha-prov")
        lines = init_table(settings, billing="PROVISIONED", read_capacity=3, write_capacity=7)
        assert any("(provisioned)" in line for line in lines)
        desc = boto3.client("dynamodb", region_name="us-east-1").describe_table(TableName="nat-ha-prov")["Table"]
        assert desc["ProvisionedThroughput"]["ReadCapacityUnits"] == 3
        assert desc["ProvisionedThroughput"]["WriteCapacityUnits"] == 7
        assert any("exists" in line for line in init_table(settings, billing="PROVISIONED"))


def test_init_table_rejects_unknown_billing() -> None:
    with pytest.raises(ValueError):
        init_table(DynamoSettings(table="x"), billing="FREE")


def _every_store_call(c: Coordinator) -> list[Callable[[], object]]:
    """Operations that reach the store without a session (a query, a get, a put)."""
    peer = MemberItem("i-b", "s", MEMBER_ALIVE, 1, "t", 1000, OK)
    return [c.read_group, lambda: c.start_session(OK), lambda: c.expire_member(peer)]


def test_missing_table_is_store_config_error() -> None:
    with mock_aws():
        c = Coordinator(DynamoStore(DynamoSettings(table="does-not-exist")), GROUP, "i-a", FakeClock(), LEASE)
        for op in _every_store_call(c):
            with pytest.raises(StoreConfigError):
                op()


def test_unreachable_endpoint_is_store_unavailable_quickly() -> None:
    # Default settings: one attempt per call (botocore would sleep 0-1 s before a retry).
    default = DynamoStore(DynamoSettings(table="nat-ha", endpoint_url="http://127.0.0.1:1"))
    began = time.monotonic()
    with pytest.raises(StoreUnavailable):
        Coordinator(default, GROUP, "i-a", FakeClock(), LEASE).read_group()
    assert time.monotonic() - began < 1.6
    single = DynamoStore(DynamoSettings(table="nat-ha", endpoint_url="http://127.0.0.1:1", max_attempts=1))
    c = Coordinator(single, GROUP, "i-a", FakeClock(), LEASE)
    for op in _every_store_call(c):
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):  # typed, never a botocore/pynamodb exception
            op()
        took = time.monotonic() - began
        assert took < 0.5, f"{op} took {took:.2f} s"


def test_failed_calls_reach_the_call_observer() -> None:
    calls: list[tuple[str, str, float, str | None]] = []
    settings = DynamoSettings(table="nat-ha", endpoint_url="http://127.0.0.1:1", max_attempts=1)
    store = DynamoStore(settings, on_call=lambda *call: calls.append(call))
    with pytest.raises(Unavailable):
        store.query_group(GROUP)
    assert [(s, op, err) for s, op, _, err in calls] == [("dynamodb", "Query", "EndpointConnectionError")]


# -------------------------------------------------------------------- observer
def test_change_observer_staleness() -> None:
    o = ChangeObserver()
    assert o.unchanged_for("member#i-a", 10.0) == 0.0
    assert not o.is_stale("member#i-a", 1.0, 0.5, 1e9)  # never seen: never stale
    o.observe("member#i-a", ("s1", 1), 100.0)
    o.observe("member#i-a", ("s1", 1), 100.9)  # same version again: the clock keeps running
    assert o.unchanged_for("member#i-a", 101.0) == pytest.approx(1.0)
    assert not o.is_stale("member#i-a", 1.0, 0.5, 101.49)
    assert o.is_stale("member#i-a", 1.0, 0.5, 101.5)
    o.observe("member#i-a", ("s1", 2), 101.6)  # renewed: start over
    assert not o.is_stale("member#i-a", 1.0, 0.5, 103.0)
    assert o.is_stale("member#i-a", 1.0, 0.5, 103.1)
    o.observe("member#i-a", ("s2", 2), 103.2)  # new session with the same number: still a change
    assert o.unchanged_for("member#i-a", 103.2) == 0.0
    assert o.unchanged_for("member#i-a", 103.0) == 0.0  # never negative
    o.observe("route#rtb-1", ("t", 1), 0.0)
    o.forget_missing({"member#i-a"})
    assert set(o.snapshot()) == {"member#i-a"}


def test_change_observer_bounds_when_a_version_was_written() -> None:
    # A version first seen at a read was written after the last read that still showed the one before:
    # that read, not the first sighting, bounds how old it can be (a reader whose cycles are long reads
    # seldom; agent.cycle.standing judges a peer's word on EC2 by it).
    o = ChangeObserver()
    o.observe("member#i-b", ("s", 1), 10.0)
    assert o.written_after("member#i-b") is None  # never saw an earlier version: no bound
    o.observe("member#i-b", ("s", 1), 10.3)
    o.observe("member#i-b", ("s", 2), 20.0)  # read 9.7 s later: written between 10.3 (less a read) and 20
    assert o.written_after("member#i-b") == 10.3
    o.observe("member#i-b", ("s", 2), 20.4)
    assert o.written_after("member#i-b") == 10.3  # the same version again: the bound stays
    o.forget_missing(set())
    o.observe("member#i-b", ("s", 3), 30.0)  # forgotten in between: nothing known again
    assert o.written_after("member#i-b") is None
    assert o.written_after("member#i-x") is None


def test_fake_clock_and_coordinator_arguments() -> None:
    c = FakeClock(5.0)
    c.advance(1.5)
    assert c.monotonic() == 6.5 and c.wall() == pytest.approx(6.5 + 1_700_000_000.0)
    with pytest.raises(ValueError):
        c.advance(-0.1)
    with pytest.raises(ValueError):
        Coordinator(MemoryStore(), GROUP, "i-a", c, 0)
    with pytest.raises(ValueError):
        Expect.matches()


# ------------------------------------------------------------------ confirm (issue 17): authority from DynamoDB
def test_confirm_says_yes_only_while_dynamodb_agrees_whatever_the_local_clock_says(
    backend: Backend, clock: FakeClock
) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    route = a.claim_route("rtb-1", None)
    assert a.confirm(route=("rtb-1", route.term)) == ""
    assert "term 9" in a.confirm(route=("rtb-1", 9))
    assert "not by this session" in b.confirm(route=("rtb-1", route.term))
    # i-a's VM pauses (its clock does not count it): its lease still looks valid, but i-b expired it
    # and took the table. The local check passes; the confirmation does not.
    b.expire_member(snap_member(b, "i-a"))
    assert a.remaining() > 0
    assert "no longer alive in DynamoDB" in a.confirm(route=("rtb-1", route.term))
    b.claim_route("rtb-1", snap_route(b, "rtb-1"))
    assert "no longer alive" in a.confirm()
    assert member(backend.store, clock, "i-c").confirm() == "no session"


def test_a_claim_and_a_renewal_confirm_the_table_without_a_new_read(backend: Backend, clock: FakeClock) -> None:
    # What DynamoDB already answered is a confirmation: our claim shows the table ours in its term,
    # a renewal it accepted shows our session alive (and restarts every peer's watch of it); together
    # they confirm the table as of the renewal's send.
    t0 = clock.monotonic()
    a = started(backend.store, clock, "i-a")  # the new session: alive as of t0
    clock.advance(0.3)
    route = a.claim_route("rtb-1", None)
    assert a.knows("rtb-1", route.term) and not a.knows("rtb-1", route.term + 1)
    assert a.confirmed("rtb-1", route.term, 0.4) == t0, "the session's start is the latest answer showing it alive"
    clock.advance(0.2)
    assert a.confirmed("rtb-1", route.term, 0.4) is None, "0.5 s old: too old"
    a.heartbeat(OK)
    assert a.confirmed("rtb-1", route.term, 0.4) == pytest.approx(t0 + 0.5)
    assert a.confirmed("rtb-1", route.term + 1, 0.4) is None and a.confirmed("rtb-2", 1, 0.4) is None
    clock.advance(0.1)
    assert a.read_group().routes["rtb-1"].owner == "i-a"
    assert a.confirmed("rtb-1", route.term, 0.4) == pytest.approx(t0 + 0.5), "a read restarts no peer's watch"


class FlakyStore(MemoryStore):
    """Reads that get no answer when ``down`` (a timeout)."""

    down = False

    def query_group(self, group: str, *, timeout: float | None = None) -> list[Attrs]:
        if self.down:
            raise Unavailable("injected: no answer before the deadline")
        return super().query_group(group, timeout=timeout)


def test_a_store_call_without_an_answer_makes_the_renewal_too_old_to_confirm(clock: FakeClock) -> None:
    # A pause our clock did not count may hide in the wait of a call that got no answer: the next
    # write is confirmed by a new round trip, whose answer shows such a pause.
    store = FlakyStore()
    a = started(store, clock, "i-a")
    route = a.claim_route("rtb-1", None)
    assert a.confirmed("rtb-1", route.term, 0.4) is not None
    store.down = True
    with pytest.raises(StoreUnavailable):
        a.read_group()
    assert a.confirmed("rtb-1", route.term, 0.4) is None and a.knows("rtb-1", route.term)
    store.down = False
    a.heartbeat(OK)
    assert a.confirmed("rtb-1", route.term, 0.4) == clock.monotonic()


def test_the_evidence_is_forgotten_when_dynamodb_or_we_say_otherwise(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    route = a.claim_route("rtb-1", None)
    a.claim_route("rtb-2", None)
    # A read that shows the table held by someone else drops it (b took it after expiring us).
    b.expire_member(snap_member(b, "i-a"))
    b.claim_route("rtb-1", snap_route(b, "rtb-1"))
    a.read_group()
    assert not a.knows("rtb-1", route.term) and not a.knows("rtb-2", 1), "our session is expired: nothing is known"
    assert a.confirmed("rtb-2", 1, 10.0) is None
    # A pause our clock did not count: nothing DynamoDB said before it holds.
    c = started(backend.store, clock, "i-c")
    r3 = c.claim_route("rtb-3", None)
    c.lapse()
    assert not c.knows("rtb-3", r3.term)
    c.heartbeat(OK)
    assert c.confirmed("rtb-3", r3.term, 10.0) is None, "the table must be shown ours again (a read)"
    c.read_group()
    assert c.confirmed("rtb-3", r3.term, 10.0) is not None
    # Before a hand-over or a release is sent, the table is no longer ours to confirm (it may land).
    c.hand_over_route(snap_route(c, "rtb-3"), snap_member(c, "i-b"))
    assert not c.knows("rtb-3", r3.term)
    r4 = c.claim_route("rtb-4", None)
    c.release_route(r4)
    assert not c.knows("rtb-4", r4.term)
    c.drop_session()
    assert c.confirmed("rtb-3", r3.term, 10.0) is None


def test_confirm_of_a_stop_needs_the_restart_lease_and_the_target_unchanged(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    b = started(backend.store, clock, "i-b")
    lease = a.claim_restart("i-b", None, 300.0)
    expired = a.expire_member(snap_member(a, "i-b"))
    assert a.confirm(restart=("i-b", lease.term), unchanged=expired) == ""
    assert "restart lease" in a.confirm(restart=("i-b", lease.term + 1))
    b.drop_session()
    member(backend.store, clock, "i-b").start_session(OK, snap_member(a, "i-b"))  # it came back
    assert "changed since" in a.confirm(restart=("i-b", lease.term), unchanged=expired)


def test_lapse_drops_authority_until_a_renewal_sent_afterwards(backend: Backend, clock: FakeClock) -> None:
    a = started(backend.store, clock, "i-a")
    a.lapse()
    assert a.remaining() <= 0 and a.session is not None
    with pytest.raises(SessionLost):
        a.claim_route("rtb-1", None)
    clock.advance(0.1)
    a.heartbeat(OK)  # nobody expired it: the session renews
    assert a.remaining() == pytest.approx(LEASE)


def test_a_heartbeat_says_how_slow_its_dynamodb_path_is_and_a_bad_value_is_only_ignored() -> None:
    # Peers order their claims by it (agent.decide: a slow path claims last); a value that is not a
    # number of seconds must never make the whole heartbeat unreadable.
    h = Health(True, {"ip_forward": True}, (), store_rtt=0.2468)
    assert Health.from_json(h.to_json()).store_rtt == 0.247
    assert Health.from_json(Health(True).to_json()).store_rtt is None
    for bad in ('"slow"', "-1", "true", "1e12"):
        assert Health.from_json('{"healthy": true, "store_rtt_s": ' + bad + "}").store_rtt is None


def test_a_heartbeat_dates_its_round_trip_figure_and_one_of_the_previous_version_reads_undated() -> None:
    # A reader that judges its own path lossy trusts a fast figure only if it was measured after its own
    # renewals turned slow (agent.decide, sim seed 6403); a heartbeat of the previous version (a rolling
    # upgrade) has no date and reads as before. (Undo: drop store_rtt_age_s from Health.to_json.)
    h = Health(True, {"ip_forward": True}, (), store_rtt=0.02, store_rtt_age=0.6914)
    back = Health.from_json(h.to_json())
    assert (back.store_rtt, back.store_rtt_age) == (0.02, 0.691)
    old = Health.from_json('{"checks":{"ip_forward":true},"detail":"","healthy":true,"reaches":[],"store_rtt_s":0.02}')
    assert old == Health(True, {"ip_forward": True}, (), "", None, 0.02, None)
    for bad in ('"old"', "-1", "false", "1e12"):
        assert Health.from_json('{"healthy": true, "store_rtt_age_s": ' + bad + "}").store_rtt_age is None
