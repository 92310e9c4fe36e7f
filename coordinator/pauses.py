"""Pauses the monotonic clock did not count, seen against clocks that did.

Leases, the fence's deadlines and the late-send check all run on ``time.monotonic()``. A
process that is stopped (SIGSTOP, a debugger) is fine: that clock keeps running. A paused
*VM* may not be: on KVM a paused guest's kvmclock is saved and restored, so the guest's
monotonic clock (and its realtime clock, which rests on the same clocksource, and
CLOCK_BOOTTIME, which adds only suspend time) do not count the pause. After it, a stale
holder's lease looks valid and its late writes look on time. EC2 does not document what Nitro
does.

:class:`PauseWatch` compares the monotonic clock with clocks that may have counted the pause:

* **the server's clock**: every AWS answer carries a ``Date`` header, to the second. If the
  answer to a request sent at monotonic ``s`` arrived at ``r`` with ``Date: D``, the offset
  ``O`` = server time - monotonic time satisfies ``D - r <= O < D + 1 - s``. Over many answers
  (four a second: heartbeats and group reads) the best bounds close in to within tens of
  milliseconds. A hidden pause of ``P`` shifts ``O`` by ``P``: an answer whose lower bound lies
  above the best upper bound by more than ``tolerance`` shows it, on the first answer after the
  pause. This sees every kind of pause, but only once an answer arrives, and only pauses
  longer than ``tolerance`` plus the clocks' drift over the window.
* **reference clocks** read at every check: ``CLOCK_BOOTTIME`` counts a suspend (hibernation);
  ``CLOCK_REALTIME`` jumps forward when NTP steps it after a pause (chrony's ``makestep``;
  a slewed correction is not seen); the simulator passes one that counts every pause.

A pause is reported once, with the interval of monotonic time it lies in (``since``,
``until``): the agent then drops its authority until a renewal sent after the pause succeeds,
and reports every EC2 write whose bytes may have left inside that interval as a possible
stray, so the current holder writes the table again (agent/aws/fence.py).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

TOLERANCE = 0.15  # shorter pauses go unseen: drift over the window and the answers' spread stay below it
WINDOW = 60.0  # server-time samples kept (seconds of monotonic time)


@dataclass(frozen=True)
class Pause:
    """A pause of at least ``seconds``, somewhere between ``since`` and ``until`` (monotonic)."""

    seconds: float
    since: float
    until: float
    source: str  # "server time" or the name of a reference clock

    def overlaps(self, start: float, end: float) -> bool:
        """The pause may have fallen inside [start, end] (monotonic)."""
        return self.since < end and self.until > start


def system_references() -> dict[str, Callable[[], float]]:
    """The host's clocks that may count a pause the monotonic clock does not (Linux)."""
    refs: dict[str, Callable[[], float]] = {"realtime": time.time}
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        refs["boottime"] = lambda: time.clock_gettime(boottime)
    return refs


def references_of(clock: object) -> dict[str, Callable[[], float]]:
    """The reference clocks a :class:`coordinator.clock.Clock` offers: ``reference_clocks()`` (the host's),
    or one ``reference()`` (the simulator's, which counts every pause), or none (a fake clock)."""
    many = getattr(clock, "reference_clocks", None)
    if callable(many):
        return dict(many())
    one = getattr(clock, "reference", None)
    return {"reference": one} if callable(one) else {}


class PauseWatch:
    """Collects evidence of pauses; :meth:`poll` returns each one once. Safe to feed from any thread."""

    def __init__(
        self,
        monotonic: Callable[[], float],
        references: dict[str, Callable[[], float]] | None = None,
        *,
        tolerance: float = TOLERANCE,
        window: float = WINDOW,
    ) -> None:
        self.monotonic = monotonic
        self.tolerance = tolerance
        self.window = window
        now = monotonic()
        self._refs = {name: (read, read() - now) for name, read in (references or {}).items()}
        self._last_tick = now
        self._lock = threading.Lock()
        self._pending: list[Pause] = []
        # Server-time samples: (sent, received, lower, upper) in arrival order, and the same kept as a
        # deque of increasing upper bounds (the front is the least upper bound of the window).
        self._samples: collections.deque[tuple[float, float, float, float]] = collections.deque()
        self._uppers: collections.deque[tuple[float, float]] = collections.deque()  # (received, upper)
        self.seen = 0

    # ------------------------------------------------------------ evidence
    def server_date(self, sent: float, received: float, date: float) -> None:
        """One answer: sent at monotonic ``sent``, its head arrived at ``received``, ``Date: date`` (epoch s)."""
        lower, upper = date - received, date + 1.0 - sent
        with self._lock:
            cutoff = received - self.window
            while self._samples and self._samples[0][1] < cutoff:
                self._samples.popleft()
            while self._uppers and self._uppers[0][0] < cutoff:
                self._uppers.popleft()
            if self._uppers and lower > self._uppers[0][1] + self.tolerance:
                # The offset moved up: a pause after the newest sample that must predate it.
                since = max((s for s, _r, _lo, up in self._samples if up <= lower), default=self._samples[0][0])
                self._report(Pause(lower - self._uppers[0][1], since, received, "server time"))
                self._samples.clear()
                self._uppers.clear()
            self._samples.append((sent, received, lower, upper))
            while self._uppers and self._uppers[-1][1] >= upper:
                self._uppers.pop()
            self._uppers.append((received, upper))

    def tick(self) -> None:
        """Read the reference clocks: a jump ahead of the monotonic clock is a pause it did not count."""
        now = self.monotonic()
        with self._lock:
            for name, (read, base) in list(self._refs.items()):
                offset = read() - now
                if offset - base > self.tolerance:
                    self._report(Pause(offset - base, self._last_tick, now, name))
                self._refs[name] = (read, offset)  # a step back (NTP) moves the base too
            self._last_tick = now

    def _report(self, pause: Pause) -> None:
        self._pending.append(pause)
        self.seen += 1

    # ------------------------------------------------------------ consumer
    def poll(self) -> list[Pause]:
        """Tick the references; the pauses seen since the last poll (each once)."""
        self.tick()
        with self._lock:
            out, self._pending = self._pending, []
        return out
