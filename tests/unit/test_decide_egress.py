"""The pure decision with ``egress_ip = "follow"``: a holder keeps its table's Elastic IP on its own address.

Situation -> decision line and actions, like tests/unit/test_decide.py (whose observation builder
this reuses). The route side is unchanged: these tests check that the address side is added
exactly where the holder's duties are, and nowhere else.
"""

from __future__ import annotations

import dataclasses

from agent.decide import Decision, Ec2Address, Ec2Route, EnsureAddress, EnsureRoute, HandOver, TakeOver, decide
from coordinator.items import Health, MemberItem
from tests.unit.test_decide import RA, RB, RC, A, B, C, T, World, dead, member, route

FOLLOW = frozenset({RA, RB, RC})


def run(w: World, egress: dict[str, Ec2Address] | None = None, **extra: object) -> Decision:
    if not w.session:
        w.session = f"s-{w.me}"
    obs = w.obs()
    seen = egress if egress is not None else {rt: Ec2Address(r.owner, "203.0.113.1") for rt, r in w.routes.items()}
    obs = dataclasses.replace(obs, egress_tables=extra.pop("tables", FOLLOW), egress=seen, **extra)  # type: ignore[arg-type]
    return decide(obs, T)


def test_steady_holder_with_its_elastic_ip_does_nothing() -> None:
    d = run(World())
    assert d.actions == () and d.summary == "holding rtb-a (term 1); peers i-b, i-c healthy"


def test_elastic_ip_elsewhere_is_moved_to_the_holder() -> None:
    d = run(World(), {RA: Ec2Address(B, "203.0.113.1")})
    assert d.actions and isinstance(d.actions[0], EnsureAddress) and d.actions[0].route_table == RA
    assert d.summary == "moving rtb-a's Elastic IP 203.0.113.1 to me (it is with i-b)"
    assert d.kind == "holding"


def test_unassociated_unknown_or_foreign_elastic_ip_is_moved() -> None:
    for seen, where in (
        ({RA: Ec2Address("", "203.0.113.1")}, "it is unassociated"),
        ({}, "it is unknown"),
        ({RA: Ec2Address("other:eni-x/10.0.9.9", "203.0.113.1")}, "it is with other:eni-x/10.0.9.9"),
    ):
        d = run(World(), seen)
        assert [type(a) for a in d.actions] == [EnsureAddress], where
        assert where in d.summary


def test_a_route_and_an_address_both_wrong_are_both_repaired() -> None:
    w = World(ec2={RA: Ec2Route(B), RB: Ec2Route(B), RC: Ec2Route(C)})
    d = run(w, {RA: Ec2Address(B)})
    assert [type(a) for a in d.actions] == [EnsureRoute, EnsureAddress]
    assert d.summary == "routing rtb-a to me (EC2 shows i-b); moving rtb-a's Elastic IP to me (it is with i-b)"


def test_settle_and_stray_reassertions_name_their_reason() -> None:
    d = run(World(), reassert_address={RA: "associations of earlier terms can no longer land (1.0 s after taking it)"})
    assert [type(a) for a in d.actions] == [EnsureAddress]
    assert d.summary == (
        "associating rtb-a's Elastic IP again: associations of earlier terms can no longer land (1.0 s after taking it)"
    )


def test_tables_whose_address_does_not_follow_are_left_alone() -> None:
    d = run(World(), {RA: Ec2Address(B)}, tables=frozenset({RB}))
    assert d.actions == ()
    d = run(World(), {RA: Ec2Address(B)}, tables=frozenset())
    assert d.actions == ()


def test_nobody_but_the_holder_touches_an_elastic_ip() -> None:
    # i-b's view: rtb-a (held by i-a) has its EIP elsewhere. Only i-a may write it.
    d = run(World(me=B), {RA: Ec2Address(C), RB: Ec2Address(B), RC: Ec2Address(C)})
    assert d.actions == ()


def test_a_takeover_carries_the_elastic_ip_in_the_action_not_a_separate_one() -> None:
    # The taker writes route and address in one action (agent.cycle, in egress_order); it does
    # not hold the table yet, so no EnsureAddress for it this cycle.
    w = dead(World(me=B), A)
    d = run(w, {RA: Ec2Address(A), RB: Ec2Address(B), RC: Ec2Address(C)})
    assert [type(a) for a in d.actions] == [TakeOver]


def test_a_fail_back_is_one_hand_over_not_an_address_repair() -> None:
    # i-b holds rtb-a (taken over); the home i-a is back and healthy for the hold-down: the hand-over
    # moves route and Elastic IP (agent.cycle); no EnsureAddress beside it.
    w = World(me=B)
    w.routes[RA] = dataclasses.replace(w.routes[RA], owner=B, owner_session="s-i-b", term=2)
    w.healthy_since = {A: 80.0, C: 0.0}
    d = run(w, {RA: Ec2Address(A), RB: Ec2Address(B), RC: Ec2Address(C)})
    assert [type(a) for a in d.actions] == [HandOver] and d.kind == "failed_back"


def test_a_lossy_holder_hands_a_half_moved_table_to_the_peer_that_holds_its_other_half() -> None:
    # Sim seeds 5879, 9879, 2878: a holder whose packets to AWS are lost had a table's route and Elastic IP
    # on two NATs (its traffic without a public address) and took seconds per missing write, while its
    # renewals kept peers off the table. Such a holder (a call unanswered lately, slow renewals) hands the
    # table over lease-only, to the peer that has the other half if it can serve: one write of that
    # peer's finishes the move. (Undo: drop _plan_half_moved from decide, and an EnsureAddress comes out.)
    w = World(me=B, ec2={RA: Ec2Route(B), RB: Ec2Route(B), RC: Ec2Route(C)})
    w.routes[RA] = route(RA, B, term=2)
    w.healthy_since = {A: 99.0, C: 0.0}  # its home i-a is back 1 s: no fail-back yet
    seen = {RA: Ec2Address(A), RB: Ec2Address(B), RC: Ec2Address(C)}
    d = run(w, seen, aws_answered_for=0.5, store_rtt=0.3)
    assert [type(a) for a in d.actions] == [HandOver], d.summary
    a = d.actions[0]
    assert isinstance(a, HandOver) and a.route_table == RA and a.successor.instance == A and not a.write_route
    assert d.summary.startswith("handing half-moved rtb-a to i-a (its Elastic IP is not here;")
    # Its own path answering (or its renewals fast), it finishes the move itself; a table whole here stays.
    assert [type(a) for a in run(w, seen, aws_answered_for=6.0, store_rtt=0.3).actions] == [EnsureAddress]
    assert [type(a) for a in run(w, seen, aws_answered_for=0.5, store_rtt=0.02).actions] == [EnsureAddress]
    seen[RA] = Ec2Address(B)
    assert run(w, seen, aws_answered_for=0.5, store_rtt=0.3).actions == ()


def test_resumed_tables_that_move_something_are_written_before_those_served_here_whole() -> None:
    # Sim seed 2878: a restarted agent on a lossy path resumed four tables in name order, each a claim and
    # writes of seconds; the two whose Elastic IP was still with their home came last, 3 s after. A resume
    # of a table EC2 shows served here whole moves nothing: it waits behind the moves. (Undo: give every
    # TakeOver priority 0 in decide._priority, and rtb-a's resume comes first.)
    w = World(ec2={RA: Ec2Route(A), RB: Ec2Route(A), RC: Ec2Route(C)})
    w.routes[RA] = route(RA, A, term=2, session="s-old")
    w.routes[RB] = route(RB, A, term=2, session="s-old")
    d = run(w, {RA: Ec2Address(A), RB: Ec2Address(B), RC: Ec2Address(C)})
    assert [type(a) for a in d.actions] == [TakeOver, TakeOver], d.summary
    assert [a.route_table for a in d.actions if isinstance(a, TakeOver)] == [RB, RA]


def test_a_table_handed_to_a_lossy_member_is_not_judged_half_moved_on_a_view_older_than_the_hand_over() -> None:
    # A hand-over comes make before break; until EC2 is read, the route view predates the giver's write and
    # looks half moved. Handing the table on then would start a round of moves. (Undo: drop the
    # handed_unread test in _plan_half_moved, and the table is handed on.)
    w = World(me=B, ec2={RA: Ec2Route(A), RB: Ec2Route(B), RC: Ec2Route(C)})  # read before the fail-over to us
    w.routes[RA] = route(RA, B, term=2)
    w.healthy_since = {A: 99.0, C: 0.0}
    seen = {RA: Ec2Address(B), RB: Ec2Address(B), RC: Ec2Address(C)}  # trusted: moved here with the lease
    d = run(w, seen, aws_answered_for=0.5, store_rtt=0.3, handed_unread=frozenset({RA}))
    assert [type(a) for a in d.actions] == [EnsureRoute], d.summary
    assert isinstance(run(w, seen, aws_answered_for=0.5, store_rtt=0.3).actions[0], HandOver)


def test_a_lossy_holder_hands_a_table_it_has_not_moved_at_all_to_a_fast_peer() -> None:
    # Sim seed 6403 (in a timing of its own): a member claimed a dead NAT's tables just before its path to
    # AWS began to lose packets; route and Elastic IP stayed with the dead NAT, each write of its took
    # seconds, and its renewals kept the fast peer off the tables: 12.7 s. Not half moved, so the rule for
    # half-moved tables kept it. Such a holder hands it lease-only to a fast healthy peer too. (Undo: the
    # `elif ... _unserved(v, route)` branch of _plan_half_moved, and an EnsureRoute comes out.)
    w = dead(World(me=B, ec2={RA: Ec2Route(A), RB: Ec2Route(B), RC: Ec2Route(C)}), A)
    w.routes[RA] = route(RA, B, term=2)
    seen = {RA: Ec2Address(A), RB: Ec2Address(B), RC: Ec2Address(C)}
    d = run(w, seen, aws_answered_for=0.5, store_rtt=0.3)
    assert [type(a) for a in d.actions] == [HandOver], d.summary
    a = d.actions[0]
    assert isinstance(a, HandOver) and a.route_table == RA and a.successor.instance == C and not a.write_route
    assert "handing unmoved rtb-a to i-c (its route is on i-a;" in d.summary
    # Without an Elastic IP that follows it, the route alone: the same.
    d = run(w, seen, aws_answered_for=0.5, store_rtt=0.3, tables=frozenset())
    assert [type(a) for a in d.actions] == [HandOver], d.summary
    # Its calls answered now (a path slow a while ago, DynamoDB slow for everyone a moment ago: every
    # member's calls went unanswered then), or its renewals fast: it moves the table itself.
    assert [type(a) for a in run(w, seen, aws_answered_for=2.0, store_rtt=0.3).actions] == [EnsureRoute, EnsureAddress]
    assert [type(a) for a in run(w, seen, aws_answered_for=0.5, store_rtt=0.02).actions] == [EnsureRoute, EnsureAddress]
    # A table served elsewhere by a NAT that can serve it is no outage: it stays.
    w.ec2[RA] = Ec2Route(C)
    assert not any(isinstance(a, HandOver) for a in run(w, seen, aws_answered_for=0.5, store_rtt=0.3).actions)


def test_a_lossy_home_keeps_its_table_where_a_read_shows_no_route() -> None:
    # Sim seed 186: a healthy home losing packets to AWS read its own table during EC2's stale reads, one
    # of which showed no default route while the route to it existed; it handed the "unmoved" table to a
    # fast peer, which moved it away from its healthy home. A read showing no route hands nothing over:
    # the holder writes the route itself (a CreateRoute over an existing route changes nothing). (Undo:
    # count "missing" as unserved in decide._unserved, and a HandOver comes out.)
    w = World(me=B, ec2={RA: Ec2Route(A), RB: Ec2Route("", state="missing"), RC: Ec2Route(C)})
    seen = {RA: Ec2Address(A), RB: Ec2Address(B), RC: Ec2Address(C)}
    d = run(w, seen, aws_answered_for=0.5, store_rtt=0.3, tables=frozenset())  # seed 186: no Elastic IPs
    assert [type(a) for a in d.actions] == [EnsureRoute], d.summary


def dated(i: str, rtt: float | None, age: float | None) -> MemberItem:
    """A member whose heartbeat says its renewals take ``rtt``, the newest ``age`` s before it was written
    (None: a heartbeat of an agent before Health.store_rtt_age, which does not date its figure)."""
    m = member(i)
    return dataclasses.replace(m, health=dataclasses.replace(m.health, store_rtt=rtt, store_rtt_age=age))


def test_a_lossy_holder_trusts_a_peers_fast_figure_only_if_measured_after_its_own_renewals_turned_slow() -> None:
    # Sim seed 6403 (with a dead NAT's tables rotated over the members): DynamoDB slow for everyone made a
    # taker's renewals slow and its calls unanswered, and it judged its own path lossy; it handed the dead
    # NAT's unmoved table to a peer whose heartbeat's fast figure was measured before the slowdown - and that
    # peer's path then began to lose packets: the table waited 4.1 s. A figure measured before our renewals
    # turned slow says nothing of which path is the bad one now: the holder moves the table itself. (Undo:
    # `not v.slow_store(c)` for fast_while_we_are_slow in decide._peers, and the table is handed to i-c.)
    w = dead(World(me=B, ec2={RA: Ec2Route(A), RB: Ec2Route(B), RC: Ec2Route(C)}), A)
    w.routes[RA] = route(RA, B, term=2)
    w.members[C] = dated(C, 0.02, 0.7)
    seen = {RA: Ec2Address(A), RB: Ec2Address(B), RC: Ec2Address(C)}
    lossy = {"aws_answered_for": 0.5, "store_rtt": 0.3, "store_slow_since": 98.0}
    d = run(w, seen, store_measured_after={C: 97.5}, **lossy)
    assert [type(a) for a in d.actions] == [EnsureRoute, EnsureAddress], d.summary
    assert not any(isinstance(a, HandOver) for a in run(w, seen, **lossy).actions)  # not dated: the same
    # Measured after ours turned slow: its path is the better one now, the table goes to it.
    d = run(w, seen, store_measured_after={C: 98.2}, **lossy)
    assert [type(a) for a in d.actions] == [HandOver] and "handing unmoved rtb-a to i-c" in d.summary, d.summary
    # A half-moved table, and an unhealthy holder's hand-over, judge the peer alike.
    w.ec2[RA] = Ec2Route(B)
    assert not any(isinstance(a, HandOver) for a in run(w, seen, store_measured_after={C: 97.5}, **lossy).actions)
    assert isinstance(run(w, seen, store_measured_after={C: 98.2}, **lossy).actions[0], HandOver)
    u = World(me=B, health=Health(False, {"ip_forward": False}))  # its data plane broke; rtb-b: i-b, i-c, i-a
    u.members = {A: dated(A, 0.02, 0.7), B: member(B), C: dated(C, 0.02, 0.7)}
    a = run(u, None, store_measured_after={A: 98.2, C: 97.5}, **lossy).actions[0]
    assert isinstance(a, HandOver) and a.route_table == RB and a.successor.instance == A and not a.write_route


def test_a_peer_of_the_previous_version_is_judged_by_its_round_trip_figure_as_before() -> None:
    # A rolling upgrade: a peer's heartbeat without store_rtt_age (the previous version) is read as that
    # version read it, fast or slow by its value; so is any heartbeat while our own renewals are fast.
    # (Undo: count an undated figure as not fast in decide._View.fast_while_we_are_slow, and no hand-over.)
    w = dead(World(me=B, ec2={RA: Ec2Route(A), RB: Ec2Route(B), RC: Ec2Route(C)}), A)
    w.routes[RA] = route(RA, B, term=2)
    seen = {RA: Ec2Address(A), RB: Ec2Address(B), RC: Ec2Address(C)}
    lossy = {"aws_answered_for": 0.5, "store_rtt": 0.3, "store_slow_since": 98.0}
    old = Health.from_json('{"healthy":true,"checks":{"ip_forward":true},"reaches":[],"detail":"","store_rtt_s":0.02}')
    assert old.store_rtt == 0.02 and old.store_rtt_age is None
    w.members[C] = dataclasses.replace(member(C), health=old)
    d = run(w, seen, **lossy)
    assert [type(a) for a in d.actions] == [HandOver] and "handing unmoved rtb-a to i-c" in d.summary, d.summary
    w.members[C] = dataclasses.replace(member(C), health=dataclasses.replace(old, store_rtt=0.25))
    assert [type(a) for a in run(w, seen, **lossy).actions] == [EnsureRoute, EnsureAddress]  # slow: kept
