"""An in-memory connection-tracking table that speaks the conntrack tool's save lines (for unit tests).

It applies what :mod:`agent.host.flows` renders (``-A``, ``-U``, ``-D`` by tuple or by ``-s`` subnet)
with the tool's semantics: a ``-A`` of an existing entry and a ``-U`` of a missing one are skipped,
and a created entry whose public port (reply tuple) is taken gets another one, as the kernel's NAT
remaps it. The real kernel is exercised by tests/lab.
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
    on_line: Callable[[str], None]
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
    loads: list[list[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    fail_loads: bool = False

    # -- the Kernel protocol
    def dump_lines(self, subnets: Iterable[str]) -> list[str]:
        nets = [ipaddress.IPv4Network(n) for n in subnets]
        with self.lock:
            return [f.render(f.nat) for f in self.entries.values()
                    if any(ipaddress.IPv4Address(f.src) in n for n in nets)]  # fmt: skip

    def iter_lines(self, subnets: Iterable[str]) -> Iterator[str]:
        yield from self.dump_lines(subnets)

    def load(self, lines: list[str]) -> None:
        if self.fail_loads:
            raise RuntimeError("conntrack -R: Operation not permitted")
        with self.lock:
            self.loads.append(list(lines))
            for line in lines:
                self._apply(line)

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

    def events(self, on_line: Callable[[str], None], on_lost: Callable[[str], None]) -> FakeEvents:
        return FakeEvents(self, on_line, on_lost)

    # -- what a test does to it
    def flow(self, f: flows.Flow) -> None:
        """A packet made or changed this entry: it is in the table and an update event goes out."""
        with self.lock:
            self.entries[f.key] = f
        self.emit(f.render(f.nat).replace("-A ", "-U ", 1))

    def end(self, key: Key) -> None:
        with self.lock:
            f = self.entries.pop(key)
        self.emit(f.render(f.nat).replace("-A ", "-D ", 1))

    def emit(self, line: str) -> None:
        for listener in list(self.listeners):
            if listener.up:
                listener.on_line(line + "\n")

    def lose_events(self) -> None:
        for listener in list(self.listeners):
            if listener.up:
                listener.on_lost("ENOBUFS")

    # -- the tool's semantics
    def _apply(self, line: str) -> None:
        words = line.split()
        if words[:2] == ["-D", "-s"] and len(words) == 3:
            net = ipaddress.IPv4Network(words[2])
            for k in [k for k, f in self.entries.items() if ipaddress.IPv4Address(f.src) in net]:
                del self.entries[k]
            return
        opts = dict(zip(words[1::2], words[2::2], strict=False))
        key = (opts["-p"], opts["-s"], int(opts["--sport"]), opts["-d"], int(opts["--dport"]))
        if words[0] == "-D":
            self.entries.pop(key, None)
        elif words[0] == "-U":
            old = self.entries.get(key)
            if old is not None:
                self.entries[key] = old._replace(timeout=int(opts["-t"]), status=opts["-u"].replace("UNSET", ""),
                                                 state=opts.get("--state", ""))  # fmt: skip
        elif words[0] == "-A":
            f = flows.parse(line)
            assert f is not None, line
            if key in self.entries:
                return
            taken = {(e.dst, e.dport, e.nat, e.nat_port) for e in self.entries.values()}
            port = f.nat_port
            while (f.dst, f.dport, f.nat, port) in taken:  # the kernel's NAT remaps a clashing reply tuple
                port = 1024 + (port + 1) % 64000
            self.entries[key] = f._replace(nat_port=port)
