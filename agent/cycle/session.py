"""This agent's session (its lease): renewed on time, and before a write that needs a full window."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from agent.cycle.context import Context
from agent.decide import SLOW_STORE_S
from coordinator.errors import SessionLost, StoreUnavailable
from coordinator.items import Health

log = logging.getLogger("nat_ha.agent")

SCHEDULE_SLACK = 0.01  # seconds a renewal may come later than heartbeat_interval (a timer's lateness)


@dataclass(frozen=True)
class Plan:
    """What the renewal decision needs of the service's schedule on the group's wall grid (agent.service)."""

    next_cycle_at: float  # monotonic time of the next regular cycle (an early one may come sooner)
    renewal_slot: bool  # this cycle is the group's renewal instant: renew now unless renewed just before


class SessionKeeper:
    def __init__(self, ctx: Context, write_budget: float) -> None:
        self.ctx = ctx
        # Renew before a write when less than one call's deadline is left: writes get a full window.
        self.write_budget = write_budget
        self.draining = False  # set by SIGTERM / shutdown
        # The service loop's schedule on the group's wall grid (agent.service.Plan), None without one.
        self.schedule: Plan | None = None

    def is_draining(self) -> bool:
        s = self.ctx.last_snapshot
        return self.draining or bool(s and s.draining(self.ctx.me))

    def paused(self) -> bool:
        """We see a pause of the group or of one of its tables (said in every heartbeat)."""
        mem = self.ctx.memory
        return bool(mem.group_paused or mem.paused)

    def heartbeat_due(self, now: float, health: Health) -> bool:
        t = self.ctx.timings
        mem = self.ctx.memory
        changed = mem.last_health is not None and (
            mem.last_health.healthy != health.healthy or mem.last_health.reaches != health.reaches
        )
        # A drain is announced in the heartbeat before any route table is handed over, so
        # that no peer fails a table back to us in between.
        changed = changed or mem.last_draining != self.is_draining()
        # A pause is acknowledged in the heartbeat at once: `nat-ha pause` waits for it.
        changed = changed or mem.last_paused != self.paused()
        elapsed = now - mem.last_heartbeat
        if changed or elapsed >= t.heartbeat_interval - t.cycle_interval / 2:
            return True
        plan = self.schedule
        if plan is None:
            return False
        # On the group's renewal instant (peers read right after it), unless we renewed just before; and
        # whenever waiting for the next regular cycle would leave more than heartbeat_interval between
        # renewals (a renewal off the grid: a health change, a long cycle), which also brings the
        # renewals back onto the group's instants.
        return (plan.renewal_slot and elapsed >= t.cycle_interval / 2) or (
            plan.next_cycle_at - mem.last_heartbeat > t.heartbeat_interval + SCHEDULE_SLACK
        )

    def renew(self, health: Health, *, restart_grace: float = 0.0) -> None:
        ctx = self.ctx
        mem = ctx.memory
        t0 = ctx.clock.monotonic()
        health = mem.ec2_writes.stamp(health, t0)  # the cycle's health, with EC2's last answer as of now
        try:
            draining = self.is_draining()
            paused = self.paused()
            said = dataclasses.replace(
                health,
                store_rtt=max(mem.renewal_rtts, default=None),
                store_rtt_age=max(0.0, t0 - mem.renewal_ended_at) if mem.renewal_rtts else None,
            )
            ctx.coordinator.heartbeat(said, draining=draining, paused=paused, restart_grace_s=restart_grace)
            ended = ctx.clock.monotonic()
            rtt = ended - t0
            mem.renewal_rtts.append(rtt)
            mem.renewal_ended_at = ended
            if max(mem.renewal_rtts) < SLOW_STORE_S:
                mem.store_slow_since = None
            elif mem.store_slow_since is None:
                mem.store_slow_since = t0  # the figure was fast before: this renewal made it slow
            if log.isEnabledFor(logging.DEBUG):  # bench/failover.py's phases (debug only)
                s = ctx.coordinator.session
                log.debug("trace renewed v%s rtt %.4f", s.version if s is not None else "-", rtt)
            mem.last_heartbeat = t0
            mem.last_health = health
            mem.last_draining = draining
            mem.last_paused = paused
            self._count("success")
            ctx.error_cleared("store:heartbeat")
        except SessionLost:
            self._count("conflict")
            log.warning("session lost: a peer expired it; stopped acting at once, starting a new session")
            mem.held.clear()
            ctx.on_event("session_lost", {})
        except StoreUnavailable as exc:
            mem.unanswered(ctx.clock.monotonic())
            self._count("error")
            ctx.error_once("store:heartbeat", f"heartbeat failed ({exc}); will stop acting when the lease runs out")

    def renew_before_exit(self) -> bool:
        """One last renewal as this process exits for a restart (its successor takes the session over).

        The silence peers tolerate then starts now, not at the last regular renewal, and it is
        ``agent_restart_grace`` instead of ``silent_owner_after`` while the NAT answers their probes:
        the next process gets all of it, even when its start is slow (a loaded host, an upgrade's
        cold caches). True if the session is still ours.
        """
        health = self.ctx.memory.last_health
        if health is None or self.ctx.coordinator.session is None:
            return False
        self.renew(health, restart_grace=self.ctx.timings.agent_restart_grace)
        return self.ctx.coordinator.session is not None

    def renew_if_due(self, health: Health) -> None:
        if self.ctx.coordinator.session is not None and self.heartbeat_due(self.ctx.clock.monotonic(), health):
            self.renew(health)

    def keep_through(self, seconds: float, health: Health) -> None:
        """Renew first if the lease would run out within ``seconds`` (a call that may take that long).

        An EC2 read that hangs until its deadline (EC2 unreachable) must not let the session
        lapse, nor leave a gap in our heartbeats that peers read as a stale (unhealthy) member.
        """
        coordinator = self.ctx.coordinator
        if coordinator.session is not None and coordinator.remaining() <= seconds:
            self.renew(health)

    def started(self, health: Health) -> None:
        """A new session was written (it counts as a heartbeat).

        A table an earlier session of this instance holds is resumed (agent.decide._resume) on where EC2
        routes it, and a route read made before now may predate that session's last writes: its process
        waited out before we started (or killed) may have had a write in flight that landed after our read
        (sim seed 7802: a fail-back's route write landed 34 ms after its process was killed; the new
        process's only read was older, and it routed the table back away from its healthy home). So EC2
        is read again at once, before the resume (``Memory.session_started_at``, Observation.routes_unread).
        """
        ctx = self.ctx
        mem = ctx.memory
        now = ctx.clock.monotonic()
        mem.last_heartbeat = now
        mem.last_health = health
        mem.session_started_at = now
        if self.earlier_session_holds():
            mem.ec2_rechecks.append(now)
        ctx.on_event("session_started", {})

    def earlier_session_holds(self) -> bool:
        """The last read of the group shows a table of ours held by an earlier session of this instance."""
        ctx = self.ctx
        session = ctx.coordinator.session
        snapshot = ctx.last_snapshot
        return snapshot is not None and any(
            r.owner == ctx.me and (session is None or r.owner_session != session.session)
            for rt, r in snapshot.routes.items()
            if rt in ctx.homes
        )

    def may_act(self, health: Health) -> bool:
        """True if the session has more time left than an EC2 call's deadline (renews first if short).

        The fence checks the lease again right before each send; this only gives writes a
        full window instead of a clipped deadline. After a renewal, half a deadline is enough: the
        lease is as long as this member can make it, and a member whose renewals are slow (lost
        packets) must still finish a move it began (sim seed 3894), with the deadline the fence clips.
        """
        coordinator = self.ctx.coordinator
        if coordinator.remaining() > self.write_budget:
            return True
        self.renew(health)
        return coordinator.remaining() > self.write_budget / 2

    def _count(self, result: str) -> None:
        if self.ctx.metrics is not None:
            self.ctx.metrics.renewals.labels(result).inc()
