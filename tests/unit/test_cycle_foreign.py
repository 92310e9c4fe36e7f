"""A route someone else changed is a WARNING with its own counter, not an INFO decision line.

Same harness as tests/unit/test_cycle.py. The holder writes the route back either way (that is its
job); what these tests check is that the change is said, counted and kept in the history - and
not for changes nat-ha's own writes explain, nor for a paused table.
"""

from __future__ import annotations

import pytest

from agent.metrics import Metrics
from coordinator.items import PAUSE_PREFIX
from coordinator.leases import Coordinator
from tests.unit.test_cycle import GROUP, group


def settled_with_metrics():  # type: ignore[no-untyped-def]
    events: list[tuple[str, dict[str, object]]] = []
    g = group(metrics=lambda _i: Metrics(process=False))
    for a in g.agents.values():
        a.ctx.on_event = lambda kind, data: events.append((kind, data))
    for _ in range(40):
        g.cycle("i-a")
        g.cycle("i-b")
    return g, events


def changes(g, rt: str = "rtb-a") -> float:  # type: ignore[no-untyped-def]
    value = g.agents["i-a"].metrics.registry.get_sample_value(
        "nat_ha_route_table_foreign_changes_total", {"route_table": rt}
    )
    return float(value or 0.0)


def read_ec2_now(g) -> None:  # type: ignore[no-untyped-def]
    g.agents["i-a"].memory.ec2_read_at = -1e18


def test_a_route_changed_by_hand_is_a_warning_a_count_and_an_event(caplog: pytest.LogCaptureFixture) -> None:
    g, events = settled_with_metrics()
    assert changes(g) == 0
    g.world.targets["rtb-a"] = "nat-0gateway"  # `aws ec2 replace-route ... --nat-gateway-id` by an on-call
    read_ec2_now(g)
    g.cycle("i-a")
    warning = [r for r in caplog.records if r.levelname == "WARNING" and "by someone else" in r.getMessage()]
    assert len(warning) == 1
    assert warning[0].getMessage().startswith("rtb-a's route was changed to nat-0gateway by someone else")
    assert "nat-ha pause --route-table rtb-a" in warning[0].getMessage()
    assert changes(g) == 1
    assert ("foreign_change", {"route_table": "rtb-a", "to": "nat-0gateway"}) in events
    assert g.world.targets["rtb-a"] == "i-a", "the holder wrote it back"
    g.cycle("i-a", 20)  # nothing new: counted once
    assert changes(g) == 1


def test_a_paused_table_changed_by_hand_is_no_foreign_change() -> None:
    g, events = settled_with_metrics()
    Coordinator(g.store, GROUP, "op", g.clock, 1.0).set_request(PAUSE_PREFIX + "rtb-a", "on", by="alice")
    g.cycle("i-a")
    g.world.targets["rtb-a"] = "nat-0gateway"
    read_ec2_now(g)
    g.cycle("i-a", 3)
    assert changes(g) == 0 and not [e for e in events if e[0] == "foreign_change"]
    assert g.world.targets["rtb-a"] == "nat-0gateway"
