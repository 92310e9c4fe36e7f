"""The demo's output pieces: names for ids, time order, agent lines that rich cannot eat, JSON log lines."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from agent.lab import demo
from agent.lab.routewatch import RouteWatch

NATS = [
    SimpleNamespace(instance_id="i-0123456789abcdef0", route_table="rtb-0123456789abcdef0", name="nat-a",
                    table_name="private-a"),
    SimpleNamespace(instance_id="i-1123456789abcdef0", route_table="rtb-1123456789abcdef0", name="nat-b",
                    table_name="private-b"),
]  # fmt: skip


def test_ids_become_names() -> None:
    names = demo.Names(NATS)
    line = "holding rtb-1123456789abcdef0 (term 1); peers healthy: i-0123456789abcdef0; not healthy: i-9999999999999"
    assert names.text(line) == "holding private-b (term 1); peers healthy: nat-a; not healthy: i-9999999999999"
    assert names("i-1123456789abcdef0") == "nat-b" and names("") == "?"


class Lines:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def event(self, t: float, what: str, style: str) -> None:
        self.seen.append(f"{t:.2f} {what}")


def test_the_timeline_prints_in_time_order_after_a_short_delay() -> None:
    out = Lines()
    tl = demo.Timeline(time.monotonic(), out)
    tl.add("late", at=tl.t0 + 0.2)
    tl.add("early", at=tl.t0 + 0.1, mark="m")
    tl.add("earlier", at=tl.t0 + 0.05, mark="m")
    tl.flush()
    assert out.seen == []  # not yet SHOW_DELAY_S old
    tl.flush(everything=True)
    assert out.seen == ["0.05 earlier", "0.10 early", "0.20 late"]
    assert tl.marks["m"] == tl.events[0].t


def test_rich_shows_an_agent_line_with_brackets_as_it_is() -> None:
    console = demo._RichConsole()
    buffer = io.StringIO()
    console.console = Console(file=buffer, width=200, color_system=None)
    console.event(1.0, "nat-b: [nat-b] holding private-b [/bold]", "cyan")
    assert "nat-b: [nat-b] holding private-b [/bold]" in buffer.getvalue()


def test_log_tail_reads_json_lines_with_their_own_time(tmp_path: Path) -> None:
    log = tmp_path / "nat.log"
    log.write_text("")
    tail = demo.LogTail({log: "nat-a"})
    logged_mono, stamp = time.monotonic() - 2.0, time.time() - 2.0  # the same moment on both clocks
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"
    records = [
        {"ts": ts, "level": "info", "msg": "took over rtb-1"},
        {"ts": ts, "level": "debug", "msg": "not shown"},
    ]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\nTraceback (most recent call last):\n  partial")
    [(name, at, msg)] = tail.new_lines()
    assert (name, msg) == ("nat-a", "took over rtb-1")
    assert abs(at - logged_mono) < 0.05  # placed when it was logged, not when it was read (however late)
    assert tail.new_lines() == []


def test_route_watch_brackets_each_change() -> None:
    answers = iter([{"rtb-1": "i-a"}, {"rtb-1": "i-a"}, {"rtb-1": "i-b"}, {"rtb-1": "i-b"}])
    watch = RouteWatch(lambda: next(answers))
    for _ in range(4):
        watch.poll()
    [change] = watch.changes
    assert (change.route_table, change.before, change.after) == ("rtb-1", "i-a", "i-b")
    assert change.not_before <= change.at <= change.seen and change.error >= 0
    assert watch.first("rtb-1") == change and watch.since(1) == []
