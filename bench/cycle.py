"""CPU cost of one HA cycle in-process: logic, + metrics export, + /proc self checks.

    python bench/cycle.py --cycles 20000 [--procfs /proc] [--repeats 5]

Two real agents (agent.cycle.Agent + coordinator.leases.Coordinator) share a
coordinator.memory.MemoryStore and a FakeClock that advances one cycle interval
(0.35 s) per cycle; EC2 and probes are stubs that always agree (both peers up,
every route table at its home), so after a warm-up both agents are "holding".
Only the first agent's ``run_cycle`` is timed (``time.process_time``), in three
setups that differ by one thing each:

* ``logic``: no metrics, a fixed Health (what the self checker returned at start);
* ``+metrics``: the same with a prepared agent.metrics.Metrics (the export);
* ``+selfcheck``: the same with a real agent.host.selfcheck.SelfChecker reading
  ``--procfs`` every cycle (masquerade/forwarding rule checks off: they spawn
  iptables-save every ``rules_interval`` and are not what is measured here).

The figures are hot-loop costs (warm caches); a real agent, woken every 0.35 s,
pays more per cycle. Run it inside a network namespace with ip_forward=1 to
measure the healthy path (in a namespace where ip_forward is 0 every setup
measures the unhealthy path instead; the comparison stays fair):

    ip netns add bench && ip netns exec bench sysctl -qw net.ipv4.ip_forward=1 \
        && ip netns exec bench python bench/cycle.py; ip netns del bench
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.aws.fence import Fence
from agent.config import Config, Member, SelfCheckConfig
from agent.cycle import Agent, HealthLike, build_info
from agent.decide import Ec2Route, PeerProbe
from agent.host.selfcheck import SelfChecker
from agent.metrics import Metrics
from coordinator.clock import FakeClock
from coordinator.items import Health
from coordinator.leases import Coordinator
from coordinator.memory import MemoryStore

GROUP = "bench"
MEMBERS = (Member("i-a", "10.0.0.10", ("rtb-a",)), Member("i-b", "10.0.1.10", ("rtb-b",)))
HOMES = {rt: m.instance_id for m in MEMBERS for rt in m.route_tables}
WARMUP = 200
SETUPS = ("logic", "+metrics", "+selfcheck")


class StubEc2:
    """EC2 that routes every table to its home and never fails."""

    def routes(self, route_tables: list[str]) -> dict[str, Ec2Route]:
        return {rt: Ec2Route(HOMES[rt]) for rt in route_tables}

    def attach_fence(self, fence: Fence) -> None:
        self.fence = fence

    def point_route(self, route_table: str, instance: str, *, missing: bool = False) -> str:
        with self.fence.write("ReplaceRoute", route_table):
            self.fence.authorize("ReplaceRoute")
        return "replaced"

    def tag_holder(self, route_table: str, holder: str) -> None:
        raise AssertionError("the benchmark runs without holder tags")

    def instance_states(self, instances: list[str]) -> dict[str, str]:
        return dict.fromkeys(instances, "running")

    def stop(self, instance: str) -> None:
        raise AssertionError("nothing is stopped in this benchmark")

    def start(self, instance: str) -> None:
        raise AssertionError("nothing is started in this benchmark")


class StubProbes:
    """Every peer answers every probe."""

    def __init__(self, me: str) -> None:
        self.view = {m.instance_id: PeerProbe(True, 0, 10) for m in MEMBERS if m.instance_id != me}

    def snapshot(self) -> dict[str, PeerProbe]:
        return dict(self.view)


class FixedHealth:
    """Always the same Health (the logic-only setups)."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def check(self, now: float, reaches: tuple[str, ...] = ()) -> Health:
        return Health(self.health.healthy, dict(self.health.checks), reaches, self.health.detail)


def self_check_config(procfs: str) -> SelfCheckConfig:
    return SelfCheckConfig(masquerade=False, forwarding=False, procfs=procfs)


def run(setup: str, cycles: int, procfs: str) -> tuple[float, str]:
    """CPU ms per cycle of agent i-a in ``setup``, and its last decision kind."""
    clock = FakeClock()
    store = MemoryStore()
    start_health = SelfChecker(self_check_config(procfs)).check(0.0)
    agents: list[Agent] = []
    for m in MEMBERS:
        config = Config(group=GROUP, instance_id=m.instance_id, members=MEMBERS)
        metrics: Metrics | None = None
        health: HealthLike = FixedHealth(start_health)
        if m.instance_id == "i-a" and setup != "logic":
            metrics = Metrics(process=False)
            build_info(metrics, config)
        if m.instance_id == "i-a" and setup == "+selfcheck":
            health = SelfChecker(self_check_config(procfs))
        coordinator = Coordinator(store, GROUP, m.instance_id, clock, config.timing.lease)
        agents.append(Agent(config, coordinator, StubEc2(), StubProbes(m.instance_id), health, clock, metrics))
    a, b = agents
    step = a.config.timing.cycle_interval
    for _ in range(WARMUP):
        a.run_cycle()
        b.run_cycle()
        clock.advance(step)
    spent = 0.0
    cpu = time.process_time
    for _ in range(cycles):
        t0 = cpu()
        a.run_cycle()
        spent += cpu() - t0
        b.run_cycle()
        clock.advance(step)
    return spent / cycles * 1000, a.decision.kind


def main() -> int:
    from bench.cli import BenchParser  # after the repository is on sys.path

    p = BenchParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=20000, help="timed cycles per setup and repeat (default 20000)")
    p.add_argument("--repeats", type=int, default=5, help="runs per setup; the median is reported (default 5)")
    p.add_argument("--procfs", default="/proc", help="where the self checks read sys/net/... (default /proc)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = p.parse_args()
    if args.cycles < 1 or args.repeats < 1:
        p.error("--cycles and --repeats must be at least 1")
    runs: dict[str, list[float]] = {s: [] for s in SETUPS}
    kinds: set[str] = set()
    for _ in range(args.repeats):
        for setup in SETUPS:  # interleaved, so that a noisy moment hits every setup alike
            ms, kind = run(setup, args.cycles, args.procfs)
            runs[setup].append(ms)
            kinds.add(kind)
    med = {s: statistics.median(v) for s, v in runs.items()}
    print(f"decision of the timed agent: {', '.join(sorted(kinds))}; {args.cycles} cycles x {args.repeats} repeats")
    print(f"{'setup':<12} {'ms CPU/cycle':>12} {'added':>8}   (median; min..max)")
    prev = 0.0
    for s in SETUPS:
        lo, hi = min(runs[s]), max(runs[s])
        added = med[s] - prev if prev else med[s]
        print(f"{s:<12} {med[s]:>12.4f} {added:>8.4f}   ({lo:.4f}..{hi:.4f})")
        prev = med[s]
    if args.json:
        Path(args.json).write_text(
            json.dumps({"cycles": args.cycles, "repeats": args.repeats, "ms_per_cycle": runs, "median": med}, indent=2)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
