"""Restarting a dead peer (what nat_monitor.sh does, made safe): under a restart lease of our
own, stop, wait for ``stopped``, start, wait for ``running``; a cooldown and a cap. The decision
to restart is agent.decide's; this carries it out, re-reading the peer's heartbeat right before
every destructive step.
"""

from __future__ import annotations

import logging

from agent.cycle.context import Context
from agent.cycle.memory import RestartProgress
from agent.cycle.session import SessionKeeper
from agent.decide import ClaimRestart
from coordinator.items import (
    RESTART_COOLDOWN,
    RESTART_IDLE,
    RESTART_STARTING,
    RESTART_STOPPING,
    GroupSnapshot,
    Health,
    RestartItem,
)

log = logging.getLogger("nat_ha.agent")


class Restarter:
    def __init__(self, ctx: Context, session: SessionKeeper) -> None:
        self.ctx = ctx
        self.session = session

    def still_silent(self, target: str, snapshot: GroupSnapshot) -> bool:
        """Re-read the peer's heartbeat right before a destructive step: never stop a heartbeating peer."""
        seen = snapshot.members.get(target)
        current = self.ctx.coordinator.read_group().members.get(target)
        return (
            seen is not None
            and current is not None
            and (current.session, current.version) == (seen.session, seen.version)
        )

    def claim(self, a: ClaimRestart, snapshot: GroupSnapshot, health: Health) -> str:
        ctx = self.ctx
        if not self.still_silent(a.target, snapshot):
            return f"{a.target} heartbeated again: not restarting it"
        item = ctx.coordinator.claim_restart(a.target, a.item, ctx.timings.restart_cooldown)
        ctx.memory.restarts[a.target] = RestartProgress(ctx.clock.monotonic())
        return self.advance(item, snapshot, health)

    def _stop_peer(self, item: RestartItem, snapshot: GroupSnapshot, health: Health) -> str:
        if not self.session.may_act(health) or not self.still_silent(item.target, snapshot):
            return f"not stopping {item.target}: it heartbeated or our lease is short"
        self.ctx.ec2.stop(item.target)
        return ""

    def advance(self, item: RestartItem, snapshot: GroupSnapshot, health: Health) -> str:
        """One step of a restart we hold, as the peer's instance state allows."""
        ctx = self.ctx
        t = ctx.timings
        now = ctx.clock.monotonic()
        progress = ctx.memory.restarts.setdefault(item.target, RestartProgress(now))
        if now - progress.phase_started > t.restart_timeout:
            self._result(item.target, "failed")
            ctx.coordinator.set_restart_phase(item, RESTART_COOLDOWN)
            ctx.memory.restarts.pop(item.target, None)
            if item.attempts >= t.restart_max_attempts:
                self._result(item.target, "gave_up")
            return f"restart of {item.target} timed out in phase {item.phase}"
        if item.phase != RESTART_IDLE and now - progress.last_poll < t.restart_poll_interval:
            return ""
        progress.last_poll = now
        state = ctx.ec2.instance_states([item.target]).get(item.target, "unknown")
        ctx.memory.instance_states[item.target] = state
        if item.phase == RESTART_IDLE:
            if state == "stopped":
                return self._start_peer(item, health, progress)
            if state != "running":
                return f"{item.target} is {state}: waiting before a restart"
            if not self.session.may_act(health) or not self.still_silent(item.target, snapshot):
                return f"not stopping {item.target}: it heartbeated or our lease is short"
            # The attempt is counted before the stop is sent: a stop whose count was lost would
            # let the cap be exceeded; a count whose stop failed only reaches the cap sooner.
            item = ctx.coordinator.set_restart_phase(item, RESTART_STOPPING, attempts=item.attempts + 1)
            progress.phase_started = now
            note = self._stop_peer(item, snapshot, health)
            if not note:
                self._result(item.target, "stopped")
                ctx.on_event("peer_stopping", {"peer": item.target, "attempt": item.attempts})
            return note
        if item.phase == RESTART_STOPPING:
            if state == "stopped":
                return self._start_peer(item, health, progress)
            if state == "running" and now - progress.phase_started >= 2 * t.restart_poll_interval:
                return self._stop_peer(item, snapshot, health)  # the stop did not take: send it again
            return ""
        if item.phase == RESTART_STARTING and state == "running":
            ctx.coordinator.set_restart_phase(item, RESTART_COOLDOWN)
            ctx.memory.restarts.pop(item.target, None)
            ctx.on_event("peer_started", {"peer": item.target})
            if item.attempts >= t.restart_max_attempts:
                log.info("restarted %s %d times; no more restarts until it is healthy", item.target, item.attempts)
        return ""

    def _start_peer(self, item: RestartItem, health: Health, progress: RestartProgress) -> str:
        ctx = self.ctx
        if not self.session.may_act(health):
            return f"not starting {item.target} yet: our lease is short"
        ctx.ec2.start(item.target)
        ctx.coordinator.set_restart_phase(item, RESTART_STARTING, attempts=max(item.attempts, 1))
        progress.phase_started = ctx.clock.monotonic()
        self._result(item.target, "started")
        ctx.on_event("peer_starting", {"peer": item.target})
        return ""

    def reset_own(self, item: RestartItem) -> str:
        self.ctx.coordinator.reset_own_restart(item)
        return ""

    def _result(self, peer: str, result: str) -> None:
        if self.ctx.metrics is not None:
            self.ctx.metrics.peer_restarts.labels(peer, result).inc()
