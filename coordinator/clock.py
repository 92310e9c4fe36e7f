"""Clocks, injected everywhere so that decisions and tests control time.

Expiry is always judged on a *monotonic* clock of the observer; wall time is only
written for humans reading the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    """The real clocks of this host."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def reference_clocks(self) -> dict[str, Callable[[], float]]:
        """Clocks that may count a pause the monotonic one does not (coordinator.pauses)."""
        from coordinator.pauses import system_references

        return system_references()


class FakeClock:
    """A clock that moves only when told to (unit tests, simulation)."""

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self._now += seconds
