"""One HA cycle: observe -> decide -> act, returning the decision line.

The decision itself is pure (agent.decide); this module owns the agent's memory
between cycles (when it first saw things), talks to the coordinator and EC2, and
checks before every EC2 side effect that its session has more time left than
the call may take (rule 4).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agent import __version__
from agent.aws.ec2 import Ec2Error
from agent.config import Config
from agent.decide import (
    ClaimRestart,
    ContinueRestart,
    Decision,
    Ec2Route,
    EnsureRoute,
    HandOver,
    Observation,
    PeerProbe,
    ResetOwnRestart,
    StartSession,
    TakeOver,
    claimable_routes,
    decide,
    judged_dead,
    judged_healthy,
)
from agent.metrics import SELF_CHECKS, Metrics
from coordinator.clock import Clock
from coordinator.errors import BadItem, Conflict, CoordinatorError, SessionLost, StoreConfigError, StoreUnavailable
from coordinator.items import (
    RESTART_COOLDOWN,
    RESTART_IDLE,
    RESTART_STARTING,
    RESTART_STOPPING,
    GroupSnapshot,
    Health,
    MemberItem,
    RestartItem,
)
from coordinator.leases import Coordinator
from coordinator.observe import ChangeObserver

log = logging.getLogger("nat_ha.agent")


class Ec2Like(Protocol):
    def routes(self, route_tables: list[str]) -> dict[str, Ec2Route]: ...

    def point_route(self, route_table: str, instance: str, *, guard: Callable[[], bool] | None = None) -> str: ...

    def verify(self, route_table: str, instance: str, timeout: float = 2.0) -> bool: ...

    def instance_states(self, instances: list[str]) -> dict[str, str]: ...

    def stop(self, instance: str) -> None: ...

    def start(self, instance: str) -> None: ...


class ProbesLike(Protocol):
    def snapshot(self) -> dict[str, PeerProbe]: ...


class HealthLike(Protocol):
    def check(self, now: float, reaches: tuple[str, ...] = ()) -> Health: ...


@dataclass
class RestartProgress:
    """The holder's local clock for one restart (phases are in the table)."""

    phase_started: float
    last_poll: float = -1e18


@dataclass
class Memory:
    """What the agent remembers between cycles (all times on its monotonic clock)."""

    observer: ChangeObserver = field(default_factory=ChangeObserver)
    healthy_since: dict[str, float] = field(default_factory=dict)
    claimable_since: dict[str, float] = field(default_factory=dict)
    suspect_since: dict[str, float] = field(default_factory=dict)
    dead_since: dict[str, float] = field(default_factory=dict)
    self_healthy_since: float | None = None
    ec2: dict[str, Ec2Route] = field(default_factory=dict)
    ec2_read_at: float = -1e18
    instance_states: dict[str, str] = field(default_factory=dict)
    instances_read_at: float = -1e18
    last_heartbeat: float = -1e18
    last_health: Health | None = None
    last_draining: bool = False
    stale_deadlines: dict[str, float] = field(default_factory=dict)  # peer -> when its session can be expired
    restarts: dict[str, RestartProgress] = field(default_factory=dict)
    reported_errors: set[str] = field(default_factory=set)


class Agent:
    """One NAT's agent. ``run_cycle()`` is called every ``timing.cycle_interval``."""

    def __init__(
        self,
        config: Config,
        coordinator: Coordinator,
        ec2: Ec2Like,
        probes: ProbesLike,
        health: HealthLike,
        clock: Clock,
        metrics: Metrics | None = None,
        *,
        on_event: Callable[[str, dict[str, object]], None] | None = None,
    ) -> None:
        self.config = config
        self.me = config.instance_id
        self.coordinator = coordinator
        self.ec2 = ec2
        self.probes = probes
        self.health_checker = health
        self.clock = clock
        self.metrics = metrics
        self.on_event = on_event or (lambda kind, data: None)
        self.memory = Memory()
        self.draining = False  # set by SIGTERM / shutdown
        self.decision = Decision("no_session", "starting")
        t = config.timing
        self.timings = t
        self.members = tuple(m.instance_id for m in config.members)
        self.homes = {rt: m.instance_id for m in config.members for rt in m.route_tables}
        self.ec2_budget = t.ec2_timeout + 0.05
        self.last_snapshot: GroupSnapshot | None = None

    # ------------------------------------------------------------- helpers
    def _error_once(self, key: str, message: str) -> None:
        """Log an AWS/store error once (until it clears), saying what the agent does about it."""
        if key not in self.memory.reported_errors:
            self.memory.reported_errors.add(key)
            log.warning(message)

    def _error_cleared(self, prefix: str) -> None:
        gone = {k for k in self.memory.reported_errors if k.startswith(prefix)}
        for k in gone:
            self.memory.reported_errors.discard(k)
            log.info("recovered: %s", k)

    def _draining(self) -> bool:
        return self.draining or bool(self.last_snapshot and self.last_snapshot.draining(self.me))

    def _heartbeat_due(self, now: float, health: Health) -> bool:
        t = self.config.timing
        changed = self.memory.last_health is not None and (
            self.memory.last_health.healthy != health.healthy or self.memory.last_health.reaches != health.reaches
        )
        # A drain is announced in the heartbeat before any route table is handed over, so
        # that no peer fails a table back to us in between.
        changed = changed or self.memory.last_draining != self._draining()
        return changed or now - self.memory.last_heartbeat >= t.heartbeat_interval - t.cycle_interval / 2

    def _renew(self, health: Health) -> None:
        t0 = self.clock.monotonic()
        try:
            draining = self._draining()
            self.coordinator.heartbeat(health, draining=draining)
            self.memory.last_heartbeat = t0
            self.memory.last_health = health
            self.memory.last_draining = draining
            self._count_renewal("success")
            self._error_cleared("store:heartbeat")
        except SessionLost:
            self._count_renewal("conflict")
            log.warning("session lost: a peer expired it; stopped acting at once, starting a new session")
            self.on_event("session_lost", {})
        except StoreUnavailable as exc:
            self._count_renewal("error")
            self._error_once("store:heartbeat", f"heartbeat failed ({exc}); will stop acting when the lease runs out")

    def _count_renewal(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.renewals.labels(result).inc()

    def _may_act(self, health: Health) -> bool:
        """True if the session has more time left than an EC2 call can take (renews if short)."""
        if self.coordinator.remaining() > self.ec2_budget:
            return True
        self._renew(health)
        return self.coordinator.remaining() > self.ec2_budget

    # --------------------------------------------------------------- observe
    def _observe(
        self, snapshot: GroupSnapshot, now: float, probes: dict[str, PeerProbe], health: Health
    ) -> Observation:
        mem = self.memory
        present = set()
        for m in snapshot.members.values():
            mem.observer.observe(m.key, (m.session, m.version), now)
            present.add(m.key)
        for x in snapshot.restarts.values():
            mem.observer.observe(x.key, (x.owner_session, x.version), now)
            present.add(x.key)
        mem.observer.forget_missing(present)
        session = self.coordinator.session
        obs = Observation(
            now=now,
            me=self.me,
            members=self.members,
            homes=self.homes,
            snapshot=snapshot,
            heartbeat_age={m.instance: mem.observer.unchanged_for(m.key, now) for m in snapshot.members.values()},
            restart_age={x.target: mem.observer.unchanged_for(x.key, now) for x in snapshot.restarts.values()},
            probes=probes,
            health=health,
            session=session.session if session is not None else "",
            session_remaining=self.coordinator.remaining(),
            ec2=dict(mem.ec2),
            instance_states=dict(mem.instance_states),
            draining=self.draining or snapshot.draining(self.me),
            pins={rt: to for rt, to in snapshot.pins().items() if rt in self.homes and to in self.members},
        )
        t = self.timings
        mem.stale_deadlines.clear()
        for peer in self.members:
            if peer == self.me:
                continue
            p = probes.get(peer)
            peer_item = snapshot.members.get(peer)
            if p is not None and not p.up and peer_item is not None and peer_item.state == "alive":
                # Its probes fail: the moment its session may be expired is known; the daemon
                # wakes for it instead of waiting for the next regular cycle.
                left = peer_item.lease_ms / 1000 + t.margin - mem.observer.unchanged_for(peer_item.key, now)
                if left > 0:
                    mem.stale_deadlines[peer] = now + left
            suspect = (
                (p is not None and not p.up)
                or peer_item is None
                or mem.observer.unchanged_for(peer_item.key, now) >= peer_item.lease_ms / 1000 + t.margin
            )
            if suspect:
                mem.suspect_since.setdefault(peer, now)
            else:
                mem.suspect_since.pop(peer, None)
            if judged_dead(obs, t, peer):
                mem.dead_since.setdefault(peer, now)
            if judged_healthy(obs, t, peer):
                mem.healthy_since.setdefault(peer, now)
                since = mem.dead_since.pop(peer, None)
                if since is not None:
                    self.on_event("peer_recovered", {"peer": peer, "seconds": now - since})
                    if self.metrics is not None:
                        self.metrics.recovery_duration.observe(now - since)
            else:
                mem.healthy_since.pop(peer, None)
        if health.healthy:
            if mem.self_healthy_since is None:
                mem.self_healthy_since = now
        else:
            mem.self_healthy_since = None
        claimable = claimable_routes(obs, t)
        for rt in list(mem.claimable_since):
            if rt not in claimable:
                del mem.claimable_since[rt]
        for rt in claimable:
            mem.claimable_since.setdefault(rt, now)
        return dataclasses.replace(
            obs,
            healthy_since=dict(mem.healthy_since),
            claimable_since=dict(mem.claimable_since),
            self_healthy_since=mem.self_healthy_since,
        )

    def _refresh_ec2(self, now: float, snapshot: GroupSnapshot, probes: dict[str, PeerProbe]) -> None:
        t = self.config.timing
        mem = self.memory
        if now - mem.ec2_read_at >= t.ec2_reconcile_interval:
            mem.ec2_read_at = now
            try:
                mem.ec2 = self.ec2.routes(sorted(self.homes))
                self._error_cleared("ec2:describe_route_tables")
            except Ec2Error as exc:
                self._error_once("ec2:describe_route_tables", f"{exc}; keeping the last known routes")
        # Instance states only matter for restarts: read them when a peer has been silent a while.
        silent = [
            p
            for p in self.members
            if p != self.me and p in mem.suspect_since and now - mem.suspect_since[p] >= self.timings.restart_after / 2
        ]
        held = [x.target for x in snapshot.restarts.values() if x.owner == self.me]
        wanted = sorted(set(silent) | set(held))
        if wanted and now - mem.instances_read_at >= t.restart_poll_interval:
            mem.instances_read_at = now
            try:
                mem.instance_states.update(self.ec2.instance_states(wanted))
                self._error_cleared("ec2:describe_instances")
            except Ec2Error as exc:
                self._error_once("ec2:describe_instances", f"{exc}; no peer restart until EC2 answers")

    # ------------------------------------------------------------------ cycle
    def run_cycle(self) -> Decision:
        """Observe, decide, act; returns the decision (its summary is the log line)."""
        now = self.clock.monotonic()
        probes = self.probes.snapshot()
        reaches = tuple(sorted(p for p, pr in probes.items() if pr.up))
        health = self.health_checker.check(now, reaches)
        if self.coordinator.session is not None and self._heartbeat_due(now, health):
            self._renew(health)
        try:
            snapshot = self.coordinator.read_group()
            self._error_cleared("store:read")
        except (StoreUnavailable, StoreConfigError) as exc:
            self._error_once("store:read", f"cannot read the group ({exc}); routes stay where they are")
            decision = Decision("store_unavailable", f"store unavailable: keeping routes as they are ({exc})")
            self._finish(decision, now, health, probes)
            return decision
        self.last_snapshot = snapshot
        for bad in snapshot.bad_items:
            self._error_once(f"bad:{bad.key}", f"ignoring bad item {bad.key!r} in the table: {bad.problem}")
        # The snapshot is first seen when the read returned, not when the cycle began: a
        # renewal (up to the store budget) or a process pause lies between the two, and
        # an earlier first-seen time would make a peer's fresh heartbeat look stale.
        seen = self.clock.monotonic()
        self._refresh_ec2(seen, snapshot, probes)
        obs = self._observe(snapshot, seen, probes, health)
        decision = decide(obs, self.timings)
        results = [self._act(a, snapshot, health) for a in decision.actions]
        notes = [r for r in results if r]
        if notes:
            decision = dataclasses.replace(decision, summary=decision.summary + " [" + "; ".join(notes) + "]")
        self._finish(decision, now, health, probes, snapshot)
        return decision

    def _finish(
        self,
        decision: Decision,
        now: float,
        health: Health,
        probes: dict[str, PeerProbe],
        snapshot: GroupSnapshot | None = None,
    ) -> None:
        if decision.summary != self.decision.summary:
            log.info(decision.summary)
            if self.metrics is not None:
                self.metrics.decision_changes.inc()
        self.decision = decision
        if self.metrics is not None:
            self._export(decision, now, health, probes, snapshot)

    # -------------------------------------------------------------------- act
    def _act(self, action: object, snapshot: GroupSnapshot, health: Health) -> str:
        """Carry out one action; returns a note when it did not go as decided."""
        try:
            if isinstance(action, StartSession):
                self.coordinator.start_session(health, snapshot.members.get(self.me))
                self.memory.last_heartbeat = self.clock.monotonic()
                self.memory.last_health = health
                self.on_event("session_started", {})
                return ""
            if isinstance(action, TakeOver):
                return self._take_over(action, health)
            if isinstance(action, EnsureRoute):
                return self._ensure_route(action, health)
            if isinstance(action, HandOver):
                return self._hand_over(action, health)
            if isinstance(action, ClaimRestart):
                return self._claim_restart(action, snapshot, health)
            if isinstance(action, ContinueRestart):
                return self._continue_restart(action.item, snapshot, health)
            if isinstance(action, ResetOwnRestart):
                self.coordinator.reset_own_restart(action.item)
                return ""
        except Conflict as exc:
            return f"lost the race: {exc}"
        except SessionLost as exc:
            return f"not acting: {exc}"
        except BadItem as exc:
            self._error_once(f"bad:{exc.key}", str(exc))
            return str(exc)
        except (StoreUnavailable, StoreConfigError) as exc:
            self._error_once("store:write", f"store write failed ({exc}); will retry next cycle")
            return f"store write failed: {exc}"
        except CoordinatorError as exc:
            return str(exc)
        except Ec2Error as exc:
            self._error_once(f"ec2:{exc.operation}:{exc.code}", f"{exc}; will retry next cycle")
            return str(exc)
        return ""

    def _route_here(self, route_table: str, target: str, health: Health) -> tuple[str, bool]:
        # point_route reads the route, then writes it: two EC2 calls. The lease is checked
        # again between them, so that the write (one call, within ec2_budget) lands inside
        # the session (rule 4); a check before the read alone let it land after the session.
        done = self.ec2.point_route(route_table, target, guard=lambda: self._may_act(health))
        if done == "deferred":
            return done, False
        ok = done == "already" or self.ec2.verify(route_table, target, timeout=2.0)
        if ok:
            self.memory.ec2[route_table] = Ec2Route(target, "active")
            self._error_cleared("ec2:")
        return done, ok

    def _take_over(self, a: TakeOver, health: Health) -> str:
        started = self.memory.suspect_since.get(a.route.owner, self.clock.monotonic()) if a.route else None
        if not self._may_act(health):
            return "session too short to act; renewing first"
        if a.expire is not None:
            self.coordinator.expire_member(a.expire)
            self.memory.dead_since.setdefault(a.expire.instance, self.clock.monotonic())
            self.on_event("peer_expired", {"peer": a.expire.instance})
        route = self.coordinator.claim_route(a.route_table, a.route, self.homes.get(a.route_table, ""))
        self.on_event(
            "claimed", {"route_table": a.route_table, "term": route.term, "from": a.route.owner if a.route else ""}
        )
        if not self._may_act(health):
            return "claimed; route write waits for a renewal"
        done, ok = self._route_here(a.route_table, self.me, health)
        if done not in ("already", "deferred") and self.metrics is not None:
            self.metrics.failovers.labels(a.route_table, "takeover", a.reason).inc()
            if started is not None and ok:
                self.metrics.failover_duration.labels("takeover").observe(self.clock.monotonic() - started)
        self.on_event(
            "route_moved",
            {"route_table": a.route_table, "to": self.me, "done": done, "verified": ok, "kind": "takeover"},
        )
        return "" if ok else f"{a.route_table}: route write not yet visible in EC2"

    def _ensure_route(self, a: EnsureRoute, health: Health) -> str:
        if not self._may_act(health):
            return "session too short to write the route"
        done, ok = self._route_here(a.route_table, self.me, health)
        if done != "already":
            self.on_event(
                "route_moved",
                {"route_table": a.route_table, "to": self.me, "done": done, "verified": ok, "kind": "repair"},
            )
        return "" if ok else f"{a.route_table}: route write not yet visible in EC2"

    def _hand_over(self, a: HandOver, health: Health) -> str:
        t0 = self.clock.monotonic()
        if not self._may_act(health):
            return "session too short to act; renewing first"
        done, ok = self._route_here(a.route_table, a.successor.instance, health)
        if not ok:
            return f"{a.route_table}: route to {a.successor.instance} not yet visible in EC2; keeping the lease"
        self.coordinator.hand_over_route(a.route, a.successor)
        if self.metrics is not None:
            self.metrics.failovers.labels(a.route_table, a.kind, a.reason).inc()
            self.metrics.failover_duration.labels(a.kind).observe(self.clock.monotonic() - t0)
        self.on_event(
            "route_moved",
            {"route_table": a.route_table, "to": a.successor.instance, "done": done, "verified": ok, "kind": a.kind},
        )
        return ""

    # --------------------------------------------------------------- restarts
    def _still_silent(self, target: str, snapshot: GroupSnapshot) -> bool:
        """Re-read the peer's heartbeat right before a destructive step: never stop a heartbeating peer."""
        seen = snapshot.members.get(target)
        current = self.coordinator.read_group().members.get(target)
        return (
            seen is not None
            and current is not None
            and (current.session, current.version) == (seen.session, seen.version)
        )

    def _claim_restart(self, a: ClaimRestart, snapshot: GroupSnapshot, health: Health) -> str:
        if not self._still_silent(a.target, snapshot):
            return f"{a.target} heartbeated again: not restarting it"
        item = self.coordinator.claim_restart(a.target, a.item, self.config.timing.restart_cooldown)
        self.memory.restarts[a.target] = RestartProgress(self.clock.monotonic())
        return self._continue_restart(item, snapshot, health)

    def _continue_restart(self, item: RestartItem, snapshot: GroupSnapshot, health: Health) -> str:
        t = self.config.timing
        now = self.clock.monotonic()
        progress = self.memory.restarts.setdefault(item.target, RestartProgress(now))
        if now - progress.phase_started > t.restart_timeout:
            self._restart_result(item.target, "failed")
            self.coordinator.set_restart_phase(item, RESTART_COOLDOWN)
            self.memory.restarts.pop(item.target, None)
            if item.attempts >= t.restart_max_attempts:
                self._restart_result(item.target, "gave_up")
            return f"restart of {item.target} timed out in phase {item.phase}"
        if item.phase != RESTART_IDLE and now - progress.last_poll < t.restart_poll_interval:
            return ""
        progress.last_poll = now
        state = self.ec2.instance_states([item.target]).get(item.target, "unknown")
        self.memory.instance_states[item.target] = state
        if item.phase == RESTART_IDLE:
            if state == "stopped":
                return self._start_peer(item, health, progress)
            if state != "running":
                return f"{item.target} is {state}: waiting before a restart"
            if not self._still_silent(item.target, snapshot) or not self._may_act(health):
                return f"not stopping {item.target}: it heartbeated or our lease is short"
            self.ec2.stop(item.target)
            self.coordinator.set_restart_phase(item, RESTART_STOPPING, attempts=item.attempts + 1)
            progress.phase_started = now
            self._restart_result(item.target, "stopped")
            self.on_event("peer_stopping", {"peer": item.target, "attempt": item.attempts + 1})
            return ""
        if item.phase == RESTART_STOPPING:
            if state == "stopped":
                return self._start_peer(item, health, progress)
            return ""
        if item.phase == RESTART_STARTING and state == "running":
            self.coordinator.set_restart_phase(item, RESTART_COOLDOWN)
            self.memory.restarts.pop(item.target, None)
            self.on_event("peer_started", {"peer": item.target})
            if item.attempts >= t.restart_max_attempts:
                log.info("restarted %s %d times; no more restarts until it is healthy", item.target, item.attempts)
        return ""

    def _start_peer(self, item: RestartItem, health: Health, progress: RestartProgress) -> str:
        if not self._may_act(health):
            return f"not starting {item.target} yet: our lease is short"
        self.ec2.start(item.target)
        self.coordinator.set_restart_phase(item, RESTART_STARTING, attempts=max(item.attempts, 1))
        progress.phase_started = self.clock.monotonic()
        self._restart_result(item.target, "started")
        self.on_event("peer_starting", {"peer": item.target})
        return ""

    def _restart_result(self, peer: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.peer_restarts.labels(peer, result).inc()

    def next_deadline(self) -> float | None:
        """The earliest time (monotonic) a failing peer's session can be expired, if any."""
        return min(self.memory.stale_deadlines.values(), default=None)

    # ------------------------------------------------------------------ drain
    def drained(self) -> bool:
        """True once this agent holds no route table (as of the last read)."""
        s = self.last_snapshot
        if s is None:
            return True
        session = self.coordinator.session
        return not any(
            r.owner == self.me and session is not None and r.owner_session == session.session for r in s.routes.values()
        )

    def leave(self) -> None:
        """Mark our member item as left (after draining), so nobody restarts us."""
        health = self.memory.last_health or Health(False, detail="shutting down")
        try:
            self.coordinator.leave(health)
        except CoordinatorError as exc:
            log.warning("could not mark this member as left: %s", exc)

    # ---------------------------------------------------------------- metrics
    def _export(
        self,
        decision: Decision,
        now: float,
        health: Health,
        probes: dict[str, PeerProbe],
        snapshot: GroupSnapshot | None,
    ) -> None:
        """Set the state gauges as of this cycle (every cycle: keep it cheap, no ``labels()``)."""
        m = self.metrics
        assert m is not None
        put = m.put
        put(m.up, 1)
        put(m.healthy, 1 if health.healthy else 0)
        checks = health.checks
        self_check = m.self_check_of
        for check in SELF_CHECKS:
            put(self_check[check], 1 if checks.get(check, True) else 0)
        for check, ok in checks.items():
            if check not in SELF_CHECKS:
                put(self_check[check], 1 if ok else 0)
        remaining = max(0.0, self.coordinator.remaining())
        put(m.session_valid, 1 if remaining > 0 else 0)
        put(m.session_remaining, remaining)
        m.set_decision(decision.kind)
        m.cycle_duration.observe(max(0.0, self.clock.monotonic() - now))
        m.last_cycle.set(self.clock.wall())
        peer_up = m.peer_up_of
        for peer, p in probes.items():
            put(peer_up[peer], 1 if p.up else 0)
        if snapshot is None:
            return
        put(m.bad_items, len(snapshot.bad_items))
        observer = self.memory.observer
        margin = self.timings.margin
        members = snapshot.members
        for peer in self.members:
            if peer == self.me:
                continue
            item: MemberItem | None = members.get(peer)
            age = observer.unchanged_for(item.key, now) if item else 0.0
            put(m.peer_heartbeat_age_of[peer], age)
            fresh = item is not None and item.state == "alive" and age < item.lease_ms / 1000 + margin
            put(m.peer_alive_of[peer], 1 if fresh else 0)
            put(m.peer_healthy_of[peer], 1 if fresh and item is not None and item.health.healthy else 0)
        session = self.coordinator.session
        owned = 0
        for rt in sorted(self.homes):
            r = snapshot.routes.get(rt)
            mine = r is not None and session is not None and r.owner == self.me and r.owner_session == session.session
            owned += int(mine)
            put(m.route_owned_of[rt], 1 if mine else 0)
            put(m.route_term_of[rt], r.term if r else 0)
            owner_item = members.get(r.owner) if r and r.owner else None
            live = (
                r is not None
                and owner_item is not None
                and owner_item.session == r.owner_session
                and owner_item.state == "alive"
                and observer.unchanged_for(owner_item.key, now) < owner_item.lease_ms / 1000 + margin
            )
            put(m.route_has_owner_of[rt], 1 if live else 0)
            owner_of = m.route_owner_of
            for owner in self.members:
                put(owner_of[rt, owner], 1 if live and r is not None and r.owner == owner else 0)
            if mine:
                ec2 = self.memory.ec2.get(rt)
                put(m.route_ec2_matches_of[rt], 1 if ec2 is not None and ec2.target == self.me else 0)
                target_of = m.route_ec2_target_of
                for target in self.members:
                    put(target_of[rt, target], 1 if ec2 is not None and ec2.target == target else 0)
                put(target_of[rt, "other"], 1 if ec2 is not None and ec2.target.startswith("other") else 0)
            else:
                put(m.route_ec2_matches_of[rt], 1)
                for key, child in m.route_ec2_target_of.items():  # what it showed as holder is stale now
                    if key[0] == rt:
                        put(child, 0)
        put(m.route_tables_owned, owned)


def build_info(metrics: Metrics, config: Config) -> None:
    peers = [p for p in (m.instance_id for m in config.members) if p != config.instance_id]
    metrics.prepare(__version__, config.group, config.instance_id, peers, config.route_tables())
