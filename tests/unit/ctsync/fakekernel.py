"""An in-memory connection-tracking table with the kernel's semantics for what the sync asks (for unit tests).

A create of an existing entry is skipped (EEXIST), a timeout change of a missing one too, and a
created entry whose public port (reply tuple) is taken gets another one, as the kernel's NAT
remaps it. The real kernel is exercised by tests/lab (and its messages by test_ctnetlink.py).
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from agent.host import flows

Key = tuple[str, str, int, str, int]


@dataclass
class FakeEvents:
    kernel: FakeKernel
    on_flow: Callable[[flows.Flow], None]
    on_lost: Callable[[str], None]
    up: bool = False

    def start(self) -> None:
        self.up = True
        self.kernel.listeners.append(self)

    def stop(self) -> None:
        self.up = False

    def running(self) -> bool:
        return self.up


@dataclass
class FakeKernel:
    entries: dict[Key, flows.Flow] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    listeners: list[FakeEvents] = field(default_factory=list)
    loads: list[list[flows.Flow]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    fail_loads: bool = False

    # -- the Kernel protocol
    def dump(self, subnets: Iterable[str]) -> list[flows.Flow]:
        nets = [ipaddress.IPv4Network(n) for n in subnets]
        with self.lock:
            return [f for f in self.entries.values() if any(ipaddress.IPv4Address(f.src) in n for n in nets)]

    def iter_flows(self, subnets: Iterable[str]) -> Iterator[flows.Flow]:
        yield from self.dump(subnets)

    def load(self, creates: list[flows.Flow]) -> None:
        if self.fail_loads:
            raise RuntimeError("ctnetlink: 3 of 3 entries not created: Operation not permitted")
        with self.lock:
            self.loads.append(list(creates))
            for f in creates:
                self._create(f)

    def delete(self, flows_: list[flows.Flow]) -> None:
        if self.fail_loads:
            raise RuntimeError("ctnetlink: Operation not permitted")
        with self.lock:
            for f in flows_:
                self.entries.pop(f.key, None)

    def set_timeouts(self, changes: list[tuple[flows.Flow, int]]) -> None:
        with self.lock:
            for f, t in changes:
                if f.key in self.entries:
                    self.entries[f.key] = self.entries[f.key]._replace(timeout=t)

    def inbound_counters(self) -> dict[str, int]:
        return dict(self.counters)

    def events(self, on_flow: Callable[[flows.Flow], None], on_lost: Callable[[str], None]) -> FakeEvents:
        return FakeEvents(self, on_flow, on_lost)

    # -- what a test does to it
    def flow(self, f: flows.Flow) -> None:
        """A packet made or changed this entry: it is in the table and an update event goes out."""
        with self.lock:
            self.entries[f.key] = f
        self.emit(f)

    def end(self, key: Key) -> None:
        with self.lock:
            f = self.entries.pop(key)
        self.emit(f._replace(op="D"))

    def emit(self, f: flows.Flow) -> None:
        for listener in list(self.listeners):
            if listener.up:
                listener.on_flow(f)

    def lose_events(self) -> None:
        for listener in list(self.listeners):
            if listener.up:
                listener.on_lost("ENOBUFS")

    # -- the kernel's semantics
    def _create(self, f: flows.Flow) -> None:
        if f.key in self.entries:
            return
        taken = {(e.dst, e.dport, e.nat, e.nat_port) for e in self.entries.values()}
        port = f.nat_port
        while (f.dst, f.dport, f.nat, port) in taken:  # the kernel's NAT remaps a clashing reply tuple
            port = 1024 + (port + 1) % 64000
        self.entries[f.key] = f._replace(nat_port=port)
