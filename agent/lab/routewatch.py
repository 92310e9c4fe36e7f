"""When did EC2 route a table elsewhere? Sample the route targets often and bracket each change.

The demo and the integration tests report the moment EC2 (moto) routed a table,
not the moment a slower loop happened to look. A sample is one
DescribeRouteTables; a change is bracketed by the send time of the last sample
that still showed the old target and the return time of the first that showed
the new one, so its time is known to within half that bracket (about the
sampling interval plus one call).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RouteChange:
    """EC2 routed ``route_table`` from ``before`` to ``after`` between ``not_before`` and ``seen`` (monotonic)."""

    route_table: str
    before: str
    after: str
    not_before: float
    seen: float

    @property
    def at(self) -> float:
        """The middle of the bracket: within :attr:`error` of the real change."""
        return (self.not_before + self.seen) / 2

    @property
    def error(self) -> float:
        return (self.seen - self.not_before) / 2


def route_targets_of(client: Any, route_tables: list[str]) -> dict[str, str]:
    """Route table -> the instance (or ENI) EC2 routes 0.0.0.0/0 to, from one DescribeRouteTables."""
    out = {}
    for rt in client.describe_route_tables(RouteTableIds=route_tables)["RouteTables"]:
        for route in rt["Routes"]:
            if route.get("DestinationCidrBlock") == "0.0.0.0/0":
                out[rt["RouteTableId"]] = route.get("InstanceId") or route.get("NetworkInterfaceId") or ""
    return out


class RouteWatch:
    """Samples ``sample()`` (route table -> target) and records every change as a :class:`RouteChange`.

    ``poll()`` takes one sample and ``until()`` samples until a condition holds;
    ``with RouteWatch(...)`` samples every ``interval`` seconds in a thread until
    the block ends (bounded by ``limit`` seconds).
    """

    def __init__(self, sample: Callable[[], dict[str, str]], interval: float = 0.025, limit: float = 600.0) -> None:
        self.sample = sample
        self.interval = interval
        self.limit = limit
        self.changes: list[RouteChange] = []
        self.current: dict[str, str] = {}
        self.errors = 0
        self._last_sent = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> dict[str, str]:
        sent = time.monotonic()
        targets = self.sample()
        seen = time.monotonic()
        with self._lock:
            for rt, target in targets.items():
                before = self.current.get(rt)
                if before is not None and target != before:
                    self.changes.append(RouteChange(rt, before, target, self._last_sent, seen))
            self.current = dict(targets)
            self._last_sent = sent
        return targets

    def until(self, predicate: Callable[[dict[str, str]], bool], timeout: float, interval: float = 0.05) -> bool:
        """Sample until ``predicate(targets)`` holds or ``timeout`` seconds pass (without the thread)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.poll()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def since(self, index: int) -> list[RouteChange]:
        """Changes recorded after the first ``index`` ones."""
        with self._lock:
            return self.changes[index:]

    def first(self, route_table: str, predicate: Callable[[RouteChange], bool] = lambda _c: True) -> RouteChange | None:
        with self._lock:
            return next((c for c in self.changes if c.route_table == route_table and predicate(c)), None)

    def _run(self) -> None:
        end = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < end:
            t0 = time.monotonic()
            try:
                self.poll()
            except Exception:  # moto busy or gone: the next sample tries again (the bracket widens)
                self.errors += 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def __enter__(self) -> RouteWatch:
        self.poll()  # the starting point: changes are relative to it
        self._thread = threading.Thread(target=self._run, name="route-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
