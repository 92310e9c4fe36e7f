"""Whose EC2 failure it was (issue 17, findings 6-8), on the cycle's FakeClock harness.

Each test names its finding and fails with the fix undone: most undo it themselves (monkeypatch)
and show the harm. The same findings under the simulator's world: tests/sim/test_regressions.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import agent.cycle.standing
from agent.aws.ec2 import Ec2Error
from agent.config import Config, Timing
from agent.cycle import Agent
from agent.cycle.standing import Ec2Standing
from agent.decide import Ec2Route
from agent.metrics import Metrics
from coordinator.clock import FakeClock
from coordinator.items import MemberItem
from coordinator.leases import Coordinator
from tests.unit.test_cycle import GROUP, Ec2, Group, SelfHealth, World, dead, group, settle

B_TABLES = ("rtb-b1", "rtb-b2", "rtb-b3")


def arn(member: str) -> str:
    return f"arn:aws:ec2:r:1:instance/{member}"


class PathWorld(World):
    """EC2 with a path per member, IAM on lagged holder tags, and per-action throttling."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.down: set[str] = set()  # members whose connections to EC2 fail
        self.tag_lag = 0.0  # IAM sees a tag write this long after it was applied
        self.tags: dict[str, list[tuple[float, str]]] = {}  # table -> [(applied at, holder ARN)]
        self.iam = False  # route writes need the table's holder tag (as IAM sees it) to name the caller
        self.throttled: set[str] = set()  # EC2 actions whose bucket is empty
        self.refusals = 0

    def iam_tag(self, table: str) -> str:
        seen = ""
        for at, value in self.tags.get(table, []):
            if at <= self.clock.monotonic() - self.tag_lag:
                seen = value
        return seen


class PathEc2(Ec2):
    w: PathWorld

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.me = ""  # set by paths(): whose adapter this is

    def _answer(self, action: str) -> None:
        if self.me in self.w.down:
            raise Ec2Error(action, "EndpointConnectionError", "injected: no connection")
        if action in self.w.throttled:
            raise Ec2Error(action, "RequestLimitExceeded", "injected: bucket empty")

    def routes(self, route_tables: list[str]) -> dict[str, Ec2Route]:
        self._answer("DescribeRouteTables")
        return super().routes(route_tables)

    def instance_states(self, instances: list[str]) -> dict[str, str]:
        self._answer("DescribeInstances")
        return super().instance_states(instances)

    def _write(self, op: str, resource: str) -> None:
        self._answer(op)
        super()._write(op, resource)

    def tag_holder(self, route_table: str, holder: str) -> None:
        super().tag_holder(route_table, holder)
        self.w.tags.setdefault(route_table, []).append((self.w.clock.monotonic(), holder))

    def point_route(self, route_table: str, instance: str, *, missing: bool = False) -> str:
        if self.w.iam and self.w.iam_tag(route_table) != arn(self.me):
            self._write("ReplaceRoute", route_table)  # sent, then refused by IAM
            self.w.refusals += 1
            raise Ec2Error("ReplaceRoute", "UnauthorizedOperation", "injected: the holder tag names someone else")
        return super().point_route(route_table, instance, missing=missing)


def paths(*, iam: bool = False, metrics: bool = False) -> Group:
    """Both agents settled at home, each with its own path to EC2 (and holder tags with ``iam``)."""
    g = group(world=PathWorld, ec2_adapter=PathEc2, metrics=(lambda _m: Metrics(process=False)) if metrics else None)
    for me, a in g.agents.items():
        a.ec2.me = me  # type: ignore[attr-defined]
        if iam:
            a.ctx.holder = arn(me)
    world(g).iam = iam
    return settle(g)


def world(g: Group) -> PathWorld:
    assert isinstance(g.world, PathWorld)
    return g.world


def owner(g: Group, rt: str) -> str:
    return str(g.store.raw_get(GROUP, "route#" + rt)["owner"])


def out(a: Agent, g: Group) -> bool:
    return a.memory.ec2_writes.out_until > g.clock.monotonic()


def failures(a: Agent, whose: str, cause: str) -> float:
    assert a.metrics is not None
    return a.metrics.ec2_failures_of[whose, cause]._value.get()


@contextmanager
def undone(monkeypatch: pytest.MonkeyPatch, name: str, value: object) -> Iterator[None]:
    with monkeypatch.context() as m:
        m.setattr(Ec2Standing, name, value)
        yield


# ------------------------------------------------------------------ finding 6: tag propagation
WAKES: list[float] = []  # after each takeover cycle: how soon the agent asked to run again (next_deadline)


def take_over_with_tag_lag(lag: float) -> tuple[Group, float]:
    """i-b dies; i-a takes its tables while IAM sees i-a's new holder tags ``lag`` late."""
    g = paths(iam=True, metrics=True)
    world(g).tag_lag = lag
    WAKES.clear()
    with dead(g, "i-b"):
        t0 = g.clock.monotonic()
        for _ in range(12):
            g.agents["i-a"].run_cycle()
            wake = g.agents["i-a"].next_deadline()
            WAKES.append(wake - g.clock.monotonic() if wake is not None else float("inf"))
            g.clock.advance(0.35)
            if all(g.world.targets[rt] == "i-a" for rt in B_TABLES):
                break
    return g, g.clock.monotonic() - t0


def test_a_refusal_right_after_our_own_tag_write_is_retried_and_never_counted() -> None:
    # Finding 6: the taker tags and writes at once; IAM still sees the previous holder's tag and
    # refuses. That is propagation, not the taker's failure: it retries next cycle, stays healthy,
    # and every table is written once IAM sees the tag.
    g, took = take_over_with_tag_lag(0.8)
    a = g.agents["i-a"]
    assert world(g).refusals >= 3  # it was refused, table after table
    assert all(g.world.targets[rt] == "i-a" for rt in B_TABLES)
    assert took <= 0.8 + 3 * 0.35 + 1e-6, took  # written within a cycle or two of IAM seeing the tag
    assert not out(a, g)
    assert failures(a, "aws", "tag_propagation") >= 1 and failures(a, "ours", "refused") == 0
    assert WAKES[0] <= 0.1 + 1e-6, WAKES  # retried shortly: the daemon wakes for it before the next cycle


def test_a_takeover_write_retried_after_tag_propagation_is_confirmed_as_a_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Sim seed 4609: a taker whose DynamoDB round trips took 250 ms retried its refused route writes as
    # repairs, each after a consistent read of its own, and the table stayed on the dead NAT past 3 s.
    # Writing it again still moves the table here: confirmed as the takeover's own write was (a renewal
    # DynamoDB accepted within store_timeout_max, the table shown ours), no read before it. (Undo: drop
    # the _moving(...) around EnsureRoute's write in TableWriter.ensure_route, and the retries read.)
    from coordinator.leases import Coordinator

    confirms: list[str] = []
    real = Coordinator.confirm

    def counted(self: Coordinator, *args: object, **kwargs: object) -> str:
        route = kwargs.get("route")
        if self.me == "i-a" and isinstance(route, tuple) and route[0] in B_TABLES:
            confirms.append(str(route[0]))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Coordinator, "confirm", counted)
    g, _ = take_over_with_tag_lag(0.5)
    assert world(g).refusals >= 3  # the takeover's writes were refused, then retried
    assert all(g.world.targets[rt] == "i-a" for rt in B_TABLES)
    assert confirms == [], "the retries read DynamoDB before their writes"


def test_tag_propagation_counted_as_our_own_failure_cascades(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fix undone: the same refusals count as ours, two of them put the taker out, and it hands
    # the tables on (with no other member, it cannot even keep them routed). (Its writes going
    # through once IAM sees the tag end that penalty since seed 2674: counted, not "still out".)
    with undone(monkeypatch, "propagating", lambda self, held, now, address=False: False):
        g, _ = take_over_with_tag_lag(0.8)
    a = g.agents["i-a"]
    assert a.metrics is not None and a.metrics.ec2_penalties_of["refused"]._value.get() >= 1


def test_propagation_excuses_refusals_only_for_a_bounded_time_per_term() -> None:
    # A role that really may not write the table (IAM never sees the tag) is still found out, a
    # little later than a plain refusal: after 2 x ec2_tag_propagation of the term.
    g, _ = take_over_with_tag_lag(1e9)
    a = g.agents["i-a"]
    p = a.timings.ec2_tag_propagation
    with dead(g, "i-b"):
        g.cycle("i-a", round(2 * p / 0.35) + 4)
    assert out(a, g)
    assert failures(a, "ours", "refused") >= 2


def test_a_healthy_home_never_hands_its_own_table_away_after_a_fail_back_with_tag_lag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Finding 6: after the fail-back the home re-tags and re-writes its table once the horizon
    # passed; IAM may still see the giver's tag. Counted as its failure, it put the healthy home
    # out and it handed its own table back (its last EC2 read still showed the giver).
    def fail_back() -> tuple[Group, bool]:
        g, _ = take_over_with_tag_lag(0.0)
        world(g).tag_lag = 1.0
        ever_out = False
        for _ in range(60):  # i-b back: healthy for the hold-down, tables handed back, settled
            g.cycle("i-a")
            g.cycle("i-b")
            ever_out = ever_out or out(g.agents["i-b"], g)
        return g, ever_out

    g, ever_out = fail_back()
    assert all(owner(g, rt) == "i-b" and g.world.targets[rt] == "i-b" for rt in B_TABLES)
    assert world(g).refusals >= 1  # i-b's re-assertion was refused at first
    assert not ever_out
    with undone(monkeypatch, "propagating", lambda self, held, now, address=False: False):
        g, ever_out = fail_back()
    assert ever_out, "undone: the home stays healthy anyway"


def test_a_repair_long_into_a_term_gets_its_own_propagation_window() -> None:
    # A repair tags the table again (a stale holder's late tag write may have landed); IAM may lag
    # that tag write too. The window is counted from the first tag write since the last write that
    # went through, not from the start of the term, or a long-held table's repair would count.
    g = paths(iam=True, metrics=True)
    a = g.agents["i-a"]
    g.cycle("i-a", 30)  # i-a has held rtb-a for a while
    world(g).tag_lag = 0.8
    # A former holder's late CreateTags and ReplaceRoute landed (IAM sees that tag already) and
    # were reported; i-a's own new tag write reaches IAM 0.8 s late.
    world(g).tags["rtb-a"].append((g.clock.monotonic() - 10.0, arn("i-b")))
    g.world.targets["rtb-a"] = "i-b"
    g.agents["i-b"].coordinator.report_stray("rtb-a", 0, "i-b")
    g.cycle("i-a", 6)
    assert g.world.targets["rtb-a"] == "i-a"
    assert world(g).refusals >= 1 and failures(a, "ours", "refused") == 0 and not out(a, g)


# ------------------------------------------------------------------ finding 7: per-action throttling
def test_read_throttling_never_holds_back_a_takeover_write(monkeypatch: pytest.MonkeyPatch) -> None:
    # Finding 7: another tenant drains the Describe* buckets only. The taker's read is throttled
    # right before its takeover; the write has a bucket of its own and goes at once.
    def takeover() -> Group:
        g = paths()
        world(g).throttled = {"DescribeRouteTables"}
        with dead(g, "i-b"):
            g.agents["i-a"].memory.ec2_read_at = -1e18  # a reconcile read is due in the takeover cycle
            g.cycle("i-a")
        return g

    g = takeover()
    assert all(g.world.targets[rt] == "i-a" for rt in B_TABLES)
    assert g.agents["i-a"].standing.quiet("DescribeRouteTables", g.clock.monotonic())
    # Undone: one back-off for every call, as before.
    with monkeypatch.context() as m:
        m.setattr(agent.cycle.standing, "action_of", lambda operation: "any")
        g = takeover()
    assert not any(g.world.targets[rt] == "i-a" for rt in B_TABLES)


def test_a_throttled_write_backs_off_its_own_action_briefly() -> None:
    g = paths()
    a = g.agents["i-a"]
    s = a.standing
    now = g.clock.monotonic()
    for _ in range(6):
        s.failed(Ec2Error("replace_route", "RequestLimitExceeded", ""), now, write=True)
    assert 0 < s.backoff_left("ReplaceRoute", now) <= agent.cycle.standing.THROTTLE_BACKOFF[1] == 1.0
    assert not s.quiet("AssociateAddress", now) and not s.quiet("DescribeRouteTables", now)
    assert not out(a, g)  # throttling is AWS's: never a penalty
    s.succeeded("ReplaceRoute", now)
    assert not s.quiet("ReplaceRoute", now)


# ------------------------------------------------------------------ finding 8: outages
def test_a_failure_to_connect_is_ours_only_once_a_peer_reports_ec2_answering_it() -> None:
    # Finding 8: i-a's own path to EC2 breaks while it must write rtb-a (a stray landed). Until
    # i-b's heartbeat says EC2 answered i-b after i-a's calls began failing, it could be an outage
    # for everyone: not counted. Then it is i-a's own: it hands rtb-a over (lease first) and i-b
    # routes it; once EC2 answers i-a again (read every second meanwhile), it is back at once.
    g = paths(metrics=True)
    a = g.agents["i-a"]
    g.world.targets["rtb-a"] = "i-b"  # a late write of a former holder landed, and i-a read it
    a.memory.ec2["rtb-a"] = Ec2Route("i-b")
    world(g).down = {"i-a"}
    g.cycle("i-a", 4)  # i-b is quiet meanwhile: its last EC2 answer is older than i-a's failures
    assert not out(a, g)
    assert failures(a, "aws", "unreachable") >= 2 and failures(a, "ours", "unreachable") == 0
    for _ in range(20):  # i-b's reconcile read answers (every 5 s), its heartbeat says so
        g.cycle("i-b")
        g.cycle("i-a")
        if owner(g, "rtb-a") == "i-b":
            break
    assert owner(g, "rtb-a") == "i-b" and g.world.targets["rtb-a"] == "i-b"
    assert a.memory.ec2_writes.cause == "unreachable" and out(a, g)
    world(g).down = set()
    t0 = g.clock.monotonic()
    while out(a, g) and g.clock.monotonic() - t0 < 5:
        g.cycle("i-a")
    assert g.clock.monotonic() - t0 <= 1.0 + 2 * 0.35, "the penalty outlived the broken path"


def outage_takeover(seconds: float) -> tuple[Group, float]:
    """EC2 unreachable for everyone for ``seconds``; i-b dies during it; i-a takes its leases and
    cannot write them. Returns the group and how long after EC2 came back i-b's tables were on i-a."""
    g = paths(metrics=True)
    world(g).down = {"i-a", "i-b"}
    with dead(g, "i-b"):
        t0 = g.clock.monotonic()
        while g.clock.monotonic() - t0 < seconds:
            g.cycle("i-a")
        world(g).down = set()
        back = g.clock.monotonic()
        for _ in range(round(60 / 0.35)):
            if all(g.world.targets[rt] == "i-a" for rt in B_TABLES):
                break
            g.cycle("i-a")
    return g, g.clock.monotonic() - back


@pytest.mark.parametrize("seconds", [30.0, 60.0, 120.0])
def test_an_outage_that_hits_every_member_counts_against_nobody(seconds: float) -> None:
    # Finding 8: nobody is put out for it, and the tables are written in the first cycle after EC2
    # comes back (today's agent kept the taker out 4.6-35 s past the end of such outages).
    g, after = outage_takeover(seconds)
    a = g.agents["i-a"]
    assert all(owner(g, rt) == "i-a" for rt in B_TABLES)  # it kept the leases it could not write
    assert after <= 0.35 + 1e-6, after
    assert failures(a, "ours", "unreachable") == 0 and failures(a, "aws", "unreachable") > 0


def test_a_failure_to_connect_counted_regardless_of_peers_keeps_tables_on_a_dead_nat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fix undone: counted without a peer's word, the outage puts the taker out, and the table
    # stays on the dead NAT well after EC2 is back.
    with undone(monkeypatch, "_peer_answered_since", lambda self, since, now: "i-b"):
        g, after = outage_takeover(30.0)
    assert g.agents["i-a"].memory.ec2_writes.penalty == 0.0  # out "until EC2 answers", not for a fixed time
    assert after > 0.35, after


def test_a_claim_held_back_by_an_outage_goes_back_to_its_home_when_both_are_back() -> None:
    # Sim seed 379: EC2 is out for everyone; i-b dies and i-a takes its leases but cannot write them; i-b
    # comes back and has been healthy a while when EC2 answers again. Its tables never moved: writing them
    # to i-a now would move a healthy NAT's tables; i-a hands the leases back and no route moves.
    # (Undo: make Observer.unrouted return nothing - i-a routes all three to itself.)
    g = paths(metrics=True)
    world(g).down = {"i-a", "i-b"}
    with dead(g, "i-b"):
        g.cycle("i-a", 4)
    assert all(owner(g, rt) == "i-a" for rt in B_TABLES)
    _home_back_in_the_outage_keeps_its_tables(g)


def _home_back_in_the_outage_keeps_its_tables(g: Group) -> None:
    """i-b comes back (a new session) and is healthy while EC2 is still out for everyone; EC2 comes back:
    i-a hands i-b's tables back, and no write routes them away from their healthy home."""
    for _ in range(10):
        g.cycle("i-b")
        g.cycle("i-a")
    world(g).down = set()
    n = len(g.world.writes)
    for _ in range(10):
        g.cycle("i-a")
        g.cycle("i-b")
    moved = [w for w in g.world.writes[n:] if w[0] == "ReplaceRoute" and w[1] in B_TABLES and w[2] == "i-a"]
    assert moved == [], f"a healthy home's tables were routed away from it: {moved}"
    assert all(owner(g, rt) == "i-b" for rt in B_TABLES)
    assert all(g.world.targets[rt] == "i-b" for rt in B_TABLES)


class MissingRoutesEc2(PathEc2):
    """EC2 whose DescribeRouteTables (for i-a) shows no default route in i-b's tables while one exists:
    a read eventually consistent in the wrong way (the simulator's ec2_stale)."""

    writes_down = False  # every write fails to connect (reads get through)

    def routes(self, route_tables: list[str]) -> dict[str, Ec2Route]:
        shown = super().routes(route_tables)
        if self.me == "i-a":
            shown.update({rt: Ec2Route("", "missing") for rt in route_tables if rt in B_TABLES})
        return shown

    def _write(self, op: str, resource: str) -> None:
        if MissingRoutesEc2.writes_down:
            raise Ec2Error(op, "EndpointConnectionError", "injected: no connection")
        super()._write(op, resource)


def test_a_claim_held_back_by_an_outage_goes_home_even_where_a_read_shows_no_route() -> None:
    # Sim seed 379 again: the taker's read showed the tables' route missing (DescribeRouteTables may omit
    # one that exists), so "EC2 shows it at its home" failed and it kept creating the route to itself once
    # EC2 answered: the healthy home's table moved. A read showing no route says nothing against the home,
    # which creates it as well as we would. (Undo: drop `missing` from Observer.unrouted.)
    g = group(world=PathWorld, ec2_adapter=MissingRoutesEc2)
    for me, a in g.agents.items():
        a.ec2.me = me  # type: ignore[attr-defined]
    settle(g)
    MissingRoutesEc2.writes_down = True  # EC2 takes no write from anyone; its reads answer
    try:
        with dead(g, "i-b"):
            g.cycle("i-a", 4)
            a = g.agents["i-a"]
            a.memory.ec2_rechecks = [g.clock.monotonic()]  # a read after the claims: it shows no route
            g.cycle("i-a")
            assert a.memory.ec2_read_at > a.memory.held["rtb-b1"].acquired_at
        assert all(owner(g, rt) == "i-a" for rt in B_TABLES)
        for _ in range(10):
            g.cycle("i-b")
            g.cycle("i-a")
    finally:
        MissingRoutesEc2.writes_down = False
    n = len(g.world.writes)
    for _ in range(10):
        g.cycle("i-a")
        g.cycle("i-b")
    moved = [w for w in g.world.writes[n:] if w[0] == "ReplaceRoute" and w[2] == "i-a"]
    assert moved == [], f"a healthy home's tables were routed away from it: {moved}"
    assert all(owner(g, rt) == "i-b" for rt in B_TABLES)


def test_a_restarted_takers_failed_reads_do_not_count_as_a_view_of_a_claim_it_never_moved() -> None:
    # Sim seed 5910: EC2 is out for everyone; i-b dies and i-a claims its leases; i-a's agent process is
    # restarted (a config rollout) and the new one resumes them, its every EC2 call failing - it has never
    # read where they are. i-b comes back healthy; when EC2 answers, i-a routed them to itself, away from
    # the healthy home: its failed route reads counted as "read since the claim" (the time of the last
    # attempt, not of the last answer), so the claim no longer counted as one that moved nothing.
    # (Undo: Observer.unrouted on ``ec2_read_at`` - i-a routes all three to itself.)
    g = paths()
    world(g).down = {"i-a", "i-b"}
    with dead(g, "i-b"):
        g.cycle("i-a", 4)
        assert all(owner(g, rt) == "i-a" for rt in B_TABLES)
        old = g.agents["i-a"]
        c = Config(group=GROUP, instance_id="i-a", members=old.ctx.config.members, timing=Timing())
        new = Agent(c, Coordinator(g.store, GROUP, "i-a", g.clock, c.timing.lease), PathEc2(g.world), g.probes,
                    SelfHealth(), g.clock)  # fmt: skip
        new.ec2.me = "i-a"  # type: ignore[attr-defined]
        g.agents["i-a"] = new  # the old process is killed: it cycles no more
        lines = g.cycle("i-a", 8)  # waits out the old session's silence, starts its own, resumes the tables
        assert all(owner(g, rt) == "i-a" for rt in B_TABLES), lines
        assert new.memory.routes_read_at < 0 < new.memory.ec2_read_at, "read, never answered"
    _home_back_in_the_outage_keeps_its_tables(g)


# ------------------------------------------------------------------ a peer's word on EC2, in time
def test_a_renewal_late_in_a_cycle_says_how_old_ec2s_last_answer_is_then() -> None:
    # Sim seeds 4455 and 4784: while EC2 is out for everyone a cycle is long (every call waits out its
    # deadline), and the renewals inside it sent the health of the cycle's start: "EC2 answered me 0 s
    # ago" seconds after the last answer. A peer whose own calls failed meanwhile took that for its
    # own broken path and handed its home tables away. (Undo: drop the stamp in SessionKeeper.renew.)
    g = paths()
    b = g.agents["i-b"]
    health = b.standing.with_check(b.health_checker.check(g.clock.monotonic(), ()), g.clock.monotonic())
    b.memory.ec2_writes.answered_at = g.clock.monotonic()
    g.clock.advance(3.0)  # the rest of a long cycle: calls waiting out their deadlines
    b.session.renew(dataclasses.replace(health, ec2_answered=0.0))
    written = g.store.raw_get(GROUP, "member#i-b")["health"]
    assert json.loads(written)["ec2_answered_s"] == pytest.approx(3.0), written


def _heartbeat(g: Group, version: int, answered: float) -> MemberItem:
    m = g.agents["i-a"].ctx.last_snapshot.members["i-b"]  # type: ignore[union-attr]
    return dataclasses.replace(m, version=version, health=dataclasses.replace(m.health, ec2_answered=answered))


def test_a_peer_heartbeat_vouches_for_ec2_only_from_when_it_can_have_been_written() -> None:
    # The reader's side of the same: i-a's calls to EC2 fail from `since`. It read i-b's heartbeat last at
    # t0 - 0.1 (version 1), then read the group only 10 s later (its own cycle was long): version 2 says
    # "EC2 answered me 2 s before I wrote this". Version 2 was written after i-a's earlier read, no later
    # than that: the answer may have come 2 s before t0 - before `since` - so it proves nothing about an
    # outage. Seen first 10 s on, it looked like an answer 7 s after `since`. (Undo: the first-seen rule.)
    g = paths()
    a = g.agents["i-a"]
    s = a.ctx.last_snapshot
    assert s is not None
    obs = a.memory.observer
    t0 = g.clock.monotonic()
    since = t0 + 0.5
    obs.observe("member#i-b", (s.members["i-b"].session, 1001), t0 - 0.1)
    v2 = _heartbeat(g, 1002, answered=2.0)
    a.ctx.last_snapshot = dataclasses.replace(s, members={**s.members, "i-b": v2})
    obs.observe("member#i-b", (v2.session, v2.version), t0 + 10.0)
    assert a.standing._peer_answered_since(since, t0 + 10.1) == ""
    # A heartbeat that can only have been written well after `since` does vouch for EC2 answering i-b.
    obs.observe("member#i-b", (v2.session, v2.version), t0 + 10.2)  # still version 2: read again
    v3 = _heartbeat(g, 1003, answered=0.3)
    a.ctx.last_snapshot = dataclasses.replace(s, members={**s.members, "i-b": v3})
    obs.observe("member#i-b", (v3.session, v3.version), t0 + 10.5)
    assert a.standing._peer_answered_since(since, t0 + 10.6) == "i-b"


def test_refused_associations_do_not_stretch_the_retry_of_a_route_write_during_tag_propagation() -> None:
    # Sim seed 4130 (address-first): a taker's associations and route writes were refused while IAM
    # still saw the dead holder's tags, and every refusal of the table counted toward one back-off:
    # after three refused associations the route write's first refusal waited 0.2 s, later ones
    # 0.4-0.8 s, past the moment IAM saw the table's tag. Each resource waits for its own tag now.
    from agent.cycle.memory import Held
    from agent.cycle.standing import PROPAGATION_RETRY

    g = paths(iam=True)
    a = g.agents["i-a"]
    now = g.clock.monotonic()
    h = Held(term=2, acquired_at=now, settle_at=now + 1.0, taken_from="i-b")
    h.mark_tagged(now)
    h.mark_tagged(now, address=True)
    refused = "UnauthorizedOperation"
    for _ in range(3):
        a.standing.failed(Ec2Error("associate_address", refused, "no"), now, write=True, held=h, address=True)
    a.memory.ec2_writes.retry_at = -1e18
    a.standing.failed(Ec2Error("replace_route", refused, "no"), now, write=True, held=h)
    assert a.memory.ec2_writes.retry_at == pytest.approx(now + PROPAGATION_RETRY)
    assert not out(a, g)


# ------------------------------------------------------------------ refusals: no penalty outlives them
def test_a_penalty_for_refused_writes_ends_once_aws_lets_every_refused_kind_through() -> None:
    # Sim seed 2674: IAM refused a member's writes for 1.6 s; its writes went through again at once,
    # but the 10-s penalty kept it unhealthy (ec2_writes), and with no healthy peer it released its own
    # home table, which a peer back from a restart routed away from the healthy home. Now the penalty
    # ends when a write of every kind AWS refused us goes through again - not before: while the
    # associations are still refused, route writes going through leave it out (a role lacking
    # ec2:AssociateAddress stays out). Undo (drop the early end in Ec2Standing.succeeded): out 10 s.
    from tests.unit import test_cycle_egress as egress

    g = egress.settled()
    a = g.agents["i-a"]
    g.world.fail["ReplaceRoute"] = "UnauthorizedOperation"
    g.world.fail["AssociateAddress"] = "UnauthorizedOperation"
    with dead(g, "i-b"):  # no healthy peer: i-a holds the tables and writes on while out
        t0 = g.clock.monotonic()
        g.cycle("i-a", 2)
        assert out(a, g)
        del g.world.fail["ReplaceRoute"]
        g.cycle("i-a", 3)
        assert all(g.world.targets[rt] == "i-a" for rt in B_TABLES)  # route writes go through
        assert out(a, g), "out while AWS still refuses our associations"
        del g.world.fail["AssociateAddress"]
        g.cycle("i-a", 2)
        assert all(g.world.eips[rt] == "i-a" for rt in B_TABLES)
        assert g.clock.monotonic() - t0 < a.timings.failback_hold_down  # well inside the 10-s penalty
        assert not out(a, g), "the penalty outlived the refusals"
        assert a.run_cycle().kind == "holding"
