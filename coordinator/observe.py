"""Expiry by observation (never by stored timestamps).

An observer remembers, per item, the version it last saw and *when it first saw
that version* on its own monotonic clock. An item is stale once that version has
stayed unchanged for the holder-declared length plus a margin. Clocks only need
to run at the same rate, not agree (the DynamoDB lock client and client-go rule).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sighting:
    version: tuple[str, int]
    first_seen: float
    # The last read that still showed an earlier version (None: we never saw another): this version
    # was written after DynamoDB served that read, so after it was sent.
    written_after: float | None = None


class ChangeObserver:
    """First-seen times of the current version of every item of one group."""

    def __init__(self) -> None:
        self._seen: dict[str, Sighting] = {}
        self._last_seen: dict[str, float] = {}  # key -> the last read that showed it (any version)

    def observe(self, key: str, version: tuple[str, int], now: float) -> None:
        """Record a consistent read of ``key`` showing ``version`` at ``now`` (when the read returned)."""
        seen = self._seen.get(key)
        if seen is None or seen.version != version:
            self._seen[key] = Sighting(version, now, self._last_seen.get(key) if seen is not None else None)
        self._last_seen[key] = now

    def forget_missing(self, present: set[str]) -> None:
        for key in list(self._seen):
            if key not in present:
                del self._seen[key]
                self._last_seen.pop(key, None)

    def written_after(self, key: str) -> float | None:
        """When the read returned that last showed ``key`` in an earlier version (None: never seen so).

        The current version was applied after DynamoDB served that read, and DynamoDB served it at
        most one store call before it returned: a bound on how old the version can be, where
        first-seen times only bound it by how often we read (a long cycle reads seldom).
        """
        seen = self._seen.get(key)
        return None if seen is None else seen.written_after

    def unchanged_for(self, key: str, now: float) -> float:
        """Seconds the current version has stayed unchanged (0 if never seen)."""
        seen = self._seen.get(key)
        return 0.0 if seen is None else max(0.0, now - seen.first_seen)

    def is_stale(self, key: str, declared_s: float, margin_s: float, now: float) -> bool:
        return key in self._seen and self.unchanged_for(key, now) >= declared_s + margin_s

    def snapshot(self) -> dict[str, Sighting]:
        return dict(self._seen)
