"""The small interface every backend implements (DynamoDB, in-memory).

Only what the protocol needs: a consistent read of one group, a consistent read of
one item, and a single-item conditional put. The condition is an :class:`Expect`:
either the item is absent, or some attributes have given values. Single-item
conditional writes work the same on DynamoDB, moto and dynalite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from coordinator.items import Attrs


@dataclass(frozen=True)
class Expect:
    """The condition of a write: ``absent``, every ``equals`` attribute matches, or none at all."""

    absent: bool = False
    equals: dict[str, Any] = field(default_factory=dict)
    unconditional: bool = False

    @staticmethod
    def item_absent() -> Expect:
        return Expect(absent=True)

    @staticmethod
    def always() -> Expect:
        """No condition: last writer wins (reports that only ever add information)."""
        return Expect(unconditional=True)

    @staticmethod
    def matches(**equals: Any) -> Expect:
        if not equals:
            raise ValueError("a match condition needs at least one attribute")
        return Expect(equals=equals)

    def holds_for(self, current: Attrs | None) -> bool:
        """Evaluate the condition the way DynamoDB would (used by the in-memory store)."""
        if self.absent:
            return current is None
        if self.unconditional:
            return True
        if current is None:
            return False
        return all(name in current and current[name] == value for name, value in self.equals.items())


class ConditionFailed(Exception):
    """Raised by a store when a conditional write's condition is false."""


class OutcomeUnknown(Exception):
    """Raised by a store when a write timed out or got a 5xx: it may have been applied."""


class Unavailable(Exception):
    """Raised by a store when a read failed (timeout, 5xx, throttling after retries)."""


class Store(Protocol):
    """A backend holding the items of every group.

    ``timeout``: how long this call may take in all (seconds; None: the store's own default).
    The coordinator fits it to the lease (coordinator.leases.StoreBudget).
    """

    def query_group(self, group: str, *, timeout: float | None = None) -> list[Attrs]:
        """All items of ``group``, read consistently. Raises :class:`Unavailable`."""
        ...

    def get_item(self, group: str, item: str, *, timeout: float | None = None) -> Attrs | None:
        """One item, read consistently. Raises :class:`Unavailable`."""
        ...

    def put_item(
        self, group: str, attrs: Attrs, expect: Expect, *, gc_after_s: float | None = None, timeout: float | None = None
    ) -> None:
        """Replace one item if ``expect`` holds.

        Raises :class:`ConditionFailed` or :class:`OutcomeUnknown`. ``gc_after_s``
        sets the TTL attribute (garbage collection only, never read back as expiry).
        """
        ...
