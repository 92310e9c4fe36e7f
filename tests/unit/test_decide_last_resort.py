"""The last resort (``ec2.last_resort_nat_gateway``) in the pure decision: when no NAT of the group can
serve a table, its holder routes it to the NAT gateway and keeps the lease; a NAT takes it back once healthy.

Situation -> decision line and actions, with the observation builder of tests/unit/test_decide.py.
"""

from __future__ import annotations

import dataclasses

from agent.decide import Decision, Ec2Route, EnsureRoute, HandOver, PeerProbe, Release, RouteToGateway, decide
from coordinator.items import Health
from tests.unit.test_decide import RA, RB, RC, B, C, T, World, dead

GW = "nat-0123456789abcdef0"
ON_GW = {RA: Ec2Route(f"other:{GW}"), RB: Ec2Route(B), RC: Ec2Route(C)}
BROKEN = Health(False, {"ip_forward": False})


def run(w: World, gateway: str = GW) -> Decision:
    if not w.session:
        w.session = f"s-{w.me}"
    return decide(dataclasses.replace(w.obs(), last_resort=gateway), T)


def alone(**kw: object) -> World:
    """i-a holds rtb-a; i-b and i-c are dead: nobody else can serve it."""
    return dead(dead(World(**kw), B), C)  # type: ignore[arg-type]


def test_an_unhealthy_holder_with_no_healthy_peer_routes_to_the_gateway() -> None:
    w = alone(health=BROKEN, self_unhealthy_since=99.0)
    d = run(w)
    assert d.actions == (RouteToGateway(RA, w.routes[RA], GW, d.summary),)
    assert d.summary == f"unhealthy (ip_forward) and no healthy peer: routing rtb-a to the last-resort NAT gateway {GW}"
    assert d.kind == "handed_over"


def test_a_draining_holder_with_no_healthy_peer_routes_to_the_gateway() -> None:
    d = run(alone(draining=True))
    assert [type(a) for a in d.actions] == [RouteToGateway]
    assert d.summary.startswith("draining and no healthy peer: routing rtb-a to the last-resort NAT gateway")


def test_on_the_gateway_the_holder_keeps_the_lease_and_never_releases() -> None:
    # Without the gateway an unhealthy holder with no known peer releases after silent_owner_after
    # (test_decide.py); with it, the table is served and the lease kept to bring it back.
    w = alone(health=BROKEN, ec2=ON_GW, self_unhealthy_since=50.0)
    d = run(w)
    assert d.actions == ()
    assert f"rtb-a on the last-resort NAT gateway {GW}: no NAT can serve it" in d.summary
    assert d.summary.startswith(f"unhealthy (ip_forward), still holding rtb-a (term 1, on {GW})")
    assert [type(a) for a in run(w, gateway="").actions] == [Release]


def test_a_healthy_peer_takes_the_table_off_the_gateway_by_a_hand_over() -> None:
    w = World(health=BROKEN, ec2=ON_GW, self_unhealthy_since=50.0)  # i-b, i-c healthy again
    d = run(w)
    assert [type(a) for a in d.actions] == [HandOver] and d.actions[0].successor.instance == B  # type: ignore[union-attr]


def test_the_holder_takes_it_back_as_soon_as_it_can_serve() -> None:
    w = World(ec2=ON_GW, self_healthy_since=99.5)
    d = run(w)
    assert [type(a) for a in d.actions] == [EnsureRoute]
    assert d.summary == f"routing rtb-a to me (EC2 shows other:{GW})"


def test_only_failing_ec2_writes_never_route_to_the_gateway() -> None:
    # Our writes fail: a write to the gateway would fail too. The table is handed over lease first
    # or held, as without the last resort.
    w = alone(health=Health(False, {"ec2_writes": False}), self_unhealthy_since=99.0)
    assert not any(isinstance(a, RouteToGateway) for a in run(w).actions)


def test_a_healthy_holder_or_one_with_a_healthy_peer_never_uses_it() -> None:
    assert run(World()).actions == ()
    d = run(World(health=BROKEN))  # i-b healthy: the table goes to i-b, not to the gateway
    assert [type(a) for a in d.actions] == [HandOver]


def test_without_a_gateway_nothing_changes() -> None:
    w = alone(health=BROKEN, self_unhealthy_since=99.0)
    d = run(w, gateway="")
    assert d.actions == () and d.summary.startswith(
        "unhealthy (ip_forward), still holding rtb-a (term 1): no healthy peer"
    )


DOWN = PeerProbe(False, 5, 5, 1.2)


def cut_off(w: World) -> World:
    """i-b and i-c heartbeat and report healthy, but i-a's probes of them fail (a partition)."""
    w.probes[B] = w.probes[C] = DOWN
    return w


def test_a_peer_that_reports_healthy_but_cannot_be_probed_keeps_the_table_off_the_gateway() -> None:
    # A drain (or an unhealthy self check) during a partition between the NATs: somebody can
    # serve, we just cannot reach it. Held (a drain) or released (unhealthy), as without a gateway.
    assert run(cut_off(World(draining=True))).actions == ()
    w = cut_off(World(health=BROKEN, self_unhealthy_since=97.0))
    assert [type(a) for a in run(w).actions] == [Release]


def test_on_the_gateway_a_peer_that_reports_healthy_but_cannot_be_probed_gets_it_by_a_release() -> None:
    w = cut_off(World(draining=True, ec2=ON_GW))
    d = run(w)
    assert d.actions == (Release(RA, w.routes[RA], d.summary),)
    assert d.summary == (
        f"rtb-a is on the last-resort NAT gateway {GW}; i-b, i-c reports healthy but does not answer my probes: "
        "releasing it"
    )
