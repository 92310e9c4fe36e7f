"""How our EC2 calls have gone lately, and what that means for us.

Throttling backs off every EC2 call for a while; refusals of our own (our role, our
credentials, our path to EC2) make us unhealthy for ``ec2_writes`` so that a peer that can
write serves our tables; other failures (AWS's 5xx, slow answers) hit every member alike and
count for nothing.
"""

from __future__ import annotations

import dataclasses
import logging

from agent.aws.ec2 import THROTTLED, Ec2Error
from agent.cycle.context import Context
from agent.decide import EC2_WRITES_CHECK
from coordinator.items import Health

log = logging.getLogger("nat_ha.agent")

EC2_FAILURES_TO_GIVE_UP = 2  # consecutive route writes refused for a reason of ours before we hand tables over
# Failures that are ours, not AWS's: our role may not write (IAM), our credentials are refused, or our
# path to the EC2 endpoint is broken. A peer can do better. 5xx, throttling and slow answers hit every
# member alike: handing tables around would not help, so they do not count.
OWN_EC2_FAILURES = frozenset(
    {
        "UnauthorizedOperation",
        "AuthFailure",
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionClosedError",
    }
)
EC2_PENALTY_MAX = 600.0  # longest stretch an agent with failing EC2 writes stays out (doubles from the hold-down)
THROTTLE_BACKOFF = (0.25, 4.0)  # EC2 back-off after RequestLimitExceeded: first, longest (doubling)


class Ec2Standing:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def quiet(self, now: float) -> bool:
        """True while we back off after throttling: no EC2 call is made."""
        return now < self.ctx.memory.ec2_writes.throttled_until

    def with_check(self, health: Health, now: float) -> Health:
        """Our health, with the ``ec2_writes`` check failing while AWS refuses our route or EIP writes."""
        if now >= self.ctx.memory.ec2_writes.out_until:
            return health
        checks = dict(health.checks)
        checks[EC2_WRITES_CHECK] = False
        return dataclasses.replace(health, healthy=False, checks=checks, detail="EC2 refuses our writes")

    def failed(self, exc: Ec2Error, now: float, *, write: bool) -> None:
        """Book an EC2 failure: throttling backs off every call; failing route writes make us unhealthy."""
        w = self.ctx.memory.ec2_writes
        lo, hi = THROTTLE_BACKOFF
        if exc.code in THROTTLED:
            w.backoff = min(hi, max(lo, 2 * w.backoff))
            w.throttled_until = now + w.backoff
            return
        if not write or exc.code not in OWN_EC2_FAILURES:
            return
        if w.failures == 0:
            w.first_failure = now
        w.failures += 1
        if w.failures >= EC2_FAILURES_TO_GIVE_UP and now >= w.out_until:
            w.penalty = min(EC2_PENALTY_MAX, max(self.ctx.timings.failback_hold_down, 2 * w.penalty))
            w.out_until = now + w.penalty
            w.failures = 0
            log.warning(
                "AWS keeps refusing our EC2 writes (%s): handing route tables over and taking none for %.0f s",
                exc,
                w.penalty,
            )

    def succeeded(self) -> None:
        """A route write went through: failures and back-off reset (the penalty once it is served)."""
        w = self.ctx.memory.ec2_writes
        w.failures = 0
        w.backoff = 0.0
        if self.ctx.clock.monotonic() >= w.out_until:
            w.penalty = 0.0

    def association_succeeded(self) -> None:
        """An association went through: the throttling back-off resets (failures count route writes)."""
        self.ctx.memory.ec2_writes.backoff = 0.0
