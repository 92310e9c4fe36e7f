"""``nat-ha demo`` on a real loopback group: every agent line names its NAT, and the failover figure is EC2's.

The demo's timeline is checked against the agents' own log files, and its
failover moment against a second, finer sampler of moto's route tables run by
the test (the real change lies inside that sampler's bracket).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from agent.lab import demo
from agent.lab.localgroup import LocalGroup
from agent.lab.routewatch import RouteWatch, route_targets_of

pytestmark = pytest.mark.integration

IDS = re.compile(r"\b(?:i|rtb)-[0-9a-f]{8,17}\b")


class Recorder:
    """A console that keeps what the demo prints."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, text: str = "") -> None:
        self.lines.extend(demo._PlainConsole.MARKUP.sub("", str(text)).splitlines())

    def rule(self, text: str = "") -> None:
        self.lines.append(f"--- {text} ---")

    def event(self, t: float, what: str, style: str) -> None:
        self.lines.append(f"{t:7.2f} s  {what}")


def logged_between(path: Path, start: float, end: float) -> list[str]:
    """Messages an agent logged (info and above) between wall-clock times ``start`` and ``end``."""
    out = []
    for raw in path.read_text().splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        ts = datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")).timestamp()
        if rec["level"] in ("info", "warning", "error") and start < ts < end:
            out.append(rec["msg"])
    return out


def test_demo_names_every_agent_line_and_reports_when_ec2_routed_the_table(tmp_path: Path) -> None:
    with LocalGroup(tmp_path / "group", n=3, metrics=False, log_format="json") as g:
        assert g.wait_for(g.at_home, 45), "the group never settled with every route table at home"
        victim = g.nats[0]
        ec2 = g.client("ec2")
        console = Recorder()
        truth = RouteWatch(lambda: route_targets_of(ec2, [victim.route_table]), interval=0.015)
        with truth:
            ok, timeline = demo.show(g, console, time.monotonic() + 90)
        kill_wall = time.time() - (time.monotonic() - timeline.t0)
        done_wall = kill_wall + timeline.events[-1].t
    assert ok, "\n".join(console.lines)

    # The timeline starts at the kill: lines an agent logged just before it (written to its file a
    # moment later) used to open it with negative times.
    assert timeline.events[0].what == f"{victim.name} killed: its NAT stops answering", timeline.events[:3]
    assert all(e.t >= 0 for e in timeline.events)
    # Every agent line starts with its NAT's name and shows names, not ids.
    names = {n.name for n in g.nats}
    agent_events = [e for e in timeline.events if e.who]
    assert {e.who for e in agent_events} == names  # the two survivors, and the dead NAT once restarted
    for e in agent_events:
        assert e.what.startswith(f"{e.who}: "), e
        assert not IDS.search(e.what), e
    for e in timeline.events:
        assert not IDS.search(e.what), e
    # ... and every line an agent logged from the kill to the end of the demo is in the timeline.
    shown = {e.what for e in agent_events}
    for n in g.nats:
        for msg in logged_between(n.log_path, kill_wall + 0.05, done_wall - 0.05):
            assert f"{n.name}: {demo.Names(g.nats).text(msg)}" in shown, (n.name, msg)
    taker = [e for e in agent_events if " took over " in e.what]
    assert taker and taker[0].what.startswith(f"{taker[0].who}: took over {victim.table_name} from {victim.name}")

    # The reported failover moment is within 50 ms of when moto's route changed.
    change = truth.first(victim.route_table)
    assert change is not None
    reported = timeline.t0 + timeline.marks["route_moved"]
    assert change.not_before - 0.05 <= reported <= change.seen + 0.05, (
        f"reported {reported - timeline.t0:.3f} s, moto changed between {change.not_before - timeline.t0:.3f} "
        f"and {change.seen - timeline.t0:.3f} s"
    )
    summary = next(line for line in console.lines if line.startswith("failover: "))
    assert summary.startswith(f"failover: {timeline.marks['route_moved']:.2f} s from the kill")
