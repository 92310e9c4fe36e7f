"""A pause (``nat-ha pause``) on the cycle: leases and probes go on, nothing is written to EC2.

Same harness as tests/unit/test_cycle.py: two agents on a FakeClock, the in-memory store, an EC2
that logs every write. The pause is written as ``nat-ha pause`` writes it (the coordinator's
request item); the live demonstration on real processes is tests/integration/test_operator_cli.py
and bench/pause.py (60 s of a killed NAT, 0 EC2 writes).
"""

from __future__ import annotations

import pytest

from agent.aws.fence import Fence, FenceRefused, FenceTiming
from coordinator.clock import FakeClock
from coordinator.items import GROUP_PAUSE, PAUSE_PREFIX
from coordinator.leases import Coordinator
from tests.unit.test_cycle import GROUP, HOMES, dead, settled


def pause(g, key: str = GROUP_PAUSE, value: str = "on") -> None:  # type: ignore[no-untyped-def]
    Coordinator(g.store, GROUP, "operator", g.clock, 1.0).set_request(key, value, by="alice@laptop", why="NAT GW")


def test_a_paused_group_writes_nothing_while_a_nat_dies_and_moves_only_leases() -> None:
    g = settled()
    pause(g)
    g.cycle("i-a")
    g.cycle("i-b")
    writes = list(g.world.writes)
    member = g.store.raw_get(GROUP, "member#i-a")
    assert member["paused"] is True, "the heartbeat acknowledges the pause"
    assert g.agents["i-a"].decision.kind == "paused"
    assert g.agents["i-a"].decision.summary.startswith("paused (the group, by alice@laptop: NAT GW): no EC2 write; ")
    g.world.targets["rtb-a"] = "nat-0gateway"  # the operator routes it to a NAT gateway by hand
    with dead(g, "i-b"):
        lines = g.cycle("i-a", 200)  # 70 s: detection, takeover, restart_after (30 s) all pass
    assert g.world.writes == writes, "EC2 was written while the group was paused"
    assert g.world.targets["rtb-a"] == "nat-0gateway"
    owners = {rt: g.store.raw_get(GROUP, "route#" + rt)["owner"] for rt in HOMES}
    assert owners == dict.fromkeys(HOMES, "i-a"), "the dead NAT's leases were taken (the lease only)"
    assert any("(paused: the lease only)" in x for x in lines)
    assert any("not restarting i-b: the group is paused" in x for x in lines)
    assert g.agents["i-a"].fence.held == 0, "the decision asked for no write: the fence had nothing to refuse"

    pause(g, value="")  # nat-ha resume
    g.cycle("i-a", 3)
    assert {rt: g.world.targets[rt] for rt in HOMES} == dict.fromkeys(HOMES, "i-a"), "resume wrote the routes"
    assert g.store.raw_get(GROUP, "member#i-a")["paused"] is False


def test_a_paused_table_is_held_and_its_peers_are_not() -> None:
    g = settled()
    pause(g, PAUSE_PREFIX + "rtb-b1")
    for rt in ("rtb-a", "rtb-b1", "rtb-b2"):
        g.world.targets[rt] = "nat-0gateway"  # changed by hand (only rtb-b1 paused)
    g.agents["i-b"].memory.ec2_read_at = -1e18  # read EC2 at the next cycle
    g.agents["i-a"].memory.ec2_read_at = -1e18
    g.cycle("i-a")
    line = g.cycle("i-b")[0]
    assert g.world.targets["rtb-b1"] == "nat-0gateway"
    assert g.world.targets["rtb-b2"] == "i-b" and g.world.targets["rtb-a"] == "i-a", "unpaused tables are repaired"
    assert "rtb-b1 paused: not routing rtb-b1 to me (EC2 shows nat-0gateway)" in line


def test_the_fence_refuses_a_paused_write_whatever_the_decision_asked() -> None:
    """Enforced where every EC2 write passes: a write the decision did not hold back is still not sent."""
    clock = FakeClock()
    holds = {"rtb-a": "rtb-a is paused (by alice)"}
    fence = Fence(lambda: 1.0, clock.monotonic, FenceTiming(0.6), hold=lambda op, res: holds.get(res, ""))
    for check in (fence.precheck, fence.authorize):
        with fence.write("ReplaceRoute", "rtb-a"), pytest.raises(FenceRefused, match=r"rtb-a is paused \(by alice\)"):
            check("ReplaceRoute")
    with fence.write("ReplaceRoute", "rtb-b"):
        assert fence.authorize("ReplaceRoute") > clock.monotonic()
    assert fence.held == 2


def test_the_cycle_fence_holds_a_takeover_route_write_in_a_paused_table() -> None:
    """Undo the decision's part (TakeOver.write_route) and the fence still stops the route write."""
    g = settled()
    pause(g, PAUSE_PREFIX + "rtb-b1")
    g.cycle("i-a")
    writes = list(g.world.writes)
    agent = g.agents["i-a"]
    assert agent.fence.hold is not None
    assert agent.fence.hold("ReplaceRoute", "rtb-b1").startswith("rtb-b1 is paused (by alice@laptop")
    assert agent.fence.hold("ReplaceRoute", "rtb-a") == ""
    with pytest.raises(FenceRefused):
        agent.ec2.point_route("rtb-b1", "i-a")
    assert g.world.writes == writes
