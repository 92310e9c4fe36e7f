"""What confirming every EC2 write against DynamoDB costs a takeover: wall time to the route write.

    python bench/takeover.py [--trials 50] [--json F]

Two real agents (agent.cycle.Agent) on a real dynalite (started on 127.0.0.1 by this script,
tests/servers.py), holder tags on. The NAT of one dies (its probes fail, its agent stops); the
other's takeover cycle is timed from its start to the moment the route write would leave (the
fence's final check, where the transport sends the bytes): expire the dead member, claim its
table, tag the table, write its route. Three ways, interleaved: ``shipped`` - each write is
confirmed by what DynamoDB answered last when it is recent (a renewal it accepted, with the table
shown ours by the claim), else by one renewal or read (agent.cycle.tables, TableWriter._confirm);
``read`` - one consistent read of the group before every write (how it was before); ``none`` -
no confirmation at all. The EC2 side is a stub that answers at once, so what is measured is the
DynamoDB work on the takeover path; a real EC2 call adds its own round trip. Fake time drives the
decisions (so no trial waits out a lease); the calls take real time.

Output: median, p90 and max of the takeover-to-route-write time each way, and the DynamoDB calls
per takeover cycle.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.aws.fence import Fence
from agent.config import Config, Member
from agent.cycle import Agent
from agent.decide import Ec2Address, Ec2Route, PeerProbe
from coordinator.clock import FakeClock
from coordinator.dynamo import DynamoSettings, DynamoStore, init_table
from coordinator.items import Health
from coordinator.leases import Coordinator

MEMBERS = (Member("i-a", "10.0.0.10", ("rtb-a",)), Member("i-b", "10.0.1.10", ("rtb-b",)))
HOMES = {rt: m.instance_id for m in MEMBERS for rt in m.route_tables}
TABLE = "nat-ha-bench-takeover"


class StubEc2:
    """One agent's EC2, answering at once; records when the route write of ``watch`` passed the fence."""

    def __init__(self, targets: dict[str, str]) -> None:
        self.fence: Fence | None = None
        self.targets = targets
        self.watch = ""
        self.sent_at = -1.0

    def attach_fence(self, fence: Fence) -> None:
        self.fence = fence

    def _write(self, op: str, resource: str) -> None:
        assert self.fence is not None
        with self.fence.write(op, resource):
            self.fence.authorize(op)
            if op == "ReplaceRoute" and resource == self.watch and self.sent_at < 0:
                self.sent_at = time.perf_counter()

    def routes(self, route_tables: list[str]) -> dict[str, Ec2Route]:
        return {rt: Ec2Route(self.targets[rt]) for rt in route_tables}

    def point_route(self, route_table: str, instance: str, *, missing: bool = False) -> str:
        self._write("ReplaceRoute", route_table)
        self.targets[route_table] = instance
        return "replaced"

    def tag_holder(self, route_table: str, holder: str) -> None:
        self._write("CreateTags", route_table)

    def tag_address_holder(self, route_table: str, holder: str) -> None:
        raise AssertionError("no Elastic IPs here")

    def tag_stop_by(self, instance: str, stopper: str) -> None:
        self._write("CreateTags", instance)

    def egress_ips(self, route_tables: list[str]) -> dict[str, Ec2Address]:
        return {}

    def associate_address(self, route_table: str, instance: str) -> str:
        raise AssertionError("no Elastic IPs here")

    def instance_states(self, instances: list[str]) -> dict[str, str]:
        return dict.fromkeys(instances, "running")

    def stop(self, instance: str) -> None:
        raise AssertionError("nothing is stopped here")

    def start(self, instance: str) -> None:
        raise AssertionError("nothing is started here")


class Probes:
    def __init__(self, me: str, dead: set[str]) -> None:
        self.me = me
        self.dead = dead

    def snapshot(self) -> dict[str, PeerProbe]:
        return {
            m.instance_id: PeerProbe(m.instance_id not in self.dead, 5 if m.instance_id in self.dead else 0, 5, 0.0)
            for m in MEMBERS
            if m.instance_id != self.me
        }


class Healthy:
    def check(self, now: float, reaches: tuple[str, ...] = ()) -> Health:
        return Health(True, {"ip_forward": True}, reaches)


class Counting:
    """The store, counting calls (to report DynamoDB calls per takeover)."""

    def __init__(self, store: DynamoStore) -> None:
        self.store = store
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if name in ("query_group", "get_item", "put_item"):

            def counted(*a: Any, **kw: Any) -> Any:
                self.calls += 1
                return attr(*a, **kw)

            return counted
        return attr


WAYS = ("shipped", "read", "none")


def trial(store: Counting, way: str) -> tuple[float, int]:
    """One takeover: seconds from the cycle's start to the route write, and DynamoDB calls in that cycle."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    dead: set[str] = set()
    targets = dict(HOMES)
    adapters = {m.instance_id: StubEc2(targets) for m in MEMBERS}
    ec2 = adapters["i-a"]
    agents = {}
    for m in MEMBERS:
        config = Config(group=group, instance_id=m.instance_id, members=MEMBERS)
        coordinator = Coordinator(store, group, m.instance_id, clock, config.timing.lease)  # type: ignore[arg-type]
        if way != "shipped":  # no evidence: the fence reads (or, "none", is told yes at once)
            coordinator.confirmed = lambda *_a: None  # type: ignore[method-assign]
            coordinator.knows = lambda *_a: False  # type: ignore[method-assign]
        if way == "none":
            coordinator.confirm = lambda **_kw: ""  # type: ignore[method-assign]
        arn = f"arn:aws:ec2:us-east-1:123456789012:instance/{m.instance_id}"
        probes = Probes(m.instance_id, dead)
        agents[m.instance_id] = Agent(
            config, coordinator, adapters[m.instance_id], probes, Healthy(), clock, holder=arn
        )
    a, b = agents["i-a"], agents["i-b"]
    for _ in range(40):
        a.run_cycle()
        b.run_cycle()
        clock.advance(0.35)
    dead.add("i-b")
    a.run_cycle()  # the last sighting of i-b's heartbeat
    clock.advance(1.5)
    ec2.watch = "rtb-b"
    calls = store.calls
    t0 = time.perf_counter()
    a.run_cycle()
    if ec2.sent_at < 0:
        raise RuntimeError(f"no takeover: {a.decision.summary}")
    return ec2.sent_at - t0, store.calls - calls


def summary(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "median_ms": statistics.median(s) * 1000,
        "p90_ms": s[min(len(s) - 1, int(0.9 * len(s)))] * 1000,
        "max_ms": s[-1] * 1000,
    }


def main() -> int:
    from bench.cli import BenchParser
    from tests import servers

    p = BenchParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=50, help="takeovers each way (default 50)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = p.parse_args()
    if not 1 <= args.trials <= 1000:
        p.error("--trials must be between 1 and 1000")
    servers.set_test_aws_env()
    with servers.dynalite_server() as endpoint:
        settings = DynamoSettings(table=TABLE, region="us-east-1", endpoint_url=endpoint,
                                  connect_timeout_s=0.15, read_timeout_s=0.15)  # fmt: skip
        list(init_table(settings))
        store = Counting(DynamoStore(settings))
        for _ in range(3):  # warm the connection and the code paths
            trial(store, "shipped")
        times: dict[str, list[float]] = {way: [] for way in WAYS}
        calls: dict[str, list[int]] = {way: [] for way in WAYS}
        for _ in range(args.trials):  # interleaved: a noisy moment hits each alike
            for way in WAYS:
                took, n = trial(store, way)
                times[way].append(took)
                calls[way].append(n)
    out: dict[str, Any] = {"trials": args.trials, "backend": "dynalite " + servers.DYNALITE_VERSION}
    print(f"takeover to route write, dynalite on 127.0.0.1, {args.trials} trials each (EC2 stubbed)")
    for way in WAYS:
        s = summary(times[way])
        out[way] = {**s, "dynamodb_calls": statistics.median(calls[way])}
        print(
            f"  {way:>7}: median {s['median_ms']:.2f} ms, p90 {s['p90_ms']:.2f} ms, "
            f"max {s['max_ms']:.2f} ms; DynamoDB calls in the cycle {statistics.median(calls[way]):.0f}"
        )
    for way in ("shipped", "read"):
        out[f"{way}_cost_median_ms"] = out[way]["median_ms"] - out["none"]["median_ms"]
    print(
        f"  confirming costs {out['shipped_cost_median_ms']:.2f} ms of the median as shipped, "
        f"{out['read_cost_median_ms']:.2f} ms with a read before every write"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
