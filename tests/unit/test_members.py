"""Membership from tags (agent.members): slots, homeless tables, and the merge that never drops on one miss."""

from __future__ import annotations

from agent.config import EgressTable, Member
from agent.members import DROP_AFTER, Instance, Membership, Tracker, assemble, changes, derive_egress, slot_holders


def inst(iid: str, az: str = "a", slot: str = "", state: str = "running", launched: str = "2026-01-01T00:00:00",
         secondaries: tuple[str, ...] = ()) -> Instance:  # fmt: skip
    return Instance(iid, az=az, address=f"10.0.0.{len(iid)}", slot=slot, state=state, launched=launched,
                    secondaries=secondaries)  # fmt: skip


def test_a_slot_goes_to_the_running_instance_that_has_run_longest() -> None:
    old = inst("i-old", slot="nat-1", launched="2026-01-01T00:00:00")
    new = inst("i-new", slot="nat-1", launched="2026-02-01T00:00:00")
    assert slot_holders([new, old]) == {"nat-1": "i-old"}  # the old one stays home while it drains
    stopped = inst("i-old", slot="nat-1", state="stopped")
    assert slot_holders([stopped, new]) == {"nat-1": "i-new"}  # a stopped one yields to a running one
    assert slot_holders([inst("i-x")]) == {}


def test_assemble_resolves_ids_and_slots_and_keeps_homeless_tables() -> None:
    found = assemble(
        [inst("i-b", az="b", slot="nat-2"), inst("i-a", az="a", slot="nat-1"), inst("i-c", az="a")],
        {"rtb-1": "nat-1", "rtb-2": "nat-2", "rtb-3": "i-c", "rtb-4": "nat-3", "rtb-5": "i-gone"},
    )
    assert found.ids() == ("i-a", "i-c", "i-b")  # by AZ, then id: every agent computes the same order
    assert found.homes() == {"rtb-1": "i-a", "rtb-2": "i-b", "rtb-3": "i-c", "rtb-4": "", "rtb-5": ""}
    assert found.homeless == ("rtb-4", "rtb-5")


def view(*members: Member, homeless: tuple[str, ...] = ()) -> Membership:
    return Membership(tuple(sorted(members, key=lambda m: (m.az, m.instance_id))), homeless)


A = Member("i-a", "10.0.0.1", ("rtb-a",), az="a", slot="nat-1")
B = Member("i-b", "10.0.0.2", ("rtb-b",), az="b", slot="nat-2")
C = Member("i-c", "10.0.0.3", ("rtb-c",), az="c", slot="nat-3")


def test_a_member_is_dropped_only_after_two_discoveries_without_it_and_never_me() -> None:
    t = Tracker("i-a", view(A, B, C))
    gone = view(A, B, homeless=("rtb-c",))
    assert t.update(gone) == []  # one miss: nothing changes (DescribeInstances may miss an instance)
    assert t.current.ids() == ("i-a", "i-b", "i-c") and t.current.homes()["rtb-c"] == "i-c"
    assert t.update(view(A, B, C)) == []  # back: its miss count starts again
    assert t.update(gone) == [] and t.missed["i-c"] == 1
    lines = t.update(gone)
    assert DROP_AFTER == 2 and t.current.ids() == ("i-a", "i-b")
    assert lines == [
        f"member i-c left (not seen by {DROP_AFTER} discoveries in a row)",
        "route table rtb-c: home i-c -> none",
    ]
    assert t.current.homes() == {"rtb-a": "i-a", "rtb-b": "i-b", "rtb-c": ""}  # homeless, still in the group
    for _ in range(3):
        t.update(view(B, homeless=("rtb-a", "rtb-c")))
    assert "i-a" in t.current.ids(), "this agent is never dropped from its own view"


def test_a_replacement_takes_the_slot_and_its_tables_at_once() -> None:
    t = Tracker("i-a", view(A, B, C))
    n = Member("i-n", "10.0.0.9", ("rtb-c",), az="c", slot="nat-3")
    lines = t.update(view(A, B, n))  # i-c gone, i-n holds slot nat-3 now
    assert t.current.homes()["rtb-c"] == "i-n"
    assert "i-c" in t.current.ids(), "the old one stays a member for one more discovery"
    old = next(m for m in t.current.members if m.instance_id == "i-c")
    assert old.route_tables == (), "but it is home of nothing: one table, one home"
    assert lines == ["member i-n joined (c, slot nat-3)", "route table rtb-c: home i-c -> i-n"]
    assert t.update(view(A, B, n))[0].startswith("member i-c left")


def test_a_table_leaves_after_two_misses() -> None:
    t = Tracker("i-a", view(A, B))
    untagged = view(A, Member("i-b", "10.0.0.2", (), az="b", slot="nat-2"))
    assert t.update(untagged) == []
    assert t.current.homes()["rtb-b"] == "i-b", "missed once: kept as it was"
    assert t.update(untagged) == ["route table rtb-b left the group"]


def test_changes_name_joins_and_moves() -> None:
    assert changes(view(A), view(A, B)) == [
        "member i-b joined (b, slot nat-2)",
        "route table rtb-b joined the group (home i-b)",
    ]


def test_egress_addresses_are_derived_from_secondaries_where_the_config_gives_none() -> None:
    tables = (EgressTable("rtb-a", "eipalloc-a", ("10.1.0.0/24",), (("i-a", "10.0.0.21"),)),
              EgressTable("rtb-b", "eipalloc-b", ("10.1.1.0/24",)))  # fmt: skip
    members = (Member("i-a", secondaries=("10.0.0.21", "10.0.0.22")),
               Member("i-b", secondaries=("10.0.1.5", "10.0.1.6")),
               Member("i-c", secondaries=("10.0.2.5",)))  # fmt: skip
    out = derive_egress(tables, members)
    assert dict(out[0].addresses) == {"i-a": "10.0.0.21", "i-b": "10.0.1.5", "i-c": "10.0.2.5"}
    assert dict(out[1].addresses) == {"i-a": "10.0.0.22", "i-b": "10.0.1.6"}  # i-c has no 2nd secondary
