"""The fence around every EC2 side effect: one lease check per write, right before the send.

EC2 has no conditional writes, so the only thing that keeps a stale holder from writing is
the holder itself. Every EC2 write (ReplaceRoute, CreateRoute, CreateTags, StopInstances,
StartInstances, ...) goes through a :class:`Fence`:

* the adapter arms it for exactly one write (``with fence.write(operation, resource):``);
* the transport calls :meth:`Fence.authorize` as late as possible - after the request is
  signed (credentials resolved) and the connection is up (DNS and connect done) - and gets
  the absolute deadline of the call, or :class:`FenceRefused` (nothing is sent) when the
  session has less than ``min_window`` left. A second send under the same permit is refused:
  one write per check;
* the deadline is ``now + min(call_timeout, lease left - slack)``: the transport
  (coordinator.awshttp) ends the whole call then - every blocking step gets the time left,
  nothing is retried - so a write is sent inside the lease or not at all;
* authority does not rest on the local clock alone: a write armed inside a :meth:`Fence.frame`
  runs the frame's ``confirm`` there too, right before the final lease check - DynamoDB's word
  that we still own the table in the same term and that our session was not expired: a
  consistent read (``Coordinator.confirm``), or a recent answer that says as much
  (:class:`Confirmed`: a renewal DynamoDB accepted, with the table shown ours; the write's
  exposure to a pause then starts when that request was sent) - and a stop's fresh probe
  evidence. A write that cannot be confirmed is not sent;
* pauses the monotonic clock did not count (a paused VM: coordinator.pauses) are looked for
  before and after every write: one seen before the send refuses it and drops our authority
  (``on_pause``) until a renewal sent after it succeeds; one that may lie between a write's
  confirmation and its bytes reaching AWS makes that write an overrun;
* when the call ends, a send that happened after its deadline (the process or VM was frozen
  between the check and the send), or whose bytes may have left across a pause, is reported to
  ``on_overrun``: the agent writes a stray report so the current holder re-asserts the route at
  once (see ``agent.cycle.tables``). A pause seen only later (by the next answer's server time)
  reports the writes it may have delayed then;
* "sent" means acknowledged: a write whose bytes left but were not all acknowledged when the
  call ended is in doubt (``on_doubt``): it may land until its deadline plus
  ``ec2_apply_horizon``, and the holder reads EC2 at that bound and repairs what it finds.

An operator's pause (``nat-ha pause``; not the clock pauses above) is enforced here too, where
every EC2 write passes: ``hold(operation, resource)`` names who paused the write's route table (or
the group), and the write is refused before anything is sent, whatever the decision asked for.

What the fence cannot bound is AWS applying a request it received after the client gave up:
that is the ``ec2_apply_horizon`` assumption, covered by the taker's re-assertion at
acquisition + horizon (README, "What is guaranteed").
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from coordinator.pauses import Pause, PauseWatch


@dataclass(frozen=True)
class Confirmed:
    """A confirmation that needed no new read: DynamoDB's answer to a request sent at ``since`` (monotonic)."""

    since: float


# confirm(operation) -> "" when the write may go (confirmed by a read made now), Confirmed when an
# earlier answer confirms it, else why not (it may raise: nothing is sent).
Confirm = Callable[[str], str | Confirmed]
RECENT_S = 60.0  # writes kept this long after they ended, for pauses seen only later

# Every EC2 operation that changes something: each needs an armed permit.
WRITE_OPERATIONS = frozenset(
    {
        "ReplaceRoute",
        "CreateRoute",
        "CreateTags",
        "StopInstances",
        "StartInstances",
        "AssociateAddress",
        "DisassociateAddress",
        "AssignPrivateIpAddresses",
        "UnassignPrivateIpAddresses",
    }
)


class FenceRefused(Exception):
    """The session has too little lease left for this write (or the permit was used): nothing was sent.

    ``renewable``: refused only for want of DynamoDB's word - too little lease left, or no answer to the
    confirmation - which a renewal that gets through gives; the same write may be armed again at once.
    """

    def __init__(self, operation: str, reason: str, *, renewable: bool = False) -> None:
        super().__init__(f"{operation} not sent: {reason}")
        self.operation = operation
        self.reason = reason
        self.renewable = renewable


@dataclass
class Permit:
    """One armed write: what it is, when it was checked, its deadline, when its bytes left."""

    operation: str
    resource: str
    confirm: Confirm | None = None  # the frame's check against DynamoDB, run right before the send
    note: object = None  # the frame's note for on_overrun / on_doubt (the table, term and target)
    prechecked: bool = False  # the lease looked long enough when botocore was about to send
    confirm_started: float = -1.0  # when the confirmation read started (our authority is known from then)
    checked_at: float = -1.0
    deadline: float = -1.0
    sent_at: float = -1.0  # when the bytes reached AWS (acknowledged), or left us when that is not known
    finished_at: float = -1.0
    in_doubt: bool = False  # bytes left but were not all acknowledged: it may land until deadline + horizon
    paused: bool = False  # a pause the monotonic clock did not count may lie between its check and its send
    reported: bool = False

    @property
    def used(self) -> bool:
        return self.checked_at >= 0

    @property
    def overran(self) -> bool:
        """The bytes left after the deadline, or maybe did: the write may land outside the lease (a stray)."""
        return self.used and (self.sent_at > self.deadline >= 0 or self.paused)

    def exposed(self) -> tuple[float, float]:
        """When a pause would have made this write late: from its confirmation (or check) until its bytes arrived."""
        start = self.confirm_started if self.confirm_started >= 0 else self.checked_at
        end = self.sent_at if self.sent_at >= 0 and not self.in_doubt else self.finished_at
        return start, max(start, end)


@dataclass(frozen=True)
class FenceTiming:
    call_timeout: float  # the hard deadline of one call (timing.ec2_timeout)
    min_window: float = 0.05  # refuse a write with less lease left than this
    slack: float = 0.02  # the deadline ends this long before the lease does


class Fence:
    """Lease checks for one agent's EC2 writes; ``remaining()`` is its session's time left."""

    def __init__(
        self,
        remaining: Callable[[], float],
        monotonic: Callable[[], float],
        timing: FenceTiming,
        *,
        on_overrun: Callable[[Permit], None] | None = None,
        hold: Callable[[str, str], str] | None = None,
        on_doubt: Callable[[Permit], None] | None = None,
        pauses: PauseWatch | None = None,
        on_pause: Callable[[Pause], None] | None = None,
    ) -> None:
        self.remaining = remaining
        self.monotonic = monotonic
        self.timing = timing
        self.on_overrun = on_overrun
        self.hold = hold  # (operation, resource) -> why the write must not be sent now ("": it may)
        self.held = 0  # writes refused because of a pause
        self.on_doubt = on_doubt
        self.pauses = pauses
        self.on_pause = on_pause
        self._local = threading.local()
        self._recent: collections.deque[Permit] = collections.deque()
        self._lock = threading.Lock()
        self.refusals = 0
        self.overruns = 0
        self.unconfirmed = 0

    def _armed(self) -> Permit | None:
        permit: Permit | None = getattr(self._local, "permit", None)
        return permit

    @contextmanager
    def frame(self, *, confirm: Confirm | None = None, note: object = None) -> Iterator[None]:
        """Every write armed inside (on this thread) is confirmed by ``confirm`` right before its send
        and carries ``note`` to ``on_overrun`` and ``on_doubt``."""
        outer = getattr(self._local, "frame", None)
        self._local.frame = (confirm, note)
        try:
            yield
        finally:
            self._local.frame = outer

    @contextmanager
    def write(self, operation: str, resource: str) -> Iterator[Permit]:
        """Arm the fence for exactly one ``operation`` on ``resource`` (the adapter's write)."""
        if operation not in WRITE_OPERATIONS:
            raise ValueError(f"{operation} is not a write operation")
        if self._armed() is not None:
            raise RuntimeError("a write is already armed on this thread")
        confirm, note = getattr(self._local, "frame", None) or (None, None)
        permit = Permit(operation, resource, confirm, note)
        self._local.permit = permit
        try:
            yield permit
        finally:
            self._local.permit = None
            permit.finished_at = self.monotonic()
            if permit.used:
                with self._lock:
                    self._recent.append(permit)
                self.check_pauses()  # the answer's server time may show a pause during the call
                if permit.overran:
                    self._report(permit)
                if permit.in_doubt and self.on_doubt is not None:
                    self.on_doubt(permit)

    def _report(self, permit: Permit) -> None:
        with self._lock:
            if permit.reported:
                return
            permit.reported = True
        self.overruns += 1
        if self.on_overrun is not None:
            self.on_overrun(permit)

    def check_pauses(self) -> list[Pause]:
        """Look for pauses the monotonic clock did not count; each is handled once.

        Our authority is dropped (``on_pause``), and every recent write that a pause may have
        delayed between its confirmation and its bytes reaching AWS is reported as an overrun.
        """
        if self.pauses is None:
            return []
        found = self.pauses.poll()
        if not found:
            return found
        now = self.monotonic()
        with self._lock:
            while self._recent and self._recent[0].finished_at < now - RECENT_S:
                self._recent.popleft()
            hit = [p for p in self._recent if any(pause.overlaps(*p.exposed()) for pause in found)]
        for pause in found:
            if self.on_pause is not None:
                self.on_pause(pause)
        for permit in hit:
            permit.paused = True
            self._report(permit)
        return found

    def precheck(self, operation: str) -> None:
        """At botocore's ``before-send`` (signed, not yet connected): refuse a write early.

        A write needs its armed permit (for this operation, not yet sent or pre-checked: one
        write per check, even if botocore retried) and at least ``min_window`` of lease. The
        final check is :meth:`authorize`, once the connection is up; where a test's mock answers
        at ``before-send`` (moto's ``mock_aws``) this is the only one.
        """
        if operation not in WRITE_OPERATIONS:
            return
        permit = self._armed()
        if permit is None or permit.operation != operation:
            self.refusals += 1
            raise FenceRefused(operation, "no lease check armed for it (a write outside the fence)")
        if permit.used or permit.prechecked:
            self.refusals += 1
            raise FenceRefused(operation, "its lease check was already used (one write per check)")
        self._check_hold(permit)
        permit.prechecked = True
        left = self.remaining()
        if left - self.timing.slack < self.timing.min_window:
            self.refusals += 1
            raise FenceRefused(operation, f"the lease has {max(left, 0.0):.3f} s left", renewable=True)

    def authorize_armed(self) -> float:
        """The transport's check (agent.aws.ec2 over coordinator.awshttp): the armed write, or a read."""
        permit = self._armed()
        return self.authorize(permit.operation if permit is not None else "")

    def authorize(self, operation: str) -> float:
        """Called by the transport right before the bytes go out; returns the call's deadline.

        Reads get ``now + call_timeout``. A write needs an armed, unused permit for the same
        operation and at least ``min_window`` of lease left; otherwise :class:`FenceRefused`.
        """
        now = self.monotonic()
        t = self.timing
        if operation not in WRITE_OPERATIONS:
            return now + t.call_timeout
        permit = self._armed()
        if permit is None or permit.operation != operation:
            self.refusals += 1
            raise FenceRefused(operation, "no lease check armed for it (a write outside the fence)")
        if permit.used:
            self.refusals += 1
            raise FenceRefused(operation, "its lease check was already used (one write per check)")
        self._check_hold(permit)
        if permit.confirm is not None:
            self._refuse_if_paused(permit, now)
            permit.confirm_started = now
            unanswered = False
            try:
                verdict = permit.confirm(operation)
            except Exception as exc:  # the store could not be read: authority not confirmed
                verdict = f"cannot confirm it in DynamoDB ({exc})"
                unanswered = True
            if isinstance(verdict, Confirmed):
                # Our authority is known from when that request was sent: a pause since then is this write's.
                permit.confirm_started = min(now, verdict.since)
                verdict = ""
            why = verdict
            now = self.monotonic()
            if why:
                self.refusals += 1
                self.unconfirmed += 1
                permit.checked_at = now  # spent
                raise FenceRefused(operation, f"not confirmed: {why}", renewable=unanswered)
        self._refuse_if_paused(permit, now)
        left = self.remaining()
        if left - t.slack < t.min_window:
            self.refusals += 1
            permit.checked_at = now  # spent: the adapter must arm again after renewing
            raise FenceRefused(operation, f"the lease has {max(left, 0.0):.3f} s left", renewable=True)
        permit.checked_at = now
        permit.deadline = now + min(t.call_timeout, left - t.slack)
        return permit.deadline

    def _check_hold(self, permit: Permit) -> None:
        """Refuse the armed write while an operator paused its route table (or the group); nothing is sent."""
        why = self.hold(permit.operation, permit.resource) if self.hold is not None else ""
        if why:
            self.refusals += 1
            self.held += 1
            raise FenceRefused(permit.operation, why)

    def _refuse_if_paused(self, permit: Permit, now: float) -> None:
        """A pause seen now (before the send) drops our authority: nothing is sent."""
        found = self.check_pauses()
        if found:
            self.refusals += 1
            permit.checked_at = now  # spent
            worst = max(found, key=lambda p: p.seconds)
            raise FenceRefused(
                permit.operation, f"this host was paused for at least {worst.seconds:.2f} s ({worst.source})"
            )

    def sent(self) -> None:
        """The transport handed the request's last byte to the kernel (recorded for the overrun check)."""
        permit = self._armed()
        if permit is not None and permit.used:
            permit.sent_at = self.monotonic()
