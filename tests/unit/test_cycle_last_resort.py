"""The last resort in the HA cycle: an unhealthy holder with no healthy peer routes its tables to the NAT
gateway (fenced writes, the lease kept) and routes them back as soon as it is healthy."""

from __future__ import annotations

import dataclasses

from agent.config import Ec2Config
from agent.decide import Ec2Route
from coordinator.items import Health
from tests.unit import test_cycle as base
from tests.unit.test_cycle import GROUP, HOMES, MEMBERS, Group, dead

GW = "nat-0abc"


class Ec2(base.Ec2):
    def routes(self, route_tables: list[str]) -> dict[str, Ec2Route]:
        """As the real adapter shows a NAT gateway target: other:<id>."""
        return {
            rt: Ec2Route(f"other:{r.target}") if r.target.startswith("nat-") else r
            for rt, r in super().routes(route_tables).items()
        }


class SettableHealth:
    def __init__(self) -> None:
        self.health = Health(True, {"ip_forward": True})

    def check(self, now: float, reaches: tuple[str, ...] = ()) -> Health:
        return dataclasses.replace(self.health, reaches=reaches)


def group() -> tuple[Group, dict[str, SettableHealth]]:
    health = {m.instance_id: SettableHealth() for m in MEMBERS}
    g = base.group(health=health.__getitem__, ec2_adapter=Ec2, ec2=Ec2Config(last_resort_nat_gateway=GW))
    for _ in range(40):
        g.cycle("i-a")
        g.cycle("i-b")
    return g, health


def test_no_nat_can_serve_then_the_gateway_serves_until_a_nat_is_healthy_again() -> None:
    g, health = group()
    with dead(g, "i-b"):
        g.cycle("i-a", 3)  # i-a takes i-b's tables
        assert all(g.world.targets[rt] == "i-a" for rt in HOMES)
        health["i-a"].health = Health(False, {"ip_forward": False}, detail="ip_forward is 0")
        n = len(g.world.writes)
        line = g.cycle("i-a")[0]
        assert line.startswith(
            "unhealthy (ip_forward) and no healthy peer: routing rtb-a to the last-resort NAT gateway"
        )
        assert [w for w in g.world.writes[n:] if w[0] == "ReplaceRoute"] == [
            ("ReplaceRoute", rt, GW) for rt in sorted(HOMES)
        ]
        lines = g.cycle("i-a", 12)  # 4 s: past silent_owner_after, yet no release: the lease is kept
        assert all(g.store.raw_get(GROUP, "route#" + rt)["owner"] == "i-a" for rt in HOMES)
        assert all(g.world.targets[rt] == GW for rt in HOMES)
        assert f"rtb-a on the last-resort NAT gateway {GW}: no NAT can serve it" in lines[-1]
        health["i-a"].health = Health(True, {"ip_forward": True})
        g.cycle("i-a")
        assert all(g.world.targets[rt] == "i-a" for rt in HOMES)
