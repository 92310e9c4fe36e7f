"""The /metrics text of an agent, situation by situation, against the one recorded before a rewrite.

tests/unit/metrics_export_golden.txt holds the exposition (HELP, TYPE and every
sample but ``*_created``) of agent i-a in a three-NAT group driven through a
fixed story on a FakeClock: start-up, holding, a peer's probes lost, that peer
dead and its route table taken over, EC2 routing a table elsewhere, a bad item in
the table, this NAT unhealthy (it hands its tables over), the store unavailable.
It was written by the export code that still called ``metric.labels(...)`` every
cycle (commit 4274eea); the cheaper export must produce the same text: the same
names, help texts, label sets, series and values, in every situation.

Regenerate it only for an intended change of the metrics:
``python -m tests.unit.test_metrics_export --write``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent.aws.calls import AGENT_CALLS
from agent.aws.fence import Fence
from agent.config import Config, Member
from agent.cycle import Agent, build_info
from agent.decide import Ec2Route, PeerProbe
from agent.metrics import AWS_ERROR_CLASSES, AWS_OPERATIONS, DECISIONS, Metrics, aws_error_class
from coordinator.clock import FakeClock
from coordinator.items import Health
from coordinator.leases import Coordinator
from coordinator.memory import MemoryStore

GOLDEN = Path(__file__).with_name("metrics_export_golden.txt")
GROUP = "g"
MEMBERS = (
    Member("i-a", "10.0.0.10", ("rtb-a",)),
    Member("i-b", "10.0.1.10", ("rtb-b",)),
    Member("i-c", "10.0.2.10", ("rtb-c",)),
)
HOMES = {rt: m.instance_id for m in MEMBERS for rt in m.route_tables}
HEALTHY = Health(True, {"ip_forward": True, "conntrack": True, "masquerade": True, "forwarding": True})
BROKEN = Health(
    False, {"ip_forward": False, "conntrack": True, "masquerade": True, "forwarding": True}, detail="ip_forward is 0"
)


class Ec2:
    """EC2 for the whole group: route writes land at once, unless a table is ``stuck``."""

    def __init__(self) -> None:
        self.targets = dict(HOMES)
        self.stuck: set[str] = set()

    def routes(self, route_tables: list[str]) -> dict[str, Ec2Route]:
        return {rt: Ec2Route(self.targets[rt]) for rt in route_tables}

    def view(self) -> Ec2:
        """One agent's handle (its own fence) on the group's EC2."""
        mine = Ec2.__new__(Ec2)
        mine.targets, mine.stuck = self.targets, self.stuck
        return mine

    def attach_fence(self, fence: Fence) -> None:
        self.fence = fence

    def point_route(self, route_table: str, instance: str, *, missing: bool = False) -> str:
        with self.fence.write("ReplaceRoute", route_table):
            self.fence.authorize("ReplaceRoute")
            if route_table not in self.stuck:
                self.targets[route_table] = instance
        return "replaced"

    def tag_holder(self, route_table: str, holder: str) -> None:
        raise AssertionError("the story runs without holder tags")

    def instance_states(self, instances: list[str]) -> dict[str, str]:
        return dict.fromkeys(instances, "running")

    def stop(self, instance: str) -> None:
        raise AssertionError("no peer is stopped in this story")

    def start(self, instance: str) -> None:
        raise AssertionError("no peer is started in this story")


class Probes:
    def __init__(self, me: str) -> None:
        self.up = {m.instance_id: True for m in MEMBERS if m.instance_id != me}

    def snapshot(self) -> dict[str, PeerProbe]:
        return {p: PeerProbe(up, 0 if up else 5, 10) for p, up in self.up.items()}


class SelfHealth:
    def __init__(self) -> None:
        self.health = HEALTHY

    def check(self, now: float, reaches: tuple[str, ...] = ()) -> Health:
        h = self.health
        return Health(h.healthy, dict(h.checks), reaches, h.detail)


class Group:
    """Three agents on one MemoryStore and one FakeClock; only i-a has metrics."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store_down = False
        self.store = MemoryStore(lambda op, group, item: "unavailable" if self.store_down else None)
        self.ec2 = Ec2()
        self.metrics = Metrics(CollectorRegistry(), process=False)
        self.agents: dict[str, Agent] = {}
        self.probes: dict[str, Probes] = {}
        self.health: dict[str, SelfHealth] = {}
        self.running = {m.instance_id for m in MEMBERS}
        tokens = iter(range(1_000_000))
        for m in MEMBERS:
            me = m.instance_id
            config = Config(group=GROUP, instance_id=me, members=MEMBERS)
            metrics = self.metrics if me == "i-a" else None
            if metrics is not None:
                build_info(metrics, config)
            coordinator = Coordinator(
                self.store, GROUP, me, self.clock, config.timing.lease, token_factory=lambda: f"t{next(tokens)}"
            )
            self.probes[me] = Probes(me)
            self.health[me] = SelfHealth()
            self.agents[me] = Agent(
                config, coordinator, self.ec2.view(), self.probes[me], self.health[me], self.clock, metrics
            )

    def rounds(self, n: int) -> None:
        """``n`` cycles of every running agent, one cycle interval apart."""
        for _ in range(n):
            for me in sorted(self.running):
                self.agents[me].run_cycle()
            self.clock.advance(0.35)

    def exposition(self) -> list[str]:
        text = generate_latest(self.metrics.registry).decode()
        return sorted(line for line in text.splitlines() if "_created" not in line.split(" ")[0])


def story() -> Iterator[tuple[str, Group]]:
    """The situations, in order (each builds on the one before)."""
    g = Group()
    yield "start-up (prepared, no cycle yet)", g
    g.rounds(12)
    for rtt in (0.0004, 0.0007, 0.003):
        g.metrics.observe_probe("i-b", True, rtt)
    g.metrics.observe_probe("i-b", False, 0.0)
    g.metrics.observe_probe("i-c", True, 0.02)
    yield "holding (rtb-b, rtb-c owned by peers)", g
    g.probes["i-a"].up["i-c"] = False
    g.probes["i-b"].up["i-c"] = False
    g.metrics.observe_probe("i-c", False, 0.0)
    g.rounds(1)
    yield "peer i-c's probes lost, its heartbeat still fresh", g
    g.running.discard("i-c")
    g.rounds(8)
    yield "peer i-c dead, rtb-c taken over", g
    g.ec2.stuck.add("rtb-a")
    g.ec2.targets["rtb-a"] = "other:eni-0123"
    g.rounds(16)
    yield "EC2 routes rtb-a elsewhere (held by i-a)", g
    g.ec2.stuck.clear()
    g.store._items[(GROUP, "member#i-x")] = {"group": GROUP, "item": "member#i-x", "state": "bogus"}
    g.rounds(16)
    yield "a bad item in the table, rtb-a repaired", g
    g.health["i-a"].health = BROKEN
    g.rounds(6)
    yield "i-a unhealthy: its route tables handed over", g
    g.store_down = True
    g.rounds(3)
    yield "store unavailable", g


def golden() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    name = ""
    for line in GOLDEN.read_text().splitlines():
        if line.startswith("=== "):
            name = line[4:]
            out[name] = []
        elif line:
            out[name].append(line)
    return out


def write_golden() -> None:
    lines: list[str] = []
    for name, g in story():
        lines += [f"=== {name}", *g.exposition(), ""]
    GOLDEN.write_text("\n".join(lines))


EXPECTED = golden()


def test_story_covers_the_situations() -> None:
    kinds = {name: g.agents["i-a"].decision.kind for name, g in story()}
    assert list(kinds) == list(EXPECTED)
    assert kinds["holding (rtb-b, rtb-c owned by peers)"] == "holding"
    assert kinds["i-a unhealthy: its route tables handed over"] == "unhealthy"
    assert kinds["store unavailable"] == "store_unavailable"
    peer_dead = EXPECTED["peer i-c dead, rtb-c taken over"]
    assert 'nat_ha_route_table_owned{route_table="rtb-c"} 1.0' in peer_dead
    assert 'nat_ha_peer_session_alive{peer="i-c"} 0.0' in peer_dead
    assert "nat_ha_bad_items 1.0" in EXPECTED["a bad item in the table, rtb-a repaired"]


@pytest.mark.parametrize("situation", list(EXPECTED))
def test_exposition_is_unchanged(situation: str) -> None:
    for name, g in story():
        if name == situation:
            assert g.exposition() == EXPECTED[situation]
            return
    raise AssertionError(f"situation {situation!r} is no longer in the story")


def test_set_decision_sets_exactly_one() -> None:
    m = Metrics(CollectorRegistry(), process=False)
    m.prepare("0", GROUP, "i-a", ["i-b"], ["rtb-a"])
    for kind in ("holding", "holding", "waiting", "not-a-decision", "standby"):
        m.set_decision(kind)
        values = {d: m.registry.get_sample_value("nat_ha_decision", {"decision": d}) for d in DECISIONS}
        assert values == {d: 1.0 if d == kind else 0.0 for d in DECISIONS}
    assert m.registry.get_sample_value("nat_ha_decision", {"decision": "not-a-decision"}) is None


def test_probe_observer_counts_per_peer() -> None:
    m = Metrics(CollectorRegistry(), process=False)
    m.prepare("0", GROUP, "i-a", ["i-b"], ["rtb-a"])
    m.observe_probe("i-b", True, 0.0003)
    m.observe_probe("i-b", False, 0.0)
    m.observe_probe("i-z", True, 0.2)  # a peer that was not prepared still gets its series
    value = m.registry.get_sample_value
    assert value("nat_ha_probes_sent_total", {"peer": "i-b"}) == 2
    assert value("nat_ha_probes_lost_total", {"peer": "i-b"}) == 1
    assert value("nat_ha_probe_rtt_seconds_bucket", {"peer": "i-b", "le": "0.0005"}) == 1
    assert value("nat_ha_probe_rtt_seconds_count", {"peer": "i-z"}) == 1


def test_aws_call_observer_times_every_call_and_counts_failures() -> None:
    m = Metrics(CollectorRegistry(), process=False)
    m.observe_aws_call("dynamodb", "Query", 0.004, None)
    m.observe_aws_call("dynamodb", "Query", 0.2, "ReadTimeoutError")
    m.observe_aws_call("ec2", "ReplaceRoute", 0.05, None)
    value = m.registry.get_sample_value
    assert value("nat_ha_aws_request_duration_seconds_count", {"service": "dynamodb", "operation": "Query"}) == 2
    assert (
        value(
            "nat_ha_aws_request_duration_seconds_bucket", {"service": "dynamodb", "operation": "Query", "le": "0.005"}
        )
        == 1
    )
    assert value("nat_ha_aws_errors_total", {"service": "dynamodb", "operation": "Query", "error": "timeout"}) == 1


def test_every_aws_error_series_exists_from_start_up() -> None:
    """Before, a series was born with its first error at 1, so increase() never saw that error."""
    m = Metrics(CollectorRegistry(), process=False)
    m.prepare("0", GROUP, "i-a", ["i-b"], ["rtb-a"])
    value = m.registry.get_sample_value
    for service, operation in AWS_OPERATIONS:
        for error in AWS_ERROR_CLASSES:
            labels = {"service": service, "operation": operation, "error": error}
            assert value("nat_ha_aws_errors_total", labels) == 0, labels
    m.observe_aws_call("ec2", "ReplaceRoute", 0.6, "ReadTimeoutError")
    m.observe_aws_call("dynamodb", "PutItem", 0.01, "ConditionalCheckFailedException")
    m.observe_aws_call("dynamodb", "Query", 0.01, "ProvisionedThroughputExceededException")
    m.observe_aws_call("ec2", "DescribeRouteTables", 0.01, "503")
    m.observe_aws_call("ec2", "CreateRoute", 0.01, "InvalidRouteTableID.NotFound")
    errors = {
        (s.labels["service"], s.labels["operation"], s.labels["error"]): s.value
        for family in m.registry.collect()
        if family.name == "nat_ha_aws_errors"
        for s in family.samples
        if s.name.endswith("_total") and s.value
    }
    assert errors == {
        ("ec2", "ReplaceRoute", "timeout"): 1,
        ("dynamodb", "PutItem", "conflict"): 1,
        ("dynamodb", "Query", "throttled"): 1,
        ("ec2", "DescribeRouteTables", "server"): 1,
        ("ec2", "CreateRoute", "other"): 1,
    }


def test_aws_operations_are_the_agents_calls() -> None:
    assert sorted(AWS_OPERATIONS) == sorted((service, op) for service, op in AGENT_CALLS)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("ReadTimeoutError", "timeout"),
        ("ConnectTimeoutError", "timeout"),
        ("EndpointConnectionError", "connection"),
        ("ThrottlingException", "throttled"),
        ("RequestLimitExceeded", "throttled"),
        ("UnauthorizedOperation", "denied"),
        ("AccessDeniedException", "denied"),
        ("ConditionalCheckFailedException", "conflict"),
        ("InternalServerError", "server"),
        ("500", "server"),
        ("ValidationException", "other"),
        ("", "other"),
    ],
)
def test_error_classes(code: str, cls: str) -> None:
    assert aws_error_class(code) == cls and cls in AWS_ERROR_CLASSES


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.unit.test_metrics_export --write")
    write_golden()


def test_serve_answers_without_a_reverse_dns_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """wsgiref would call socket.getfqdn(listen address): 10 s without an answering resolver (tests/systemd)."""
    import socket
    import urllib.request

    def no_lookups(*_a: object) -> str:
        raise AssertionError("reverse DNS lookup at start-up")

    monkeypatch.setattr(socket, "getfqdn", no_lookups)
    monkeypatch.setattr(socket, "gethostbyaddr", no_lookups)
    m = Metrics()
    server = m.serve("127.0.0.1:0")
    assert server is not None
    try:
        port = server.server_address[1]  # type: ignore[attr-defined]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert b"nat_ha_agent_up" in resp.read()
    finally:
        server.shutdown()  # type: ignore[attr-defined]
        server.server_close()  # type: ignore[attr-defined]


def test_metrics_server_stops_on_shutdown_though_it_does_not_poll() -> None:
    """The server waits in select without a timeout (no idle wake-ups); shutdown() still stops it."""
    import urllib.error
    import urllib.request

    server = Metrics().serve("127.0.0.1:0")
    assert server is not None
    port = server.server_address[1]  # type: ignore[attr-defined]
    try:
        server.shutdown()  # type: ignore[attr-defined]
        # The socket still listens (not closed yet), but nobody serves it any more.
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=0.5)
    finally:
        server.server_close()  # type: ignore[attr-defined]
