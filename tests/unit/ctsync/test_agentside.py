"""The agent's port to the sync service: a planned hand-over waits a bounded time, never blocks the cycle."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent.config import ConntrackSyncConfig
from agent.ctsync import control
from agent.ctsync.agentside import FlowSync
from agent.metrics import SyncMetrics
from coordinator.items import GroupSnapshot, RouteItem

CFG = ConntrackSyncConfig(enabled=True, push_timeout=2.0)


class Service:
    """Answers like the sync service; a push answers when ``release`` is set."""

    def __init__(self, push_answer: dict[str, Any] | None = None, down: bool = False) -> None:
        self.release = threading.Event()
        self.push_answer = push_answer or {"ok": True, "entries": 7, "seconds": 0.01}
        self.down = down
        self.states: list[dict[str, Any]] = []

    def __call__(self, path: str, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self.down:
            raise control.ControlError("the sync service is not running (no /run/x)")
        if message["op"] == "push":
            if not self.release.wait(timeout):
                raise control.ControlError(f"the sync service did not answer within {timeout:g} s")
            return self.push_answer
        if message["op"] == "state":
            self.states.append(message)
            return {"ok": True}
        return {"ok": True, "peers": {"i-b": {"connected": True}}, "lag": {"i-b": 0.12}, "entries_sent": 5,
                "errors": {"load": 1}, "takeover_entries": {"rtb-a": 3}, "events": True}  # fmt: skip


def snap(**owners: str) -> GroupSnapshot:
    routes = {rt.replace("_", "-"): RouteItem(rt.replace("_", "-"), o, "s", 1, 1, "t") for rt, o in owners.items()}
    return GroupSnapshot("g", {}, routes, {})


def make(service: Service, snapshot: GroupSnapshot | None = None) -> tuple[FlowSync, SyncMetrics]:
    metrics = SyncMetrics(CollectorRegistry(), ["i-b"], ["rtb-a"])
    return FlowSync(CFG, "i-a", {"i-a": "10.0.0.1"}, lambda: snapshot, metrics, request=service), metrics


def test_a_handover_waits_for_the_push_and_goes_once_it_is_acknowledged() -> None:
    svc = Service()
    flows, metrics = make(svc)
    t0 = time.monotonic()
    assert "pushing" in flows.handover_wait("rtb-a", "i-b", 100.0)
    assert time.monotonic() - t0 < 1.0  # not blocked: the push would hold it 2 s (slack for a loaded machine)
    assert "waiting" in flows.handover_wait("rtb-a", "i-b", 100.4)
    svc.release.set()
    deadline = time.monotonic() + 2
    while flows.handover_wait("rtb-a", "i-b", 100.8) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flows.handover_wait("rtb-a", "i-b", 100.8) == ""
    assert metrics.pushes.labels("acked")._value.get() == 1


def test_a_handover_goes_ahead_after_the_bound_or_at_once_on_failure() -> None:
    flows, metrics = make(Service())  # never answers
    flows.handover_wait("rtb-a", "i-b", 10.0)
    assert flows.handover_wait("rtb-a", "i-b", 11.9) != ""
    assert flows.handover_wait("rtb-a", "i-b", 12.0) == ""  # push_timeout (2 s) on the cycle's clock
    assert metrics.pushes.labels("timeout")._value.get() == 1
    down, m2 = make(Service(down=True))
    down.handover_wait("rtb-a", "i-b", 10.0)
    deadline = time.monotonic() + 2
    while down.handover_wait("rtb-a", "i-b", 10.1) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert down.handover_wait("rtb-a", "i-b", 10.1) == ""  # the failure is known: no need to wait the bound
    assert m2.pushes.labels("failed")._value.get() == 1


def test_holders_come_from_the_snapshot_with_our_own_moves_first() -> None:
    svc = Service()
    flows, metrics = make(svc, snap(rtb_a="i-a", rtb_b="i-b"))
    flows.taking("rtb-b", "i-b")
    flows.released("rtb-a", "i-c")
    assert flows.holders() == {"rtb-a": "i-c", "rtb-b": "i-a"}
    flows.poll()
    assert svc.states[-1]["holders"] == {"rtb-a": "i-c", "rtb-b": "i-a"}
    text = generate_latest(_registry(metrics)).decode()
    assert "nat_ha_conntrack_sync_up 1.0" in text
    assert 'nat_ha_conntrack_sync_lag_seconds{peer="i-b"} 0.12' in text
    assert 'nat_ha_conntrack_sync_errors_total{kind="load"} 1.0' in text
    assert 'nat_ha_conntrack_sync_takeover_entries{route_table="rtb-a"} 3.0' in text
    svc.down = True
    flows.poll()
    text = generate_latest(_registry(metrics)).decode()
    assert "nat_ha_conntrack_sync_up 0.0" in text and "lag_seconds{" not in text


def _registry(metrics: SyncMetrics) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(metrics)
    return reg


def test_status_line_and_problems_of_the_sync() -> None:
    stats = {"held": ["rtb-a"], "peers": {"i-b": {"connected": True}, "i-c": {"connected": False}},
             "lag": {"i-b": 0.1}, "entries_sent": 9, "entries_loaded": 4, "errors": {"auth": 2, "load": 0},
             "events": False, "last_error": "i-c: refused", "last_error_age": 3.0}  # fmt: skip
    line, problems = control.health(stats)
    assert line == "streams rtb-a to i-b up (lag 0.10 s), i-c DOWN; 9 entries sent, 4 loaded; errors: auth 2"
    assert problems == [
        "conntrack sync: no link to i-c",
        "conntrack sync: not reading the kernel's connection events",
        "conntrack sync: i-c: refused (3 s ago)",
    ]
    healthy = {**stats, "peers": {"i-b": {"connected": True}}, "events": True, "last_error_age": 600.0}
    assert control.health(healthy)[1] == []


def test_the_service_is_told_this_nat_the_members_and_the_tables_addresses_as_discovered_now() -> None:
    """members_from_tags: a replaced NAT's successor is a new member with new addresses; each state carries the
    agent's current view (its config after the last discovery), and the metrics' peers follow it."""
    from agent.config import Config, EgressTable, Member, with_discovered

    table = EgressTable("rtb-a", "eipalloc-1", ("10.0.1.0/24",), (("i-a", "10.0.0.11"), ("i-b", "10.0.0.21")))
    base = Config(group="g", egress_ip="follow", members_from_tags=True)
    now = [with_discovered(base, instance_id="i-a", members=(Member("i-a", "10.0.0.1"), Member("i-b", "10.0.0.2")),
                           egress_tables=(table,))]  # fmt: skip
    service = Service()
    metrics = SyncMetrics(CollectorRegistry(), [], ["rtb-a"])
    sync = FlowSync(CFG, "i-a", {}, lambda: None, metrics, request=service, group=lambda: now[0])
    sync.poll()
    state = service.states[-1]
    assert (state["me"], state["members"]) == ("i-a", {"i-a": "10.0.0.1", "i-b": "10.0.0.2"})
    addresses = {"i-a": "10.0.0.11", "i-b": "10.0.0.21"}
    assert state["tables"] == {"rtb-a": {"subnets": ["10.0.1.0/24"], "addresses": addresses}}
    assert metrics.peers == ["i-b"]
    replaced = EgressTable("rtb-a", "eipalloc-1", ("10.0.1.0/24",), (("i-a", "10.0.0.11"), ("i-c", "10.0.0.31")))
    now[0] = with_discovered(base, instance_id="i-a", members=(Member("i-a", "10.0.0.1"), Member("i-c", "10.0.0.3")),
                             egress_tables=(replaced,))  # fmt: skip
    sync.poll()
    state = service.states[-1]
    assert state["members"] == {"i-a": "10.0.0.1", "i-c": "10.0.0.3"} and metrics.peers == ["i-c"]
    assert state["tables"]["rtb-a"]["addresses"] == {"i-a": "10.0.0.11", "i-c": "10.0.0.31"}


def test_the_service_identifies_its_nat_from_the_config_or_waits_for_the_agent() -> None:
    """nat-ha ctsync: --instance-id or the config's, a member whose address is here, or, with members_from_tags
    (the stacks: no [[members]]), "" - the agent names it; otherwise a clear refusal."""
    from agent.commands.cli import UsageError
    from agent.commands.ctsync import identify
    from agent.config import Config, Member

    assert identify(Config(group="g", members_from_tags=True), "") == ""
    assert identify(Config(group="g", members_from_tags=True), "i-a") == "i-a"
    listed = Config(group="g", members=(Member("i-a", "198.51.100.201"), Member("i-b", "198.51.100.202")))
    with pytest.raises(UsageError, match="cannot tell which member this host is"):
        identify(listed, "")
    with pytest.raises(UsageError, match="not a member"):
        identify(listed, "i-z")
