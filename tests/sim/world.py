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

import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from botocore.exceptions import ClientError

from agent.aws.ec2 import Ec2
from agent.config import Config, Ec2Config, EgressTable, Member, ProbeConfig
from agent.cycle import Agent
from agent.decide import PeerProbe
from agent.service import ServiceLoop
from coordinator.clock import FakeClock
from coordinator.items import DRAIN_PREFIX, MEMBER_ALIVE, PIN_PREFIX, Attrs, Health
from coordinator.leases import Coordinator
from coordinator.memory import MemoryStore
from tests.sim.aws import Call, SimCloud, SimEc2Client, arn
from tests.sim.checks import Checker
from tests.sim.kernel import Kernel, Proc
from tests.sim.scenario import (
    BOOT_DELAY,
    GLOBAL_KINDS,
    OPERATOR_KINDS,
    START_DELAY,
    STOP_DELAY,
    STORE_LATE_MAX,
    Fault,
    Scenario,
    draw,
)

GROUP = "sim"
GATEWAY = "nat-0sim"  # the last-resort NAT gateway: a managed service, it always forwards
PROBE_DOWN_AFTER = 0.6  # 3 lost probes of 0.2 s
PROBE_UP_AFTER = 0.2
STORE_LATENCY = (0.001, 0.006)  # per half call
STORE_SLOW = (0.02, 0.2)  # per half call: past the client's 0.15 s deadline at times
SAMPLE = 0.05
OBSERVING = 2.0  # an agent must have run this long to judge a silent peer (the default silent_owner_after)
DRAIN_TIMEOUT = 15.0
MAX_CYCLES = 1_000_000
_NUMBERS = re.compile(r"\d+\.\d+ s")  # ages in decision lines: a new trace line only when the rest changes


class AgentClock:
    """One host's monotonic clock: a FakeClock driven from global virtual time at a skewed rate.

    ``stalls`` are intervals of global time during which the clock stands still (and
    does not catch up afterwards). A frozen VM's clock keeps running (kvmclock).
    """

    def __init__(self, kernel: Kernel, rate: float, start: float) -> None:
        self.kernel = kernel
        self.rate = rate
        self.fake = FakeClock(start=start)
        self.synced = kernel.now
        self.stalls: list[tuple[float, float]] = []

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
    stop_races: int = 0
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
        self.k = Kernel()
        self.store = MemoryStore(
            self._store_fault,
            delay_hook=self._store_delay,
            apply_hook=self._store_applied,
            send_hook=self._store_sent,
            defer_hook=self._store_defer,
        )
        self.trace: list[str] = []
        problems = self.t.problems(ProbeConfig(interval=0.2, timeout=0.15))
        if problems:
            raise ValueError(f"the simulated timing is not a valid configuration: {problems}")
        self.homes = {rt: m for m, rts in sc.route_tables.items() for rt in rts}
        eni = {m: f"eni-{m[2:]}" if sc.egress else "" for m in sc.members}
        self.members = tuple(
            Member(m, f"10.0.{i}.10", sc.route_tables[m], eni=eni[m]) for i, m in enumerate(sc.members)
        )
        # egress_ip = follow: one Elastic IP per table; every member has an address for every table
        # on its ENI (assigned ahead of time, as the stacks do); a home's first table uses its primary.
        self.egress: dict[str, EgressTable] = {}
        self.public_ip: dict[str, str] = {}  # allocation id -> public address
        self.alloc_table: dict[str, str] = {}
        self.eni_owner = {e: m for m, e in eni.items() if e}
        self.eni_addresses: dict[str, set[str]] = {e: {f"10.0.{i}.10"} for i, e in enumerate(eni.values()) if e}
        if sc.egress:
            for k, rt in enumerate(sorted(self.homes, key=lambda r: int(r.split("-")[1]))):
                home = self.homes[rt]
                addresses = []
                for i, m in enumerate(sc.members):
                    primary = m == home and sc.route_tables[m][0] == rt
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

    # ------------------------------------------------------------ helpers
    def log(self, line: str) -> None:
        self.trace.append(f"{self.k.now:8.3f} {line}")

    def sname(self, session: str) -> str:
        if not session:
            return "-"
        return self.session_names.setdefault(session, f"s{len(self.session_names) + 1}")

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

    def unreachable_aws(self, iid: str) -> bool:
        return self.faulty("lost_egress", iid) is not None

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

    def healthy_member(self, iid: str, *, observing: bool = False) -> bool:
        """Could serve route tables now: forwards, its agent runs with a session and reaches AWS, not leaving.

        ``observing``: and its agent has run long enough to judge a silent peer (a process
        that has just started has seen nobody's heartbeat change yet).
        """
        run = self.running.get(iid)
        if run is None or run.exited or not self.forwards(iid) or run.proc.hung_until > self.k.now:
            return False
        if observing and self.k.now - run.started < OBSERVING:
            return False
        if self.faulty("store_isolated", iid) or self.faulty("ec2_denied", iid) or run.loop.stopping:
            return False
        agent = run.agent
        if agent.coordinator.session is None or agent.coordinator.remaining() <= 0 or agent.draining:
            return False
        item = self.store.raw_get(GROUP, DRAIN_PREFIX + iid)
        return not (item and item.get("owner") == "on")

    def aws_works(self) -> bool:
        """No impairment of AWS itself (for everyone): DynamoDB down, slow or throttling; EC2 failing,
        throttling, slow or applying writes late. (b)'s clock stops meanwhile: no AWS-based failover
        can be faster than AWS; the outage is still measured."""
        impaired = (
            "store_down", "store_slow", "store_throttled", "store_ambiguous", "store_late",
            "ec2_errors", "ec2_busy", "ec2_slow", "ec2_late",
        )  # fmt: skip
        if any(self.faulty(kind) for kind in impaired):
            return False
        # Late writes go on landing after a lateness fault ends (a late heartbeat resets every
        # observer's silence clock; a late route write lands up to the horizon later).
        tails = {"store_late": self.t.store_timeout + STORE_LATE_MAX, "ec2_late": self.t.ec2_apply_horizon + 1.0}
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
    def freeze_point(self, iid: str, point: str, p: Proc) -> None:
        """A freeze armed for this instant of a call (between the lease check and the send, ...) happens now."""
        armed = self.armed.get(iid)
        if not armed:
            return
        for f in armed:
            if f.point == point and self.k.now >= f.start:
                armed.remove(f)
                self.freezes_triggered += 1
                self.fault_started[iid] = self.k.now
                self.log(f"FREEZE {f.kind} of {iid} at {point} for {f.duration:.3f} s")
                self._freeze(f, iid, f.duration, only=p)
                p.wait(0.0, "frozen")
                return

    def _freeze(self, f: Fault, iid: str, seconds: float, only: Proc | None = None) -> None:
        procs = [r.proc for r in [*self.running.values(), *self.extra] if r.iid == iid]
        if f.kind == "vm_freeze":
            self.vm_frozen[iid] += 1
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
            self.start_agent(iid, "VM resumed")

    # -------------------------------------------------------------- store
    def _store_fault(self, op: str, group: str, item: str) -> str | None:
        me = self.caller()
        if not me:
            return None  # the operator's commands (kernel events)
        if self.faulty("store_down") or self.faulty("store_isolated", me) or self.unreachable_aws(me):
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
        return None

    def _store_delay(self, op: str, group: str, item: str, phase: str) -> None:
        p = self.k.current
        if p is None:
            return
        lo, hi = STORE_SLOW if self.faulty("store_slow") else STORE_LATENCY
        if phase == "request":
            p.started = self.k.now  # type: ignore[attr-defined]
            p.wait(self.rng.uniform(lo, hi), "store")
            if op in ("query", "get"):
                self.read_at[p.name] = self.k.now  # the store reads the items now (the read's linearization point)
            return
        iid = p.name.split("#")[0]
        self.freeze_point(iid, "store_call", p)
        p.wait(self.rng.uniform(lo, hi), "store")
        deadline = p.started + self.t.store_timeout * self.t.store_attempts  # type: ignore[attr-defined]
        if self.k.now > deadline + 1e-9 and self.rng.random() < 0.5:
            # The client's deadline passed first (or, after a freeze, the timer won the race).
            from coordinator.store import OutcomeUnknown, Unavailable

            if op == "put":
                raise OutcomeUnknown("simulated: no answer before the deadline")
            raise Unavailable("simulated: no answer before the deadline")

    def _store_sent(self, group: str, attrs: Attrs) -> None:
        me = self.caller()
        key = str(attrs["item"])
        self.token_writer[str(attrs.get("token"))] = me
        if me and key == "member#" + me and attrs.get("state") == MEMBER_ALIVE and not attrs.get("expired_by"):
            self.pending_send[str(attrs["token"])] = (self.k.now, self.clocks[me].monotonic())

    def _store_defer(self, apply: Callable[[], object]) -> None:
        self.k.at(self.k.now + self.t.store_timeout + self.rng.uniform(0.0, STORE_LATE_MAX), lambda: apply() and None)

    def _store_applied(self, group: str, attrs: Attrs) -> None:
        key = str(attrs["item"])
        me = self.caller() or self.token_writer.get(str(attrs.get("token")), "")  # a late write: its sender
        if key.startswith("member#"):
            who = key[len("member#") :]
            if not attrs.get("expired_by"):
                self.self_write_at[who] = self.k.now
                sent = self.pending_send.get(str(attrs.get("token")))
                if attrs.get("state") == MEMBER_ALIVE and sent is not None:
                    k = (who, str(attrs["session"]))
                    self.sent_at[k] = max(self.sent_at.get(k, sent), sent)
            else:
                self.log(f"{me or 'late write'}: expired {who} (session {self.sname(str(attrs['session']))})")
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
                left = self.session_left(before[0], before[1])
                if left > 0:
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
        return sent[1] + self.t.lease - self.clocks[who].monotonic()

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
            timing=self.t,
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
        coordinator = Coordinator(self.store, GROUP, iid, clock, self.t.lease, token_factory=self.token)
        client = SimEc2Client(self, iid, name)
        ec2 = Ec2("sim", client=client, members={m.instance_id: m for m in config.members}, egress=config.egress())
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
        loop = ServiceLoop(agent, DRAIN_TIMEOUT, clock.monotonic)
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
                    self.log(f"{name} [{step.decision.kind}] {step.decision.summary}")
                if step.exit_code is not None:
                    self.log(f"{name} exited ({step.exit_code})")
                    run.exited = True
                    return
                jitter = self.rng.uniform(0.0, self.sc.jitter * self.t.cycle_interval)
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

    def refresh_reach(self) -> None:
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
            if self.state[iid] == "running" and iid not in self.hung:
                self.extra.append(self._spawn(iid, "a second agent for the same instance", main=False))
        elif f.kind == "agent_once":
            if self.state[iid] == "running" and iid not in self.hung:
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

    def _fault_end(self, f: Fault) -> None:
        self.log(f"FAULT end   {f.describe()}")
        self.active.remove(f)
        self.ended.append(f)
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
            changes = self.checker.route_changes[rt]
            if changes > 2 * nfaults:
                self.checker.violation(f"{rt} changed {changes} times for {nfaults} faults (flapping)", "c")
            moves = self.checker.address_changes[rt]
            if moves > 2 * nfaults:
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


def run(sc: Scenario, end: float | None = None) -> Result:
    """Run one scenario and check it.

    The run goes on past the heal time (the end of the last fault) until the group
    has been back to normal (every route table at its healthy home, held by it)
    for ``SETTLE`` seconds, or until the liveness bound runs out (a violation).
    ``end`` forces a fixed end instead.
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
        world.k.run_until(heal if end is None else end)
        ok_since: float | None = None
        for _ in range(10_000):  # bounded: deadline / 0.25 steps
            if world.k.now >= deadline:
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
        c.stop_races,
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
    )


def run_seed(seed: int) -> Result:
    return run(draw(seed))
