"""An in-memory store with DynamoDB's single-item semantics.

Writes are atomic check-and-set under one lock, reads are consistent. Used by unit
tests and the simulator; fault injection hooks let the simulator make writes fail,
time out before or after being applied, and make reads fail.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable

from coordinator.items import Attrs
from coordinator.store import ConditionFailed, Expect, OutcomeUnknown, Unavailable

# A fault hook sees (operation, group, item) and returns None (no fault) or one of
# "unavailable" (fail before applying), "lost_reply" (apply, then report a timeout).
FaultHook = Callable[[str, str, str], "str | None"]


class MemoryStore:
    def __init__(self, fault_hook: FaultHook | None = None) -> None:
        self._items: dict[tuple[str, str], Attrs] = {}
        self._lock = threading.Lock()
        self.fault_hook = fault_hook
        self.writes = 0
        self.reads = 0

    def _fault(self, op: str, group: str, item: str) -> str | None:
        return self.fault_hook(op, group, item) if self.fault_hook else None

    def query_group(self, group: str) -> list[Attrs]:
        if self._fault("query", group, "") is not None:
            raise Unavailable("injected: query failed")
        with self._lock:
            self.reads += 1
            return [copy.deepcopy(a) for (g, _), a in sorted(self._items.items()) if g == group]

    def get_item(self, group: str, item: str) -> Attrs | None:
        if self._fault("get", group, item) is not None:
            raise Unavailable("injected: get failed")
        with self._lock:
            self.reads += 1
            found = self._items.get((group, item))
            return copy.deepcopy(found) if found is not None else None

    def put_item(self, group: str, attrs: Attrs, expect: Expect, *, gc_after_s: float | None = None) -> None:
        item = str(attrs["item"])
        fault = self._fault("put", group, item)
        if fault == "unavailable":
            raise OutcomeUnknown("injected: write timed out before it was applied")
        with self._lock:
            self.writes += 1
            current = self._items.get((group, item))
            if not expect.holds_for(current):
                raise ConditionFailed(item)
            stored = copy.deepcopy(attrs)
            stored["group"] = group
            self._items[(group, item)] = stored
        if fault == "lost_reply":
            raise OutcomeUnknown("injected: write applied but the reply was lost")

    # test helpers -----------------------------------------------------------
    def raw_put(self, group: str, attrs: Attrs) -> None:
        """Write an item unconditionally (tests: hand-edited or odd items)."""
        with self._lock:
            stored = copy.deepcopy(attrs)
            stored["group"] = group
            self._items[(group, str(attrs["item"]))] = stored
