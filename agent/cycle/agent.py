"""One NAT's agent: one HA cycle, observe -> decide -> act, returning the decision line.

The decision itself is pure (agent.decide). The cycle's parts each do one job and read alone:
the session (renewals, ``session.py``), what EC2 shows (``ec2view.py``), the decision's input
(``observe.py``), our writes to route tables (``tables.py``, every one behind the fence),
restarts of dead peers (``restarts.py``), how our EC2 calls have gone (``standing.py``) and the
metrics (``export.py``). This module wires them together and runs the cycle.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from agent.aws.ec2 import Ec2Error
from agent.aws.fence import Fence, FenceRefused, FenceTiming
from agent.config import Config
from agent.cycle.context import Context
from agent.cycle.ec2view import Ec2View
from agent.cycle.export import Exporter
from agent.cycle.membership import Departed, take_view
from agent.cycle.memory import Memory
from agent.cycle.observe import Observer
from agent.cycle.pause import PauseGate
from agent.cycle.ports import Ec2Like, FlowSyncLike, HealthLike, NoFlowSync, ProbesLike
from agent.cycle.restarts import Restarter
from agent.cycle.session import Plan, SessionKeeper
from agent.cycle.standing import Ec2Standing
from agent.cycle.tables import TableWriter
from agent.decide import (
    ClaimRestart,
    ContinueRestart,
    Decision,
    EnsureAddress,
    EnsureRoute,
    HandOver,
    PeerProbe,
    Release,
    ResetOwnRestart,
    RouteToGateway,
    StartSession,
    TakeOver,
    decide,
)
from agent.metrics import Metrics
from coordinator.clock import Clock
from coordinator.errors import BadItem, Conflict, CoordinatorError, SessionLost, StoreConfigError, StoreUnavailable
from coordinator.items import MEMBER_ALIVE, GroupSnapshot, Health
from coordinator.leases import Coordinator
from coordinator.pauses import Pause, PauseWatch, references_of

log = logging.getLogger("nat_ha.agent")

READ_SLACK = 0.005  # seconds: a wake this close before a read's time is that read's (timer rounding)


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
        flows: FlowSyncLike | None = None,
    ) -> None:
        self.ctx = ctx = Context(
            config,
            coordinator,
            ec2,
            clock,
            metrics,
            on_event or (lambda kind, data: None),
            flows or NoFlowSync(),
            holder=holder,
        )
        self.config = config
        self.me = ctx.me
        self.coordinator = coordinator
        self.ec2 = ec2
        self.probes = probes
        self.health_checker = health
        self.clock = clock
        self.metrics = metrics
        self.timings = ctx.timings
        self.members = ctx.members
        self.homes = ctx.homes
        self.egress_tables = ctx.egress_tables
        self.decision = Decision("no_session", "starting")
        t = ctx.timings
        fence_timing = FenceTiming(t.ec2_timeout)
        self.standing = Ec2Standing(ctx)
        self.session = SessionKeeper(ctx, t.ec2_timeout + fence_timing.slack)
        self.tables = TableWriter(ctx, self.session, self.standing)
        self.operator_pause = PauseGate(ctx)  # nat-ha pause (an operator's; not a paused VM)
        # Pauses our monotonic clock did not count (a paused VM), against clocks that did: the
        # daemon feeds it every AWS answer's server time (coordinator.awshttp.set_answer_listener).
        self.pauses = PauseWatch(clock.monotonic, references_of(clock))
        self.fence = Fence(
            coordinator.remaining,
            clock.monotonic,
            fence_timing,
            on_overrun=self.tables.on_overrun,
            hold=self.operator_pause.hold,  # an operator's pause is enforced where every EC2 write passes
            on_doubt=self.tables.on_doubt,
            pauses=self.pauses,
            on_pause=self._on_pause,
        )
        ctx.fence = self.fence
        ec2.attach_fence(self.fence)
        self.ec2_view = Ec2View(ctx, self.standing, self.session)
        self.observer = Observer(ctx)
        self.restarts = Restarter(ctx, self.session, self.standing, probes)
        self.exporter = Exporter(ctx, metrics) if metrics is not None else None
        # A cycle stops acting after this long (the rest waits a cycle): heartbeats and the
        # systemd watchdog (pinged once per cycle) never wait behind a long list of EC2 calls.
        self.cycle_budget = max(1.5, 3 * t.ec2_timeout)

    def set_membership(self, config: Config) -> Departed:
        """The group as discovered again (agent.cycle.membership): used from the next cycle on."""
        departed = take_view(self.ctx, config)
        self.config = config
        self.members, self.homes, self.egress_tables = self.ctx.members, self.ctx.homes, self.ctx.egress_tables
        return departed

    def plan(self, plan: Plan) -> None:
        """The service's schedule for the cycle about to run (agent.service: the group's wall grid)."""
        self.session.schedule = plan

    # ------------------------------------------------------------ shared state
    @property
    def memory(self) -> Memory:
        return self.ctx.memory

    @property
    def last_snapshot(self) -> GroupSnapshot | None:
        return self.ctx.last_snapshot

    @property
    def draining(self) -> bool:
        """Set by SIGTERM / shutdown: hand every table over and take none."""
        return self.session.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.session.draining = value

    # ------------------------------------------------------------------ cycle
    def run_cycle(self, *, act: bool = True) -> Decision:
        """Observe, decide, act; returns the decision (its summary is the log line).

        ``act=False`` observes and decides only: no session, no write of any kind
        (``nat-ha agent --once``, which must never disturb the agent that runs).
        """
        ctx = self.ctx
        clock = self.clock
        if act:
            self.fence.check_pauses()  # a pause our clock missed drops our authority before anything else
        now = clock.monotonic()
        probes = self.probes.snapshot()
        reaches = tuple(sorted(p for p, pr in probes.items() if pr.up))
        health = self.standing.with_check(self.health_checker.check(now, reaches), now)
        if act and self.coordinator.session is not None and self.session.heartbeat_due(now, health):
            self.session.renew(health)
        try:
            read_at = clock.monotonic()
            snapshot = self.coordinator.read_group()
            ctx.error_cleared("store:read")
            if log.isEnabledFor(logging.DEBUG):  # bench/failover.py's phases (debug only)
                rtt = clock.monotonic() - read_at
                log.debug("trace read %s rtt %.4f wait %.4f", _versions(snapshot), rtt, read_at - now)
        except (StoreUnavailable, StoreConfigError) as exc:
            if isinstance(exc, StoreUnavailable):
                self.memory.unanswered(clock.monotonic())
            ctx.error_once("store:read", f"cannot read the group ({exc}); routes stay where they are")
            decision = Decision("store_unavailable", f"store unavailable: keeping routes as they are ({exc})")
            self._finish(decision, now, health, probes)
            return decision
        previous, ctx.last_snapshot = ctx.last_snapshot, snapshot
        self.operator_pause.update(snapshot)
        if act and self.coordinator.session is not None and self.session.paused() != self.memory.last_paused:
            self.session.renew(health)  # a pause that just began or ended is acknowledged at once
        for bad in snapshot.bad_items:
            ctx.error_once(f"bad:{bad.key}", f"ignoring bad item {bad.key!r} in the table: {bad.problem}")
        # The snapshot is first seen when the read returned, not when the cycle began: a
        # renewal (up to the store budget) or a process pause lies between the two, and
        # an earlier first-seen time would make a peer's fresh heartbeat look stale.
        seen = clock.monotonic()
        self.observer.track_holdings(snapshot, seen, previous)
        if act:
            self.tables.send_stray_reports()
            self.ec2_view.refresh(seen, snapshot, probes, health)
        obs = self.observer.observe(snapshot, seen, probes, health, self.session.is_draining())
        self.memory.reread_at = self.observer.reread_at(snapshot, now, seen, self.session.schedule)
        if self.memory.reread_at is not None:
            log.debug("trace reread due in %.4f", self.memory.reread_at - clock.monotonic())
        decision = decide(obs, self.timings)
        if act:
            self.tables.begin_cycle()
            self.restarts.claim_own_instance()  # once per session, before anything else it writes to EC2
            notes = []
            # Tables taken from peers (not our own instance's, which EC2 may route here already).
            ahead = [a for a in decision.actions if isinstance(a, TakeOver) and a.taken_from(self.me)]
            recheck = _HomeRecheck(self, snapshot, seen)
            for action in decision.actions:
                if clock.monotonic() - now > self.cycle_budget:
                    if not self.tables.claimed_ahead(action):
                        # (A table claimed ahead in this cycle is ours already: its move is not put off.)
                        notes.append("the rest waits for the next cycle (cycle budget spent)")
                        break
                    back = recheck.home_back(action)
                    if back:
                        notes.append(f"not moving {back}")
                        continue
                self.session.renew_if_due(health)
                if action in ahead and len(ahead) > 1:
                    self.tables.claim_ahead(ahead, health)  # one renewal then confirms every table's writes
                    ahead = []
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
        if self.exporter is not None:
            self.exporter.export(decision, now, health, probes, snapshot)

    def _act(self, action: object, snapshot: GroupSnapshot, health: Health) -> str:
        """Carry out one action; returns a note when it did not go as decided."""
        tables = self.tables
        try:
            if isinstance(action, StartSession):
                health = self.memory.ec2_writes.stamp(health, self.clock.monotonic())
                self.coordinator.start_session(health, snapshot.members.get(self.me))
                self.session.started(health)
                self.restarts.claim_own_instance()  # the first thing the session does
                return ""
            if isinstance(action, TakeOver):
                return tables.take_over(action, health)
            if isinstance(action, EnsureRoute):
                return tables.ensure_route(action, health)
            if isinstance(action, EnsureAddress):
                return tables.ensure_address(action, health)
            if isinstance(action, RouteToGateway):
                return tables.route_to_gateway(action, health)
            if isinstance(action, HandOver):
                return tables.hand_over(action, health)
            if isinstance(action, Release):
                return tables.release(action)
            if isinstance(action, ClaimRestart):
                return self.restarts.claim(action, snapshot, health)
            if isinstance(action, ContinueRestart):
                return self.restarts.advance(action.item, snapshot, health)
            if isinstance(action, ResetOwnRestart):
                return self.restarts.reset_own(action.item)
        except Conflict as exc:
            return f"lost the race: {exc}"
        except SessionLost as exc:
            return f"not acting: {exc}"
        except FenceRefused as exc:
            return f"not sent: {exc.reason}"
        except BadItem as exc:
            self.ctx.error_once(f"bad:{exc.key}", str(exc))
            return str(exc)
        except (StoreUnavailable, StoreConfigError) as exc:
            if isinstance(exc, StoreUnavailable):
                self.memory.unanswered(self.clock.monotonic())
            self.ctx.error_once("store:write", f"store write failed ({exc}); will retry next cycle")
            return f"store write failed: {exc}"
        except CoordinatorError as exc:
            return str(exc)
        except Ec2Error as exc:
            self.ctx.error_once(f"ec2:{exc.operation}:{exc.code}", f"{exc}; will retry next cycle")
            return str(exc)
        return ""

    def _on_pause(self, pause: Pause) -> None:
        """Our clock missed time: act on nothing until a renewal sent from now on succeeds (at once)."""
        log.warning(
            "this host was paused for at least %.2f s that its monotonic clock did not count (seen by %s): "
            "acting on nothing until a renewal sent after it succeeds",
            pause.seconds,
            pause.source,
        )
        self.coordinator.lapse()
        self.memory.last_heartbeat = -1e18  # renew at once
        self.ctx.on_event("pause_seen", {"seconds": pause.seconds, "source": pause.source})

    def reread_due(self, now: float) -> bool:
        """A read of the group alone is due (:meth:`reread`) and nothing else before the next regular cycle."""
        at = self.memory.reread_at
        if at is None or now < at - READ_SLACK:
            return False
        self.memory.reread_at = None
        others = self.next_deadline()
        return others is None or others > now + READ_SLACK

    def reread(self) -> None:
        """Read the group once more between cycles to see peers' renewals sooner (Observer.reread_at).

        A read only: the first-seen times of what changed move, nothing is decided or written (the
        next cycle reads again; an extra full cycle would also read and write EC2 out of turn).
        """
        try:
            snapshot = self.coordinator.read_group()
        except (StoreUnavailable, StoreConfigError):
            return  # the next cycle reads again, and says why it could not
        seen = self.clock.monotonic()
        if log.isEnabledFor(logging.DEBUG):  # bench/failover.py's phases (debug only)
            log.debug("trace read %s (again)", _versions(snapshot))
        self.observer.sight(snapshot, seen)

    def next_deadline(self) -> float | None:
        """The earliest time (monotonic) a failing peer's session can be expired, a less preferred
        candidate's wait for a claimable table ends (each rank's ``claim_stagger``), a write refused
        during IAM tag propagation retried, or a peer's renewal missed by this instant's read is read
        again (``Observer.reread_at``), if any: the daemon runs a cycle then."""
        now = self.clock.monotonic()
        retry = self.standing.retry_due(now)
        stagger = self.timings.claim_stagger
        ranks = range(1, len(self.members))
        claimable = self.memory.claimable_since.values()
        waits = [at for since in claimable for k in ranks if (at := since + k * stagger) > now]
        again = self.memory.reread_at
        reread = [again] if again is not None and again > now else []
        times = [*self.memory.stale_deadlines.values(), *waits, *([retry] if retry is not None else []), *reread]
        return min(times, default=None)

    # --------------------------------------------------------------- restarts
    def resumed(self, predecessor_writes_until: float) -> None:
        """Our session was taken over from this agent's previous process (agent/handoff.py).

        Its EC2 writes may land until ``predecessor_writes_until``: the tables it held are
        written again no earlier, as a new holder's are after ``ec2_apply_horizon``.
        """
        self.memory.predecessor_writes_until = predecessor_writes_until

    def renew_before_exit(self) -> bool:
        """A last renewal before exiting for a restart (see SessionKeeper.renew_before_exit)."""
        return self.session.renew_before_exit()

    # ------------------------------------------------------------------ drain
    def drained(self) -> bool:
        """True once this agent holds no route table (as of the last read)."""
        s = self.last_snapshot
        return s is None or not any(self.ctx.mine(rt, s) for rt in s.routes)

    def leave(self) -> None:
        """Mark our member item as left (after draining), so nobody restarts us."""
        health = self.memory.last_health or Health(False, detail="shutting down")
        try:
            self.coordinator.leave(health)
        except CoordinatorError as exc:
            log.warning("could not mark this member as left: %s", exc)


def _versions(snapshot: GroupSnapshot) -> str:
    """Each member's heartbeat version, for the trace lines bench/failover.py reads."""
    return ",".join(f"{m.instance}={m.version}" for m in snapshot.members.values())


class _HomeRecheck:
    """Past the cycle budget, before moving a table claimed ahead from its own home: is the home back?

    A takeover's moves run to their end, however long the cycle (a claimed table is ours already),
    on a decision made at the cycle's start. Over a lossy path each move takes seconds; a home judged
    dead then may have started a new session since, and moving its table now moves a healthy NAT's
    table (sim seed 3263: a taker cut off from the home by a one-way partition claimed its tables
    while its agent restarted, then moved them 7 s after the home was back, in one 8-s cycle). So
    once the decision's view of the group is older than ``silent_owner_after`` (the silence after
    which we judge a member dead: a view that old may as well miss its return) the group is read
    again (at most once per cycle budget), and a table whose home renewed since the decision, live
    and healthy by its own report, is left where it is: it stays claimed, and the next cycle hands it
    back (agent.decide._plan_failback_done: no write of ours reached EC2). Not sooner: the read costs a
    round trip, and a takeover of a dead NAT's tables by a taker with a slow DynamoDB path (seed 4609)
    has none to spare.
    """

    def __init__(self, agent: Agent, decided: GroupSnapshot, seen: float) -> None:
        self.agent = agent
        self.decided = decided
        self.seen = seen  # when the decision's snapshot was read (monotonic)
        self.fresh: GroupSnapshot | None = None
        self.read_at = -1e18

    def home_back(self, action: object) -> str:
        """Why not to move ``action``'s table ("" to move it): it is taken from its home, back since the decision."""
        agent = self.agent
        if not isinstance(action, TakeOver) or action.route is None:
            return ""
        rt = action.route_table
        home = agent.ctx.homes.get(rt, "")
        if not home or home == agent.me or action.route.owner != home:
            return ""
        now = agent.clock.monotonic()
        if now - self.seen <= agent.timings.silent_owner_after:
            return ""
        if now - self.read_at > agent.cycle_budget:
            try:
                self.fresh = agent.coordinator.read_group()
            except (StoreUnavailable, StoreConfigError):
                self.fresh = None
            self.read_at = now
        if self.fresh is None:
            return ""
        m, was = self.fresh.members.get(home), self.decided.members.get(home)
        if m is None or m.state != MEMBER_ALIVE or not m.health.healthy or m.draining or self.fresh.draining(home):
            return ""
        if was is not None and (m.session, m.version) == (was.session, was.version):
            return ""  # nothing new from it since the decision
        return f"{rt}: its home {home} renewed since this cycle's decision (healthy): it gets it back"
