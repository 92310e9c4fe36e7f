"""Restarting a dead peer (what nat_monitor.sh does, made safe): under a restart lease of our
own, stop, wait for ``stopped``, start, wait for ``running``; a cooldown and a cap. The decision
to restart is agent.decide's; this carries it out.

Nothing can undo a stop, so a stop is fenced three ways:

* data-plane evidence, fresh at the send: the fence runs our check right before the bytes go -
  the peer's probes are down, unanswered for ``restart_after``, and the newest result is at most
  one probe interval and timeout old (a NAT that answers probes is never stopped, whatever its
  heartbeat says);
* DynamoDB, at the send too: we still hold the restart lease in its term, our session is alive,
  and the peer's member item is unchanged since we expired its session (a peer that came back
  starts a new session, which changes it);
* AWS itself: the stopper tags the peer ``nat-ha:stop-by=<its ARN>`` first, and IAM allows
  StopInstances only while that tag names the caller. An agent whose session starts tags its own
  instance with its own ARN before anything else: a stop that was prepared against it, and is
  sent late (a stopper frozen between its checks and the send), is refused by AWS.
"""

from __future__ import annotations

import logging

from agent.aws.ec2 import Ec2Error
from agent.aws.fence import FenceRefused
from agent.cycle.context import Context
from agent.cycle.memory import RestartProgress
from agent.cycle.ports import ProbesLike
from agent.cycle.session import SessionKeeper
from agent.cycle.standing import Ec2Standing
from agent.decide import ClaimRestart, probe_silence
from coordinator.errors import Conflict
from coordinator.items import (
    MEMBER_ALIVE,
    RESTART_COOLDOWN,
    RESTART_IDLE,
    RESTART_STARTING,
    RESTART_STOPPING,
    GroupSnapshot,
    Health,
    MemberItem,
    RestartItem,
)

log = logging.getLogger("nat_ha.agent")


def _unchanged(current: MemberItem, seen: MemberItem | None) -> bool:
    """The peer's member item is the one we saw: no heartbeat, no new session since."""
    return seen is not None and (current.session, current.version) == (seen.session, seen.version)


class Restarter:
    def __init__(self, ctx: Context, session: SessionKeeper, standing: Ec2Standing, probes: ProbesLike) -> None:
        self.ctx = ctx
        self.session = session
        self.standing = standing  # every EC2 call of a restart is booked there (per-action throttling back-off)
        self.probes = probes
        # A stop's evidence must be this fresh at the send: one probe round and its timeout.
        self.fresh_within = ctx.config.probe.interval + ctx.config.probe.timeout

    def still_silent(self, target: str, snapshot: GroupSnapshot) -> bool:
        """Re-read the peer's heartbeat right before a destructive step: never stop a heartbeating peer."""
        current = self.ctx.coordinator.read_group().members.get(target)
        return current is not None and _unchanged(current, snapshot.members.get(target))

    def claim(self, a: ClaimRestart, snapshot: GroupSnapshot, health: Health) -> str:
        ctx = self.ctx
        if not self.still_silent(a.target, snapshot):
            return f"{a.target} heartbeated again: not restarting it"
        item = ctx.coordinator.claim_restart(a.target, a.item, ctx.timings.restart_cooldown)
        ctx.memory.restarts[a.target] = RestartProgress(ctx.clock.monotonic())
        return self.advance(item, snapshot, health)

    def _stop_peer(self, item: RestartItem, health: Health, progress: RestartProgress) -> str:
        """Expire the peer's session, tag it stop-by us, stop it: each write fenced and confirmed at its send.

        Only the peer as the decision judged it: its member item must still be the one the decision saw
        silent (or, once we expired it, the expired one). A peer whose item changed since - a heartbeat, a
        new session, however short - came back, and the restart ends: a stop sent again after the first
        did not take never expires a session the peer started since. And only with our own probes' fresh
        evidence that it does not forward, checked before its session is expired and again at the send:
        a NAT that answers probes keeps its session and is never stopped.
        """
        ctx = self.ctx
        target = item.target
        if not self.session.may_act(health):
            return f"not stopping {target}: our lease is short"
        expected = progress.stopped_as or progress.watched
        current = ctx.coordinator.read_group().members.get(target)
        if current is None or not _unchanged(current, expected):
            if progress.stopped_as is not None:
                return self._came_back(item, f"not stopping {target} again: it came back since the first stop")
            return self._came_back(item, f"not stopping {target}: it heartbeated since it was judged dead")
        timing = ctx.timings
        why = probe_silence(self.probes.snapshot().get(target), timing.restart_after, self.fresh_within)
        if why:
            return f"not stopping {target}: {why}"
        if current.state == MEMBER_ALIVE:
            # Expired first, conditional on the heartbeat we watched stay silent: a peer that comes back
            # must start a new session, which changes its item (the stop's confirmation sees it) and
            # tags its instance with its own ARN (AWS refuses our stop).
            try:
                current = ctx.coordinator.expire_member(current)
            except Conflict:
                return self._came_back(item, f"not stopping {target}: it heartbeated")
        coordinator = ctx.coordinator
        expired = current

        def confirm(_operation: str) -> str:
            why = coordinator.confirm(restart=(target, item.term), unchanged=expired)
            return why or probe_silence(self.probes.snapshot().get(target), timing.restart_after, self.fresh_within)

        progress.stopped_as = expired
        standing = self.standing
        assert ctx.fence is not None
        with ctx.fence.frame(confirm=confirm):
            if ctx.holder:
                standing.booked("CreateTags", lambda: ctx.ec2.tag_stop_by(target, ctx.holder))
            standing.booked("StopInstances", lambda: ctx.ec2.stop(target))
        return ""

    def _came_back(self, item: RestartItem, note: str) -> str:
        """The peer heartbeated since the decision to stop it: this restart ends (a cooldown)."""
        ctx = self.ctx
        ctx.coordinator.set_restart_phase(item, RESTART_COOLDOWN)
        ctx.memory.restarts.pop(item.target, None)
        self._result(item.target, "failed")
        return note

    def claim_own_instance(self) -> None:
        """The first thing a session does: tag our own instance ``nat-ha:stop-by=<our ARN>``.

        Whoever tagged it to stop us no longer may (IAM): a stop prepared while we were silent and
        sent late is refused by AWS. Retried every cycle until it is done for this session.
        """
        ctx = self.ctx
        mem = ctx.memory
        session = ctx.coordinator.session
        if session is None or not ctx.holder or mem.own_stop_tag == session.session:
            return
        coordinator = ctx.coordinator
        assert ctx.fence is not None
        try:
            with ctx.fence.frame(confirm=lambda _op: coordinator.confirm()):
                self.standing.booked("CreateTags", lambda: ctx.ec2.tag_stop_by(ctx.me, ctx.holder))
        except Ec2Error as exc:
            ctx.error_once(f"ec2:stop-tag:{exc.code}", f"cannot tag this instance: {exc}; will retry next cycle")
            return
        except FenceRefused as exc:
            ctx.error_once("ec2:stop-tag:fence", f"cannot tag this instance yet: {exc.reason}; will retry next cycle")
            return
        mem.own_stop_tag = session.session
        ctx.error_cleared("ec2:stop-tag")

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
        states = self.standing.booked("DescribeInstances", lambda: ctx.ec2.instance_states([item.target]))
        state = states.get(item.target, "unknown")
        ctx.memory.instance_states[item.target] = state
        if item.phase == RESTART_IDLE:
            if state == "stopped":
                return self._start_peer(item, health, progress)
            if state != "running":
                return f"{item.target} is {state}: waiting before a restart"
            if not self.session.may_act(health) or not self.still_silent(item.target, snapshot):
                return f"not stopping {item.target}: it heartbeated or our lease is short"
            why = probe_silence(self.probes.snapshot().get(item.target), t.restart_after, self.fresh_within)
            if why:
                return f"not stopping {item.target}: {why}"
            progress.watched = snapshot.members.get(item.target)  # what the decision judged silent
            # The attempt is counted before the stop is sent: a stop whose count was lost would
            # let the cap be exceeded; a count whose stop failed only reaches the cap sooner.
            item = ctx.coordinator.set_restart_phase(item, RESTART_STOPPING, attempts=item.attempts + 1)
            progress.phase_started = now
            note = self._stop_peer(item, health, progress)
            if not note:
                self._result(item.target, "stopped")
                ctx.on_event("peer_stopping", {"peer": item.target, "attempt": item.attempts})
            return note
        if item.phase == RESTART_STOPPING:
            if state == "stopped":
                return self._start_peer(item, health, progress)
            if state == "running" and now - progress.phase_started >= 2 * t.restart_poll_interval:
                return self._stop_peer(item, health, progress)  # the stop did not take: send it again
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
        self.standing.booked("StartInstances", lambda: ctx.ec2.start(item.target))
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
