"""Between two cycles (agent/watches.py, agent/memberwatch.py): a new view reaches the agent, the prober and
the metrics; Auto Scaling's termination drains the NAT before the hook's action is completed.

On the cycle harness of test_cycle; discoveries are functions returning a view, the prober and the
lifecycle watch are stand-ins that record what they are told (their real selves have tests of their
own: tests/unit/host/test_probes.py, tests/unit/aws/test_lifecycle.py).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from agent.config import Member
from agent.host.probes import Target
from agent.members import Membership, Tracker
from agent.memberwatch import MemberWatch, strangers
from agent.metrics import Metrics
from agent.watches import Watches
from tests.unit.test_cycle import GROUP, MEMBERS, settled

HOMES_B = ("rtb-b1", "rtb-b2", "rtb-b3")


class FakeProber:
    def __init__(self) -> None:
        self.targets: list[list[Target]] = []

    def set_targets(self, targets: list[Target]) -> None:
        self.targets.append(targets)


class FakeHook:
    def __init__(self) -> None:
        self.terminating = threading.Event()
        self.completed = 0

    def complete(self) -> None:
        self.completed += 1

    def stop(self) -> None:
        pass


def test_a_discovery_that_fails_changes_nothing_and_a_poke_discovers_soon() -> None:
    answers: list[Any] = [RuntimeError("throttled"), Membership(MEMBERS)]

    def discover() -> Membership:
        answer = answers.pop(0) if answers else Membership(MEMBERS[:1])
        if isinstance(answer, Exception):
            raise answer
        return answer

    watch = MemberWatch(discover, Tracker("i-a", Membership(MEMBERS)), interval=60.0, min_gap=0.05)
    watch.once()
    assert watch.take() is None and watch.tracker.current == Membership(MEMBERS)
    watch.once()
    assert watch.take() is None, "the same view: nothing to hand over"
    watch.start()
    try:
        for _ in range(2):  # i-b missed twice (two pokes, not 60 s)
            n = watch.discoveries
            watch.poke()
            deadline = time.monotonic() + 5
            while watch.discoveries == n and time.monotonic() < deadline:
                time.sleep(0.01)
        news = watch.take()
    finally:
        watch.stop()
    assert news is not None and news[0].ids() == ("i-a",) and news[1][0].startswith("member i-b left")
    assert strangers(("i-a", "i-b"), ["i-a", "i-c", "i-b"]) == ["i-c"]


def test_a_new_view_reaches_the_agent_prober_ec2_and_metrics() -> None:
    g = settled()
    agent = g.agents["i-a"]
    metrics = Metrics()
    c = Member("i-c", "10.0.2.10", ())
    view = Membership((*MEMBERS, c))
    watches = Watches(agent.config, (), agent.ec2, metrics, lifecycle=False, members=lambda: view)  # type: ignore[arg-type]
    prober = FakeProber()
    watches.members.once()
    watches.between_cycles(agent, prober, g.clock.monotonic())  # type: ignore[arg-type]
    assert agent.members == ("i-a", "i-b", "i-c")
    assert [t.instance for t in prober.targets[-1]] == ["i-b", "i-c"]
    assert set(agent.ec2.members) == {"i-a", "i-b", "i-c"}  # type: ignore[attr-defined]
    assert 'peer="i-c"' in metrics_text(metrics)
    # i-b goes (two discoveries without it): its series go with it.
    view = Membership((MEMBERS[0], c), homeless=("rtb-b1", "rtb-b2", "rtb-b3"))
    watches.members.discover = lambda: view
    watches.members.once()
    watches.members.once()
    watches.between_cycles(agent, prober, g.clock.monotonic())  # type: ignore[arg-type]
    assert agent.members == ("i-a", "i-c") and [t.instance for t in prober.targets[-1]] == ["i-c"]
    assert 'peer="i-b"' not in metrics_text(metrics)
    assert 'route_table="rtb-b1"' in metrics_text(metrics), "its tables stay in the group (homeless)"


def test_an_unknown_heartbeat_pokes_a_discovery_once() -> None:
    g = settled()
    agent = g.agents["i-a"]
    from coordinator.items import Health
    from coordinator.leases import Coordinator

    Coordinator(g.store, GROUP, "i-new", g.clock, 1.0).start_session(Health(True, {}), None)
    g.cycle("i-a")
    watches = Watches(agent.config, (), agent.ec2, None, lifecycle=False, members=lambda: Membership(MEMBERS))  # type: ignore[arg-type]
    pokes = []
    watches.members.poke = lambda: pokes.append(1)  # type: ignore[method-assign]
    for _ in range(3):
        watches.between_cycles(agent, FakeProber(), g.clock.monotonic())  # type: ignore[arg-type]
    assert pokes == [1]


def test_termination_drains_first_then_completes_the_action() -> None:
    g = settled()
    agent = g.agents["i-b"]
    watches = Watches(agent.config, (), agent.ec2, None, lifecycle=False, members=lambda: Membership(MEMBERS))  # type: ignore[arg-type]
    hook = FakeHook()
    watches.lifecycle = hook  # type: ignore[assignment]
    prober = FakeProber()
    watches.between_cycles(agent, prober, g.clock.monotonic())  # type: ignore[arg-type]
    assert g.store.raw_get(GROUP, "drain#i-b") is None, "no drain before Auto Scaling says so"
    hook.terminating.set()
    completed_at = None
    for i in range(40):
        g.cycle("i-a")
        g.cycle("i-b")
        watches.between_cycles(agent, prober, g.clock.monotonic())  # type: ignore[arg-type]
        owned = [rt for rt in HOMES_B if g.store.raw_get(GROUP, "route#" + rt)["owner"] == "i-b"]
        if hook.completed and completed_at is None:
            completed_at = i
            assert owned == [], "completed while still holding route tables"
    assert g.store.raw_get(GROUP, "drain#i-b")["owner"] == "on"  # kept in the table: a restarted agent stays drained
    assert completed_at is not None and hook.completed == 1
    assert all(g.world.targets[rt] == "i-a" for rt in HOMES_B)


def metrics_text(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()
