"""The group's history: failovers, fail-backs, drains, pins, pauses and stops - who, why, how long.

Kept in the group's own DynamoDB table, in a partition of its own (``<group>/history``: a group
name cannot contain "/"), so the Query of the group that every agent runs every cycle never
reads it and costs what it cost before. Bounded and expiring: every writer - an agent (its
instance id) or the operators (one ring, ``operator``) - keeps a ring of :data:`RING` items
``<writer>#<slot>`` (slot = the writer's sequence number modulo RING), so the partition never
holds more than RING items per writer, and each item carries a TTL of :data:`EXPIRE_S`
(DynamoDB deletes it some time after; garbage collection only).

A write is one small PutItem, conditional on the slot's previous occupant (or its absence),
so two operators writing at once do not overwrite each other: the loser reads again and
takes the next slot. An agent writes from :class:`HistoryWriter`'s own thread and its own
connection: never on the failover's critical path, and a slow or failing store costs the
cycle nothing (a full queue drops the oldest event and counts it).
"""

from __future__ import annotations

import collections
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coordinator.clock import Clock
from coordinator.store import ConditionFailed, Expect, OutcomeUnknown, Store

log = logging.getLogger("nat_ha.history")

RING = 100  # items kept per writer
EXPIRE_S = 30 * 24 * 3600.0  # TTL of one event (garbage collection only)
OPERATOR = "operator"  # the ring operators' commands write to
PARTITION_SUFFIX = "/history"
EVENTS = (
    "failover",  # a peer took over a dead (or silent) NAT's route table
    "failback",  # a route table went back to its home NAT
    "switchover",  # a route table moved to the NAT an operator pinned it to
    "handover",  # a NAT handed a table to a peer: unhealthy, drained, stopping
    "last_resort",  # a route table moved to the last-resort NAT gateway
    "foreign_change",  # someone else changed a held table's route or Elastic IP; the holder wrote it back
    "peer_restart",  # a dead peer was stopped, or started again
    "session_lost",  # an agent found its session expired by a peer
    "agent_stop",  # an agent stopped (SIGTERM: it handed its tables over first)
    "drain",  # the operators' requests, and their ends
    "undrain",
    "pin",
    "unpin",
    "pause",
    "resume",
)


def partition(group: str) -> str:
    """The history's partition key of ``group``."""
    return group + PARTITION_SUFFIX


@dataclass(frozen=True)
class Event:
    """One entry of the history. ``at`` is the writer's wall clock (unix s), for humans."""

    at: float
    event: str  # one of EVENTS
    target: str  # route table, instance, or "group"
    by: str  # the agent's instance id, or the operator (user@host)
    why: str = ""
    detail: str = ""  # e.g. "i-a -> i-b"
    seconds: float | None = None  # how long: detection to route write, or how long a drain/pin/pause lasted
    writer: str = ""  # whose ring it is in (set when read)
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "at": self.at,
            "event": self.event,
            "target": self.target,
            "by": self.by,
            "why": self.why,
            "detail": self.detail,
        }
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 3)
        return out


def encode(e: Event, writer: str, seq: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "item": f"{writer}#{seq % RING:03d}",
        "kind": "history",
        "event": e.event,
        "target": e.target,
        "by": e.by,
        "why": e.why,
        "detail": e.detail,
        "at": round(e.at, 3),
        "seq": seq,
        "version": 1,
        "token": uuid.uuid4().hex,
    }
    if e.seconds is not None:
        attrs["seconds"] = round(e.seconds, 3)
    return attrs


def decode(attrs: dict[str, Any]) -> Event | None:
    """An item of the history partition as an event; None for anything else (never raises)."""
    key = attrs.get("item")
    at, seq, seconds = attrs.get("at"), attrs.get("seq"), attrs.get("seconds")
    if not isinstance(key, str) or "#" not in key or not isinstance(at, (int, float)) or not isinstance(seq, int):
        return None
    text = {
        k: attrs.get(k) if isinstance(attrs.get(k), str) else "" for k in ("event", "target", "by", "why", "detail")
    }
    return Event(
        at=float(at),
        event=str(text["event"]),
        target=str(text["target"]),
        by=str(text["by"]),
        why=str(text["why"]),
        detail=str(text["detail"]),
        seconds=float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None,
        writer=key.rsplit("#", 1)[0],
        seq=seq,
    )


class History:
    """Read and append the history of one group, as one writer."""

    def __init__(self, store: Store, group: str, writer: str) -> None:
        self.store = store
        self.group = group
        self.writer = writer
        self._next: int | None = None  # our next sequence number, once known
        self._slots: dict[int, int] = {}  # slot -> seq of its occupant as last seen

    def read(self) -> list[Event]:
        """Every event kept, newest first. Raises the store's :class:`Unavailable`."""
        events = [e for e in map(decode, self.store.query_group(partition(self.group))) if e is not None]
        return sorted(events, key=lambda e: (e.at, e.seq), reverse=True)

    def _learn(self) -> None:
        """Where our ring stands: the highest sequence number in it, and each slot's occupant."""
        mine = [e for e in self.read() if e.writer == self.writer]
        self._slots = {e.seq % RING: e.seq for e in mine}
        self._next = max((e.seq for e in mine), default=-1) + 1

    def append(self, event: Event, *, attempts: int = 3) -> None:
        """Write ``event`` into the next slot of our ring. Raises the store's errors after ``attempts``."""
        for attempt in range(attempts):
            if self._next is None:
                self._learn()
            assert self._next is not None
            seq = self._next
            before = self._slots.get(seq % RING)
            expect = Expect.item_absent() if before is None else Expect.matches(seq=before)
            try:
                self.store.put_item(partition(self.group), encode(event, self.writer, seq), expect, gc_after_s=EXPIRE_S)
            except ConditionFailed:
                self._next = None  # another process writes this ring too (operators): read it again
                if attempt == attempts - 1:
                    raise
                continue
            except OutcomeUnknown:
                self._next = None  # it may have landed: read again before the next write
                raise
            self._slots[seq % RING] = seq
            self._next = seq + 1
            return


@dataclass
class HistoryWriter:
    """An agent's history, written from a thread of its own (never on the HA cycle's path).

    ``make_store`` is called once, in that thread, on the first event: the writer uses its own
    connection (the cycle's is never shared or held). The queue holds at most ``capacity``
    events; when the store is slower than the events, the oldest are dropped and counted.
    """

    make_store: Callable[[], Store]
    group: str
    writer: str
    clock: Clock
    capacity: int = 64
    on_result: Callable[[str], None] = lambda _result: None  # "written", "failed" or "dropped", per event
    dropped: int = 0
    written: int = 0
    failed: int = 0
    _queue: collections.deque[Event] = field(default_factory=collections.deque)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None
    _stopping: bool = False
    _busy: bool = False

    def record(self, event: str, target: str, *, why: str = "", detail: str = "", seconds: float | None = None) -> None:
        """Queue one event (returns at once; called from the HA cycle)."""
        e = Event(self.clock.wall(), event, target, self.writer, why, detail, seconds)
        with self._cond:
            if self._stopping:
                return
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                self.dropped += 1
                self.on_result("dropped")
            self._queue.append(e)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nat-ha-history", daemon=True)
                self._thread.start()
            self._cond.notify()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the queue to be written (at exit); True if it was."""
        with self._cond:
            self._cond.notify()
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: float = 1.0) -> None:
        """Write what is queued (bounded by ``timeout``), then stop taking events."""
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _run(self) -> None:
        history: History | None = None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    return
                event = self._queue[0]
                self._busy = True
            try:
                if history is None:
                    history = History(self.make_store(), self.group, self.writer)
                history.append(event)
                self.written += 1
                self.on_result("written")
            except Exception as exc:  # the store, its config or credentials: never a reason for the agent to stop
                self.failed += 1
                self.on_result("failed")
                log.warning(
                    "could not write %s of %s to the group's history (%s); dropped", event.event, event.target, exc
                )
            with self._cond:
                if self._queue and self._queue[0] is event:
                    self._queue.popleft()
                self._busy = False
                self._cond.notify_all()
