"""Discovering the group again while the agent runs (members_from_tags), in a thread of its own.

A replaced NAT has a new instance id: its peers must learn of it, and forget the old one, without
a restart. Every ``timing.discover_interval`` (and soon after an unknown instance heartbeats in
the table: a new NAT has started) this thread calls DescribeInstances and DescribeRouteTables with
a client of its own - never on the HA cycle's thread, whose calls must fit inside a lease - and
merges the answer into the view in use (agent.members.Tracker: nothing is dropped on one miss).
The daemon takes a changed view between two cycles (:meth:`MemberWatch.take`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.members import Membership, Tracker

log = logging.getLogger("nat_ha.agent")

MIN_GAP = 5.0  # seconds between two discoveries, however often poked


class MemberWatch:
    def __init__(
        self,
        discover: Callable[[], Membership],
        tracker: Tracker,
        interval: float,
        *,
        min_gap: float = MIN_GAP,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.discover = discover
        self.tracker = tracker
        self.interval = interval
        self.min_gap = min(min_gap, interval)
        self.clock = clock
        self.discoveries = 0
        self._lock = threading.Lock()
        self._ready: tuple[Membership, list[str]] | None = None
        self._poked = threading.Event()
        self._stop = threading.Event()
        self._failing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nat-ha-members", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poked.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def poke(self) -> None:
        """Discover soon (at most every ``min_gap``): an instance we do not know heartbeats."""
        self._poked.set()

    def take(self) -> tuple[Membership, list[str]] | None:
        """The view and its change lines, if a discovery changed it since the last take."""
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def once(self) -> None:
        """One discovery, merged (the thread's step; tests call it directly)."""
        try:
            found = self.discover()
        except Exception as exc:  # an AWS error, a timeout: the view in use stays as it is
            if not self._failing:
                self._failing = True
                log.warning("cannot discover the group's members (%s); keeping the members as they are", exc)
            return
        finally:
            self.discoveries += 1
        if self._failing:
            self._failing = False
            log.info("recovered: discovering the group's members works again")
        lines = self.tracker.update(found)
        if lines:
            with self._lock:
                previous = self._ready[1] if self._ready is not None else []
                self._ready = (self.tracker.current, previous + lines)

    def _run(self) -> None:
        last = self.clock()
        while not self._stop.is_set():
            self._poked.wait(max(0.0, last + self.interval - self.clock()))
            if self._stop.is_set():
                return
            gap = last + self.min_gap - self.clock()
            if gap > 0 and self._stop.wait(gap):
                return
            self._poked.clear()
            last = self.clock()
            self.once()


def strangers(known: tuple[str, ...], heartbeating: list[str]) -> list[str]:
    """Instances that heartbeat in the group's table but are not members we know (a new NAT)."""
    return sorted(set(heartbeating) - set(known))
