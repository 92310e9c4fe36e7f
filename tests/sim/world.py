"""The simulated world: a NAT group of real agents against an in-memory DynamoDB and a modelled EC2.

Everything here is a test double *around* the real code. Each simulated process runs
the real service loop (``agent.service.ServiceLoop``: the daemon's schedule, its
drain-leave-exit shutdown), the real ``agent.cycle.Agent`` (observe ->
``agent.decide.decide`` -> act), the real ``coordinator.leases.Coordinator`` and the
real EC2 adapter ``agent.aws.ec2.Ec2`` with its fence, on its own (skewed) clock,
against one shared :class:`~coordinator.memory.MemoryStore` whose hooks inject
faults, spend virtual time inside calls and land writes late, and one EC2 account
(tests/sim/aws.py) reached through a boto3-level client. The invariants are checked
at the moment of every side effect and sampled every 50 ms (tests/sim/checks.py).
"""

from __future__ import annotations

import bisect
import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from botocore.exceptions import ClientError

from agent.aws.ec2 import Ec2
from agent.config import Config, Ec2Config, EgressTable, Member, ProbeConfig, Timing
from agent.cycle import Agent
from agent.decide import PeerProbe
from agent.runtime import store_budget
from agent.service import ServiceLoop
from coordinator.clock import FakeClock
from coordinator.items import DRAIN_PREFIX, MEMBER_ALIVE, PIN_PREFIX, STRAY_PREFIX, Attrs, Health
from coordinator.leases import Coordinator
from coordinator.memory import MemoryStore
from tests.sim.aws import RTO, Call, SimCloud, SimEc2Client, arn
from tests.sim.checks import Checker
from tests.sim.kernel import Kernel, Proc
from tests.sim.scenario import (
    BOOT_DELAY,
    GLOBAL_KINDS,
    OPERATOR_KINDS,
    STALL,
    START_DELAY,
    STOP_DELAY,
    STORE_LATE_MAX,
    Fault,
    Scenario,
    draw,
)

GROUP = "sim"
INF = float("inf")
GATEWAY = "nat-0sim"  # the last-resort NAT gateway: a managed service, it always forwards
PROBE_DOWN_AFTER = 0.6  # 3 lost probes of 0.2 s
PROBE_UP_AFTER = 0.2
STORE_LATENCY = (0.001, 0.006)  # per half call
STORE_SLOW = (0.02, 0.2)  # per half call: past the client's 0.15 s deadline at times
SAMPLE = 0.05
DYNAMODB_WIDE = ("store_down", "store_slow", "store_throttled", "store_ambiguous", "store_late")
OBSERVING = 2.0  # an agent must have run this long to judge a silent peer (the default silent_owner_after)
DRAIN_TIMEOUT = 15.0
MAX_CYCLES = 1_000_000
_NUMBERS = re.compile(r"\d+\.\d+ s")  # ages in decision lines: a new trace line only when the rest changes
_SESSION_IDS = re.compile(r"(session )([0-9a-f]{8,16})\b")  # session ids quoted in decision lines


class AgentClock:
    """One host's clocks: a FakeClock driven from global virtual time at a skewed rate.

    ``stalls`` are intervals of global time during which the clock stands still (and
    does not catch up afterwards): a ``clock_stall``, and a VM pause whose guest clock stops
    (KVM saves kvmclock when the VM stops and restores it when it resumes: the guest does not
    count the pause; ``monotonic()`` and ``wall()`` are one clocksource and both stop). Other VM
    freezes and every process freeze leave the clock running.

    ``reference()`` is a clock outside the guest that counts every pause (true time: think of
    the Nitro card's PTP hardware clock or Amazon Time Sync); the agent may compare against it to
    see a pause its own clocks hide. The agent does not use it yet (issue 17).
    """

    def __init__(self, kernel: Kernel, rate: float, start: float) -> None:
        self.kernel = kernel
        self.rate = rate
        self.fake = FakeClock(start=start)
        self.synced = kernel.now
        self.stalls: list[tuple[float, float]] = []
        self.paused = 0.0  # global seconds this clock did not count (clock-stopping VM pauses)
        self.offset = start - kernel.now

    def pause(self, start: float, end: float) -> None:
        """A VM pause that stops the guest's clocks from ``start`` to ``end`` (global time)."""
        self._sync()
        self.stalls.append((start, end))
        self.paused += end - start

    def reference(self) -> float:
        return self.kernel.now + self.offset

    def _sync(self) -> None:
        now = self.kernel.now
        if now > self.synced:
            dt = now - self.synced
            for s, e in self.stalls:
                dt -= max(0.0, min(e, now) - max(s, self.synced))
            self.fake.advance(max(0.0, dt) * self.rate)
            self.synced = now

    def monotonic(self) -> float:
        self._sync()
        return self.fake.monotonic()

    def wall(self) -> float:
        self._sync()
        return self.fake.wall()


@dataclass
class Running:
    """One agent process (an incarnation)."""

    iid: str
    name: str
    agent: Agent
    proc: Proc
    loop: ServiceLoop
    main: bool = True  # the instance's service (not a second process or --once)
    exited: bool = False
    started: float = 0.0


@dataclass
class Result:
    seed: int
    scenario: Scenario
    violations: list[str]
    trace: list[str]
    route_changes: dict[str, int]
    stops: int
    starts: int
    steps: int
    end: float
    error: str = ""
    recovered_after: float = -1.0
    strays: int = 0
    stray_corrections: list[float] = field(default_factory=list)  # seconds after each stray's bound
    outages: list[float] = field(default_factory=list)
    late_sends: int = 0
    iam_refusals: int = 0
    freezes_triggered: int = 0
    by_invariant: dict[str, int] = field(default_factory=dict)
    max_cycle: float = 0.0
    egress_mismatches: list[float] = field(default_factory=list)  # (e): seconds counted per mismatch
    address_changes: dict[str, int] = field(default_factory=dict)
    mismatch_throttled: float = 0.0
    outage_throttled: float = 0.0
    gateway_stays: list[float] = field(default_factory=list)  # seconds each table spent on the NAT gateway
    stray_after_landing: list[float] = field(default_factory=list)  # seconds from each stray's landing to its fix
    healthy_nat_stops: int = 0  # stops that landed on a NAT that forwarded and was not silent when they were sent
    healthy_home_moves: int = 0  # moves of a table (or its Elastic IP) away from its healthy home
    clock_pauses: int = 0  # VM pauses that stopped a guest's clock
    late_arrivals: int = 0  # writes that reached AWS after their writer's lease
    throttled_s: float = 0.0  # time AWS refused the takeover's writes for the account (buckets dry)
    throttled_calls: dict[str, int] = field(default_factory=dict)  # action -> RequestLimitExceeded answers
    outage_tag_propagation: float = 0.0  # (b) seconds not counted: IAM did not see the holder's own tag yet
    mismatch_tag_propagation: float = 0.0  # (e) the same
    stops_after_send_recovery: int = 0  # stops sent to a NAT silent for its lease that came back before they landed
    outage_slow_store: float = 0.0  # (b) seconds its limits grew: every possible taker had a slow DynamoDB path
    slow_store_outages: list[float] = field(default_factory=list)  # the outages whose limit grew so (in outages too)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.error

    def report(self) -> str:
        head = [f"=== nat-ha simulation seed {self.seed}: {'OK' if self.ok else 'VIOLATION'} ==="]
        head += self.scenario.describe()
        if self.error:
            head.append(f"ERROR: {self.error}")
        head += [f"VIOLATION: {v}" for v in self.violations]
        head.append(f"replay: pytest tests/sim --sim-seed {self.seed}")
        head.append("--- trace (virtual seconds) ---")
        return "\n".join(head + self.trace + head[-2:-1])


class World:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.t = sc.timing
        self.group = GROUP
        self.rng = random.Random(sc.seed * 1_000_003 + 17)
        self.rng2 = random.Random(f"issue-17/world/{sc.seed}")  # the new models' draws: the old ones stay put
        self.k = Kernel()
        self.store = MemoryStore(
            self._store_fault,
            delay_hook=self._store_delay,
            apply_hook=self._store_applied,
            send_hook=self._store_sent,
            defer_hook=self._store_defer,
        )
        self.trace: list[str] = []
        for timing in {*sc.all_timings, sc.timing}:
            problems = timing.problems(ProbeConfig(interval=0.2, timeout=0.15))
            if problems:
                raise ValueError(f"the simulated timing is not a valid configuration: {problems}")
        self.homes = {rt: m for m, rts in sc.route_tables.items() for rt in rts}
        eni = {m: f"eni-{m[2:]}" if sc.egress else "" for m in sc.members}
        self.members = tuple(
            Member(m, f"10.0.{i}.10", sc.route_tables[m], eni=eni[m]) for i, m in enumerate(sc.members)
        )
        # egress_ip = follow: one Elastic IP per table; every member has an address for every table
        # on its ENI (assigned ahead of time, as the stacks do). Only own_path_eip (a layout check-config
        # refuses since issue 17, finding 4) puts a home's first table on its primary address.
        self.egress: dict[str, EgressTable] = {}
        self.public_ip: dict[str, str] = {}  # allocation id -> public address
        self.alloc_table: dict[str, str] = {}
        self.eni_owner = {e: m for m, e in eni.items() if e}
        self.eni = eni
        self.primary = {m: f"10.0.{i}.10" for i, m in enumerate(sc.members)}
        self.eni_addresses: dict[str, set[str]] = {e: {f"10.0.{i}.10"} for i, e in enumerate(eni.values()) if e}
        if sc.egress:
            for k, rt in enumerate(sorted(self.homes, key=lambda r: int(r.split("-")[1]))):
                home = self.homes[rt]
                addresses = []
                for i, m in enumerate(sc.members):
                    primary = sc.own_path_eip and m == home and sc.route_tables[m][0] == rt
                    addr = f"10.0.{i}.10" if primary else f"10.0.{i}.{100 + k}"
                    addresses.append((m, addr))
                    self.eni_addresses[eni[m]].add(addr)
                alloc = f"eipalloc-{k}"
                self.egress[rt] = EgressTable(rt, alloc, (f"10.100.{k}.0/24",), tuple(addresses))
                self.public_ip[alloc] = f"203.0.113.{10 + k}"
                self.alloc_table[alloc] = rt
        self.state: dict[str, str] = dict.fromkeys(sc.members, "running")
        self.hung: set[str] = set()  # nat_down
        self.broken: set[str] = set()  # dataplane_down
        self.forward_hung: set[str] = set()
        self.vm_frozen: Counter[str] = Counter()
        self.crashed: set[str] = set()
        self.stopped_by_operator: Counter[str] = Counter()  # sigterm'd, member_removed: no agent until it ends
        self.skewed: dict[str, tuple[str, ...]] = {}  # instance -> members its config lacks
        self.running: dict[str, Running] = {}  # the instance's service process
        self.extra: list[Running] = []  # second processes, --once
        self.incarnations: Counter[str] = Counter()
        self.clocks = {m: AgentClock(self.k, sc.rates[m], 1000.0 + 100 * i) for i, m in enumerate(sc.members)}
        self.active: list[Fault] = []
        self.ended: list[Fault] = []
        self.armed: dict[str, list[Fault]] = {}
        self.fault_started: dict[str, float] = {}  # instance -> when the last fault that hit it began
        self.applied: set[int] = set()  # id() of operator faults whose effect was applied
        self.freezes_triggered = 0
        self.clock_pauses = 0
        self.thaw_waiters: dict[str, list[Callable[[], None]]] = {}  # instance -> what waits for its VM
        self.probe_silent_since: dict[str, float] = {}  # instance -> since when it answers no probes
        self.probe_silences: dict[str, list[list[float]]] = {}  # instance -> [start, end) of each silent stretch
        self.heartbeats: dict[str, list[float]] = {}  # instance -> when each write of its own member item applied
        self.cloud = SimCloud(self)
        for rt, home in self.homes.items():
            self.cloud.routes[rt] = [(-1e9, home)]
        for rt, e in self.egress.items():  # each table's Elastic IP starts on its home's address for it
            self.cloud.addresses[e.allocation_id] = [(-1e9, (eni[self.homes[rt]], e.address(self.homes[rt])))]
        self.checker = Checker(self)
        self.checker.newest_target.update(self.homes)
        self.reach: dict[tuple[str, str], tuple[bool, float]] = {}
        # (global, holder-local) time each write of an own member item was sent, by token; per
        # session the one of its last applied renewal: the session's interval in true time runs
        # from there until the holder's own clock reaches local + lease.
        self.pending_send: dict[str, tuple[float, float]] = {}
        self.token_writer: dict[str, str] = {}  # write token -> the instance that sent it
        self.sent_at: dict[tuple[str, str], tuple[float, float]] = {}
        self.self_write_at: dict[str, float] = {}
        self.read_at: dict[str, float] = {}
        self.term_owner: dict[tuple[str, int], tuple[str, str]] = {}
        self.holder: dict[str, tuple[str, str]] = {}
        self.session_names: dict[str, str] = {}
        self.tokens = 0
        self.operator = Coordinator(self.store, GROUP, "operator", FakeClock(), self.t.lease, token_factory=self.token)
        self.store_calls: dict[str, tuple[float, float, float]] = {}  # process -> (local start, deadline, frozen s)
        self.store_plan: dict[str, float] = {}  # process -> the way to DynamoDB of its next write
        self.store_late_at: dict[str, float] = {}  # process -> when its write reaches DynamoDB (after its deadline)

    # ------------------------------------------------------------ helpers
    def log(self, line: str) -> None:
        self.trace.append(f"{self.k.now:8.3f} {line}")

    def sname(self, session: str) -> str:
        if not session:
            return "-"
        return self.session_names.setdefault(session, f"s{len(self.session_names) + 1}")

    def named(self, text: str) -> str:
        """``text`` with the session ids it quotes (random uuids) by their trace names: a seed replays exactly."""

        def name(m: re.Match[str]) -> str:
            known = next((s for s in self.session_names if s.startswith(m.group(2))), m.group(2))
            return m.group(1) + self.sname(known)

        return _SESSION_IDS.sub(name, text)

    def caller(self) -> str:
        p = self.k.current
        return p.name.split("#")[0] if p is not None else ""

    def faulty(self, kind: str, target: str | None = None) -> Fault | None:
        for f in self.active:
            if f.kind == kind and (target is None or f.target == target):
                return f
        return None

    def token(self) -> str:
        self.tokens += 1
        return f"tok{self.tokens}"

    def timing(self, iid: str) -> Timing:
        return self.sc.timing_of(iid)

    def unreachable_aws(self, iid: str) -> bool:
        """No internet from this NAT at all (lost_egress): its forwarding and its own calls fail."""
        return self.faulty("lost_egress", iid) is not None

    def own_path(self, iid: str) -> bool:
        """The NAT's own calls to AWS get out: its internet works and (own_path_eip) the Elastic IP
        on its primary address is there - its only public address; no VPC endpoint."""
        if self.unreachable_aws(iid):
            return False
        if not (self.sc.own_path_eip and self.sc.egress):
            return True
        mine = (self.eni[iid], self.primary[iid])
        return any(hist[-1][1] == mine for hist in self.cloud.addresses.values())

    def ec2_path(self, iid: str) -> str:
        """How a connection to the EC2 endpoint fares: "" it comes up, "refused", "timeout"."""
        if not self.own_path(iid):
            return "timeout"
        if self.faulty("ec2_outage"):
            return "refused" if self.rng2.random() < 0.3 else "timeout"
        return ""

    def store_path(self, iid: str) -> bool:
        """The NAT's DynamoDB calls get an answer (possibly slow)."""
        return self.own_path(iid) and not self.faulty("store_isolated", iid) and not self.faulty("store_down")

    def loss_rate(self, iid: str) -> float:
        f = self.faulty("net_loss", iid)
        return f.rate if f is not None else 0.0

    def on_thaw(self, iid: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` when the VM resumes (a frozen guest's kernel sends and receives nothing)."""
        self.thaw_waiters.setdefault(iid, []).append(fn)

    def forwards(self, iid: str) -> bool:
        """The NAT carries its subnets' traffic to the internet."""
        if iid == GATEWAY:
            return self.sc.last_resort
        return (
            self.state.get(iid) == "running"
            and iid not in self.hung
            and iid not in self.broken
            and iid not in self.forward_hung
            and not self.vm_frozen[iid]
            and not self.unreachable_aws(iid)
        )

    def reaches_aws(self, iid: str) -> bool:
        """Its own AWS calls are answered, DynamoDB's within 300 ms: not isolated from DynamoDB or EC2,
        no lost packets; not while DynamoDB itself fails, refuses or is slower than that for everyone
        (a lease cannot be held then). ``store_slow_member`` stays within 300 ms: it reaches AWS."""
        if not self.own_path(iid) or self.faulty("store_isolated", iid) or self.faulty("net_loss", iid):
            return False
        if any(self.faulty(k) for k in DYNAMODB_WIDE):
            return False
        f = self.faulty("store_slow_member", iid)
        return f is None or f.rate <= 0.3

    def healthy_member(self, iid: str, *, observing: bool = False) -> bool:
        """Could serve route tables now, whatever its session: it forwards, its agent runs (not frozen,
        not leaving, not draining), it reaches AWS and AWS does not refuse it (``ec2_denied``).

        ``observing``: and its agent has run long enough to judge a silent peer (a process
        that has just started has seen nobody's heartbeat change yet).
        """
        run = self.running.get(iid)
        if run is None or run.exited or not self.forwards(iid) or run.proc.hung_until > self.k.now:
            return False
        if observing and not self.observing(iid):
            return False
        if not self.reaches_aws(iid) or self.faulty("ec2_denied", iid) or run.loop.stopping:
            return False
        if run.agent.draining:
            return False
        item = self.store.raw_get(GROUP, DRAIN_PREFIX + iid)
        return not (item and item.get("owner") == "on")

    def observing(self, iid: str) -> bool:
        """Its agent has run long enough to judge a silent peer (the default silent_owner_after: the
        checker does not take the judged configuration's word for it)."""
        run = self.running.get(iid)
        return run is not None and self.k.now - run.started >= OBSERVING

    def aws_works(self) -> bool:
        """No impairment of AWS itself (for everyone): DynamoDB down, slow or throttling; EC2
        unreachable, failing, slow or applying writes late. (b)'s clock stops meanwhile: no AWS-based
        failover can be faster than AWS; the outage is still measured. (Another tenant draining the
        account's buckets is judged by the buckets themselves: ``SimCloud.writes_refused``.)"""
        impaired = (
            "store_down", "store_slow", "store_throttled", "store_ambiguous", "store_late",
            "ec2_errors", "ec2_slow", "ec2_late", "ec2_outage",
        )  # fmt: skip
        if any(self.faulty(kind) for kind in impaired):
            return False
        # Late writes go on landing after a lateness fault ends (a late heartbeat resets every
        # observer's silence clock; a late route write lands up to the horizon later).
        horizon = max(t.ec2_apply_horizon for t in self.sc.all_timings)
        store_timeout = max(t.store_timeout for t in self.sc.all_timings)
        tails = {"store_late": store_timeout + STORE_LATE_MAX, "ec2_late": horizon + 1.0}
        return not any(f.kind in tails and self.k.now - f.end < tails[f.kind] for f in self.ended)

    def process_run(self, name: str) -> Running | None:
        for run in [*self.running.values(), *self.extra]:
            if run.name == name:
                return run
        return None

    def is_main_process(self, name: str) -> bool:
        """May this process write at all? (``--once`` never writes.)"""
        run = self.process_run(name)
        return run is not None and not name.endswith("once")

    def operator_touched(self, iid: str, table: str, window: float) -> bool:
        for f in [*self.active, *self.ended]:
            if f.kind not in OPERATOR_KINDS or self.k.now - f.end > window:
                continue
            if f.kind == "member_removed" or f.target == iid or f.other == iid or f.table == table:
                return True
        return False

    # ------------------------------------------------------------- freezes
    def freeze_point(self, iid: str, point: str, p: Proc, op: str = "") -> None:
        """A freeze armed for this instant of a call (between the lease check and the send, ...) happens now."""
        armed = self.armed.get(iid)
        if not armed:
            return
        if not op and point.startswith("ec2"):
            call = getattr(p, "ec2_op", "")
            op = call if isinstance(call, str) else ""
        for f in armed:
            if f.point == point and self.k.now >= f.start and (not f.op or f.op == op):
                armed.remove(f)
                self.freezes_triggered += 1
                self.fault_started[iid] = self.k.now
                self.log(f"FREEZE {f.kind} of {iid} at {point}{f' of {op}' if op else ''} for {f.duration:.3f} s")
                self._freeze(f, iid, f.duration, only=p)
                p.wait(0.0, "frozen")
                return

    def _freeze(self, f: Fault, iid: str, seconds: float, only: Proc | None = None) -> None:
        procs = [r.proc for r in [*self.running.values(), *self.extra] if r.iid == iid]
        if f.kind == "vm_freeze":
            self.vm_frozen[iid] += 1
            if f.clock_stops:
                self.clocks[iid].pause(self.k.now, self.k.now + seconds)
                self.clock_pauses += 1
                self.log(f"{iid}'s guest clock stops for {seconds:.3f} s (restored, not advanced, on resume)")
            self.refresh_reach()
            self.k.at(self.k.now + seconds, lambda: self._thaw(iid))
        elif only is not None:
            procs = [only]
        else:
            run = self.running.get(iid)
            procs = [run.proc] if run is not None else []
        for proc in procs:
            proc.hang(seconds)

    def _thaw(self, iid: str) -> None:
        self.vm_frozen[iid] -= 1
        self.refresh_reach()
        if not self.vm_frozen[iid]:
            for fn in self.thaw_waiters.pop(iid, []):
                fn()
            self.start_agent(iid, "VM resumed")

    # -------------------------------------------------------------- store
    def _store_fault(self, op: str, group: str, item: str) -> str | None:
        me = self.caller()
        if not me:
            return None  # the operator's commands (kernel events)
        if self.faulty("store_down") or not self.store_path(me):
            return "unavailable"
        f = self.faulty("store_throttled")
        if f is not None and self.rng.random() < f.rate:
            return "throttled"
        f = self.faulty("store_ambiguous")
        if op == "put" and f is not None and self.rng.random() < f.rate:
            return self.rng.choice(("lost_reply", "retried"))
        f = self.faulty("store_late")
        if op == "put" and f is not None and self.rng.random() < f.rate:
            return "late"
        if op == "put":
            # The request's way to DynamoDB: past the client's deadline it is applied after the
            # client gave up (the client is told the outcome is unknown).
            p = self.k.current
            assert p is not None
            half = self._store_half(me)
            clock = self.clocks[me]
            budget = self.store_budget(me)
            self.store_plan[p.name] = half
            if half > budget / clock.rate:
                self.store_late_at[p.name] = self.k.now + half
                return "late"
        return None

    def store_budget(self, iid: str) -> float:
        """How long the client waits for the DynamoDB call in progress: the budget the agent's
        coordinator gave it (production: coordinator.leases.StoreBudget), else its store timeout."""
        t = self.timing(iid)
        given = self.store.call_timeout()
        return given if given is not None else t.store_timeout * t.store_attempts

    def _store_half(self, iid: str) -> float:
        """One way of a DynamoDB call: its latency, a slow path, TCP retransmissions."""
        lo, hi = STORE_SLOW if self.faulty("store_slow") else STORE_LATENCY
        half = self.rng.uniform(lo, hi)
        f = self.faulty("store_slow_member", iid)
        if f is not None:  # this member's path: round trips of 140 ms up to f.rate
            half = max(half, self.rng2.uniform(0.07, f.rate / 2))
        lost = 0
        while lost < 8 and self.rng2.random() < self.loss_rate(iid):
            lost += 1
        return half + RTO * (2**lost - 1)

    def _store_delay(self, op: str, group: str, item: str, phase: str) -> None:
        """Time on the way to DynamoDB and back; the client gives up at its deadline, on its own clock."""
        from coordinator.store import OutcomeUnknown, Unavailable

        p = self.k.current
        if p is None:
            return
        iid = p.name.split("#")[0]
        clock = self.clocks[iid]
        if phase == "request":
            start = clock.monotonic()
            self.store_calls[p.name] = (start, start + self.store_budget(iid), p.frozen)
            self.freeze_point(iid, "store_send", p)
            deadline = self.store_calls[p.name][1]
            if not self.store_path(iid) and not self.faulty("store_down"):
                self._store_wait(p, clock, deadline)  # no answer: the connection never comes up
                return
            half = self.store_plan.pop(p.name, None)
            if half is None:
                half = self._store_half(iid)
            if p.name in self.store_late_at or half * clock.rate > deadline - clock.monotonic():
                self._store_wait(p, clock, deadline)
                if op in ("query", "get"):
                    raise Unavailable("simulated: no answer before the deadline")
                return
            p.wait(half, "store")
            if op in ("query", "get"):
                self.read_at[p.name] = self.k.now  # the store reads the items now (the read's linearization point)
            return
        self.freeze_point(iid, "store_call", p)
        start, deadline, frozen = self.store_calls.pop(p.name, (0.0, float("inf"), p.frozen))
        if self.store_late_at.pop(p.name, None) is not None:
            return  # its request is still on its way: the client gave up at its deadline
        half = self._store_half(iid)
        if p.frozen == frozen and half * clock.rate > deadline - clock.monotonic():
            self._store_wait(p, clock, deadline)  # the answer comes after the client gave up
            if op == "put":
                raise OutcomeUnknown("simulated: no answer before the deadline")
            raise Unavailable("simulated: no answer before the deadline")
        p.wait(half, "store")
        if clock.monotonic() > deadline + 1e-9 and self.rng.random() < 0.5:
            # After a freeze the answer and the client's timer are both due: the timer won the race.
            if op == "put":
                raise OutcomeUnknown("simulated: no answer before the deadline")
            raise Unavailable("simulated: no answer before the deadline")

    def _store_wait(self, p: Proc, clock: AgentClock, deadline: float) -> None:
        """Wait until the caller's clock reaches ``deadline`` (it may stop during a VM pause)."""
        for _ in range(100):
            left = deadline - clock.monotonic()
            if left <= 0:
                return
            p.wait(max(left / clock.rate, 0.0001), "store")

    def _store_sent(self, group: str, attrs: Attrs) -> None:
        me = self.caller()
        key = str(attrs["item"])
        self.token_writer[str(attrs.get("token"))] = me
        if me and key == "member#" + me and attrs.get("state") == MEMBER_ALIVE and not attrs.get("expired_by"):
            self.pending_send[str(attrs["token"])] = (self.k.now, self.clocks[me].monotonic())

    def _store_defer(self, apply: Callable[[], object]) -> None:
        p = self.k.current
        at = self.store_late_at.get(p.name) if p is not None else None
        if at is None:  # store_late: DynamoDB applies it after the client's timeout and its re-read
            timeout = self.timing(self.caller()).store_timeout if self.caller() else self.t.store_timeout
            at = self.k.now + timeout + self.rng.uniform(0.0, STORE_LATE_MAX)
        self.k.at(max(at, self.k.now), lambda: apply() and None)

    def _store_applied(self, group: str, attrs: Attrs) -> None:
        key = str(attrs["item"])
        me = self.caller() or self.token_writer.get(str(attrs.get("token")), "")  # a late write: its sender
        if key.startswith("member#"):
            who = key[len("member#") :]
            if not attrs.get("expired_by"):
                self.self_write_at[who] = self.k.now
                self.heartbeats.setdefault(who, []).append(self.k.now)
                sent = self.pending_send.get(str(attrs.get("token")))
                if attrs.get("state") == MEMBER_ALIVE and sent is not None:
                    k = (who, str(attrs["session"]))
                    self.sent_at[k] = max(self.sent_at.get(k, sent), sent)
            else:
                self.log(f"{me or 'late write'}: expired {who} (session {self.sname(str(attrs['session']))})")
        elif key.startswith(STRAY_PREFIX):
            self.checker.reported(str(attrs.get("owner") or me), key[len(STRAY_PREFIX) :])
        elif key.startswith("route#"):
            rt = key[len("route#") :]
            term = int(attrs["term"])
            holder = (str(attrs.get("owner", "")), str(attrs.get("owner_session", "")))
            seen = self.term_owner.setdefault((rt, term), holder)
            if seen != holder:
                self.checker.violation(f"{rt} term {term} held by {seen} and by {holder}", "a")
            before = self.holder.get(rt, ("", ""))
            self.holder[rt] = holder
            # Taken (not handed over) from a session: it must have run out, or two agents may
            # act on the table at once. A session nobody runs any more cannot act.
            taken = before[0] and before != holder and me != before[0]
            if taken and self._session_runs(before[0], before[1]):
                # Valid on its holder's clock and in true time: a clock stopped by a VM pause makes
                # its holder believe in it longer, but peers rightly expire it (its writes are judged
                # at the fence's check, Checker.authorized).
                left = self.session_left(before[0], before[1])
                if left > 0 and self.session_true_left(before[0], before[1]) > 0:
                    self.checker.violation(
                        f"{me} took {rt} (term {term}) from {before[0]} whose session {self.sname(before[1])} "
                        f"is still valid ({left:.3f} s more on its holder's clock)",
                        "a",
                    )
            self.log(f"{me or 'late write'}: {rt} term {term} -> {holder[0] or 'nobody'} ({self.sname(holder[1])})")

    def _session_runs(self, iid: str, session: str) -> bool:
        for run in [*self.running.values(), *self.extra]:
            s = run.agent.coordinator.session
            if run.iid == iid and not run.exited and not run.proc.killed and s is not None and s.session == session:
                return True
        return False

    def session_left(self, who: str, session: str) -> float:
        """Seconds (on the holder's clock) its session has left: its last applied renewal's t0 + lease - now."""
        sent = self.sent_at.get((who, session))
        if sent is None:
            return -1.0
        return sent[1] + self.timing(who).lease - self.clocks[who].monotonic()

    def session_true_left(self, who: str, session: str) -> float:
        """Seconds of true time the session has left: its last applied renewal's send + lease at the
        holder's clock rate, plus the clock stall the clock bound allows (scenario.STALL). A clock
        that stopped in a VM pause makes the holder believe in more than this: that is not allowed."""
        sent = self.sent_at.get((who, session))
        if sent is None:
            return -1.0
        return sent[0] + self.timing(who).lease / self.clocks[who].rate + STALL - self.k.now

    # ---------------------------------------------------------------- EC2
    def write_route(self, call: Call, table: str, target: str) -> None:
        before = self.cloud.target(table)
        self.cloud.routes[table].append((self.k.now, target))
        self.checker.route_applied(call, table, target, before)
        if before != target:
            self.log(f"{call.process}: EC2 {table}: {before} -> {target} (term {call.info.get('term', '?')})")

    def address_owner(self, table: str, eni: str, ip: str) -> str:
        """The member whose address for ``table`` is (eni, ip); "" when unassociated, "other:..." else."""
        if not eni:
            return ""
        owner = self.eni_owner.get(eni, "")
        e = self.egress.get(table)
        if owner and e is not None and e.address(owner) == ip:
            return owner
        return f"other:{eni}/{ip}"

    def write_address(self, call: Call, alloc: str, eni: str, ip: str) -> None:
        table = self.alloc_table[alloc]
        before = self.cloud.eip_holder(table)
        self.cloud.addresses[alloc].append((self.k.now, (eni, ip)))
        after = self.cloud.eip_holder(table)
        self.checker.address_applied(call, table, after, before)
        if before != after:
            self.log(f"{call.process}: EC2 {table} Elastic IP: {before} -> {after} (term {call.info.get('term', '?')})")

    def stop_instance(self, call: Call, target: str) -> None:
        if self.state[target] in ("stopping", "stopped"):
            return
        if self.state[target] == "pending":
            raise ClientError({"Error": {"Code": "IncorrectInstanceState", "Message": target}}, "StopInstances")
        self.checker.stopped(call, target)
        self.log(f"{call.process}: EC2 stop {target}")
        self.state[target] = "stopping"
        self.hung.discard(target)
        for run in [r for r in [*self.running.values(), *self.extra] if r.iid == target]:
            self.kill_process(run, "instance stopping")
        self.refresh_reach()
        self.k.at(self.k.now + STOP_DELAY, lambda: self._set_state(target, "stopped"))

    def start_instance(self, call: Call, target: str) -> None:
        if self.state[target] in ("running", "pending"):
            return
        if self.state[target] == "stopping":
            raise ClientError({"Error": {"Code": "IncorrectInstanceState", "Message": target}}, "StartInstances")
        self.checker.starts += 1
        self.log(f"{call.process}: EC2 start {target}")
        self.state[target] = "pending"
        self.k.at(self.k.now + START_DELAY, lambda: self._set_state(target, "running"))
        self.k.at(self.k.now + START_DELAY + BOOT_DELAY, lambda: self.start_agent(target, "booted"))

    def _set_state(self, target: str, state: str) -> None:
        self.state[target] = state
        self.refresh_reach()
        self.log(f"EC2 {target} is {state}")

    # ------------------------------------------------------------- agents
    def config_of(self, iid: str) -> Config:
        lacks = set(self.skewed.get(iid, ()))
        members = [m for m in self.members if m.instance_id not in lacks]
        for gone in lacks:  # a removed member's tables get a new home: the next member that remains
            ids = [m.instance_id for m in self.members]
            i = ids.index(gone)
            heir = next(x for x in ids[i + 1 :] + ids[:i] if x not in lacks)
            extra = self.sc.route_tables[gone]
            members = [replace(m, route_tables=m.route_tables + extra) if m.instance_id == heir else m for m in members]
        egress = tuple(self.egress.values())
        follow = "follow" if self.sc.egress else "off"
        return Config(
            group=GROUP,
            instance_id=iid,
            members=tuple(members),
            timing=self.timing(iid),
            egress_ip=follow,
            egress_order=self.sc.egress_order,
            egress_tables=egress,
            ec2=Ec2Config(last_resort_nat_gateway=GATEWAY if self.sc.last_resort else ""),
        )

    def _spawn(self, iid: str, why: str, *, main: bool = True, once: bool = False) -> Running:
        self.incarnations[iid] += 1
        n = self.incarnations[iid]
        name = f"{iid}#{n}" + ("once" if once else "" if main else "b")
        clock = self.clocks[iid]
        config = self.config_of(iid)
        t = self.timing(iid)
        coordinator = Coordinator(
            self.store, GROUP, iid, clock, t.lease, token_factory=self.token, budget=store_budget(t)
        )
        client = SimEc2Client(self, iid, name)
        ec2 = Ec2("sim", client=client, members={m.instance_id: m for m in config.members}, egress=config.egress())
        ec2.sender = client.sender  # type: ignore[assignment]  # the adapter reads its records as from awshttp
        agent = Agent(
            config,
            coordinator,
            ec2,
            SimProbes(self, iid),
            SimHealth(self, iid),
            clock,
            holder=arn(iid) if self.sc.holder_tag else "",
            on_event=lambda kind, data: self._event(name, kind, data),
        )
        loop = ServiceLoop(agent, DRAIN_TIMEOUT, clock.monotonic, wall=clock.wall)
        run: Running

        def body(p: Proc) -> None:
            if once:
                p.wait(1.0, "idle")  # the probe window fills (nat-ha agent --once)
                decision = agent.run_cycle(act=False)
                self.log(f"{name} [{decision.kind}] {decision.summary}")
                run.exited = True
                return
            last = ""
            for _ in range(MAX_CYCLES):  # the kernel ends the process long before
                t0, frozen0 = self.k.now, p.frozen
                step = loop.step()
                # How long the cycle kept the process busy, not counting time it was frozen.
                self.checker.max_cycle = max(self.checker.max_cycle, self.k.now - t0 - (p.frozen - frozen0))
                key = _NUMBERS.sub("#", step.decision.summary)
                if key != last:
                    last = key
                    self.log(f"{name} [{step.decision.kind}] {self.named(step.decision.summary)}")
                if step.exit_code is not None:
                    self.log(f"{name} exited ({step.exit_code})")
                    run.exited = True
                    return
                jitter = self.rng.uniform(0.0, self.sc.jitter * t.cycle_interval)
                p.wait(max(0.0, step.wake_at - clock.monotonic()) / clock.rate + jitter, "idle")

        proc = self.k.spawn(name, body)
        run = Running(iid, name, agent, proc, loop, main=main and not once, started=self.k.now)
        self.log(f"{name} process started ({why})")
        return run

    def start_agent(self, iid: str, why: str) -> None:
        if iid in self.running or self.state[iid] != "running" or iid in self.hung or iid in self.crashed:
            return
        if iid in self.forward_hung or self.vm_frozen[iid]:
            return  # the host is hung or frozen: no new process runs until it resumes
        if self.stopped_by_operator[iid] > 0:
            return
        self.running[iid] = self._spawn(iid, why)

    def kill_process(self, run: Running, why: str) -> None:
        run.proc.kill()
        if self.running.get(run.iid) is run:
            del self.running[run.iid]
        if run in self.extra:
            self.extra.remove(run)
        self.log(f"{run.name} process killed ({why})")

    def kill_agent(self, iid: str, why: str) -> None:
        run = self.running.get(iid)
        if run is not None:
            self.kill_process(run, why)

    def restart_agent(self, iid: str, why: str) -> None:
        self.kill_agent(iid, why)
        self.start_agent(iid, why)

    def _event(self, name: str, kind: str, data: dict[str, object]) -> None:
        if kind == "late_write":
            self.checker.reported(name.split("#")[0], str(data.get("resource", "")))
        if kind in ("session_started", "session_lost", "peer_expired", "peer_stopping", "peer_starting", "late_write"):
            self.log(f"{name}: {kind} {data if data else ''}".rstrip())

    # ------------------------------------------------------------- probes
    def answers_probes(self, iid: str) -> bool:
        return (
            self.state[iid] == "running" and iid not in self.hung and iid not in self.broken and not self.vm_frozen[iid]
        )

    def reachable(self, a: str, b: str) -> bool:
        if not self.answers_probes(b):
            return False
        for f in self.active:
            if f.kind == "partition" and {f.target, f.other} == {a, b}:
                return False
            if f.kind == "partition_oneway" and (f.target, f.other) == (a, b):
                return False
        return True

    def answered_between(self, b: str, start: float, end: float) -> bool:
        """``b`` answered probes (the world's view) at some moment of [start, end]."""
        return not any(s <= start and e > end for s, e in self.probe_silences.get(b, []))

    def heartbeated_between(self, b: str, start: float, end: float) -> bool:
        """A write of ``b``'s own member item (a heartbeat, a new session) applied in [start, end]."""
        times = self.heartbeats.get(b, [])
        i = bisect.bisect_left(times, start)
        return i < len(times) and times[i] <= end

    def refresh_reach(self) -> None:
        for b in self.sc.members:
            stretches = self.probe_silences.setdefault(b, [])
            if self.answers_probes(b):
                self.probe_silent_since.pop(b, None)
                if stretches and stretches[-1][1] == INF:
                    stretches[-1][1] = self.k.now
            else:
                self.probe_silent_since.setdefault(b, self.k.now)
                if not stretches or stretches[-1][1] != INF:
                    stretches.append([self.k.now, INF])
        for a in self.sc.members:
            for b in self.sc.members:
                if a == b:
                    continue
                now = self.reachable(a, b)
                seen = self.reach.get((a, b))
                if seen is None:
                    self.reach[(a, b)] = (now, -1e9)
                elif seen[0] != now:
                    self.reach[(a, b)] = (now, self.k.now)
                    if not now:
                        since = self.k.now
                        self.k.at(since + PROBE_DOWN_AFTER, lambda a=a, b=b, since=since: self._probe_down(a, b, since))

    def _probe_down(self, a: str, b: str, since: float) -> None:
        """a's probes just turned b down: the prober wakes a's daemon for a cycle now (agent.commands.daemon)."""
        if self.reach.get((a, b)) != (False, since):
            return  # b answered again meanwhile
        run = self.running.get(a)
        if run is not None and run.proc.where == "idle":
            run.proc.wake_at(self.k.now)

    def probe(self, a: str, b: str) -> PeerProbe:
        value, since = self.reach[(a, b)]
        age = self.k.now - since
        up = value if age >= (PROBE_UP_AFTER if value else PROBE_DOWN_AFTER) else not value
        return PeerProbe(up, 0 if up else 3, 5, 0.0 if value else age)

    # ------------------------------------------------------------- faults
    def schedule(self) -> None:
        for f in self.sc.faults:
            self.k.at(f.start, lambda f=f: self._fault_start(f))
            self.k.at(f.end, lambda f=f: self._fault_end(f))

    def _fault_start(self, f: Fault) -> None:
        self.log(f"FAULT start {f.describe()}")
        self.active.append(f)
        if f.target and f.kind not in GLOBAL_KINDS and not f.point:
            self.fault_started[f.target] = self.k.now
        if f.kind.startswith("ec2_busy"):
            self.cloud.tenants()
        self._fault_effect(f)
        self.refresh_reach()

    def _fault_effect(self, f: Fault) -> None:
        iid = f.target
        if f.kind == "crash":
            self.crashed.add(iid)
            self.kill_agent(iid, "crash")
        elif f.kind in ("hang", "vm_freeze"):
            if f.point:
                self.armed.setdefault(iid, []).append(f)
            else:
                self.freezes_triggered += 1
                self._freeze(f, iid, f.duration)
        elif f.kind == "forward_hang":
            self.forward_hung.add(iid)
            for run in [r for r in [*self.running.values(), *self.extra] if r.iid == iid]:
                run.proc.hang(f.duration)  # the host hangs: every agent process on it
        elif f.kind == "nat_down":
            if self.state[iid] == "running":
                self.hung.add(iid)
                for run in [r for r in [*self.running.values(), *self.extra] if r.iid == iid]:
                    self.kill_process(run, "instance hung")
        elif f.kind == "dataplane_down":
            self.broken.add(iid)
        elif f.kind == "clock_stall":
            self.clocks[iid].stalls.append((f.start, f.end))
        elif f.kind == "config_skew":
            if len(self.sc.members) < 3:
                self.log("(config_skew needs three members: a config of one member is refused)")
                return
            self.skewed[iid] = (f.other,)
            self.applied.add(id(f))
            self.restart_agent(iid, f"config without {f.other}")
        elif f.kind == "member_removed":
            if len(self.sc.members) < 3:
                self.log("(member_removed needs three members: nothing done)")
                return
            self.stopped_by_operator[iid] += 1
            self.applied.add(id(f))
            self.kill_agent(iid, "removed from the group (not drained)")
            for m in self.sc.members:
                if m != iid:
                    self.skewed[m] = (iid,)
                    self.restart_agent(m, f"config without {iid}")
        elif f.kind == "second_process":
            if self._host_runs(iid):
                self.extra.append(self._spawn(iid, "a second agent for the same instance", main=False))
        elif f.kind == "agent_once":
            if self._host_runs(iid):
                self.extra.append(self._spawn(iid, "nat-ha agent --once", once=True))
        elif f.kind == "drain":
            self.operator.set_request(DRAIN_PREFIX + iid, "on")
        elif f.kind == "sigterm":
            run = self.running.get(iid)
            if run is not None:
                run.loop.request_stop()
                self.stopped_by_operator[iid] += 1
                self.applied.add(id(f))
        elif f.kind == "pin":
            self.operator.set_request(PIN_PREFIX + f.table, f.other)

    def _host_runs(self, iid: str) -> bool:
        """A new process can start on the host: it runs and is not hung (``nat_down``, ``forward_hang``: every
        process on it is frozen, as ``start_agent`` says) nor frozen (``vm_freeze``). A process started on a
        hung host ran unfrozen before: seed 3920's second agent held i-c's tables with a fresh session on a NAT
        that did not forward, which no process on a hung host can do."""
        return (
            self.state[iid] == "running"
            and iid not in self.hung
            and iid not in self.forward_hung
            and not self.vm_frozen[iid]
        )

    def _fault_end(self, f: Fault) -> None:
        self.log(f"FAULT end   {f.describe()}")
        self.active.remove(f)
        self.ended.append(f)
        if f.kind.startswith("ec2_busy"):
            self.cloud.tenants()
        self._fault_cleared(f)
        self.refresh_reach()

    def _fault_cleared(self, f: Fault) -> None:
        iid = f.target
        if f.kind == "crash":
            if not self.faulty("crash", iid):
                self.crashed.discard(iid)
                self.start_agent(iid, "restarted after crash")
        elif f.kind == "nat_down":
            if iid in self.hung and not self.faulty("nat_down", iid):
                self.hung.discard(iid)
                self.start_agent(iid, "instance recovered")
        elif f.kind == "dataplane_down" and not self.faulty("dataplane_down", iid):
            self.broken.discard(iid)
        elif f.kind == "forward_hang" and not self.faulty("forward_hang", iid):
            self.forward_hung.discard(iid)
            self.start_agent(iid, "host resumed")
        elif f.kind == "config_skew" and id(f) in self.applied:
            self.skewed.pop(iid, None)
            self.restart_agent(iid, "config restored")
        elif f.kind == "member_removed" and id(f) in self.applied:
            self.stopped_by_operator[iid] -= 1
            for m in self.sc.members:
                if self.skewed.get(m) == (iid,):
                    del self.skewed[m]
                    self.restart_agent(m, f"config with {iid} again")
            self.start_agent(iid, "added back to the group")
        elif f.kind in ("second_process", "agent_once"):
            for run in [r for r in self.extra if r.iid == iid]:
                self.kill_process(run, "ended")
        elif f.kind == "drain":
            self.operator.set_request(DRAIN_PREFIX + iid, "")
        elif f.kind == "sigterm" and id(f) in self.applied:
            self.stopped_by_operator[iid] -= 1
            run = self.running.get(iid)
            if run is not None and run.exited:
                del self.running[iid]
            if iid not in self.running:
                self.start_agent(iid, "systemctl start")
        elif f.kind == "pin":
            self.operator.set_request(PIN_PREFIX + f.table, "")

    def _sample(self) -> None:
        for iid, run in list(self.running.items()):
            if run.exited and self.stopped_by_operator[iid] <= 0:
                del self.running[iid]  # a drain that timed out: systemd starts it again
                self.start_agent(iid, "restarted after exiting")
        self.checker.sample(SAMPLE)
        self.k.at(self.k.now + SAMPLE, self._sample)

    # ------------------------------------------------------------- checks
    def live_problems(self) -> list[str]:
        """Why the group is not yet back to normal: every route table at its healthy home, held by it."""
        out = []
        for rt, home in sorted(self.homes.items()):
            target = self.cloud.target(rt)
            r = self.store.raw_get(GROUP, "route#" + rt)
            run = self.running.get(target)
            session = run.agent.coordinator.session if run is not None else None
            m = self.store.raw_get(GROUP, "member#" + target)
            problems = []
            if target != home:
                problems.append(f"points at {target or 'nothing'}, not its home {home}")
            if not self.forwards(target):
                problems.append(f"{target} does not forward ({self.state.get(target)})")
            if run is None or session is None:
                problems.append(f"{target} has no running agent with a session")
            elif r is None or (r.get("owner"), r.get("owner_session")) != (target, session.session):
                problems.append(f"the route item is held by {r and r.get('owner')}, not {target}'s session")
            elif m is None or m.get("state") != MEMBER_ALIVE or m.get("session") != session.session:
                problems.append(f"{target}'s member item is not its live session")
            if rt in self.egress and self.cloud.eip_holder(rt) != target:
                problems.append(f"its Elastic IP is with {self.cloud.eip_holder(rt) or 'nobody'}, not {target}")
            if problems:
                out.append(f"{rt} " + "; ".join(problems))
        return out

    def check_end(self) -> None:
        self.checker.finish()
        nfaults = len(self.sc.faults)
        for rt in sorted(self.homes):
            strays = self.checker.stray_changes[rt]
            changes = self.checker.route_changes[rt]
            if changes - strays > 2 * nfaults:
                self.checker.violation(f"{rt} changed {changes} times for {nfaults} faults (flapping)", "c")
            moves = self.checker.address_changes[rt]
            if moves - strays > 2 * nfaults:
                self.checker.violation(f"{rt}'s Elastic IP moved {moves} times for {nfaults} faults (flapping)", "e")
        for problem in self.live_problems():
            self.checker.violation(f"not back to normal within the bound after the faults: {problem}", "b")
        moved = sum(self.checker.route_changes.values()) + sum(self.checker.address_changes.values())
        if nfaults == 0 and (moved or self.checker.stops or self.checker.starts):
            self.checker.violation(f"no faults, yet {moved} route changes, {self.checker.stops} stops", "c")


class SimProbes:
    def __init__(self, world: World, me: str) -> None:
        self.w = world
        self.me = me

    def snapshot(self) -> dict[str, PeerProbe]:
        return {b: self.w.probe(self.me, b) for b in self.w.sc.members if b != self.me}


class SimHealth:
    """The self check: it sees broken forwarding on the host; it cannot see lost egress (no egress targets)."""

    def __init__(self, world: World, me: str) -> None:
        self.w = world
        self.me = me

    def check(self, now: float, reaches: tuple[str, ...] = ()) -> Health:
        ok = self.me not in self.w.broken
        return Health(ok, {"ip_forward": ok}, reaches, "" if ok else "forwarding broken")


SETTLE = 2.0  # the group must stay back to normal this long before a run ends early
NO_FAULT_RUN = 6.0


def run(sc: Scenario, end: float | None = None, *, first_violation: bool = False) -> Result:
    """Run one scenario and check it.

    The run goes on past the heal time (the end of the last fault) until the group
    has been back to normal (every route table at its healthy home, held by it)
    for ``SETTLE`` seconds, or until the liveness bound runs out (a violation).
    ``end`` forces a fixed end instead; ``first_violation`` ends the run at the first
    violation (a pass/fail answer costs less; the replay runs the whole seed).
    """
    world = World(sc)
    heal = max(sc.heal_time, NO_FAULT_RUN)
    deadline = end if end is not None else heal + sc.liveness_bound()
    agent_log = logging.getLogger("nat_ha")
    level = agent_log.level
    agent_log.setLevel(logging.CRITICAL + 1)
    error = ""
    recovered = -1.0
    try:
        world.refresh_reach()
        world.schedule()
        for m in sc.members:
            world.k.at(world.rng.uniform(0.0, 0.3), lambda m=m: world.start_agent(m, "boot"))
        world.k.at(SAMPLE, world._sample)
        until = heal if end is None else end
        for _ in range(100_000):  # bounded: until / 1 s steps
            if world.k.now >= until or (first_violation and world.checker.violations):
                break
            world.k.run_until(min(until, world.k.now + 1.0))
        ok_since: float | None = None
        for _ in range(10_000):  # bounded: deadline / 0.25 steps
            if world.k.now >= deadline or (first_violation and world.checker.violations):
                break
            world.k.run_until(min(deadline, world.k.now + 0.25))
            if world.live_problems():
                ok_since = None
                continue
            ok_since = world.k.now if ok_since is None else ok_since
            if recovered < 0:
                recovered = ok_since - heal
            if end is None and world.k.now - ok_since >= SETTLE:
                break
        world.check_end()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        world.k.shutdown()
        agent_log.setLevel(level)
    c = world.checker
    return Result(
        sc.seed,
        sc,
        c.violations,
        world.trace,
        dict(c.route_changes),
        c.stops,
        c.starts,
        world.k.steps,
        world.k.now,
        error,
        recovered,
        len(c.strays),
        [s.corrected - s.bound for s in c.strays if s.corrected >= 0],
        c.outage_samples,
        c.late_sends,
        c.iam_refusals,
        world.freezes_triggered,
        dict(c.by_invariant),
        c.max_cycle,
        c.mismatch_samples,
        dict(c.address_changes),
        c.mismatch_throttled,
        c.outage_throttled,
        c.gateway_samples,
        [s.corrected - s.landed for s in c.strays if s.corrected >= 0],
        c.healthy_nat_stops,
        c.healthy_home_moves,
        world.clock_pauses,
        len(c.late_arrivals),
        world.cloud.throttled_s,
        dict(world.cloud.refused),
        c.outage_tag_propagation,
        c.mismatch_tag_propagation,
        c.stops_after_send_recovery,
        c.outage_slow_store_seconds,
        c.slow_store_outage_samples,
    )


def run_seed(seed: int, *, first_violation: bool = False) -> Result:
    return run(draw(seed), first_violation=first_violation)
