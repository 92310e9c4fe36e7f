"""Two (or three) sync services over loopback TCP, each with an in-memory conntrack table.

The protocol, the streaming, the resyncs, the hand-over push and who loads whose flows, with real
sockets and the real wire format; the kernel side is tests/unit/ctsync/fakekernel.py (the real
kernel: tests/lab/test_flows.py).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from agent.config import ConntrackSyncConfig
from agent.ctsync import plan
from agent.ctsync.service import SyncService
from agent.host import flows
from tests.unit.ctsync.fakekernel import FakeKernel

KEY = b"k" * 40
A, B, C = "i-a", "i-b", "i-c"
ADDR = {A: "127.0.0.1", B: "127.0.0.2", C: "127.0.0.3"}
TABLES = {
    "rtb-a": plan.Table("rtb-a", ("10.0.1.0/24",), {A: "10.0.100.21", B: "10.0.101.21", C: "10.0.102.21"}),
    "rtb-b": plan.Table("rtb-b", ("10.0.2.0/24",), {A: "10.0.100.22", B: "10.0.101.22", C: "10.0.102.22"}),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(cond: Callable[[], object], timeout: float = 10.0) -> bool:  # slack for a loaded machine
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def tcp(src: str, sport: int, nat: str, nat_port: int | None = None, state: str = "ESTABLISHED") -> flows.Flow:
    return flows.Flow("A", "tcp", src, "203.0.113.10", sport, 443, nat, nat_port or sport, 431999,
                      "SEEN_REPLY,ASSURED", state)  # fmt: skip


def udp(src: str, sport: int, nat: str) -> flows.Flow:
    return flows.Flow("A", "udp", src, "203.0.113.10", sport, 53, nat, sport, 30, "SEEN_REPLY")


class Group:
    def __init__(self, members: list[str], **cfg: float) -> None:
        self.port = free_port()
        self.config = ConntrackSyncConfig(enabled=True, port=self.port, batch_interval=0.02, **cfg)  # type: ignore[arg-type]
        self.kernels = {m: FakeKernel() for m in members}
        self.services = {
            m: SyncService(self.config, m, {p: ADDR[p] for p in members}, TABLES, KEY, self.kernels[m]) for m in members
        }

    def start(self, holders: dict[str, str]) -> None:
        for s in self.services.values():
            s.update_view(None, holders)
            s.start()
        assert wait(lambda: all(link.connected for s in self.services.values() for link in s.links.values()))

    def entry(self, member: str, key: tuple[str, str, int, str, int]) -> flows.Flow | None:
        k = self.kernels[member]
        with k.lock:
            return k.entries.get(key)

    def close(self) -> None:
        for s in self.services.values():
            s.close()


@pytest.fixture
def group() -> Iterator[Group]:
    g = Group([A, B])
    yield g
    g.close()


def test_an_established_flow_is_loaded_on_the_peer_with_its_address_and_port(group: Group) -> None:
    group.start({"rtb-a": A, "rtb-b": B})
    ka = group.kernels[A]
    syn = tcp("10.0.1.10", 40000, "10.0.100.21", 40001, state="SYN_RECV")
    ka.flow(syn)  # not established yet: not sent
    time.sleep(0.2)
    assert group.entry(B, syn.key) is None
    ka.flow(tcp("10.0.1.10", 40000, "10.0.100.21", 40001))
    assert wait(lambda: group.entry(B, syn.key) is not None)
    copy = group.entry(B, syn.key)
    assert copy is not None and (copy.nat, copy.nat_port, copy.state) == ("10.0.101.21", 40001, "ESTABLISHED")
    ka.flow(udp("10.0.1.11", 5353, "10.0.100.21"))
    key_udp = udp("10.0.1.11", 5353, "x").key
    assert wait(lambda: group.entry(B, key_udp) is not None)
    u = group.entry(B, key_udp)
    assert u is not None and u.timeout >= 2 * group.config.resync_interval  # a copy outlives the quiet stretch
    ka.end(syn.key)
    assert wait(lambda: group.entry(B, syn.key) is None)
    stats = group.services[A].snapshot_stats()
    assert stats["entries_sent"] >= 2 and stats["peers"][B]["connected"] and B in stats["lag"]
    assert group.services[B].snapshot_stats()["entries_loaded"] >= 2


def test_a_new_flow_on_a_reused_tuple_replaces_the_old_copy_and_its_port(group: Group) -> None:
    """A client reuses a tuple right after its flow ended (the kernel made a new entry, maybe with another
    public port): the peer's copy must take the new port, or a takeover sends the flow out with the old one."""
    group.start({"rtb-a": A, "rtb-b": B})
    old = tcp("10.0.1.11", 46000, "10.0.100.21", 30000)
    group.kernels[A].flow(old)
    assert wait(lambda: (c := group.entry(B, old.key)) is not None and c.nat_port == 30000)
    new = tcp("10.0.1.11", 46000, "10.0.100.21", 31000)
    group.kernels[A].end(old.key)  # both in one batch: the end and the new flow coalesce
    group.kernels[A].flow(new)
    assert wait(lambda: (c := group.entry(B, new.key)) is not None and c.nat_port == 31000)


def test_a_reused_tuple_is_sent_again_even_when_its_old_flow_ended_unseen(group: Group) -> None:
    """The old flow's entry went without an end event we send (a flush, a program's delete): the tuple still
    counts as sent, yet the new connection on it (another public port) must reach the peer."""
    old = tcp("10.0.1.11", 47000, "10.0.100.21", 32000)
    group.kernels[A].entries[old.key] = old  # in the snapshot at connect: counted as sent
    group.start({"rtb-a": A, "rtb-b": B})
    assert wait(lambda: (c := group.entry(B, old.key)) is not None and c.nat_port == 32000)
    group.kernels[A].emit(old._replace(op="D", userspace=True))  # a program deleted it
    new = tcp("10.0.1.11", 47000, "10.0.100.21", 33000)
    group.kernels[A].flow(new)
    assert wait(lambda: (c := group.entry(B, new.key)) is not None and c.nat_port == 33000)
    again = tcp("10.0.1.11", 47000, "10.0.100.21", 34000)  # and without any end event at all
    group.kernels[A].flow(again)
    assert wait(lambda: (c := group.entry(B, again.key)) is not None and c.nat_port == 34000)


def test_only_the_holders_flows_of_a_table_are_loaded(group: Group) -> None:
    group.start({"rtb-a": A, "rtb-b": B})
    # rtb-b's flows on A: not A's table to stream (B holds it), and A's own address would be wrong anyway
    group.kernels[A].flow(tcp("10.0.2.10", 41000, "10.0.100.22"))
    # a flow of rtb-a that A did not NAT with its address for rtb-a (a copy, say): not A's to send
    group.kernels[A].flow(tcp("10.0.1.12", 41001, "10.0.100.22"))
    time.sleep(0.3)
    assert group.kernels[B].entries == {}


def test_a_peer_that_connects_gets_a_snapshot_and_a_resync_removes_stale_copies() -> None:
    g = Group([A, B], resync_interval=1.0)
    try:
        old = tcp("10.0.1.10", 42000, "10.0.100.21")
        g.kernels[A].entries[old.key] = old  # before the services started: no event for it
        stale = tcp("10.0.1.99", 42001, "10.0.101.21", 30000)
        g.kernels[B].entries[stale.key] = stale  # B's entry of rtb-a from long ago
        clash = tcp("10.0.1.98", 42002, "10.0.101.21", 42000)  # holds the public port A's flow needs
        g.kernels[B].entries[clash.key] = clash
        g.start({"rtb-a": A, "rtb-b": B})
        assert wait(lambda: g.entry(B, old.key) is not None)
        copy = g.entry(B, old.key)
        assert copy is not None and copy.nat_port == 42000  # the stale entry was deleted first: no remap
        assert g.entry(B, stale.key) is None and g.entry(B, clash.key) is None
        # Events lost: the next tick resyncs at once.
        missed = tcp("10.0.1.10", 42003, "10.0.100.21")
        with g.kernels[A].lock:
            g.kernels[A].entries[missed.key] = missed
        g.kernels[A].lose_events()
        assert wait(lambda: g.entry(B, missed.key) is not None)
    finally:
        g.close()


def test_a_table_we_hold_is_not_overwritten_by_another_senders_stream(group: Group) -> None:
    group.start({"rtb-a": B, "rtb-b": B})  # B's view: B holds rtb-a
    group.services[A].update_view(None, {"rtb-a": A})  # A wrongly thinks it does
    f = tcp("10.0.1.10", 43000, "10.0.100.21")
    group.kernels[A].flow(f)
    time.sleep(0.3)
    assert group.entry(B, f.key) is None


def test_push_flushes_the_takers_stale_entries_then_the_giver_streams_until_quiet() -> None:
    g = Group([A, B], quiet_after=1.5, stream_max=10.0)  # quiet_after: slack for scheduling delay under load
    try:
        g.start({"rtb-a": A, "rtb-b": B})
        ka, kb = g.kernels[A], g.kernels[B]
        live = [tcp("10.0.1.10", 44000 + i, "10.0.100.21") for i in range(5)]
        for f in live:
            ka.entries[f.key] = f  # established before the services: only the push carries them
        left_behind = tcp("10.0.1.77", 44100, "10.0.101.21")
        kb.entries[left_behind.key] = left_behind  # B's own entry from when it held rtb-a
        ka.counters["rtb-a"] = 10
        answer = g.services[A].answer({"op": "push", "table": "rtb-a", "to": B, "timeout": 3.0})
        assert answer["ok"], answer
        assert answer["entries"] == 5
        assert all(g.entry(B, f.key) is not None for f in live)  # loaded before the answer
        assert g.entry(B, left_behind.key) is None
        # The route moves: B holds rtb-a. A streams on: a change of a flow B has is not applied (add only)
        # but a flow B lacks is added.
        for s in g.services.values():
            s.update_view(None, {"rtb-a": B, "rtb-b": B})
        ka.flow(tcp("10.0.1.10", 44999, "10.0.100.21"))
        assert wait(lambda: g.entry(B, ("tcp", "10.0.1.10", 44999, "203.0.113.10", 443)) is not None)
        ka.end(live[0].key)
        time.sleep(0.2)
        assert g.entry(B, live[0].key) is not None  # B carries it now: A's end is not applied
        assert "rtb-a" in g.services[A].snapshot_stats()["leaving"]
        ka.counters["rtb-a"] = 11  # inbound still reaches A
        time.sleep(0.2)
        assert "rtb-a" in g.services[A].snapshot_stats()["leaving"]
        assert wait(lambda: "rtb-a" not in g.services[A].snapshot_stats()["leaving"], 8.0)  # quiet: FINAL sent
        assert wait(lambda: "rtb-a" not in g.services[B].handovers_in)
    finally:
        g.close()


def test_push_to_an_unreachable_taker_fails_within_its_timeout() -> None:
    g = Group([A, B])
    try:
        g.services[A].update_view(None, {"rtb-a": A})
        g.services[A].start()  # B never starts
        t0 = time.monotonic()
        answer = g.services[A].push("rtb-a", B, 0.3)
        assert not answer["ok"] and "no sync link" in answer["error"]
        assert time.monotonic() - t0 < 1.0
        assert not g.services[A].push("rtb-zz", B, 0.3)["ok"]
    finally:
        g.close()


def test_a_failing_load_is_reported_to_the_giver(group: Group) -> None:
    group.start({"rtb-a": A, "rtb-b": B})
    group.kernels[B].fail_loads = True
    answer = group.services[A].push("rtb-a", B, 2.0)
    assert not answer["ok"] and "Operation not permitted" in answer["error"]
    assert group.services[B].snapshot_stats()["errors"]["load"] >= 1


def test_a_takeover_resyncs_the_table_to_the_peers_and_counts_its_entries() -> None:
    g = Group([A, B, C])
    try:
        g.start({"rtb-a": A, "rtb-b": B})
        flows_a = [tcp("10.0.1.10", 45000 + i, "10.0.100.21") for i in range(3)]
        for f in flows_a:
            g.kernels[A].flow(f)
        assert wait(lambda: all(g.entry(m, f.key) is not None for m in (B, C) for f in flows_a))
        g.services[A].close()  # A dies; B takes rtb-a
        for m in (B, C):
            g.services[m].update_view(None, {"rtb-a": B, "rtb-b": B})
        assert wait(lambda: g.services[B].snapshot_stats()["takeover_entries"].get("rtb-a") == 3)
        # C's copies now come from B (B's address rewritten to C's): a resync that keeps them
        new = tcp("10.0.1.10", 45100, "10.0.101.21")
        g.kernels[B].flow(new)
        assert wait(lambda: g.entry(C, new.key) is not None)
        assert all(g.entry(C, f.key) is not None for f in flows_a)
    finally:
        g.close()


def test_a_peer_with_another_key_or_not_a_member_is_refused() -> None:
    g = Group([A, B])
    try:
        g.services[B].start()
        rogue = SyncService(g.config, A, {A: ADDR[A], B: ADDR[B]}, TABLES, b"x" * 40, FakeKernel())
        rogue.update_view(None, {"rtb-a": A})
        rogue.start(listen=False)
        assert wait(lambda: g.services[B].snapshot_stats()["errors"]["auth"] >= 1)
        assert not rogue.links[B].connected
        rogue.close()
        stranger = SyncService(g.config, C, {C: ADDR[C], B: ADDR[B]}, TABLES, KEY, FakeKernel())
        stranger.start(listen=False)
        assert wait(lambda: g.services[B].snapshot_stats()["errors"]["auth"] >= 2)
        assert not stranger.links[B].connected
        stranger.close()
    finally:
        g.close()


def test_control_requests() -> None:
    g = Group([A, B])
    try:
        s = g.services[A]
        assert s.answer({"op": "state", "holders": {"rtb-a": A, "rtb-zz": A}})["ok"]
        assert s.view.held() == ["rtb-a"]
        assert not s.answer({"op": "state", "holders": "x"})["ok"]
        assert not s.answer({"op": "push", "table": "rtb-a"})["ok"]
        assert not s.answer({"op": "nope"})["ok"]
        assert s.answer({"op": "stats"})["held"] == ["rtb-a"]
    finally:
        g.close()


def test_a_service_that_does_not_know_its_nat_yet_learns_it_and_the_tables_from_the_agent() -> None:
    """members_from_tags: the service starts knowing neither this NAT nor the group (the config lists no members);
    it neither listens nor links until the agent's first state names them, then syncs as any other; a state
    naming another NAT, or tables it cannot read, is refused and changes nothing."""
    g = Group([A])
    kb = FakeKernel()
    b = SyncService(g.config, "", {}, {}, KEY, kb)
    try:
        g.services[A].update_view({A: ADDR[A], B: ADDR[B]}, {"rtb-a": A, "rtb-b": B})
        g.services[A].start()
        b.start()
        assert b.me == "" and b.links == {} and b._listener is None
        unreadable = {"rtb-a": {"subnets": ["x"], "addresses": {}}}
        bad = b.answer({"op": "state", "holders": {}, "me": B, "tables": unreadable})
        assert not bad["ok"] and "tables" in bad["error"] and b.me == "" and b.tables == {}
        state = {"op": "state", "holders": {"rtb-a": A, "rtb-b": B}, "members": ADDR, "me": B,
                 "tables": plan.tables_wire(TABLES)}  # fmt: skip
        assert b.answer(state)["ok"] and b.me == B and b.tables == TABLES and b.view.held() == ["rtb-b"]
        assert wait(lambda: g.services[A].links[B].connected and b.links[A].connected)
        f = tcp("10.0.1.10", 40000, "10.0.100.21", 40001)
        g.kernels[A].flow(f)
        assert wait(lambda: kb.entries.get(f.key) is not None)
        assert kb.entries[f.key].nat == "10.0.101.21"  # B's own address for rtb-a, from the agent's tables
        other = b.answer({**state, "me": C})
        assert not other["ok"] and "this sync service is i-b" in other["error"] and b.me == B
    finally:
        b.close()
        g.close()
