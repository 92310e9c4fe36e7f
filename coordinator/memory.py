"""An in-memory store with DynamoDB's single-item semantics.

Writes are atomic check-and-set under one lock, reads are consistent. Used by unit
tests and the simulator; fault injection hooks let the simulator make writes fail,
time out before or after being applied, and make reads fail; a delay hook lets it
spend (virtual) time on the way to the store and on the way back, so that other
agents act while a call is in flight.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable

from coordinator.items import Attrs
from coordinator.store import ConditionFailed, Expect, OutcomeUnknown, Unavailable

# A fault hook sees (operation, group, item) and returns None (no fault) or one of
# "unavailable" (fail before applying), "throttled" (refused before applying, as
# DynamoDB's throttling is once the SDK's retries are spent), "lost_reply" (apply,
# then report a timeout), "retried" (apply, but the reply is lost and the SDK's
# retry of the same request finds the condition false: reported as ConditionFailed).
FaultHook = Callable[[str, str, str], "str | None"]
# A delay hook sees (operation, group, item, phase) with phase "request" (before the
# store looks at the item) or "reply" (after it did); the simulator advances virtual
# time there.
DelayHook = Callable[[str, str, str, str], None]
# Called with (group, attrs) right after a write was applied (simulator invariants), and with
# (group, attrs) when a write is sent (before the delay hook's "request" phase).
ApplyHook = Callable[[str, Attrs], None]
# Runs a write's application later (a write that lands after the client gave up): ``defer(fn)``.
DeferHook = Callable[[Callable[[], object]], None]

# "late": not applied now; applied later through the defer hook (condition checked then), while
# the client is told the outcome is unknown.
FAULTS = ("unavailable", "throttled", "lost_reply", "retried", "late")


def _copy(attrs: Attrs) -> Attrs:
    """A copy of an item: items are flat (scalars), so only nested values are deep-copied."""
    out = dict(attrs)
    for k, v in out.items():
        if isinstance(v, (dict, list, set)):
            out[k] = copy.deepcopy(v)
    return out


class MemoryStore:
    def __init__(
        self,
        fault_hook: FaultHook | None = None,
        *,
        delay_hook: DelayHook | None = None,
        apply_hook: ApplyHook | None = None,
        send_hook: ApplyHook | None = None,
        defer_hook: DeferHook | None = None,
    ) -> None:
        self._items: dict[tuple[str, str], Attrs] = {}
        self._lock = threading.Lock()
        self.fault_hook = fault_hook
        self.delay_hook = delay_hook
        self.apply_hook = apply_hook
        self.send_hook = send_hook
        self.defer_hook = defer_hook
        self.writes = 0
        self.reads = 0
        self._call = threading.local()  # the call in progress on this thread (its timeout, for the hooks)

    def call_timeout(self) -> float | None:
        """The ``timeout`` its caller gave the call in progress on this thread (hooks: the simulator's client)."""
        seconds: float | None = getattr(self._call, "timeout", None)
        return seconds

    def _fault(self, op: str, group: str, item: str) -> str | None:
        return self.fault_hook(op, group, item) if self.fault_hook else None

    def _delay(self, op: str, group: str, item: str, phase: str) -> None:
        if self.delay_hook is not None:
            self.delay_hook(op, group, item, phase)

    def query_group(self, group: str, *, timeout: float | None = None) -> list[Attrs]:
        self._call.timeout = timeout
        self._delay("query", group, "", "request")
        if self._fault("query", group, "") is not None:
            raise Unavailable("injected: query failed")
        with self._lock:
            self.reads += 1
            rows = [_copy(a) for (g, _), a in sorted(self._items.items()) if g == group]
        self._delay("query", group, "", "reply")
        return rows

    def get_item(self, group: str, item: str, *, timeout: float | None = None) -> Attrs | None:
        self._call.timeout = timeout
        self._delay("get", group, item, "request")
        if self._fault("get", group, item) is not None:
            raise Unavailable("injected: get failed")
        with self._lock:
            self.reads += 1
            found = self._items.get((group, item))
            found = _copy(found) if found is not None else None
        self._delay("get", group, item, "reply")
        return found

    def put_item(
        self, group: str, attrs: Attrs, expect: Expect, *, gc_after_s: float | None = None, timeout: float | None = None
    ) -> None:
        self._call.timeout = timeout
        item = str(attrs["item"])
        fault = self._fault("put", group, item)
        if self.send_hook is not None:
            self.send_hook(group, _copy(attrs))
        self._delay("put", group, item, "request")
        if fault == "unavailable":
            raise OutcomeUnknown("injected: write timed out before it was applied")
        if fault == "throttled":
            raise OutcomeUnknown("injected: write throttled (ProvisionedThroughputExceededException)")
        if fault == "late" and self.defer_hook is not None:
            snapshot = _copy(attrs)
            self.defer_hook(lambda: self._apply(group, snapshot, expect))
            self._delay("put", group, item, "reply")
            raise OutcomeUnknown("injected: write timed out; it is applied later")
        applied = self._apply(group, attrs, expect)
        self._delay("put", group, item, "reply")
        if not applied:
            raise ConditionFailed(item)
        if fault == "lost_reply":
            raise OutcomeUnknown("injected: write applied but the reply was lost")
        if fault == "retried":
            raise ConditionFailed(f"{item} (the SDK's retry of an applied write)")

    def _apply(self, group: str, attrs: Attrs, expect: Expect) -> bool:
        """Check the condition and apply the write, atomically; True if applied."""
        item = str(attrs["item"])
        with self._lock:
            self.writes += 1
            current = self._items.get((group, item))
            applied = expect.holds_for(current)
            if applied:
                stored = _copy(attrs)
                stored["group"] = group
                self._items[(group, item)] = stored
        if applied and self.apply_hook is not None:
            self.apply_hook(group, _copy(stored))
        return applied

    # test helpers -----------------------------------------------------------
    def raw_put(self, group: str, attrs: Attrs) -> None:
        """Write an item unconditionally (tests: hand-edited or odd items)."""
        with self._lock:
            stored = _copy(attrs)
            stored["group"] = group
            self._items[(group, str(attrs["item"]))] = stored

    def raw_get(self, group: str, item: str) -> Attrs | None:
        """The current item, without hooks or faults (simulator invariants)."""
        with self._lock:
            found = self._items.get((group, item))
            return _copy(found) if found is not None else None
