"""``nat-ha history``: the group's recent failovers, fail-backs, drains, pins, pauses and stops.

Read from the group's history partition in DynamoDB (coordinator.history): each entry says
when, what, which route table or instance, who (an agent's instance id, or the operator), why
and how long (a failover from detection to the route write; a drain, pin or pause from its
start to its end).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from agent.commands import target as targets
from agent.commands.cli import UsageError

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    targets.add_arguments(p)
    p.add_argument("--limit", type=int, default=30, help="show at most this many entries, newest first (default 30)")
    p.add_argument("--since", help="only entries newer than this, e.g. 30m, 6h, 7d")
    p.add_argument("--route-table", help="only entries about this route table")
    p.add_argument("--instance", help="only entries about or by this instance")
    p.add_argument("--json", action="store_true", help="print JSON for scripts (errors too)")


def _seconds(text: str) -> float:
    m = DURATION.match(text)
    if m is None:
        raise UsageError(f"--since: {text!r} is not a duration like 30m, 6h or 7d")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def _took(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run(args: argparse.Namespace) -> int:
    from agent.runtime import resolve
    from coordinator.history import OPERATOR, History
    from coordinator.store import Unavailable

    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    since = time.time() - _seconds(args.since) if args.since else 0.0
    t = targets.target(args)
    rt = resolve(t.config, need_identity=False, operator=True)
    try:
        events = History(rt.store, rt.config.group, OPERATOR).read()
    except Unavailable as exc:
        from coordinator.errors import StoreUnavailable

        raise StoreUnavailable(f"cannot read the history of group {rt.config.group!r}: {exc}") from exc
    shown = [
        e
        for e in events
        if e.at >= since
        and (not args.route_table or e.target == args.route_table)
        and (not args.instance or args.instance in (e.target, e.by) or args.instance in e.detail)
    ][: args.limit]
    if args.json:
        out: dict[str, Any] = {"group": rt.config.group, "events": [e.to_json() for e in shown]}
        print(json.dumps(out, indent=2))
        return 0
    if not shown:
        print(f"group {rt.config.group}: no history entries" + (f" in the last {args.since}" if args.since else ""))
        return 0
    rows = [("WHEN (UTC)", "EVENT", "TARGET", "DETAIL", "TOOK", "BY", "WHY")]
    rows += [(_when(e.at), e.event, e.target, e.detail or "-", _took(e.seconds), e.by, e.why or "-") for e in shown]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"group {rt.config.group}: the {len(shown)} newest entries")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
