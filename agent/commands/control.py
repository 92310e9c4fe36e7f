"""``nat-ha drain``, ``switchover``, ``pause`` and ``resume``: operator requests, written to the table.

Only a route table's lease holder ever moves its route, so these commands do not touch EC2:
they record the operator's wish (a drain flag, a pin of a route table to a member, a pause of
the group or of one table), with who asked and why, and wait, bounded, until the agents have
carried it out. Each request and its end is also an entry of the group's history.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.commands import target as targets
from agent.commands.cli import UsageError
from agent.config import INSTANCE_RE, RTB_RE, Config
from coordinator.items import DRAIN_PREFIX, GROUP_PAUSE, MEMBER_ALIVE, PAUSE_PREFIX, PIN_PREFIX, GroupSnapshot

MAX_REASON = 200


def _common(p: argparse.ArgumentParser, wait: float = 30.0) -> None:
    targets.add_arguments(p)
    p.add_argument(
        "--wait",
        type=float,
        default=wait,
        metavar="SECONDS",
        help=f"how long to wait for the agents to carry it out (default {wait:g}; 0: do not wait)",
    )
    p.add_argument("--reason", default="", help="why (kept with the request and in `nat-ha history`)")


def add_arguments_drain(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--instance", help="instance to drain (default: this instance, from the config or IMDS)")
    p.add_argument("--undo", action="store_true", help="end the drain: the instance takes its route tables back")


def add_arguments_switchover(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--route-table", required=True, help="route table to move (rtb-...)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", help="instance that should serve it (it stays there while that NAT is healthy)")
    target.add_argument("--clear", action="store_true", help="remove the pin: the route table returns home")


def add_arguments_pause(p: argparse.ArgumentParser) -> None:
    _common(p, wait=10.0)
    p.add_argument("--route-table", help="pause only this route table (default: the whole group)")


def add_arguments_resume(p: argparse.ArgumentParser) -> None:
    _common(p, wait=10.0)
    p.add_argument("--route-table", help="resume only this route table's pause (default: the group's)")


@dataclass
class Session:
    """What every operator command needs: the config (members filled in), the coordinator, the history."""

    config: Config
    coordinator: Any
    history: Any
    snapshot: GroupSnapshot
    by: str


def _setup(args: argparse.Namespace, need_identity: bool) -> Session:
    from agent.runtime import coordinator_for, resolve
    from coordinator.history import OPERATOR, History

    if args.wait < 0:
        raise UsageError("--wait must be >= 0")
    if len(args.reason) > MAX_REASON:
        raise UsageError(f"--reason: at most {MAX_REASON} characters")
    t = targets.target(args)
    rt = resolve(t.config, need_identity=need_identity and not t.from_store, operator=True)
    coordinator = coordinator_for(rt)
    snapshot = coordinator.read_group()
    config = targets.members_from_store(rt.config, snapshot) if t.from_store else rt.config
    return Session(config, coordinator, History(rt.store, config.group, OPERATOR), snapshot, targets.operator_name())


def _wait(coordinator: Any, done: Callable[[GroupSnapshot], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if done(coordinator.read_group()):
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


def _record(s: Session, event: str, target: str, why: str, *, detail: str = "", seconds: float | None = None) -> None:
    """One history entry; a failure to write it is said, never fatal (the request itself is written)."""
    from coordinator.errors import CoordinatorError
    from coordinator.history import Event
    from coordinator.store import ConditionFailed, OutcomeUnknown, Unavailable

    try:
        s.history.append(Event(time.time(), event, target, s.by, why, detail, seconds))
    except (CoordinatorError, ConditionFailed, OutcomeUnknown, Unavailable) as exc:
        print(f"nat-ha: could not add {event} to the group's history: {exc}", file=sys.stderr)


def _lasted(s: Session, key: str) -> float | None:
    """How long the request ``key`` was in force (from its ``since``), when it is being ended."""
    r = s.snapshot.requests.get(key)
    return max(0.0, time.time() - r.since) if r is not None and r.value and r.since else None


def run_drain(args: argparse.Namespace) -> int:
    if args.instance and not INSTANCE_RE.match(args.instance):
        raise UsageError(f"--instance: {args.instance!r} is not an instance id (i-...)")
    s = _setup(args, need_identity=not args.instance)
    instance = args.instance or s.config.instance_id
    if not instance:
        raise UsageError("--instance is required when the group is named by --group (no config of this instance)")
    if s.config.member(instance) is None:
        raise UsageError(f"--instance: {instance} is not a member of group {s.config.group}")
    key = DRAIN_PREFIX + instance
    lasted = _lasted(s, key) if args.undo else None
    s.coordinator.set_request(key, "" if args.undo else "on", by=s.by, why=args.reason)
    _record(s, "undrain" if args.undo else "drain", instance, args.reason, seconds=lasted)
    if args.undo:
        print(f"drain of {instance} ended; its route tables return after the fail-back hold-down")
        return 0
    print(f"drain of {instance} requested; waiting up to {args.wait:.0f} s for its route tables to move")
    ok = args.wait == 0 or _wait(
        s.coordinator, lambda g: not any(r.owner == instance for r in g.routes.values()), args.wait
    )
    if not ok:
        print(
            f"nat-ha drain: {instance} still holds route tables (no healthy peer?); the request stays in place",
            file=sys.stderr,
        )
        return 1
    print(f"{instance} holds no route table")
    return 0


def run_switchover(args: argparse.Namespace) -> int:
    if not RTB_RE.match(args.route_table):
        raise UsageError(f"--route-table: {args.route_table!r} is not a route table id (rtb-...)")
    if args.to and not INSTANCE_RE.match(args.to):
        raise UsageError(f"--to: {args.to!r} is not an instance id (i-...)")
    s = _setup(args, need_identity=False)
    if args.route_table not in s.config.route_tables():
        raise UsageError(f"--route-table: {args.route_table} is not a route table of group {s.config.group}")
    if args.to and s.config.member(args.to) is None:
        raise UsageError(f"--to: {args.to} is not a member of group {s.config.group}")
    key = PIN_PREFIX + args.route_table
    lasted = _lasted(s, key) if args.clear else None
    s.coordinator.set_request(key, "" if args.clear else args.to, by=s.by, why=args.reason)
    _record(
        s,
        "unpin" if args.clear else "pin",
        args.route_table,
        args.reason,
        detail="" if args.clear else f"to {args.to}",
        seconds=lasted,
    )
    if args.clear:
        print(
            f"pin of {args.route_table} removed; it returns to {s.config.home_of(args.route_table)} "
            "after the fail-back hold-down"
        )
        return 0
    print(f"{args.route_table} pinned to {args.to}; waiting up to {args.wait:.0f} s")
    ok = args.wait == 0 or _wait(
        s.coordinator,
        lambda g: (r := g.routes.get(args.route_table)) is not None and r.owner == args.to,
        args.wait,
    )
    if not ok:
        print(
            f"nat-ha switchover: {args.route_table} did not move to {args.to} in time ({args.to} unhealthy?); "
            "the pin stays in place",
            file=sys.stderr,
        )
        return 1
    print(f"{args.route_table} is served by {args.to}")
    return 0


def _pause_key(s: Session, route_table: str | None) -> tuple[str, str]:
    """The request key and what it covers, for --route-table or the group."""
    if not route_table:
        return GROUP_PAUSE, f"group {s.config.group}"
    if not RTB_RE.match(route_table):
        raise UsageError(f"--route-table: {route_table!r} is not a route table id (rtb-...)")
    if route_table not in s.config.route_tables():
        raise UsageError(f"--route-table: {route_table} is not a route table of group {s.config.group}")
    return PAUSE_PREFIX + route_table, route_table


def _live_members(g: GroupSnapshot) -> list[str]:
    return sorted(i for i, m in g.members.items() if m.state == MEMBER_ALIVE)


def run_pause(args: argparse.Namespace) -> int:
    s = _setup(args, need_identity=False)
    key, what = _pause_key(s, args.route_table)
    s.coordinator.set_request(key, "on", by=s.by, why=args.reason)
    _record(s, "pause", "group" if key == GROUP_PAUSE else args.route_table, args.reason)
    print(f"{what} paused: the agents keep their leases and probes and write nothing to EC2 for it")
    if args.wait == 0:
        return 0
    # Every live agent says in its heartbeat that it sees the pause: only then is a change made by
    # hand safe from being written back (an agent that cannot pause never says so).
    ok = _wait(s.coordinator, lambda g: all(g.members[i].paused for i in _live_members(g)), args.wait)
    g = s.coordinator.read_group()
    if not ok:
        late = [i for i in _live_members(g) if not g.members[i].paused]
        print(
            f"nat-ha pause: {', '.join(late)} did not acknowledge the pause within {args.wait:.0f} s (an agent older "
            "than this nat-ha ignores pauses: upgrade it, or stop it); the pause stays in place",
            file=sys.stderr,
        )
        return 1
    print(f"acknowledged by every live agent ({', '.join(_live_members(g)) or 'none running'})")
    return 0


def run_resume(args: argparse.Namespace) -> int:
    s = _setup(args, need_identity=False)
    key, what = _pause_key(s, args.route_table)
    current = s.snapshot.requests.get(key)
    if current is None or current.value != "on":
        others = ", ".join(r.target for r in s.snapshot.pauses()) or "none"
        print(f"{what} was not paused (pauses in force: {others})")
        return 0
    lasted = _lasted(s, key)
    s.coordinator.set_request(key, "", by=s.by, why=args.reason)
    _record(s, "resume", "group" if key == GROUP_PAUSE else str(args.route_table), args.reason, seconds=lasted)
    took = f" after {lasted / 60:.0f} min" if lasted is not None else ""
    print(f"{what} resumed{took}: the holders write their routes again within a cycle")
    if args.wait == 0:
        return 0
    ok = _wait(
        s.coordinator,
        lambda g: bool(g.pauses()) or not any(g.members[i].paused for i in _live_members(g)),
        args.wait,
    )
    if not ok:
        print(f"nat-ha resume: the agents still report a pause after {args.wait:.0f} s", file=sys.stderr)
        return 1
    return 0
