"""``nat-ha status`` never calls a dead NAT healthy: the judgement of each row, from two reads of the group.

The reads are built from the coordinator's own items (a MemoryStore and real Coordinators on a
FakeClock), so the rows are what the agents write; EC2's answer is given as the adapter returns it.
"""

from __future__ import annotations

from agent.commands.status import Reads, assess, render
from agent.config import Config, Member
from agent.decide import Ec2Route
from coordinator.clock import FakeClock
from coordinator.items import GROUP_PAUSE, PIN_PREFIX, Health
from coordinator.leases import Coordinator
from coordinator.memory import MemoryStore

CONFIG = Config(
    group="g",
    region="us-east-1",
    members=(
        Member("i-a", "10.0.0.10", ("rtb-a",), az="az-a"),
        Member("i-b", "10.0.1.10", ("rtb-b",), az="az-b"),
        Member("i-c", "10.0.2.10", ("rtb-c",), az="az-c"),
    ),
)
HEALTHY = Health(True, {"ip_forward": True}, ("i-a", "i-b", "i-c"))
NOW = 1_700_000_100.0


class Group:
    """Three agents' items in a MemoryStore; each home holds its table."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.clock = FakeClock()
        self.agents = {
            m.instance_id: Coordinator(self.store, "g", m.instance_id, self.clock, 1.0) for m in CONFIG.members
        }
        self.routes = {}
        for m in CONFIG.members:
            c = self.agents[m.instance_id]
            c.start_session(HEALTHY)
            self.routes[m.route_tables[0]] = c.claim_route(m.route_tables[0], None, m.instance_id)

    def read(self):  # type: ignore[no-untyped-def]
        return self.agents["i-a"].read_group()

    def beat(self, *who: str) -> None:
        for i in who:
            self.agents[i].heartbeat(HEALTHY)


def reads(g: Group, *, beating: tuple[str, ...] = ("i-a", "i-b", "i-c"), ec2: dict[str, str] | None = None) -> Reads:
    first = g.read()
    g.clock.advance(1.15)
    g.beat(*beating)
    targets = ec2 if ec2 is not None else {"rtb-a": "i-a", "rtb-b": "i-b", "rtb-c": "i-c"}
    return Reads(first, g.read(), 1.15, routes={rt: Ec2Route(t) for rt, t in targets.items()})


def test_a_healthy_group_has_no_problem_and_every_row_is_ok() -> None:
    status = assess(CONFIG, reads(Group()), NOW)
    assert status["problems"] == []
    assert [(m["state"], m["healthy"]) for m in status["members"]] == [("alive", True)] * 3
    assert [t["verdict"] for t in status["route_tables"]] == ["ok"] * 3


def test_a_member_killed_a_moment_ago_is_stale_not_healthy() -> None:
    """After kill -9, status showed STATE expired, HEALTH healthy and a stale REACHES, and exited 0."""
    g = Group()
    status = assess(CONFIG, reads(g, beating=("i-b", "i-c")), NOW)
    a = status["members"][0]
    assert (a["state"], a["healthy"], a["reaches"], a["checks"]) == ("stale", None, [], {})
    assert (
        status["problems"][0] == "i-a: its heartbeat stopped: the agent (or the NAT) died; a peer takes over its tables"
    )
    row = status["route_tables"][0]
    assert row["verdict"] == "NO LIVE OWNER" and not row["owner_live"]
    text = render(status)
    line = next(x for x in text.splitlines() if x.startswith("i-a "))
    assert line.split()[:4] == ["i-a", "az-a", "stale", "-"], line
    assert "(dead)" in next(x for x in text.splitlines() if x.startswith("rtb-a"))


def test_a_member_whose_lease_is_longer_than_the_watch_is_not_judged() -> None:
    g = Group()
    slow = Coordinator(g.store, "g", "i-a", g.clock, 600.0)
    slow.start_session(HEALTHY, g.read().members["i-a"])
    assert assess(CONFIG, reads(g, beating=("i-b", "i-c")), NOW)["members"][0]["state"] == "alive"


def test_lost_redundancy_and_a_table_away_from_home_are_problems() -> None:
    g = Group()
    c = g.agents["i-c"]
    # i-a died and was expired by i-b, which took rtb-a; i-c is unhealthy.
    g.agents["i-b"].expire_member(g.read().members["i-a"])
    g.agents["i-b"].claim_route("rtb-a", g.read().routes["rtb-a"], "i-a")
    c.heartbeat(Health(False, {"ip_forward": False}, (), "ip_forward is 0"))
    first = g.read()
    g.clock.advance(1.15)
    g.beat("i-b")
    c.heartbeat(Health(False, {"ip_forward": False}, (), "ip_forward is 0"))
    r = Reads(
        first, g.read(), 1.15, routes={"rtb-a": Ec2Route("i-b"), "rtb-b": Ec2Route("i-b"), "rtb-c": Ec2Route("i-c")}
    )
    status = assess(CONFIG, r, NOW)
    assert status["problems"] == [
        "i-a: its session was expired by i-b: its agent is not running (or cannot reach DynamoDB)",
        "i-c: unhealthy (ip_forward): ip_forward is 0",
        "no redundancy: only i-b can serve route tables (of 3 members)",
        "rtb-a: served by i-b, away from its home i-a (i-a is expired)",
    ]
    assert [t["verdict"] for t in status["route_tables"]] == ["AWAY FROM HOME", "ok", "ok"]
    assert status["members"][2]["healthy"] is False


def test_ec2_refusing_makes_every_rows_verdict_unknown() -> None:
    """Each table showed `unknown` for the EC2 target and `ok` in its last column."""
    r = reads(Group(), ec2={})
    r.routes_error = "EC2 describe_route_tables in us-east-1 failed: UnauthorizedOperation: no"
    status = assess(CONFIG, r, NOW)
    assert [t["verdict"] for t in status["route_tables"]] == ["UNKNOWN"] * 3
    assert status["problems"] == [
        "EC2 describe_route_tables in us-east-1 failed: UnauthorizedOperation: no: "
        "where EC2 routes each table is unknown"
    ]


def test_a_pin_is_no_problem_and_a_pause_is_one_with_its_age() -> None:
    g = Group()
    op = Coordinator(g.store, "g", "operator", g.clock, 1.0)
    op.set_request(PIN_PREFIX + "rtb-a", "i-b", by="bob@laptop")
    g.agents["i-a"].hand_over_route(g.read().routes["rtb-a"], g.read().members["i-b"])
    op.set_request(GROUP_PAUSE, "on", by="alice@laptop", why="moving to a NAT gateway")
    since = g.read().requests[GROUP_PAUSE].since
    status = assess(CONFIG, reads(g, ec2={"rtb-a": "i-b", "rtb-b": "i-b", "rtb-c": "i-c"}), since + 720)
    assert status["problems"] == [
        "pause of the group by alice@laptop, 12 min ago: moving to a NAT gateway: no EC2 write and no failover "
        "for the group until `nat-ha resume`"
    ]
    assert [t["flags"] for t in status["route_tables"]] == [["PAUSED"]] * 3
    assert status["route_tables"][0]["pinned_to"] == "i-b"
    assert "requests:\n  - pause of the group by alice@laptop, 12 min ago" in render(status)
    assert "  - pin of rtb-a to i-b by bob@laptop, " in render(status)


def test_the_docs_samples_are_what_status_prints_today() -> None:
    """dashboards/runbook.md shows a healthy and a degraded status, README.md the healthy one (real runs):
    their columns are render's."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    runbook = (root / "dashboards" / "runbook.md").read_text().split("<!-- status-sample:")[1:]
    readme = (root / "README.md").read_text().split("<!-- status-sample:")[1:]
    assert len(runbook) == 4 and len(readme) == 2  # healthy, end, degraded, end; healthy, end
    text = render(assess(CONFIG, reads(Group()), NOW))
    headers = [line.split() for line in text.splitlines() if line.startswith(("MEMBER", "ROUTE TABLE"))]
    for sample in (runbook[0], runbook[2], readme[0]):
        shown = [line.split() for line in sample.splitlines() if line.startswith(("MEMBER", "ROUTE TABLE"))]
        assert shown == headers, sample
    assert readme[0].split("```")[1] == runbook[0].split("```")[1], "README's healthy sample is the runbook's"
