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
* when the call ends, a send that happened after its deadline (the process or VM was frozen
  between the check and the send) is reported to ``on_overrun``: the agent writes a stray
  report so the current holder re-asserts the route at once (see ``agent.cycle.tables``).

What the fence cannot bound is AWS applying a request it received after the client gave up:
that is the ``ec2_apply_horizon`` assumption, covered by the taker's re-assertion at
acquisition + horizon (README, "What is guaranteed").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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
    """The session has too little lease left for this write (or the permit was used): nothing was sent."""

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(f"{operation} not sent: {reason}")
        self.operation = operation
        self.reason = reason


@dataclass
class Permit:
    """One armed write: what it is, when it was checked, its deadline, when its bytes left."""

    operation: str
    resource: str
    prechecked: bool = False  # the lease looked long enough when botocore was about to send
    checked_at: float = -1.0
    deadline: float = -1.0
    sent_at: float = -1.0
    finished_at: float = -1.0

    @property
    def used(self) -> bool:
        return self.checked_at >= 0

    @property
    def overran(self) -> bool:
        """The bytes left after the deadline: the write may land outside the lease (a stray)."""
        return self.used and self.sent_at > self.deadline >= 0


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
    ) -> None:
        self.remaining = remaining
        self.monotonic = monotonic
        self.timing = timing
        self.on_overrun = on_overrun
        self._local = threading.local()
        self.refusals = 0
        self.overruns = 0

    def _armed(self) -> Permit | None:
        permit: Permit | None = getattr(self._local, "permit", None)
        return permit

    @contextmanager
    def write(self, operation: str, resource: str) -> Iterator[Permit]:
        """Arm the fence for exactly one ``operation`` on ``resource`` (the adapter's write)."""
        if operation not in WRITE_OPERATIONS:
            raise ValueError(f"{operation} is not a write operation")
        if self._armed() is not None:
            raise RuntimeError("a write is already armed on this thread")
        permit = Permit(operation, resource)
        self._local.permit = permit
        try:
            yield permit
        finally:
            self._local.permit = None
            permit.finished_at = self.monotonic()
            if permit.overran:
                self.overruns += 1
                if self.on_overrun is not None:
                    self.on_overrun(permit)

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
        permit.prechecked = True
        left = self.remaining()
        if left - self.timing.slack < self.timing.min_window:
            self.refusals += 1
            raise FenceRefused(operation, f"the lease has {max(left, 0.0):.3f} s left")

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
        left = self.remaining()
        if left - t.slack < t.min_window:
            self.refusals += 1
            permit.checked_at = now  # spent: the adapter must arm again after renewing
            raise FenceRefused(operation, f"the lease has {max(left, 0.0):.3f} s left")
        permit.checked_at = now
        permit.deadline = now + min(t.call_timeout, left - t.slack)
        return permit.deadline

    def sent(self) -> None:
        """The transport handed the request's last byte to the kernel (recorded for the overrun check)."""
        permit = self._armed()
        if permit is not None and permit.used:
            permit.sent_at = self.monotonic()
