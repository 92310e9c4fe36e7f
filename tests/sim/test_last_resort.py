"""The last-resort NAT gateway in the simulator: when no NAT of the group can serve, tables go to the gateway
(always forwarding) and come back to their homes; an agent that never brings them back is caught."""

from __future__ import annotations

import pytest

import agent.decide
from tests.sim.scenario import Fault, Scenario
from tests.sim.world import GATEWAY, Result, run

TWO = ("i-a", "i-b")
TABLES = {"i-a": ("rtb-0",), "i-b": ("rtb-1", "rtb-2")}


def two(*faults: Fault, last_resort: bool = True, egress: bool = False) -> Scenario:
    return Scenario(1, TWO, TABLES, dict.fromkeys(TWO, 1.0), faults, last_resort=last_resort, egress=egress)


BOTH_BROKEN = (Fault("dataplane_down", 3.0, 8.0, "i-a"), Fault("dataplane_down", 4.0, 8.0, "i-b"))
# i-a breaks, i-b takes everything and breaks too: all on the gateway; i-b, the holder, heals first.
HOLDER_HEALS_FIRST = (Fault("dataplane_down", 3.0, 9.0, "i-a"), Fault("dataplane_down", 4.0, 5.0, "i-b"))
BOTH_DRAINED = (Fault("drain", 3.0, 6.0, "i-a"), Fault("drain", 3.5, 6.0, "i-b"))


def ok(r: Result) -> Result:
    assert r.ok, r.report()
    return r


@pytest.mark.parametrize("egress", [False, True])
def test_when_every_nat_is_broken_the_gateway_serves_and_the_tables_come_home(egress: bool) -> None:
    r = ok(run(two(*BOTH_BROKEN, egress=egress)))
    assert len(r.gateway_stays) == 3, r.report()  # every table went to the gateway once, and came back
    assert any(f"-> {GATEWAY}" in line for line in r.trace)
    # rtb-0 to i-b (i-a broke first), then all three to the gateway (i-b broke too), to the first NAT
    # back (i-a, by i-b's hand-over), and i-b's tables home to i-b after its fail-back hold-down.
    assert r.route_changes == {"rtb-0": 3, "rtb-1": 3, "rtb-2": 3}
    without = ok(run(two(*BOTH_BROKEN, last_resort=False, egress=egress)))
    assert without.gateway_stays == []  # held on broken NATs meanwhile
    assert not any(GATEWAY in line for line in without.trace)


def test_maintenance_of_every_nat_at_once_goes_through_the_gateway() -> None:
    r = ok(run(two(*BOTH_DRAINED)))
    assert len(r.gateway_stays) == 3, r.report()
    # Back as soon as the drains end (a drain is deliberate: no hold-down), within a few cycles.
    assert max(r.gateway_stays) < 6.0 + 2.0


def test_an_agent_that_never_leaves_the_gateway_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = agent.decide._plan_last_resort

    def sticky(v: agent.decide._View, t: object, rt: str, r: object) -> object:
        obs = v.obs
        ec2 = obs.ec2.get(rt)
        if obs.last_resort and ec2 is not None and ec2.target == f"other:{obs.last_resort}":
            return f"{rt} stays on the gateway"  # bug: never comes back
        return real(v, t, rt, r)  # type: ignore[arg-type]

    ok(run(two(*HOLDER_HEALS_FIRST)))
    monkeypatch.setattr(agent.decide, "_plan_last_resort", sticky)
    r = run(two(*HOLDER_HEALS_FIRST))
    assert any("(b)" in v and "last-resort NAT gateway" in v for v in r.violations), r.report()


def test_the_gateway_is_never_used_while_a_nat_can_serve() -> None:
    for faults in ((Fault("dataplane_down", 3.0, 8.0, "i-a"),), (Fault("nat_down", 3.0, 8.0, "i-b"),)):
        r = ok(run(two(*faults)))
        assert r.gateway_stays == [], r.report()


def test_seed_1480_a_drain_during_a_partition_between_the_nats_stays_off_the_gateway() -> None:
    # Found by bench/sim.py: i-a, draining while its probes of i-b failed (a one-way partition),
    # saw "no healthy peer" and routed its tables to the gateway, where they stayed for the drain
    # timeout while i-b, healthy, could have served them. A peer that reports itself healthy now
    # keeps the tables off the gateway.
    from tests.sim.world import run_seed

    r = ok(run_seed(1480))
    assert r.scenario.last_resort and r.gateway_stays == []
