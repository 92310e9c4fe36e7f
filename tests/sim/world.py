"""The simulated world: a NAT group of real agents against an in-memory store and EC2.

Everything here is a test double *around* the real code: ``agent.cycle.Agent``
(observe -> ``agent.decide.decide`` -> act) and ``coordinator.leases.Coordinator``
run unchanged, each agent on its own (skewed) clock, against one shared
:class:`~coordinator.memory.MemoryStore` whose hooks inject faults and spend
virtual time inside calls, and a fake EC2 with instance transition delays and
eventually consistent route reads. The invariants are checked at the moment of
every side effect (route write, stop, store write) and at the end of the run.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from agent.aws.ec2 import Ec2Error
from agent.aws.fence import Fence
from agent.config import Config, Member, ProbeConfig
from agent.cycle import Agent
from agent.decide import Ec2Route, PeerProbe
from coordinator.clock import FakeClock
from coordinator.items import MEMBER_ALIVE, Attrs, Health
from coordinator.leases import Coordinator
from coordinator.memory import MemoryStore
from tests.sim.kernel import Kernel, Proc
from tests.sim.scenario import BOOT_DELAY, EC2_STALE_MAX, START_DELAY, STOP_DELAY, Fault, Scenario, draw

GROUP = "sim"
PROBE_DOWN_AFTER = 0.6  # 3 lost probes of 0.2 s
PROBE_UP_AFTER = 0.2
STORE_LATENCY = (0.002, 0.012)
STORE_SLOW = (0.02, 0.15)  # per half call: <= store_attempts x store_timeout in all
EC2_LATENCY = (0.01, 0.08)
EC2_SLOW = (0.1, 0.6)  # whole call, <= ec2_timeout
EC2_STALE_BASE = 0.05
MAX_CYCLES = 1_000_000
_NUMBERS = re.compile(r"\d+\.\d s")  # ages in decision lines: a new trace line only when the rest changes


class AgentClock:
    """One host's monotonic clock: a FakeClock driven from global virtual time at a skewed rate.

    ``stalls`` are intervals of global time during which the clock stands still (and
    does not catch up afterwards).
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
    """One agent process (an incarnation): a new one after every crash or reboot."""

    iid: str
    agent: Agent
    proc: Proc
    incarnation: int


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
    recovered_after: float = -1.0  # seconds from the heal time until the group was back to normal
    stop_races: int = 0

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
        self.rng = random.Random(sc.seed * 1_000_003 + 17)
        self.k = Kernel()
        self.store = MemoryStore(self._store_fault, delay_hook=self._store_delay, apply_hook=self._store_applied)
        self.trace: list[str] = []
        self.violations: list[str] = []
        problems = self.t.problems(ProbeConfig(interval=0.2, timeout=0.15))
        if problems:
            raise ValueError(f"the simulated timing is not a valid configuration: {problems}")
        self.homes = {rt: m for m, rts in sc.route_tables.items() for rt in rts}
        self.members = tuple(Member(m, f"10.0.{i}.10", sc.route_tables[m]) for i, m in enumerate(sc.members))
        # instances
        self.state: dict[str, str] = {m: "running" for m in sc.members}
        self.hung: set[str] = set()
        self.broken: set[str] = set()
        self.crashed: set[str] = set()
        self.running: dict[str, Running] = {}
        self.incarnations: Counter[str] = Counter()
        self.clocks = {m: AgentClock(self.k, sc.rates[m], 1000.0 + 100 * i) for i, m in enumerate(sc.members)}
        self.active: list[Fault] = []
        # EC2 route tables: history of (applied at, target)
        self.route_hist: dict[str, list[tuple[float, str]]] = {rt: [(-1e9, home)] for rt, home in self.homes.items()}
        # invariant bookkeeping
        # (global, holder-local) time each agent sent its last own member write, and per session
        # the one of its last applied renewal: the session's interval in true time runs from
        # there until the holder's own clock reaches local + lease.
        self.pending_send: dict[str, tuple[float, float]] = {}
        self.sent_at: dict[tuple[str, str], tuple[float, float]] = {}
        self.self_write_at: dict[str, float] = {}
        self.term_owner: dict[tuple[str, int], tuple[str, str]] = {}
        self.term_writers: dict[tuple[str, int], set[str]] = {}
        self.route_changes: Counter[str] = Counter()
        self.stops = 0
        self.starts = 0
        self.reach: dict[tuple[str, str], tuple[bool, float]] = {}
        self.read_at: dict[str, float] = {}
        self.holder: dict[str, tuple[str, str]] = {}
        self.stop_races = 0
        self.last_summary: dict[str, str] = {}
        self.sessions: dict[str, str] = {}
        self.session_names: dict[str, str] = {}
        self.tokens = 0

    # ------------------------------------------------------------ helpers
    def log(self, line: str) -> None:
        self.trace.append(f"{self.k.now:8.3f} {line}")

    def violation(self, what: str) -> None:
        self.violations.append(f"t={self.k.now:.3f}: {what}")
        self.log(f"!!! VIOLATION {what}")

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

    # -------------------------------------------------------------- store
    def _store_fault(self, op: str, group: str, item: str) -> str | None:
        me = self.caller()
        if self.faulty("store_down") or self.faulty("store_isolated", me):
            return "unavailable"
        f = self.faulty("store_throttled")
        if f is not None and self.rng.random() < f.rate:
            return "throttled"
        f = self.faulty("store_ambiguous")
        if op == "put" and f is not None and self.rng.random() < f.rate:
            return self.rng.choice(("lost_reply", "retried"))
        return None

    def _store_delay(self, op: str, group: str, item: str, phase: str) -> None:
        p = self.k.current
        if p is None:
            return
        me = p.name.split("#")[0]
        if phase == "request" and op == "put" and item == "member#" + me:
            self.pending_send[me] = (self.k.now, self.clocks[me].monotonic())  # the holder's t0
        lo, hi = STORE_SLOW if self.faulty("store_slow") else STORE_LATENCY
        p.wait(self.rng.uniform(lo, hi), "store")
        if phase == "request" and op in ("query", "get"):
            self.read_at[me] = self.k.now  # the store reads the items now (the read's linearization point)

    def _store_applied(self, group: str, attrs: Attrs) -> None:
        key = str(attrs["item"])
        me = self.caller()
        if key.startswith("member#"):
            who = key[len("member#") :]
            if who == me and attrs.get("expired_by", "") == "":
                self.self_write_at[who] = self.k.now
                if attrs.get("state") == MEMBER_ALIVE:
                    now = (self.k.now, self.clocks[who].monotonic())
                    self.sent_at[(who, str(attrs["session"]))] = self.pending_send.get(who, now)
            elif attrs.get("expired_by"):
                self.log(f"{me}: expired {who} (session {self.sname(str(attrs['session']))})")
        elif key.startswith("route#"):
            rt = key[len("route#") :]
            term = int(attrs["term"])
            holder = (str(attrs.get("owner", "")), str(attrs.get("owner_session", "")))
            seen = self.term_owner.setdefault((rt, term), holder)
            if seen != holder:
                self.violation(f"{rt} term {term} held by {seen} and by {holder}")
            before = self.holder.get(rt, ("", ""))
            self.holder[rt] = holder
            owner_run = self.running.get(before[0])
            owner_session = owner_run.agent.coordinator.session if owner_run is not None else None
            if before[0] and before != holder and me != before[0] and owner_session is not None \
                    and owner_session.session == before[1]:  # fmt: skip
                # Taken (not handed over) from a session a live (possibly hung) process still
                # holds: it must have run out, or two agents may act on the table at once. A
                # session whose process died or dropped it cannot act any more.
                left = self.session_left(before[0], before[1])
                if left > 0:
                    self.violation(
                        f"{me} took {rt} (term {term}) from {before[0]} whose session {self.sname(before[1])} "
                        f"is still valid ({left:.3f} s more on its holder's clock)"
                    )
            self.log(f"{me}: {rt} term {term} -> {holder[0] or 'nobody'} ({self.sname(holder[1])})")

    def session_left(self, who: str, session: str) -> float:
        """Seconds (on the holder's clock) its session has left: its last applied renewal's t0 + lease - now.

        This is the session's validity mapped to true time: from the global instant the
        renewal was sent until the holder's clock (skewed, stalled) reaches t0 + lease.
        """
        sent = self.sent_at.get((who, session))
        if sent is None:
            return -1.0
        return sent[1] + self.t.lease - self.clocks[who].monotonic()

    # ---------------------------------------------------------------- EC2
    def route_view(self, rt: str, stale: bool) -> Ec2Route:
        hist = self.route_hist[rt]
        lag = self.rng.uniform(0, EC2_STALE_MAX if self.faulty("ec2_stale") else EC2_STALE_BASE) if stale else 0.0
        target = hist[0][1]
        for t, tgt in hist:
            if t <= self.k.now - lag:
                target = tgt
        if not target:
            return Ec2Route("", "missing")
        return Ec2Route(target, "active" if self.state.get(target) == "running" else "blackhole")

    def write_route(self, caller: str, rt: str, target: str) -> None:
        r = self.store.raw_get(GROUP, "route#" + rt)
        run = self.running.get(caller)
        session = self.sessions.get(caller, "")
        if run is not None and run.agent.coordinator.session is not None:
            session = run.agent.coordinator.session.session
        owner = (str(r.get("owner", "")), str(r.get("owner_session", ""))) if r else ("", "")
        term = int(r["term"]) if r else 0
        if owner != (caller, session):
            self.violation(
                f"{caller} ({self.sname(session)}) wrote {rt} -> {target} but the holder is "
                f"{owner[0] or 'nobody'} ({self.sname(owner[1])}), term {term}"
            )
        sent = self.sent_at.get((caller, session))
        if sent is None or self.session_left(caller, session) <= 0:
            self.violation(
                f"{caller} wrote {rt} -> {target} after its session {self.sname(session)} ran out "
                f"(last renewal sent at {round(sent[0], 3) if sent else 'never'}, lease {self.t.lease} s)"
            )
        writers = self.term_writers.setdefault((rt, term), set())
        writers.add(caller)
        if len(writers) > 1:
            self.violation(f"{rt} written by {sorted(writers)} in the same term {term}")
        before = self.route_hist[rt][-1][1]
        self.route_hist[rt].append((self.k.now, target))
        if before != target:
            self.route_changes[rt] += 1
            self.log(f"{caller}: EC2 {rt}: {before} -> {target} (term {term})")

    def stop_instance(self, caller: str, target: str) -> None:
        last = self.self_write_at.get(target, -1e9)
        read = self.read_at.get(caller, -1e9)
        if last <= read and read - last < self.t.lease:
            self.violation(
                f"{caller} stopped {target}, which heartbeated {self.k.now - last:.3f} s ago "
                f"(before {caller}'s last read of the group, {self.k.now - read:.3f} s ago)"
            )
        elif self.k.now - last < self.t.lease:
            # The target wrote after the stopper's last read: StopInstances has no condition, so this
            # window (one store reply plus one EC2 call) cannot be closed; counted, not a violation.
            self.stop_races += 1
            self.log(f"(race) {target} wrote {self.k.now - last:.3f} s before this stop, after {caller}'s last read")
        if self.state[target] in ("stopping", "stopped"):
            return
        if self.state[target] == "pending":
            raise Ec2Error("stop_instances", "IncorrectInstanceState", f"{target} is pending")
        self.stops += 1
        self.log(f"{caller}: EC2 stop {target}")
        self.state[target] = "stopping"
        self.hung.discard(target)
        self.kill_agent(target, "instance stopping")
        self.refresh_reach()
        self.k.at(self.k.now + STOP_DELAY, lambda: self._set_state(target, "stopped"))

    def start_instance(self, caller: str, target: str) -> None:
        if self.state[target] in ("running", "pending"):
            return
        if self.state[target] == "stopping":
            raise Ec2Error("start_instances", "IncorrectInstanceState", f"{target} is stopping")
        self.starts += 1
        self.log(f"{caller}: EC2 start {target}")
        self.state[target] = "pending"
        self.k.at(self.k.now + START_DELAY, lambda: self._set_state(target, "running"))
        self.k.at(self.k.now + START_DELAY + BOOT_DELAY, lambda: self.start_agent(target, "booted"))

    def _set_state(self, target: str, state: str) -> None:
        self.state[target] = state
        self.refresh_reach()
        self.log(f"EC2 {target} is {state}")

    # ------------------------------------------------------------- agents
    def start_agent(self, iid: str, why: str) -> None:
        if iid in self.running or self.state[iid] != "running" or iid in self.hung or iid in self.crashed:
            return
        self.incarnations[iid] += 1
        n = self.incarnations[iid]
        clock = self.clocks[iid]
        config = Config(group=GROUP, instance_id=iid, members=self.members, timing=self.t)
        coordinator = Coordinator(self.store, GROUP, iid, clock, self.t.lease, token_factory=self.token)
        agent = Agent(
            config,
            coordinator,
            SimEc2(self, iid),
            SimProbes(self, iid),
            SimHealth(self, iid),
            clock,
            on_event=lambda kind, data: self._event(iid, kind, data),
        )

        def body(p: Proc) -> None:
            next_local = clock.monotonic()
            for _ in range(MAX_CYCLES):  # the kernel ends the process long before
                decision = agent.run_cycle()
                key = _NUMBERS.sub("#", decision.summary)
                if key != self.last_summary.get(iid):
                    self.last_summary[iid] = key
                    self.log(f"{iid}#{n} [{decision.kind}] {decision.summary}")
                if agent.coordinator.session is not None:
                    self.sessions[iid] = agent.coordinator.session.session
                jitter = self.rng.uniform(-self.sc.jitter, self.sc.jitter)
                next_local += self.t.cycle_interval * (1 + jitter)
                p.wait(max(0.0, next_local - clock.monotonic()) / clock.rate, "idle")

        proc = self.k.spawn(f"{iid}#{n}", body)
        self.running[iid] = Running(iid, agent, proc, n)
        self.log(f"{iid}#{n} process started ({why})")

    def kill_agent(self, iid: str, why: str) -> None:
        run = self.running.pop(iid, None)
        if run is not None:
            run.proc.kill()
            self.log(f"{iid}#{run.incarnation} process killed ({why})")

    def _event(self, iid: str, kind: str, data: dict[str, object]) -> None:
        run = self.running.get(iid)
        if kind == "session_started" and run is not None and run.agent.coordinator.session is not None:
            self.sessions[iid] = run.agent.coordinator.session.session
        if kind in ("session_started", "session_lost", "peer_expired", "peer_stopping", "peer_starting"):
            self.log(f"{iid}: {kind} {data if data else ''}".rstrip())

    # ------------------------------------------------------------- probes
    def dataplane_ok(self, iid: str) -> bool:
        return self.state[iid] == "running" and iid not in self.hung and iid not in self.broken

    def reachable(self, a: str, b: str) -> bool:
        if not self.dataplane_ok(b):
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
        self._fault_effect(f)
        self.refresh_reach()

    def _fault_effect(self, f: Fault) -> None:
        if f.kind == "crash":
            self.crashed.add(f.target)
            self.kill_agent(f.target, "crash")
        elif f.kind == "hang":
            run = self.running.get(f.target)
            if run is not None:
                run.proc.hang(f.duration)
        elif f.kind == "nat_down":
            if self.state[f.target] == "running":
                self.hung.add(f.target)
                self.kill_agent(f.target, "instance hung")
        elif f.kind == "dataplane_down":
            self.broken.add(f.target)
        elif f.kind == "clock_stall":
            self.clocks[f.target].stalls.append((f.start, f.end))

    def _fault_end(self, f: Fault) -> None:
        self.log(f"FAULT end   {f.describe()}")
        self.active.remove(f)
        self._fault_cleared(f)
        self.refresh_reach()

    def _fault_cleared(self, f: Fault) -> None:
        if f.kind == "crash":
            if not any(x.kind == "crash" and x.target == f.target for x in self.active):
                self.crashed.discard(f.target)
                self.start_agent(f.target, "restarted after crash")
        elif f.kind == "nat_down":
            if f.target in self.hung and not self.faulty("nat_down", f.target):
                self.hung.discard(f.target)
                self.start_agent(f.target, "instance recovered")
        elif f.kind == "dataplane_down" and not self.faulty("dataplane_down", f.target):
            self.broken.discard(f.target)

    # ------------------------------------------------------------- checks
    def live_problems(self) -> list[str]:
        """Why the group is not yet back to normal: every route table at its healthy home, held by it."""
        out = []
        for rt, home in sorted(self.homes.items()):
            target = self.route_hist[rt][-1][1]
            r = self.store.raw_get(GROUP, "route#" + rt)
            run = self.running.get(target)
            session = run.agent.coordinator.session if run is not None else None
            m = self.store.raw_get(GROUP, "member#" + target)
            problems = []
            if target != home:
                problems.append(f"points at {target or 'nothing'}, not its home {home}")
            if not self.dataplane_ok(target):
                problems.append(f"{target} does not forward ({self.state.get(target)})")
            if run is None or session is None:
                problems.append(f"{target} has no running agent with a session")
            elif r is None or (r.get("owner"), r.get("owner_session")) != (target, session.session):
                problems.append(f"the route item is held by {r and r.get('owner')}, not {target}'s session")
            elif m is None or m.get("state") != MEMBER_ALIVE or m.get("session") != session.session:
                problems.append(f"{target}'s member item is not its live session")
            if problems:
                out.append(f"{rt} " + "; ".join(problems))
        return out

    def check_end(self) -> None:
        nfaults = len(self.sc.faults)
        for rt in sorted(self.homes):
            changes = self.route_changes[rt]
            if changes > 2 * nfaults:
                self.violation(f"{rt} changed {changes} times for {nfaults} faults (flapping)")
        for problem in self.live_problems():
            self.violation(f"liveness: {problem}")
        if nfaults == 0 and (sum(self.route_changes.values()) or self.stops or self.starts):
            self.violation(f"no faults, yet {sum(self.route_changes.values())} route changes, {self.stops} stops")


class SimEc2:
    """The Ec2Like of one agent: bounded virtual latency, injected errors, eventually consistent reads."""

    def __init__(self, world: World, me: str) -> None:
        self.w = world
        self.me = me

    def _call(self, op: str, apply: Callable[[], object], write: bool = False) -> object:
        w = self.w
        p = w.k.current
        assert p is not None
        lo, hi = EC2_SLOW if w.faulty("ec2_slow") else EC2_LATENCY
        latency = w.rng.uniform(lo, hi)
        error = ""
        f = w.faulty("ec2_throttled")
        if f is not None and w.rng.random() < f.rate:
            error = "RequestLimitExceeded"
        f = w.faulty("ec2_errors")
        if not error and f is not None and w.rng.random() < f.rate:
            error = "InternalError"
        at = w.rng.random()  # where inside the call the server acts on it
        p.wait(latency * at, "ec2")
        applied = error == "" or (error == "InternalError" and write and w.rng.random() < 0.5)
        result = apply() if applied else None
        p.wait(latency * (1 - at), "ec2")
        if error:
            raise Ec2Error(op, error, "injected")
        return result

    def _describe(self, rts: list[str]) -> dict[str, Ec2Route]:
        out = self._call("describe_route_tables", lambda: {rt: self.w.route_view(rt, True) for rt in rts})
        assert isinstance(out, dict)
        return out

    def routes(self, route_tables: list[str]) -> dict[str, Ec2Route]:
        return self._describe(sorted(route_tables))

    def attach_fence(self, fence: Fence) -> None:
        self.fence = fence

    def point_route(self, route_table: str, instance: str, *, missing: bool = False) -> str:
        op = "create_route" if missing else "replace_route"
        with self.fence.write("CreateRoute" if missing else "ReplaceRoute", route_table):
            self.fence.authorize("CreateRoute" if missing else "ReplaceRoute")
            self._call(op, lambda: self.w.write_route(self.me, route_table, instance), write=True)
        return "created" if missing else "replaced"

    def tag_holder(self, route_table: str, holder: str) -> None:
        raise AssertionError("the simulator runs without holder tags")

    def verify(self, route_table: str, instance: str, timeout: float = 2.0) -> bool:
        w = self.w
        p = w.k.current
        assert p is not None
        deadline = w.k.now + timeout
        delay = 0.05
        for _ in range(64):
            try:
                view = self._describe([route_table])[route_table]
                if view.target == instance and view.state != "missing":
                    return True
            except Ec2Error:
                pass
            if w.k.now + delay > deadline:
                return False
            p.wait(delay, "verify")
            delay = min(delay * 2, 0.4)
        return False

    def instance_states(self, instances: list[str]) -> dict[str, str]:
        out = self._call("describe_instances", lambda: {i: self.w.state[i] for i in instances})
        assert isinstance(out, dict)
        return out

    def stop(self, instance: str) -> None:
        with self.fence.write("StopInstances", instance):
            self.fence.authorize("StopInstances")
            self._call("stop_instances", lambda: self.w.stop_instance(self.me, instance), write=True)

    def start(self, instance: str) -> None:
        with self.fence.write("StartInstances", instance):
            self.fence.authorize("StartInstances")
            self._call("start_instances", lambda: self.w.start_instance(self.me, instance), write=True)


class SimProbes:
    def __init__(self, world: World, me: str) -> None:
        self.w = world
        self.me = me

    def snapshot(self) -> dict[str, PeerProbe]:
        return {b: self.w.probe(self.me, b) for b in self.w.sc.members if b != self.me}


class SimHealth:
    def __init__(self, world: World, me: str) -> None:
        self.w = world
        self.me = me

    def check(self, now: float, reaches: tuple[str, ...] = ()) -> Health:
        ok = self.w.dataplane_ok(self.me)
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
    return Result(
        sc.seed,
        sc,
        world.violations,
        world.trace,
        dict(world.route_changes),
        world.stops,
        world.starts,
        world.k.steps,
        world.k.now,
        error,
        recovered,
        world.stop_races,
    )


def run_seed(seed: int) -> Result:
    return run(draw(seed))
