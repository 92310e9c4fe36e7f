"""A new view of the members, taken between cycles (agent.cycle.membership): it moves no healthy NAT's table.

On the cycle harness of test_cycle (a fake clock, the in-memory store, fake EC2 and probes). A
view only changes who is preferred, probed and home; these show that a table still moves only
when the lease protocol says so: a live owner keeps it whatever the views say, a new home gets
it by a fail-back after its hold-down, and a homeless table stays where it is.
"""

from __future__ import annotations

import dataclasses

from agent.config import Member
from agent.decide import PeerProbe
from coordinator.items import Health
from coordinator.leases import Coordinator
from tests.unit.test_cycle import GROUP, HOMES, MEMBERS, Group, settled


def owners(g: Group) -> dict[str, str]:
    return {rt: g.store.raw_get(GROUP, "route#" + rt)["owner"] for rt in HOMES}


def view(g: Group, who: str, members: tuple[Member, ...], homeless: tuple[str, ...] = ()) -> None:
    agent = g.agents[who]
    agent.set_membership(dataclasses.replace(agent.config, members=members, homeless=homeless))


def test_a_live_peer_missing_from_a_view_keeps_its_tables() -> None:
    """i-a's view loses i-b (a DescribeInstances that missed it twice): i-b still renews, so nothing moves."""
    g = settled()
    before = owners(g)
    view(g, "i-a", (MEMBERS[0],), homeless=("rtb-b1", "rtb-b2", "rtb-b3"))
    assert g.agents["i-a"].homes == {"rtb-a": "i-a", "rtb-b1": "", "rtb-b2": "", "rtb-b3": ""}
    for _ in range(60):  # 21 s: past every hold-down and silence rule
        g.cycle("i-a")
        g.cycle("i-b")
    assert owners(g) == before
    assert not [w for w in g.world.writes[-20:] if w[2] == "i-a" and w[1] != "rtb-a"]


def test_a_new_home_gets_its_table_by_a_fail_back_after_its_hold_down_only() -> None:
    """The slot of rtb-b1 now names i-c (a replacement): i-b, which holds rtb-b1, hands it to i-c only once
    i-c heartbeats healthy for the hold-down - never to a member that is only in a view."""
    g = settled()
    c = Member("i-c", "10.0.2.10", ("rtb-b1",))
    b = dataclasses.replace(MEMBERS[1], route_tables=("rtb-b2", "rtb-b3"))
    for who in ("i-a", "i-b"):
        view(g, who, (MEMBERS[0], b, c))
    for _ in range(40):  # i-c is a member now, but no agent of it runs: nothing moves
        g.cycle("i-a")
        g.cycle("i-b")
    assert owners(g)["rtb-b1"] == "i-b"
    # i-c's agent starts and heartbeats healthy (what its own cycle would write), answering probes.
    g.probes.snapshot = lambda: {p: PeerProbe(True, 0, 5, 0.0) for p in ("i-a", "i-b", "i-c")}  # type: ignore[method-assign]
    coordinator = Coordinator(g.store, GROUP, "i-c", g.clock, 1.0)
    coordinator.start_session(Health(True, {"ip_forward": True}), None)
    moved_at = None
    for i in range(60):
        coordinator.heartbeat(Health(True, {"ip_forward": True}))
        g.cycle("i-a")
        g.cycle("i-b")
        if moved_at is None and owners(g)["rtb-b1"] == "i-c":
            moved_at = i
    assert moved_at is not None, "the new home never got its table"
    assert moved_at * 0.7 >= 10.0, f"handed over after {moved_at * 0.7:.1f} s, before the 10 s hold-down"
    assert owners(g)["rtb-b2"] == owners(g)["rtb-b3"] == "i-b" and owners(g)["rtb-a"] == "i-a"
    assert ("ReplaceRoute", "rtb-b1", "i-c") in g.world.writes  # route first, then the lease (make before break)


def test_a_table_made_homeless_stays_with_its_holder() -> None:
    g = settled()
    for who in ("i-a", "i-b"):
        view(g, who, (MEMBERS[0], dataclasses.replace(MEMBERS[1], route_tables=("rtb-b2", "rtb-b3"))),
             homeless=("rtb-b1",))  # fmt: skip
    writes = len(g.world.writes)
    for _ in range(40):
        g.cycle("i-a")
        g.cycle("i-b")
    assert owners(g)["rtb-b1"] == "i-b"
    assert all(w[1] != "rtb-b1" or w[2] == "i-b" for w in g.world.writes[writes:])


def test_what_the_agent_remembers_of_the_departed_is_forgotten() -> None:
    g = settled()
    agent = g.agents["i-a"]
    assert "i-b" in agent.memory.healthy_since and "rtb-b1" in agent.memory.ec2
    departed = agent.set_membership(dataclasses.replace(agent.config, members=(MEMBERS[0],)))
    assert departed.peers == ("i-b",) and departed.route_tables == ("rtb-b1", "rtb-b2", "rtb-b3")
    assert "i-b" not in agent.memory.healthy_since, "a NAT that comes back must wait its hold-down again"
    assert not {"rtb-b1", "rtb-b2", "rtb-b3"} & set(agent.memory.ec2)
    assert agent.members == ("i-a",) and set(agent.homes) == {"rtb-a"}
