"""How our EC2 calls have gone lately, and whose failure each one was.

A failure makes us unhealthy for ``ec2_writes`` (so that a peer that can write serves our
tables) only when it is ours - when a peer could do better:

* a refusal of a write (IAM, our credentials) - except within ``ec2_tag_propagation`` of our
  own holder-tag write on that table (or its Elastic IP): IAM may still decide on the previous
  tag. The write (not the tag) is retried shortly and not counted, for at most twice that long
  from the first tag write since the last write that went through, so that a role that really
  may not write is still found out. The penalty ends early when AWS lets a write of every kind
  it refused us through again (a holder with no healthy peer writes on while out): the refusal
  is over, and a home kept out would give its own healthy table away (sim seed 2674: IAM refused
  a member's writes for 1.6 s, its writes went through again at once, and the 10-s penalty had it
  release its home table to a peer back from a restart). A role that lacks an action never
  gets that action through, so it stays out for the penalty;
* a failure to connect to EC2, only once a live peer's heartbeat says EC2 answered *it* after
  our calls began failing. An outage that hits every member is AWS's: nobody hands tables
  around for it, and a penalty for an unreachable EC2 ends at the next call EC2 answers us:
  no penalty outlives an outage;
* never AWS's 5xx, slow answers or throttling: they hit every member alike.

Throttling is per EC2 action: AWS meters each API action in a token bucket of its own
(Describe* 100 burst / 20 a second, mutating calls 50 / 5, CreateTags 100 / 10,
StartInstances 5 / 2), so a throttled call backs off calls of that action only. A read
throttled by another tenant never holds back a takeover write.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TypeVar

from agent.aws.ec2 import THROTTLED, Ec2Error, api_name
from agent.config import Timing
from agent.cycle.context import Context
from agent.cycle.memory import Backoff, Held
from agent.decide import EC2_WRITES_CHECK
from coordinator.items import MEMBER_ALIVE, Health

log = logging.getLogger("nat_ha.agent")
T = TypeVar("T")

EC2_FAILURES_TO_GIVE_UP = 2  # consecutive failures of our own of route writes before we hand tables over
# Refusals that are ours, not AWS's: our role may not write (IAM) or our credentials are refused.
REFUSED = frozenset(
    {
        "UnauthorizedOperation",
        "AuthFailure",
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
    }
)
# No connection to the EC2 endpoint: ours when peers reach it, AWS's outage when nobody does.
UNREACHABLE = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"})
NO_ANSWER = UNREACHABLE | frozenset({"ReadTimeoutError"})  # no answer in time (a planned move waits)
OWN_EC2_FAILURES = REFUSED | UNREACHABLE  # what can be ours (5xx, throttling and slow answers never are)
# A write that failed with one of these was certainly not applied: no connection came up (nothing was
# sent), or AWS answered with a refusal or throttling (it decides those before applying anything).
NOT_APPLIED = REFUSED | THROTTLED | frozenset({"EndpointConnectionError", "ConnectTimeoutError"})
EC2_PENALTY_MAX = 600.0  # longest stretch an agent whose writes are refused stays out (doubles from the hold-down)
# Throttling back-off (first, longest; doubling) by kind of action. Writes retry soon: the mutating
# bucket refills a token every 0.2 s, and a takeover write waiting on a long back-off is an outage.
BACKOFFS = {
    "describe": (0.25, 4.0),
    "write": (0.2, 1.0),
    "tags": (0.1, 1.0),
    "start": (0.5, 4.0),
}
THROTTLE_BACKOFF = BACKOFFS["write"]  # the longest a throttled route write or association waits: 1 s
ROUTE_WRITES = frozenset({"ReplaceRoute", "CreateRoute"})
UNREACHABLE_READ_INTERVAL = 1.0  # while out because EC2 did not answer us: read it this often to see it back
# A write IAM refused during tag propagation is retried this soon (doubling every second refusal since
# the table's last write that went through, up to 8 x), so it goes through soon after IAM sees the tag.
# The write alone is retried: our tag write is on its way to IAM, writing it again would not make it
# arrive sooner.
PROPAGATION_RETRY = 0.1
# How far a peer's clock may run slow against ours (the leases' clock bound is +-4.7 %): an age it
# reports is at most this much short of the true one.
CLOCK_RATE_BOUND = 0.05


def dated_no_earlier(written_after: float, age: float, t: Timing) -> float:
    """The earliest (our clock) an instant can be that a peer's heartbeat dates ``age`` seconds (its clock)
    before its writing, ``written_after`` being our last read that still showed the heartbeat before it
    (when that read returned): the heartbeat was written no earlier than one store call before DynamoDB
    applied it, which was after DynamoDB served that read, at most one store call before it returned."""
    return written_after - 2 * t.store_timeout_max - age / (1 - CLOCK_RATE_BOUND)


def action_of(operation: str) -> str:
    """The EC2 API action of an operation name (``replace_route`` or ``ReplaceRoute``)."""
    return api_name(operation) if operation[:1].islower() else operation


def write_kind(action: str) -> str:
    """What IAM allows or refuses of a write: the route writes (ReplaceRoute, CreateRoute) as one."""
    return "route" if action in ROUTE_WRITES else action


def kind_of(action: str) -> str:
    """The throttling category of an EC2 action (its bucket's size; each action has its own bucket)."""
    if action.startswith("Describe"):
        return "describe"
    if action == "CreateTags":
        return "tags"
    if action == "StartInstances":
        return "start"
    return "write"


class Ec2Standing:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------ throttling
    def quiet(self, action: str, now: float) -> bool:
        """True while we back off after AWS throttled ``action``: no call of it is made."""
        b = self.ctx.memory.ec2_writes.backoffs.get(action_of(action))
        return b is not None and now < b.until

    def backoff_left(self, action: str, now: float) -> float:
        b = self.ctx.memory.ec2_writes.backoffs.get(action_of(action))
        return max(0.0, b.until - now) if b is not None else 0.0

    def hold_back(self, action: str, operation: str, now: float) -> None:
        """Raise ``RequestLimitExceeded`` (not sent) while we back off after AWS throttled ``action``."""
        if self.quiet(action, now):
            left = self.backoff_left(action, now)
            raise Ec2Error(operation, "RequestLimitExceeded", f"backing off {action} {left:.2f} s after throttling")

    def booked(self, action: str, call: Callable[[], T]) -> T:
        """One EC2 call outside a table's write frame (a read, a restart's stop, start or tag), booked:
        held back while ``action`` backs off after throttling, its throttling backs that action off,
        an answer says our path to EC2 works. Never counted as a failing write of ours: a stop that
        IAM refuses is the stop-by fence working, not our role failing."""
        ctx = self.ctx
        self.hold_back(action, action, ctx.clock.monotonic())
        try:
            result = call()
        except Ec2Error as exc:
            self.failed(exc, ctx.clock.monotonic(), write=False)
            raise
        self.succeeded(action, ctx.clock.monotonic())
        return result

    def _throttled(self, action: str, now: float) -> None:
        w = self.ctx.memory.ec2_writes
        lo, hi = BACKOFFS[kind_of(action)]
        b = w.backoffs.setdefault(action, Backoff())
        b.seconds = min(hi, max(lo, 2 * b.seconds))
        b.until = now + b.seconds
        self._count("aws", "throttled")
        self.ctx.error_once(
            f"throttled:{action}",
            f"AWS throttles {action} for the account (its bucket is empty: AWS's limit, not our failure); "
            f"backing off {action} only, up to {hi:g} s",
        )

    # ------------------------------------------------------------ health
    def out(self, now: float) -> bool:
        """True while our own EC2 failures keep us from taking or keeping tables (``ec2_writes`` fails)."""
        return now < self.ctx.memory.ec2_writes.out_until

    def with_check(self, health: Health, now: float) -> Health:
        """Our health with the ``ec2_writes`` check failing while EC2 refuses (or cannot hear) our writes,
        and the age of EC2's last answer to us, for peers judging their own failures."""
        w = self.ctx.memory.ec2_writes
        health = w.stamp(health, now)
        if not self.out(now):
            return health
        checks = dict(health.checks)
        checks[EC2_WRITES_CHECK] = False
        detail = "EC2 refuses our writes" if w.cause == "refused" else "EC2 does not answer us (peers reach it)"
        return dataclasses.replace(health, healthy=False, checks=checks, detail=detail)

    def retry_due(self, now: float) -> float | None:
        """When a write refused during tag propagation should be tried again (the daemon wakes then)."""
        at = self.ctx.memory.ec2_writes.retry_at
        return at if at > now else None

    def read_interval(self, now: float) -> float:
        """How often EC2's routes are read: more often while out because EC2 did not answer us."""
        w = self.ctx.memory.ec2_writes
        if w.cause == "unreachable" and self.out(now):
            return min(UNREACHABLE_READ_INTERVAL, self.ctx.timings.ec2_reconcile_interval)
        return self.ctx.timings.ec2_reconcile_interval

    # ------------------------------------------------------------ outcomes
    def succeeded(self, operation: str, now: float) -> None:
        """A call of ``operation`` went through: its back-off resets; a route write resets our failures."""
        action = action_of(operation)
        w = self.ctx.memory.ec2_writes
        b = w.backoffs.get(action)
        if b is not None:
            b.seconds = 0.0
            b.until = -1e18
            self.ctx.error_cleared(f"throttled:{action}")
        self._answered(now)
        if action in ROUTE_WRITES:
            w.failures = 0
            if now >= w.out_until:
                w.penalty = 0.0  # served: the next episode starts from the hold-down again
        kind = write_kind(action)
        if kind in w.refused:
            w.refused.discard(kind)
            if not w.refused and w.cause == "refused" and now < w.out_until:
                w.out_until = now  # no penalty outlives the refusals (module docstring)
                log.warning("AWS lets our EC2 writes through again: taking route tables again (the penalty ends)")

    def failed(
        self, exc: Ec2Error, now: float, *, write: bool, held: Held | None = None, address: bool = False
    ) -> None:
        """Book an EC2 failure by whose it is (module docstring).

        ``held``: the table a write was for; ``address``: the write was its Elastic IP's (whose own
        holder tag IAM decides on).
        """
        action = action_of(exc.operation)
        code = exc.code
        if code in NO_ANSWER:
            self.ctx.memory.unanswered(now)
        if code in UNREACHABLE:
            self._unreachable(exc, now, write=write)
            return
        self._answered(now)  # an error code is an answer: our path to EC2 works
        if code in THROTTLED:
            self._throttled(action, now)
            return
        if code not in REFUSED:
            self._count("aws", "error")  # 5xx, slow answers: every member's
            return
        if not write:
            return  # a refused read makes our view stale, no table goes unserved
        if held is not None and self.propagating(held, now, address=address):
            self._count("aws", "tag_propagation")
            # Counted per resource (the table's route, its Elastic IP): each waits for its own tag, and
            # the refusals of the one must not stretch the retries of the other (sim seed 4130).
            if address:
                held.address_propagation_refusals += 1
                refusals = held.address_propagation_refusals
            else:
                held.propagation_refusals += 1
                refusals = held.propagation_refusals
            retry = now + PROPAGATION_RETRY * 2 ** min((refusals - 1) // 2, 3)
            w = self.ctx.memory.ec2_writes
            w.retry_at = retry if w.retry_at <= now else min(w.retry_at, retry)
            self.ctx.error_once(
                f"tagprop:{action}",
                f"{exc} within {self.ctx.timings.ec2_tag_propagation:g} s of our own holder-tag write: IAM may "
                "still see the previous tag (tag propagation, not our failure); retrying next cycle",
            )
            return
        self._own(exc, now, "refused")

    def propagating(self, held: Held, now: float, *, address: bool = False) -> bool:
        """A refusal now may be IAM deciding on the previous holder tag: within ``ec2_tag_propagation``
        of our last tag write, and within twice that of the first since our last successful write."""
        p = self.ctx.timings.ec2_tag_propagation
        if address:
            last, first = held.address_tagged_at, held.address_first_tagged_at
        else:
            last, first = held.tagged_at, held.first_tagged_at
        return now - last <= p and now - first <= 2 * p

    def _unreachable(self, exc: Ec2Error, now: float, *, write: bool) -> None:
        w = self.ctx.memory.ec2_writes
        if w.unreachable_since is None:
            w.unreachable_since = now
        if not write:
            return
        peer = self._peer_answered_since(w.unreachable_since, now)
        if not peer:
            self._count("aws", "unreachable")
            self.ctx.error_once(
                "ec2:outage",
                f"{exc}; no peer reports an answer from EC2 since ours stopped: an outage of AWS's, not counted "
                "against us; retrying every cycle",
            )
            return
        self._own(exc, now, "unreachable", f"{peer} reaches EC2 while we cannot")

    def _peer_answered_since(self, since: float, now: float) -> str:
        """A live peer whose heartbeat says EC2 answered it after ``since`` (our clock); "" if none.

        A heartbeat saying EC2 answered its writer ``a`` seconds (its clock) before it was written
        was written no earlier than one store call before DynamoDB applied it, which was after our
        last read that still showed the heartbeat before it (W, when that read returned: DynamoDB
        served it at most one store call earlier): the answer came after ``since`` for sure when
        W - 2 x store_timeout_max - a / (1 - CLOCK_RATE_BOUND) > since. Not "first seen minus a
        cycle": while EC2 is out for everyone our cycles are long (each call waits out its
        deadline), and a heartbeat first seen late would vouch for an answer before the outage
        (sim seed 4455: a home handed its table away 11 s into an outage that hit every member).
        """
        ctx = self.ctx
        snapshot = ctx.last_snapshot
        if snapshot is None:
            return ""
        t = ctx.timings
        for m in snapshot.members.values():
            if m.instance == ctx.me or m.instance not in ctx.members or m.state != MEMBER_ALIVE:
                continue
            age = ctx.memory.observer.unchanged_for(m.key, now)
            written_after = ctx.memory.observer.written_after(m.key)
            if age >= m.lease_ms / 1000 + t.margin or m.health.ec2_answered is None or written_after is None:
                continue  # a stale heartbeat says nothing about now, nor one whose age we cannot bound
            answered = dated_no_earlier(written_after, m.health.ec2_answered, t)
            if answered > since:
                return m.instance
        return ""

    def _answered(self, now: float) -> None:
        """EC2 answered a call of ours: our path works; a penalty for an unreachable EC2 ends now."""
        ctx = self.ctx
        w = ctx.memory.ec2_writes
        w.answered_at = now
        w.unreachable_since = None
        ctx.error_cleared("ec2:outage")
        if w.failure_cause == "unreachable":
            w.failures = 0
        if w.cause == "unreachable" and now < w.out_until:
            w.out_until = now
            log.warning("EC2 answers us again: taking route tables again (the penalty for an unreachable EC2 ends)")

    def _own(self, exc: Ec2Error, now: float, cause: str, why: str = "") -> None:
        """A write failure of our own: after EC2_FAILURES_TO_GIVE_UP of them, we are out for a while."""
        ctx = self.ctx
        w = ctx.memory.ec2_writes
        self._count("ours", cause)
        if cause == "refused":
            w.refused.add(write_kind(action_of(exc.operation)))
        if w.failures == 0:
            w.first_failure = now
        w.failures += 1
        w.failure_cause = cause
        if w.failures < EC2_FAILURES_TO_GIVE_UP or now < w.out_until:
            return
        w.failures = 0
        w.cause = cause
        if ctx.metrics is not None:
            ctx.metrics.ec2_penalties_of[cause].inc()
        if cause == "unreachable":
            w.out_until = float("inf")  # until EC2 answers us (_answered)
            log.warning(
                "our path to EC2 is broken (%s; %s): handing route tables over and taking none until EC2 answers us",
                exc,
                why,
            )
            return
        w.penalty = min(EC2_PENALTY_MAX, max(ctx.timings.failback_hold_down, 2 * w.penalty))
        w.out_until = now + w.penalty
        log.warning(
            "AWS keeps refusing our EC2 writes (%s: our role or credentials, not AWS's): handing route tables over "
            "and taking none for %.0f s",
            exc,
            w.penalty,
        )

    def _count(self, whose: str, cause: str) -> None:
        if self.ctx.metrics is not None:
            self.ctx.metrics.ec2_failures_of[whose, cause].inc()
