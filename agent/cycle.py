"""One HA cycle: observe -> decide -> act, returning the decision line.

The decision itself is pure (agent.decide); this module owns the agent's memory
between cycles (when it first saw things, which tables it holds since when), talks
to the coordinator and EC2, and keeps the EC2 side of the protocol (rule 4):

* every EC2 write goes through the agent's :class:`~agent.aws.fence.Fence`: the lease is
  checked by the transport right before the send, one write per check, under a hard
  deadline on the whole call; a write that left after its deadline (the process was
  frozen in between) is reported as a stray so the holder writes its route again;
* a table is written blindly when it is taken (a DescribeRouteTables may be stale), and
  once more ``ec2_apply_horizon`` after it was taken, when no write of the previous
  holder can land any more (and again after a stray report);
* a route write whose reply was lost is retried, never concluded "not applied";
* a hand-over whose outcome is unknown keeps this session off the table in that term;
* with ``egress_ip = "follow"`` the table's Elastic IP is one more such write: associated
  with the holder's address for the table when it takes it (before or after the route:
  ``egress_order``), moved to the successor's address before a hand-over, associated again
  after the horizon and after a stray report, and repaired when DescribeAddresses shows it
  elsewhere. A failed association never holds a route back (the route is what keeps traffic
  flowing); only refusals of our own (access denied) count as failing writes, as for routes;
* a write pointing a table we hold at a peer that fails may still land: EC2 is read at the
  next cycle and again once it can no longer land, and decide acts on what it shows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from agent import __version__
from agent.aws.ec2 import THROTTLED, Ec2Error, api_name
from agent.aws.fence import Fence, FenceRefused, FenceTiming, Permit
from agent.config import Config
from agent.decide import (
    EC2_WRITES_CHECK,
    ClaimRestart,
    ContinueRestart,
    Decision,
    Ec2Address,
    Ec2Route,
    EnsureAddress,
    EnsureRoute,
    HandOver,
    Observation,
    PeerProbe,
    Release,
    ResetOwnRestart,
    RouteToGateway,
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
    RouteItem,
)
from coordinator.leases import Coordinator
from coordinator.observe import ChangeObserver

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


class Ec2Like(Protocol):
    def attach_fence(self, fence: Fence) -> None: ...

    def routes(self, route_tables: list[str]) -> dict[str, Ec2Route]: ...

    def point_route(self, route_table: str, instance: str, *, missing: bool = False) -> str: ...

    def tag_holder(self, route_table: str, holder: str) -> None: ...

    def egress_ips(self, route_tables: list[str]) -> dict[str, Ec2Address]: ...

    def associate_address(self, route_table: str, instance: str) -> str: ...

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
class Held:
    """A route table this session holds, in one term (our clock)."""

    term: int
    acquired_at: float
    settle_at: float  # write the route again then: no write of an earlier term can land after it
    tagged: bool = False  # the holder tag names us (written in this term)
    settled: bool = False
    last_write: float = -1e18  # our last confirmed route write
    address_settled: bool = False  # the Elastic IP was associated again after settle_at (egress_ip = follow)
    address_due: str = ""  # why the Elastic IP must be associated again (a stray report), until it is
    last_address_write: float = -1e18  # our last confirmed association


@dataclass
class Ec2Writes:
    """How our EC2 route writes have gone lately (a holder that cannot write must give its tables up)."""

    failures: int = 0
    first_failure: float = 0.0
    out_until: float = -1e18  # the ec2_writes self check fails until then
    penalty: float = 0.0
    throttled_until: float = -1e18  # RequestLimitExceeded: no EC2 calls until then
    backoff: float = 0.0


@dataclass
class Memory:
    """What the agent remembers between cycles (all times on its monotonic clock)."""

    observer: ChangeObserver = field(default_factory=ChangeObserver)
    healthy_since: dict[str, float] = field(default_factory=dict)
    claimable_since: dict[str, float] = field(default_factory=dict)
    suspect_since: dict[str, float] = field(default_factory=dict)
    dead_since: dict[str, float] = field(default_factory=dict)
    self_healthy_since: float | None = None
    self_unhealthy_since: float | None = None
    ec2: dict[str, Ec2Route] = field(default_factory=dict)
    egress: dict[str, Ec2Address] = field(default_factory=dict)  # route table -> where its Elastic IP sits
    egress_read: dict[str, Ec2Address] = field(default_factory=dict)  # what the last DescribeAddresses showed
    egress_read_at: float = -1e18
    ec2_read_at: float = -1e18
    # Extra EC2 reads due (monotonic times): after a write to a peer whose outcome is unknown, at
    # once and once it can no longer land (ec2_apply_horizon), so the holder acts on where it is.
    ec2_rechecks: list[float] = field(default_factory=list)
    handover_doubt: dict[str, float] = field(default_factory=dict)  # route table -> when that write failed
    instance_states: dict[str, str] = field(default_factory=dict)
    instances_read_at: float = -1e18
    last_heartbeat: float = -1e18
    last_health: Health | None = None
    last_draining: bool = False
    stale_deadlines: dict[str, float] = field(default_factory=dict)  # peer -> when its session can be expired
    restarts: dict[str, RestartProgress] = field(default_factory=dict)
    reported_errors: set[str] = field(default_factory=set)
    held: dict[str, Held] = field(default_factory=dict)
    relinquished: dict[str, int] = field(default_factory=dict)  # route table -> term of a hand-over in doubt
    strays_handled: set[str] = field(default_factory=set)  # stray report tokens acted on
    stray_reports: list[tuple[str, int, str]] = field(default_factory=list)  # (table, term, target) to report
    pins_since: dict[str, tuple[str, float]] = field(default_factory=dict)  # table -> (pinned member, first seen)
    ec2_writes: Ec2Writes = field(default_factory=Ec2Writes)


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
        holder: str = "",
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
        self.holder = holder  # our ARN for the route tables' holder tag ("": do not tag)
        self.on_event = on_event or (lambda kind, data: None)
        self.memory = Memory()
        self.draining = False  # set by SIGTERM / shutdown
        self.decision = Decision("no_session", "starting")
        t = config.timing
        self.timings = t
        self.members = tuple(m.instance_id for m in config.members)
        self.homes = {rt: m.instance_id for m in config.members for rt in m.route_tables}
        self.egress_tables = frozenset(rt for rt in config.egress() if rt in self.homes)
        self.fence = Fence(
            coordinator.remaining, clock.monotonic, FenceTiming(t.ec2_timeout), on_overrun=self._on_overrun
        )
        ec2.attach_fence(self.fence)
        # Renew before a write when less than one call's deadline is left: writes get a full window.
        self.ec2_budget = t.ec2_timeout + self.fence.timing.slack
        # A cycle stops acting after this long (the rest waits a cycle): heartbeats and the
        # systemd watchdog (pinged once per cycle) never wait behind a long list of EC2 calls.
        self.cycle_budget = max(1.5, 3 * t.ec2_timeout)
        self.last_snapshot: GroupSnapshot | None = None
        self._writing: tuple[str, int, str] | None = None  # the route write in flight: (table, term, target)
        self._expired_now: set[str] = set()

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
            self.memory.held.clear()
            self.on_event("session_lost", {})
        except StoreUnavailable as exc:
            self._count_renewal("error")
            self._error_once("store:heartbeat", f"heartbeat failed ({exc}); will stop acting when the lease runs out")

    def _count_renewal(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.renewals.labels(result).inc()

    def _may_act(self, health: Health) -> bool:
        """True if the session has more time left than an EC2 call's deadline (renews first if short).

        The fence checks the lease again right before each send; this only gives writes a
        full window instead of a clipped deadline.
        """
        if self.coordinator.remaining() > self.ec2_budget:
            return True
        self._renew(health)
        return self.coordinator.remaining() > self.ec2_budget

    def _with_ec2_check(self, health: Health, now: float) -> Health:
        """Our health, with the ``ec2_writes`` check failing while AWS refuses our route or EIP writes."""
        if now >= self.memory.ec2_writes.out_until:
            return health
        checks = dict(health.checks)
        checks[EC2_WRITES_CHECK] = False
        return dataclasses.replace(health, healthy=False, checks=checks, detail="EC2 refuses our writes")

    # --------------------------------------------------------------- observe
    def _track_holdings(self, snapshot: GroupSnapshot, now: float) -> None:
        """Which tables this session holds, since when: a new term is written again after the horizon."""
        mem = self.memory
        session = self.coordinator.session
        t = self.timings
        mine: dict[str, RouteItem] = {}
        if session is not None:
            mine = {
                rt: r
                for rt, r in snapshot.routes.items()
                if rt in self.homes and r.owner == self.me and r.owner_session == session.session
            }
        for rt in list(mem.held):
            if rt not in mine or mine[rt].term != mem.held[rt].term:
                del mem.held[rt]
        for rt, r in mine.items():
            if rt not in mem.held:
                mem.held[rt] = Held(r.term, now, now + t.ec2_apply_horizon)
                if rt in self.egress_tables:
                    # Handed to us: the giver moved the Elastic IP here before the lease (make before
                    # break). Trusted until the settle write after the horizon, which is blind anyway:
                    # an association costs a remap, a route write nothing.
                    seen = mem.egress.get(rt)
                    mem.egress[rt] = Ec2Address(self.me, seen.public_ip if seen is not None else "")
                    mem.held[rt].last_address_write = now
                stray = snapshot.strays.get(rt)
                if stray is not None:
                    mem.strays_handled.add(stray.token)  # our first write and the settle cover it
        for rt, term in list(mem.relinquished.items()):
            route = snapshot.routes.get(rt)
            if route is None or route.term != term:
                del mem.relinquished[rt]  # the hand-over landed, or we took the table back

    def _reasserts(self, snapshot: GroupSnapshot, now: float) -> dict[str, str]:
        """Held tables whose route must be written again now, and why."""
        out: dict[str, str] = {}
        for rt, h in self.memory.held.items():
            stray = snapshot.strays.get(rt)
            if stray is not None and stray.token not in self.memory.strays_handled:
                out[rt] = (
                    f"{stray.writer} reported a late write (term {stray.term}) that may point it at {stray.target}"
                )
            elif not h.settled and now >= h.settle_at:
                horizon = self.timings.ec2_apply_horizon
                out[rt] = f"writes of earlier terms can no longer land ({horizon:.1f} s after taking it)"
        return out

    def _address_reasserts(self, snapshot: GroupSnapshot, now: float) -> dict[str, str]:
        """Held tables whose Elastic IP must be associated again now, and why (egress_ip = follow)."""
        out: dict[str, str] = {}
        for rt, h in self.memory.held.items():
            if rt not in self.egress_tables:
                continue
            stray = snapshot.strays.get(rt)
            if stray is not None and stray.token not in self.memory.strays_handled:
                out[rt] = f"{stray.writer} reported a late write (term {stray.term})"
            elif h.address_due:
                out[rt] = h.address_due
            elif not h.address_settled and now >= h.settle_at:
                horizon = self.timings.ec2_apply_horizon
                out[rt] = f"associations of earlier terms can no longer land ({horizon:.1f} s after taking it)"
        return out

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
        pins = {rt: to for rt, to in snapshot.pins().items() if rt in self.homes and to in self.members}
        for rt in list(mem.pins_since):
            if mem.pins_since[rt][0] != pins.get(rt):
                del mem.pins_since[rt]
        for rt, to in pins.items():
            mem.pins_since.setdefault(rt, (to, now))
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
            pins=pins,
            pins_since={rt: since for rt, (_, since) in mem.pins_since.items()},
            reassert=self._reasserts(snapshot, now),
            relinquished=dict(mem.relinquished),
            egress_tables=self.egress_tables,
            egress=dict(mem.egress),
            reassert_address=self._address_reasserts(snapshot, now),
            handovers_in_doubt=self._handovers_in_doubt(now),
            last_resort=self.config.ec2.last_resort_nat_gateway,
        )
        t = self.timings
        mem.stale_deadlines.clear()
        for peer in self.members:
            if peer == self.me:
                continue
            p = probes.get(peer)
            peer_item = snapshot.members.get(peer)
            if peer_item is not None and peer_item.state == "alive":
                # The moment its session may be expired is known (probes failing: lease + margin;
                # answering: silent_owner_after); the daemon wakes for it instead of waiting for
                # the next regular cycle.
                silent = mem.observer.unchanged_for(peer_item.key, now)
                lease = peer_item.lease_ms / 1000
                probes_down = p is not None and not p.up
                left = (lease + t.margin if probes_down else t.silent_owner_after) - silent
                if left > 0 and (probes_down or silent >= lease):
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
            mem.self_unhealthy_since = None
        else:
            mem.self_healthy_since = None
            if mem.self_unhealthy_since is None:
                mem.self_unhealthy_since = now
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
            self_unhealthy_since=mem.self_unhealthy_since,
        )

    def _ec2_quiet(self, now: float) -> bool:
        return now < self.memory.ec2_writes.throttled_until

    def _refresh_ec2(self, now: float, snapshot: GroupSnapshot, probes: dict[str, PeerProbe]) -> None:
        t = self.config.timing
        mem = self.memory
        due = [x for x in mem.ec2_rechecks if x <= now]
        if (due or now - mem.ec2_read_at >= t.ec2_reconcile_interval) and not self._ec2_quiet(now):
            mem.ec2_read_at = now
            mem.ec2_rechecks = [x for x in mem.ec2_rechecks if x > now]
            try:
                read = self.ec2.routes(sorted(self.homes))
                self._error_cleared("ec2:describe_route_tables")
            except Ec2Error as exc:
                self._ec2_failed(exc, now, write=False)
                self._error_once("ec2:describe_route_tables", f"{exc}; keeping the last known routes")
            else:
                for rt, view in read.items():
                    h = mem.held.get(rt)
                    # DescribeRouteTables lags writes: a read started soon after our own confirmed
                    # write that still shows the old target says nothing about the table.
                    if h is not None and now - h.last_write < t.ec2_consistency_window and view.target != self.me:
                        continue
                    mem.ec2[rt] = view
            if self.egress_tables:
                self._refresh_egress(now)
        # Instance states only matter for restarts: read them when a peer has been silent a while.
        silent = [
            p
            for p in self.members
            if p != self.me and p in mem.suspect_since and now - mem.suspect_since[p] >= self.timings.restart_after / 2
        ]
        held = [x.target for x in snapshot.restarts.values() if x.owner == self.me]
        wanted = sorted(set(silent) | set(held))
        if wanted and now - mem.instances_read_at >= t.restart_poll_interval and not self._ec2_quiet(now):
            mem.instances_read_at = now
            try:
                mem.instance_states.update(self.ec2.instance_states(wanted))
                self._error_cleared("ec2:describe_instances")
            except Ec2Error as exc:
                self._ec2_failed(exc, now, write=False)
                self._error_once("ec2:describe_instances", f"{exc}; no peer restart until EC2 answers")

    def _refresh_egress(self, now: float) -> None:
        """Where each table's Elastic IP sits (one DescribeAddresses; it lags associations like routes)."""
        t = self.config.timing
        mem = self.memory
        try:
            read = self.ec2.egress_ips(sorted(self.egress_tables))
            self._error_cleared("eipread:")
        except Ec2Error as exc:
            self._ec2_failed(exc, now, write=False)
            self._error_once("eipread:", f"{exc}; keeping the last known Elastic IP associations")
            return
        mem.egress_read, mem.egress_read_at = read, now
        for rt, seen in read.items():
            h = mem.held.get(rt)
            if h is not None and now - h.last_address_write < t.ec2_consistency_window and seen.holder != self.me:
                continue
            mem.egress[rt] = seen

    def _ec2_failed(self, exc: Ec2Error, now: float, *, write: bool) -> None:
        """Book an EC2 failure: throttling backs off every call; failing route writes make us unhealthy."""
        w = self.memory.ec2_writes
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
            w.penalty = min(EC2_PENALTY_MAX, max(self.timings.failback_hold_down, 2 * w.penalty))
            w.out_until = now + w.penalty
            w.failures = 0
            log.warning(
                "AWS keeps refusing our EC2 writes (%s): handing route tables over and taking none for %.0f s",
                exc,
                w.penalty,
            )

    def _ec2_succeeded(self) -> None:
        w = self.memory.ec2_writes
        w.failures = 0
        w.backoff = 0.0
        if self.clock.monotonic() >= w.out_until:
            w.penalty = 0.0

    # ------------------------------------------------------------------ cycle
    def run_cycle(self, *, act: bool = True) -> Decision:
        """Observe, decide, act; returns the decision (its summary is the log line).

        ``act=False`` observes and decides only: no session, no write of any kind
        (``nat-ha agent --once``, which must never disturb the agent that runs).
        """
        now = self.clock.monotonic()
        probes = self.probes.snapshot()
        reaches = tuple(sorted(p for p, pr in probes.items() if pr.up))
        health = self._with_ec2_check(self.health_checker.check(now, reaches), now)
        if act and self.coordinator.session is not None and self._heartbeat_due(now, health):
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
        self._track_holdings(snapshot, seen)
        if act:
            self._send_stray_reports()
            self._refresh_ec2(seen, snapshot, probes)
        obs = self._observe(snapshot, seen, probes, health)
        decision = decide(obs, self.timings)
        if act:
            self._expired_now = set()
            notes = []
            for action in decision.actions:
                if self.clock.monotonic() - now > self.cycle_budget:
                    notes.append("the rest waits for the next cycle (cycle budget spent)")
                    break
                if self._heartbeat_due(self.clock.monotonic(), health) and self.coordinator.session is not None:
                    self._renew(health)
                note = self._act(action, snapshot, health)
                if note:
                    notes.append(note)
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

    # ------------------------------------------------------------ stray writes
    def _on_overrun(self, permit: Permit) -> None:
        """A write of ours left after its deadline: the holder must write the table again."""
        log.warning(
            "%s on %s left %.3f s after its deadline (this process was paused): it may land outside the lease",
            permit.operation,
            permit.resource,
            permit.sent_at - permit.deadline,
        )
        if self._writing is not None and permit.resource == self._writing[0]:
            self.memory.stray_reports.append(self._writing)
        self.on_event("late_write", {"operation": permit.operation, "resource": permit.resource})
        if self.metrics is not None:
            self.metrics.ec2_late_writes.inc()

    def _send_stray_reports(self) -> None:
        """Write pending stray reports (they need no session; retried until the store takes them)."""
        pending = self.memory.stray_reports
        while pending:
            rt, term, target = pending[0]
            try:
                self.coordinator.report_stray(rt, term, target)
            except CoordinatorError as exc:
                self._error_once("store:stray", f"cannot report a late write to {rt} ({exc}); will retry")
                return
            pending.pop(0)

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
            if isinstance(action, EnsureAddress):
                return self._ensure_address(action, health)
            if isinstance(action, RouteToGateway):
                return self._route_to_gateway(action, health)
            if isinstance(action, HandOver):
                return self._hand_over(action, health)
            if isinstance(action, Release):
                return self._release(action)
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
        except FenceRefused as exc:
            return f"not sent: {exc.reason}"
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

    @contextmanager
    def _table_write(self, operation: str, route_table: str, term: int, target: str, health: Health) -> Iterator[None]:
        """The frame of every write of ours to a table (route or Elastic IP), around the fenced call.

        Nothing is sent while we back off after throttling or while the lease is shorter than a
        call's deadline (renewed first). A failure is booked (refusals of our own make us hand
        tables over), and a failed write pointing the table at a peer may still land: EC2 is read
        again (:meth:`_recheck_after_unknown_write`).
        """
        if self._ec2_quiet(self.clock.monotonic()):
            raise Ec2Error(operation, "RequestLimitExceeded", "backing off after throttling")
        if not self._may_act(health):
            raise FenceRefused(api_name(operation), "the lease is too short; renewing first")
        self._writing = (route_table, term, target)
        try:
            yield
        except Ec2Error as exc:
            if target != self.me:
                self._recheck_after_unknown_write(route_table)
            self._ec2_failed(exc, self.clock.monotonic(), write=True)
            raise
        finally:
            self._writing = None

    def _route_here(self, route_table: str, term: int, target: str, health: Health) -> str:
        """Tag (once per term) and write the route, each a fenced write; returns what was done."""
        with self._table_write("replace_route", route_table, term, target, health):
            h = self.memory.held.get(route_table)
            try:
                # IAM lets only the instance the table's tag names write its route, whatever the
                # target: the holder tags it first, once per term (a hand-over's giver too).
                if self.holder and h is not None and not h.tagged:
                    self.ec2.tag_holder(route_table, self.holder)
                    h.tagged = True
                current = self.memory.ec2.get(route_table)
                missing = current is not None and current.state == "missing"
                done = self.ec2.point_route(route_table, target, missing=missing)
            except Ec2Error as exc:
                if h is not None and exc.code == "UnauthorizedOperation":
                    h.tagged = False  # the holder tag may name someone else (a late tag write): tag again first
                raise
        self._ec2_succeeded()
        self.memory.ec2[route_table] = Ec2Route(target, "active")
        if h is not None:
            h.last_write = self.clock.monotonic()
        self._error_cleared("ec2:")
        return done

    def _recheck_after_unknown_write(self, route_table: str) -> None:
        """A write pointing a table we hold at a peer failed; it may have landed, or still land.

        Read EC2 at the next cycle and again once the write can no longer land, rather than write
        blindly: if it landed, the table's route (or Elastic IP) is with the peer, and the holder
        either finishes the hand-over or takes both back (agent.decide).
        """
        now = self.clock.monotonic()
        self.memory.ec2_rechecks += [now, now + self.timings.ec2_apply_horizon + self.timings.cycle_interval]
        self.memory.handover_doubt[route_table] = now

    def _handovers_in_doubt(self, now: float) -> frozenset[str]:
        """Held tables whose write to a successor failed lately (until the second EC2 read after it)."""
        keep = self.timings.ec2_apply_horizon + 3 * self.timings.cycle_interval
        doubt = self.memory.handover_doubt
        for rt in [rt for rt, at in doubt.items() if now - at > keep or rt not in self.memory.held]:
            del doubt[rt]
        return frozenset(doubt)

    def _take_over(self, a: TakeOver, health: Health) -> str:
        started = self.memory.suspect_since.get(a.route.owner, self.clock.monotonic()) if a.route else None
        if a.expire is not None and a.expire.instance not in self._expired_now:
            self.coordinator.expire_member(a.expire)
            self._expired_now.add(a.expire.instance)  # one expiry per member, however many tables it held
            self.memory.dead_since.setdefault(a.expire.instance, self.clock.monotonic())
            self.on_event("peer_expired", {"peer": a.expire.instance})
        route = self.coordinator.claim_route(a.route_table, a.route, self.homes.get(a.route_table, ""))
        now = self.clock.monotonic()
        self.memory.held[a.route_table] = Held(route.term, now, now + self.timings.ec2_apply_horizon)
        self.memory.relinquished.pop(a.route_table, None)
        self.on_event(
            "claimed", {"route_table": a.route_table, "term": route.term, "from": a.route.owner if a.route else ""}
        )
        before = self.memory.ec2.get(a.route_table)
        done, note = self._move(a.route_table, route.term, self.me, health, "takeover", started)
        moved = before is None or before.target != self.me  # a claim of a table EC2 already routes here moves nothing
        if self.metrics is not None and moved:
            self.metrics.failovers.labels(a.route_table, "takeover", a.reason).inc()
            if started is not None:
                self.metrics.failover_duration.labels("takeover").observe(self.clock.monotonic() - started)
        self.on_event(
            "route_moved",
            {"route_table": a.route_table, "to": self.me, "done": done, "verified": True, "kind": "takeover"},
        )
        return note

    def _ensure_route(self, a: EnsureRoute, health: Health) -> str:
        rt = a.route_table
        stray = self.last_snapshot.strays.get(rt) if self.last_snapshot else None
        done = self._route_here(rt, a.route.term, self.me, health)
        h = self.memory.held.get(rt)
        if h is not None:
            if stray is not None and stray.token not in self.memory.strays_handled:
                # The late write may still be in flight: write once more after the horizon.
                self.memory.strays_handled.add(stray.token)
                h.settled = False
                h.settle_at = self.clock.monotonic() + self.timings.ec2_apply_horizon
                if rt in self.egress_tables:  # the late write may have been an association
                    h.address_settled = False
                    h.address_due = f"{stray.writer} reported a late write (term {stray.term})"
            elif self.clock.monotonic() >= h.settle_at:
                h.settled = True
        self.on_event(
            "route_moved", {"route_table": rt, "to": self.me, "done": done, "verified": True, "kind": "repair"}
        )
        return ""

    def _route_to_gateway(self, a: RouteToGateway, health: Health) -> str:
        """The last resort: the table's route to the NAT gateway, the lease kept (decide brings it back)."""
        t0 = self.clock.monotonic()
        done = self._route_here(a.route_table, a.route.term, a.gateway, health)
        self.memory.ec2[a.route_table] = Ec2Route(f"other:{a.gateway}", "active")  # as DescribeRouteTables shows it
        if self.metrics is not None:
            self.metrics.failovers.labels(a.route_table, "last_resort", "no_nat").inc()
            self.metrics.failover_duration.labels("last_resort").observe(self.clock.monotonic() - t0)
        self.on_event(
            "route_moved",
            {"route_table": a.route_table, "to": a.gateway, "done": done, "verified": True, "kind": "last_resort"},
        )
        return ""

    def _ensure_address(self, a: EnsureAddress, health: Health) -> str:
        rt = a.route_table
        try:
            self._address_here(rt, a.route.term, self.me, health, "repair", self.clock.monotonic())
        except Ec2Error as exc:
            self._error_once(f"eip:{exc.code}", f"{exc}; will retry next cycle")
            return str(exc)
        h = self.memory.held.get(rt)
        if h is not None:
            h.address_due = ""
            if self.clock.monotonic() >= h.settle_at:
                h.address_settled = True
        return ""

    def _move(
        self, rt: str, term: int, target: str, health: Health, kind: str, started: float | None
    ) -> tuple[str, str]:
        """Route ``rt`` (and its Elastic IP, egress_ip = follow) to ``target`` in ``egress_order``.

        Returns what the route write did and a note when the association failed: it never holds
        the route back (address-first goes on to the route; route-first has routed already).
        """
        if rt not in self.egress_tables:
            return self._route_here(rt, term, target, health), ""
        if target == self.me and self._fresh_at_me(rt):
            # Claimed where EC2 has just shown it with us (start-up, a claim of our own table):
            # no remap now; the settle association after the horizon is blind all the same.
            return self._route_here(rt, term, target, health), ""
        t0 = self.clock.monotonic() if started is None else started
        if self.config.egress_order == "address-first":
            note = self._try_address(rt, term, target, health, kind, t0)
            return self._route_here(rt, term, target, health), note
        done = self._route_here(rt, term, target, health)
        return done, self._try_address(rt, term, target, health, kind, t0)

    def _fresh_at_me(self, rt: str) -> bool:
        """A DescribeAddresses of the last two cycles showed ``rt``'s Elastic IP on our address for it.

        (A session starts in one cycle and claims in the next: the read of the first one counts.)
        """
        seen = self.memory.egress_read.get(rt)
        age = self.clock.monotonic() - self.memory.egress_read_at
        return seen is not None and seen.holder == self.me and age <= 2 * self.timings.cycle_interval

    def _try_address(self, rt: str, term: int, target: str, health: Health, kind: str, started: float) -> str:
        try:
            self._address_here(rt, term, target, health, kind, started)
        except FenceRefused as exc:
            return f"{rt}'s Elastic IP not moved: {exc.reason}"
        except Ec2Error as exc:
            self._error_once(f"eip:{exc.code}", f"{exc}; will retry next cycle")
            return f"{rt}'s Elastic IP not moved: {exc}"
        return ""

    def _address_here(self, rt: str, term: int, target: str, health: Health, kind: str, started: float) -> None:
        """Associate ``rt``'s Elastic IP with ``target``'s address for it: one fenced write.

        Its failures back off on throttling like every EC2 call. A refusal of our own (access
        denied, our credentials) counts as a failing write, as a route write's does: a holder that
        may not associate its table's Elastic IP leaves the table without a public address, and
        a peer can serve it whole. Other failures (AWS's errors, timeouts) do not.
        """
        before = self.memory.egress.get(rt)
        with self._table_write("associate_address", rt, term, target, health):
            self.ec2.associate_address(rt, target)
        now = self.clock.monotonic()
        self.memory.ec2_writes.backoff = 0.0
        self.memory.egress[rt] = Ec2Address(target, before.public_ip if before is not None else "")
        h = self.memory.held.get(rt)
        if h is not None:
            h.last_address_write = now
        self._error_cleared("eip:")
        if before is None or before.holder != target:
            if self.metrics is not None:
                self.metrics.egress_moves.labels(rt, kind).inc()
                self.metrics.egress_move_duration.labels(kind).observe(max(0.0, now - started))
            self.on_event("egress_moved", {"route_table": rt, "to": target, "from": before.holder if before else "?"})

    def _hand_over(self, a: HandOver, health: Health) -> str:
        t0 = self.clock.monotonic()
        done = "lease only"
        note = ""
        if a.write_route:
            done, note = self._move(a.route_table, a.route.term, a.successor.instance, health, a.kind, t0)
        try:
            self.coordinator.hand_over_route(a.route, a.successor)
        except StoreUnavailable:
            # It may still land: this session stays off the table in this term (decide retries it).
            self.memory.relinquished[a.route_table] = a.route.term
            raise
        self.memory.held.pop(a.route_table, None)
        if self.metrics is not None and a.reason != "retry":
            self.metrics.failovers.labels(a.route_table, a.kind, a.reason).inc()
            self.metrics.failover_duration.labels(a.kind).observe(self.clock.monotonic() - t0)
        self.on_event(
            "route_moved",
            {"route_table": a.route_table, "to": a.successor.instance, "done": done, "verified": True, "kind": a.kind},
        )
        return note

    def _release(self, a: Release) -> str:
        try:
            self.coordinator.release_route(a.route)
        except StoreUnavailable:
            self.memory.relinquished[a.route_table] = a.route.term  # it may still land
            raise
        self.memory.held.pop(a.route_table, None)
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

    def _stop_peer(self, item: RestartItem, snapshot: GroupSnapshot, health: Health) -> str:
        if not self._may_act(health) or not self._still_silent(item.target, snapshot):
            return f"not stopping {item.target}: it heartbeated or our lease is short"
        self.ec2.stop(item.target)
        return ""

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
            if not self._may_act(health) or not self._still_silent(item.target, snapshot):
                return f"not stopping {item.target}: it heartbeated or our lease is short"
            # The attempt is counted before the stop is sent: a stop whose count was lost would
            # let the cap be exceeded; a count whose stop failed only reaches the cap sooner.
            item = self.coordinator.set_restart_phase(item, RESTART_STOPPING, attempts=item.attempts + 1)
            progress.phase_started = now
            note = self._stop_peer(item, snapshot, health)
            if not note:
                self._restart_result(item.target, "stopped")
                self.on_event("peer_stopping", {"peer": item.target, "attempt": item.attempts})
            return note
        if item.phase == RESTART_STOPPING:
            if state == "stopped":
                return self._start_peer(item, health, progress)
            if state == "running" and now - progress.phase_started >= 2 * t.restart_poll_interval:
                return self._stop_peer(item, snapshot, health)  # the stop did not take: send it again
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
        if self.egress_tables:
            self._export_egress(snapshot)

    def _export_egress(self, snapshot: GroupSnapshot) -> None:
        """Where each table's Elastic IP sits (every agent), and whether it sits with us (the holder)."""
        m = self.metrics
        assert m is not None
        put = m.put
        session = self.coordinator.session
        for rt in sorted(self.egress_tables):
            r = snapshot.routes.get(rt)
            seen = self.memory.egress.get(rt)
            mine = r is not None and session is not None and r.owner == self.me and r.owner_session == session.session
            put(m.egress_ok_of[rt], (1 if seen is not None and seen.holder == self.me else 0) if mine else 1)
            if seen is None or not seen.public_ip:
                continue  # not read yet (our own write does not say which public address it is)
            holder = seen.holder or "none"
            current = (rt, seen.public_ip, "other" if holder.startswith("other:") else holder)
            put(m.egress_ip_of[current], 1)
            for key, child in m.egress_ip_of.items():  # where it sat before
                if key[0] == rt and key != current:
                    put(child, 0)


def build_info(metrics: Metrics, config: Config) -> None:
    peers = [p for p in (m.instance_id for m in config.members) if p != config.instance_id]
    homes = config.route_tables()
    egress = [rt for rt in homes if rt in config.egress()]
    metrics.prepare(__version__, config.group, config.instance_id, peers, homes, egress)
