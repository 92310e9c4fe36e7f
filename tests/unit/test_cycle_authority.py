"""Authority that does not rest on the local clock alone (issue 17, findings 2 and 3), in the cycle.

Two agents on a FakeClock and the in-memory store, with the EC2 fake of tests/unit/test_cycle.py.
The whole group under clock-stopping pauses and the kernel send queue is the simulator's job
(tests/sim/test_issue17.py); here each mechanism is shown alone, and fails with its fix undone.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.aws.ec2 import Ec2Error
from agent.aws.fence import Confirmed, FenceRefused
from coordinator.items import Health
from coordinator.pauses import PauseWatch
from tests.unit import test_cycle as base
from tests.unit.test_cycle import GROUP, dead, settled


class InDoubtEc2(base.Ec2):
    """Route writes whose bytes left but were never acknowledged, and never answered: the call times out
    and awshttp records the request as in doubt (it may still be applied)."""

    doubt = False

    def point_route(self, route_table: str, instance: str, *, missing: bool = False) -> str:
        if not self.doubt:
            return super().point_route(route_table, instance, missing=missing)
        return self.lose_route_answer(route_table)


def test_a_write_in_doubt_is_read_back_at_its_deadline_plus_the_horizon_and_repaired() -> None:
    # Finding 3: a write not acknowledged may land until its deadline plus ec2_apply_horizon. The holder
    # reads EC2 at that bound (not only at the 5-s reconcile) and repairs what it shows. (Undo: make
    # TableWriter.on_doubt do nothing, and the stray below is seen only at the next reconcile.)
    g = base.settle(base.group(ec2_adapter=InDoubtEc2))
    a = g.agents["i-a"]
    ec2: Any = a.ec2
    ec2.doubt = True
    a.memory.held["rtb-a"].settled = False  # a repair write is due: it goes out in doubt
    a.memory.held["rtb-a"].settle_at = g.clock.monotonic()
    g.cycle("i-a")
    bound = [t for t in a.memory.ec2_rechecks if t > g.clock.monotonic() - 0.35]
    assert bound, "the write in doubt scheduled no read at its bound"
    ec2.doubt = False
    g.world.targets["rtb-a"] = "i-b"  # it landed, or a late write of someone else did, meanwhile
    for _ in range(6):  # 2.1 s: past the bound, well before the 5-s reconcile
        g.cycle("i-a")
    assert g.world.targets["rtb-a"] == "i-a"


class Reference:
    """A clock that counts a pause the agent's monotonic clock does not (a paused VM)."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.hidden = 0.0

    def __call__(self) -> float:
        return self.clock.monotonic() + self.hidden


def test_a_pause_the_monotonic_clock_missed_drops_authority_until_a_renewal() -> None:
    # Finding 2: after a pause its clock did not count, the agent's lease looks valid. Seen against a
    # clock that counted it, the agent acts on nothing until a renewal sent after the pause succeeds:
    # here no peer expired it, so the renewal restores it at once. (Undo: drop Fence.check_pauses from
    # Agent.run_cycle and the fence, and the write below goes out on the stale lease.)
    g = settled()
    a = g.agents["i-a"]
    ref = Reference(g.clock)
    a.pauses = a.fence.pauses = PauseWatch(g.clock.monotonic, {"reference": ref})
    events: list[str] = []
    a.ctx.on_event = lambda kind, data: events.append(kind)
    renewals = g.store.writes
    ref.hidden = 2.0  # the VM was paused 2 s; the guest's clock says nothing happened
    g.cycle("i-a")
    assert "pause_seen" in events
    assert g.store.writes > renewals, "no renewal after the pause"
    assert a.coordinator.remaining() > 0


def test_a_pause_seen_at_the_send_refuses_the_write() -> None:
    g = settled()
    a = g.agents["i-a"]
    ref = Reference(g.clock)
    a.pauses = a.fence.pauses = PauseWatch(g.clock.monotonic, {"reference": ref})
    ec2: Any = a.ec2
    ref.hidden = 1.5
    try:
        ec2.point_route("rtb-a", "i-a")
    except FenceRefused as exc:
        assert "paused for at least 1.50 s" in exc.reason
    else:
        raise AssertionError("a write went out right after a pause the clock missed")
    assert a.coordinator.remaining() <= 0  # authority dropped until the next renewal


def test_a_taker_whose_session_a_peer_expired_during_a_hidden_pause_writes_nothing() -> None:
    # Finding 2 with the confirmation: i-b's clock stopped (it still thinks its lease runs), i-a expired
    # it and took its tables. i-b's next write is confirmed against DynamoDB first, and refused.
    # (Undo: make Coordinator.confirm return "", and i-b writes rtb-b1 back to itself.)
    g = settled()
    with dead(g, "i-b"):
        g.cycle("i-a")  # i-a takes rtb-b1..3
    b = g.agents["i-b"]
    assert g.store.raw_get(GROUP, "route#rtb-b1")["owner"] == "i-a"
    # i-b resumes: its clock missed the pause, so its lease looks valid; it writes its table again.
    b.coordinator._session = b.coordinator.session.__class__(  # type: ignore[union-attr]
        b.coordinator.session.session,  # type: ignore[union-attr]
        b.coordinator.session.version,  # type: ignore[union-attr]
        g.clock.monotonic(),
        g.clock.monotonic() + 1.0,
    )
    n = len(g.world.writes)
    ec2: Any = b.ec2
    try:
        with b.fence.frame(confirm=lambda _op: b.coordinator.confirm(route=("rtb-b1", 1))):
            ec2.point_route("rtb-b1", "i-b")
    except FenceRefused as exc:
        assert "no longer alive in DynamoDB" in exc.reason
    else:
        raise AssertionError("the stale holder's write was sent")
    assert g.world.writes[n:] == []


def test_a_takeover_is_confirmed_by_its_claim_and_a_renewal_not_by_a_read_before_each_write() -> None:
    # A slow DynamoDB path made a takeover's round trips (expire, claim, a renewal, a confirmation read
    # before the tag and again before the route) outlast the second left after an owner's 2 s of
    # silence. The claim shows each table ours in its term and a renewal DynamoDB accepted shows our
    # session alive: the tags and routes go without a read of their own. (Undo: make
    # TableWriter._confirm always return coordinator.confirm(...), and the cycle reads 7 times.)
    g = settled()
    with dead(g, "i-b"):
        reads, writes = g.store.reads, g.store.writes
        g.cycle("i-a")
    assert [w for w in g.world.writes if w[0] == "ReplaceRoute"][-3:] == [
        ("ReplaceRoute", rt, "i-a") for rt in ("rtb-b1", "rtb-b2", "rtb-b3")
    ]
    assert g.store.reads - reads == 1, "the cycle's own query only"
    assert g.store.writes - writes == 1 + 3 + 1  # one expiry, three claims, one renewal


def test_an_old_confirmation_is_renewed_where_the_table_is_known_ours_and_read_where_not() -> None:
    # One round trip either way: a renewal (it also keeps the lease) where DynamoDB showed the table
    # ours, else the consistent read. (Undo: drop the renewal in TableWriter._confirm, and it reads.)
    g = settled()
    a = g.agents["i-a"]
    health = a.memory.last_health
    assert health is not None
    term = g.store.raw_get(GROUP, "route#rtb-a")["term"]
    g.clock.advance(0.5)  # the last renewal is older than store_timeout_max
    reads, writes = g.store.reads, g.store.writes
    verdict = a.tables._confirm("rtb-a", term, health, 0.4)
    assert isinstance(verdict, Confirmed) and verdict.since == g.clock.monotonic()
    assert (g.store.reads - reads, g.store.writes - writes) == (0, 1)
    g.clock.advance(0.5)
    a.coordinator._evidence.drop("rtb-a")  # nothing says the table is ours: read
    assert a.tables._confirm("rtb-a", term, health, 0.4) == ""
    assert (g.store.reads - reads, g.store.writes - writes) == (1, 1)
    assert "term" in a.tables._confirm("rtb-a", term + 1, health, 0.4)


def test_a_hand_over_in_doubt_that_lands_after_our_own_write_back_is_repaired_at_its_bound() -> None:
    # Seed 1999: i-a's hand-over write timed out (in doubt); EC2 then showed the table with i-b (an
    # earlier write of the drain had landed) and i-a routed it back to itself. The write in doubt landed
    # after that. The read at the write's bound shows i-b within ec2_consistency_window of i-a's own
    # write: not lag to be discounted while a write of ours to a peer is in doubt. (Undo: drop the
    # handover_doubt exception in Ec2View._refresh_routes, and the table stays on i-b until the 5-s
    # reconcile.)
    g = settled()
    a = g.agents["i-a"]
    now = g.clock.monotonic()
    a.memory.handover_doubt["rtb-a"] = now - 0.4  # the hand-over write that failed, sent before ours
    a.memory.held["rtb-a"].last_write = now - 0.1  # our own write back, confirmed
    g.world.targets["rtb-a"] = "i-b"  # the write in doubt lands now
    a.memory.ec2_rechecks = [now]  # its bound: read EC2
    g.cycle("i-a")
    assert g.world.targets["rtb-a"] == "i-a"


class FlakyReadEc2(base.Ec2):
    """DescribeRouteTables fails the next ``failing`` times (throttled), then answers."""

    failing = 0

    def routes(self, route_tables: list[str]) -> dict[str, Any]:
        if self.failing:
            self.failing -= 1
            raise Ec2Error("DescribeRouteTables", "RequestLimitExceeded", "injected")
        return super().routes(route_tables)


def test_a_read_after_a_write_in_doubt_that_fails_is_made_again_next_cycle() -> None:
    # Seed 3442: a drain's route write to i-b timed out (in doubt) and landed late; the read due at its
    # bound was throttled, and the holder, back from the drain, acted on its older view (the route
    # here) for 5 s, until the reconcile. The read is made again at the next cycle once AWS's back-off
    # allows. (Undo: drop the rechecks due in Ec2View.refresh whatever the read's outcome, and the
    # table stays on i-b here.)
    g = base.settle(base.group(ec2_adapter=FlakyReadEc2))
    a = g.agents["i-a"]
    ec2: Any = a.ec2
    now = g.clock.monotonic()
    a.memory.ec2_read_at = now  # the reconcile read was just made: the next is 5 s away
    a.memory.ec2_rechecks = [now]  # a write of ours to a peer in doubt: read EC2 at its bound
    ec2.failing = 1
    g.world.targets["rtb-a"] = "i-b"  # the write in doubt landed
    g.cycle("i-a")
    assert g.world.targets["rtb-a"] == "i-b", "the read failed: nothing seen yet"
    for _ in range(6):  # 2.1 s: past the throttling back-off, well before the 5-s reconcile
        g.cycle("i-a")
    assert g.world.targets["rtb-a"] == "i-a"


def test_a_renewal_measures_its_round_trip_and_the_next_heartbeat_says_the_slowest_of_the_last_three() -> None:
    # (Undo: drop store_rtt from SessionKeeper.renew, and peers never learn that this path is slow.)
    g = settled()
    a = g.agents["i-a"]
    real = g.store.put_item

    def slow_put(*args: Any, **kw: Any) -> None:
        g.clock.advance(0.25)  # this member's path: a 250-ms round trip
        real(*args, **kw)

    g.store.put_item = slow_put  # type: ignore[method-assign]
    health = a.memory.last_health
    assert health is not None
    a.session.renew(health)
    g.store.put_item = real  # type: ignore[method-assign]
    a.session.renew(health)
    item = a.coordinator.read_group().members["i-a"]
    assert item.health.store_rtt == pytest.approx(0.25)
    assert list(a.memory.renewal_rtts)[-1] == 0.0


def test_a_heartbeat_dates_its_round_trip_figure_and_a_reader_bounds_when_it_was_measured() -> None:
    # Sim seed 6403: a peer's fast figure from before a DynamoDB slowdown for everyone looked like a better
    # path than ours. The heartbeat says how long before its writing the newest renewal of its figure ended;
    # we remember since when our own figure says slow; a reader bounds the figure's measuring on its clock
    # by its last read that still showed the heartbeat before (agent.cycle.standing.dated_no_earlier).
    # (Undo: drop store_rtt_age from SessionKeeper.renew, or the store_slow_since update after it, or
    # Observer._store_measured_after.)
    g = settled()
    a, b = g.agents["i-a"], g.agents["i-b"]
    real = g.store.put_item

    def slow_put(*args: Any, **kw: Any) -> None:
        g.clock.advance(0.25)  # a 250-ms round trip
        real(*args, **kw)

    health = a.memory.last_health
    assert health is not None
    g.store.put_item = slow_put  # type: ignore[method-assign]
    began = g.clock.monotonic()
    a.session.renew(health)
    g.store.put_item = real  # type: ignore[method-assign]
    assert a.memory.store_slow_since == began  # this renewal made our figure slow
    b.run_cycle()  # i-b reads i-a's heartbeat before the next one
    read = g.clock.monotonic()
    g.clock.advance(0.3)
    a.session.renew(health)
    item = a.coordinator.read_group().members["i-a"]
    assert item.health.store_rtt == pytest.approx(0.25)
    assert item.health.store_rtt_age == pytest.approx(0.3)  # the slow renewal ended 0.3 s before this one
    assert a.memory.store_slow_since == began  # the figure still says slow
    g.clock.advance(0.1)
    obs = b.observer.observe(b.coordinator.read_group(), g.clock.monotonic(), {}, health, False)
    t = b.timings
    assert obs.store_measured_after["i-a"] == pytest.approx(read - 2 * t.store_timeout_max - 0.3 / 0.95)
    a.session.renew(health)
    a.session.renew(health)
    assert a.memory.store_slow_since is None  # three fast renewals: the figure says fast again


def test_a_member_whose_renewals_are_slow_still_writes_within_the_lease_a_renewal_left_it() -> None:
    # Seed 3894: a holder losing packets to AWS (net_loss) handed its tables over, address first. Its
    # renewals took 0.4 s and more, so the lease left after one was less than a call's deadline, and
    # every route write was refused ("not sent: the lease is too short; renewing first"): the Elastic
    # IP sat with the successor, the route with the giver, for 3 s. After a renewal the write now goes
    # with the deadline the fence clips to the lease, if half a call's deadline is left. (Undo: require
    # the full write budget after the renewal in SessionKeeper.may_act, and the write is refused.)
    g = settled()
    a = g.agents["i-a"]
    health = a.memory.last_health
    assert health is not None
    a.session.renew(health)
    g.clock.advance(0.45)  # less than one call's deadline (0.6 s) is left: renew first
    real = g.store.put_item

    def slow_put(*args: Any, **kw: Any) -> None:
        g.clock.advance(0.4)  # a lossy path: the renewal's round trip
        real(*args, **kw)

    g.store.put_item = slow_put  # type: ignore[method-assign]
    assert a.session.may_act(health)
    g.store.put_item = real  # type: ignore[method-assign]
    assert 0.3 < a.coordinator.remaining() < a.timings.ec2_timeout


def test_a_write_that_is_not_a_failover_is_confirmed_by_a_read_at_its_send() -> None:
    # Repairs, settles, fail-backs and drains are not timed by an outage: each write still reads DynamoDB
    # at its send, which also catches two processes of one instance racing (tests/sim/test_regressions.py,
    # hole 3). (Undo: let TableWriter._table_write confirm every write like a failover's, and no read.)
    g = settled()
    a = g.agents["i-a"]
    g.world.targets["rtb-a"] = "i-b"  # a late write of someone else: the holder routes it back
    a.memory.ec2_rechecks = [g.clock.monotonic()]
    reads = g.store.reads
    g.cycle("i-a")
    assert g.world.targets["rtb-a"] == "i-a"
    assert g.store.reads - reads == 2, "the cycle's query, and the route write's confirmation"


def test_a_less_preferred_candidate_wakes_when_its_wait_for_a_claimable_table_ends() -> None:
    # Seed 1907: the preferred candidate saw the owner's silence late (it had been frozen); the next one
    # waited its stagger (0.35 s) and then up to a whole cycle more, and the table stayed on the dead NAT
    # 3.05 s. The daemon now runs a cycle when each rank's wait ends. (Undo: drop the stagger waits from
    # Agent.next_deadline, and it returns None here.)
    g = settled()
    a = g.agents["i-a"]
    now = g.clock.monotonic()
    assert a.next_deadline() is None
    a.memory.claimable_since["rtb-b1"] = now - 0.1
    assert a.next_deadline() == pytest.approx(now - 0.1 + a.timings.claim_stagger)
    g.clock.advance(0.3)
    assert a.next_deadline() is None, "past the last rank's wait (two members: one rank)"


def test_a_hand_over_is_a_move_its_writes_are_confirmed_without_a_read_of_their_own() -> None:
    # Seed 328: a fail-back's giver under packet loss had its route land at the successor, then failed
    # to read DynamoDB before the association for three cycles: the table's traffic had no public
    # address for 3 s. A hand-over's writes (route, Elastic IP) are a move's, like a takeover's.
    # (Undo: confirm only an unhealthy holder's hand-overs that way, and this drain reads twice.)
    g = settled()
    a = g.agents["i-a"]
    a.draining = True
    reads = g.store.reads
    g.cycle("i-a")
    assert g.world.targets["rtb-a"] == "i-b"
    assert g.store.raw_get(GROUP, "route#rtb-a")["owner"] == "i-b"
    assert g.store.reads - reads == 1, "the cycle's own query only"


def test_a_table_handed_over_lease_first_is_routed_by_its_receiver_as_a_move_without_a_read_of_its_own() -> None:
    # Seed 8244: a holder whose own path lost packets handed its tables over lease first; the receiver, whose
    # DynamoDB round trips took 0.2 s, confirmed each of its writes (route, then Elastic IP) by a consistent
    # read as for a repair, and wrote them in separate cycles. Those writes are the move (the giver made
    # none): they are confirmed as a takeover's are, by DynamoDB's last answers. (Undo: drop the handed
    # branch of TableWriter._move_pending, and the cycle reads twice.)
    g = settled()
    b = g.agents["i-b"]
    g.cycle("i-a")  # its read before the hand-over shows rtb-b1 with i-b
    b.coordinator.heartbeat(Health(False, {"ip_forward": False}))  # its data plane broke: no fail-back
    snap = b.coordinator.read_group()
    b.coordinator.hand_over_route(snap.routes["rtb-b1"], snap.members["i-a"])  # the lease only
    reads = g.store.reads
    g.cycle("i-a")
    assert g.world.targets["rtb-b1"] == "i-a"
    assert g.store.reads - reads == 1, "the cycle's own query only"
    assert g.agents["i-a"].memory.held["rtb-b1"].taken_from == "i-b"


def test_a_former_holder_back_from_a_vm_pause_has_its_unreported_late_write_read_and_overwritten_at_once() -> None:
    # Seed 3476: i-b's VM paused between a write's last check and its send; i-a expired i-b's session and
    # took its tables. When the VM ran again the write left and landed, and i-b stopped again before its
    # stray report left: i-a saw the write only at its next reconcile (1.8 s after it landed). A paused VM
    # answers no probe: its probes answering again is when such a write lands. i-a reads EC2 then (within
    # ec2_consistency_window of its own settle write: that read is not lag) and writes the table back,
    # without calling it a foreign change. (Undo: drop the _watch_expired_peers call in Ec2View.refresh,
    # and rtb-b1 stays with i-b.)
    g = settled()
    a = g.agents["i-a"]
    events: list[str] = []
    a.ctx.on_event = lambda kind, data: events.append(kind)
    with dead(g, "i-b"):
        g.cycle("i-a", 5)  # takes rtb-b1..3, writes them again after the horizon
        assert g.store.raw_get(GROUP, "route#rtb-b1")["owner"] == "i-a"
        assert g.world.writes[-1] == ("ReplaceRoute", "rtb-b3", "i-a")
        a.memory.ec2_read_at = g.clock.monotonic()  # its reconcile just ran: the next is 5 s away
        g.world.targets["rtb-b1"] = "i-b"  # i-b runs again: its late write lands, and no report follows
    g.cycle("i-a", 2)
    assert g.world.targets["rtb-b1"] == "i-a"
    assert "foreign_change" not in events
