"""The group's history in the store: bounded per writer, expiring, never read by the agents' Query.

MemoryStore has DynamoDB's single-item semantics; the DynamoDB items themselves are exercised
against moto server and dynalite by the integration tests (tests/integration/test_operator_cli.py).
"""

from __future__ import annotations

import threading
import time

import pytest

from coordinator import history
from coordinator.clock import FakeClock
from coordinator.history import RING, Event, History, HistoryWriter
from coordinator.memory import MemoryStore
from coordinator.store import Attrs, Expect


def ev(at: float, what: str = "failover", target: str = "rtb-a", by: str = "i-a") -> Event:
    return Event(at, what, target, by, why="no probe replies", detail="i-b -> i-a", seconds=0.8)


def test_events_come_back_newest_first_and_whole() -> None:
    store = MemoryStore()
    h = History(store, "g", "i-a")
    h.append(ev(10.0))
    h.append(Event(11.5, "pause", "group", "alice@laptop", why="maintenance"))
    got = History(store, "g", "i-b").read()
    assert [e.event for e in got] == ["pause", "failover"]
    assert got[1] == Event(10.0, "failover", "rtb-a", "i-a", "no probe replies", "i-b -> i-a", 0.8, "i-a", 0)
    assert got[0].seconds is None and got[0].to_json() == {
        "at": 11.5, "event": "pause", "target": "group", "by": "alice@laptop", "why": "maintenance", "detail": "",
    }  # fmt: skip


def test_the_group_query_never_reads_the_history() -> None:
    """The agents' Query every cycle reads the group's partition only: history costs it nothing."""
    store = MemoryStore()
    store.put_item("g", {"item": "member#i-a", "version": 1}, Expect.always())
    History(store, "g", "i-a").append(ev(1.0))
    assert [r["item"] for r in store.query_group("g")] == ["member#i-a"]
    assert "/" not in "g" and history.partition("g") == "g/history"


def test_each_writer_keeps_at_most_ring_items_and_each_expires() -> None:
    store = MemoryStore()
    ttls: list[float | None] = []
    put = store.put_item

    def spy(group: str, attrs: Attrs, expect: Expect, *, gc_after_s: float | None = None) -> None:
        ttls.append(gc_after_s)
        put(group, attrs, expect, gc_after_s=gc_after_s)

    store.put_item = spy  # type: ignore[method-assign]
    a = History(store, "g", "i-a")
    for i in range(RING + 25):
        a.append(ev(float(i)))
    History(store, "g", "i-b").append(ev(1000.0, by="i-b"))
    rows = store.query_group(history.partition("g"))
    assert sum(1 for r in rows if r["item"].startswith("i-a#")) == RING
    got = History(store, "g", "x").read()
    assert got[0].by == "i-b" and [e.at for e in got[1:]] == [float(i) for i in range(RING + 24, 24, -1)]
    assert set(ttls) == {history.EXPIRE_S}


def test_a_restarted_writer_continues_its_ring() -> None:
    store = MemoryStore()
    for i in range(5):
        History(store, "g", "i-a").append(ev(float(i)))  # a new process each time (an operator command)
    assert [e.seq for e in History(store, "g", "i-a").read()] == [4, 3, 2, 1, 0]


def test_two_operators_writing_at_once_both_keep_their_event() -> None:
    store = MemoryStore()
    one, two = History(store, "g", history.OPERATOR), History(store, "g", history.OPERATOR)
    one.append(ev(1.0, "pause", by="alice"))
    two.append(ev(2.0, "pin", by="bob"))  # learns the ring after alice's write
    one.append(ev(3.0, "resume", by="alice"))  # its slot was taken by bob: it reads again
    assert [(e.event, e.by) for e in History(store, "g", "x").read()] == [
        ("resume", "alice"), ("pin", "bob"), ("pause", "alice"),
    ]  # fmt: skip


def test_odd_items_in_the_history_partition_are_skipped() -> None:
    store = MemoryStore()
    part = history.partition("g")
    store.put_item(part, {"item": "junk"}, Expect.always())
    store.put_item(part, {"item": "i-a#001", "at": "yesterday", "seq": 1}, Expect.always())
    History(store, "g", "i-a").append(ev(5.0))
    assert [e.at for e in History(store, "g", "i-a").read()] == [5.0]


def test_the_writer_thread_takes_events_at_once_and_drops_the_oldest_when_full() -> None:
    clock = FakeClock()
    gate = threading.Event()
    store = MemoryStore(delay_hook=lambda op, group, item, phase: gate.wait(5))  # a store that hangs
    writer = HistoryWriter(lambda: store, "g", "i-a", clock, capacity=3)
    t0 = time.monotonic()
    for i in range(6):
        writer.record("failover", f"rtb-{i}")
    assert time.monotonic() - t0 < 0.5, "record() waited for the store"
    gate.set()
    assert writer.flush(5)
    writer.close()
    written = [e.target for e in History(MemoryStore(), "g", "x").read()]
    assert written == []  # (a different store: nothing leaks between stores)
    kept = [e.target for e in History(store, "g", "x").read()]
    assert writer.dropped >= 2 and "rtb-5" in kept and len(kept) == writer.written
    writer.record("failover", "rtb-late")  # after close: ignored
    assert writer.flush(1)


def test_a_failing_store_costs_an_event_not_the_agent(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore(fault_hook=lambda op, group, item: "unavailable")
    writer = HistoryWriter(lambda: store, "g", "i-a", FakeClock())
    writer.record("failover", "rtb-a")
    assert writer.flush(5)
    assert writer.failed == 1 and writer.written == 0
    assert "could not write failover of rtb-a to the group's history" in caplog.text
