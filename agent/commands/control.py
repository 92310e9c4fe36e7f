"""``nat-ha drain`` and ``nat-ha switchover``: operator requests, written to the table.

Only a route table's lease holder ever moves its route, so these commands do not
touch EC2: they record the operator's wish (a drain flag, or a pin of a route
table to a member) and wait, bounded, until the agents have carried it out.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from agent.commands.cli import UsageError
from agent.config import DEFAULT_PATH, INSTANCE_RE, RTB_RE, load


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    p.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the agents to carry it out (default 30; 0: do not wait)",
    )


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


def _setup(args: argparse.Namespace, need_identity: bool) -> tuple[Any, Any]:
    from agent.runtime import coordinator_for, resolve

    if args.wait < 0:
        raise UsageError("--wait must be >= 0")
    config = load(args.config)
    rt = resolve(config, need_identity=need_identity, operator=True)
    return rt.config, coordinator_for(rt)


def _wait(coordinator: Any, done: Any, seconds: float) -> bool:
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


def run_drain(args: argparse.Namespace) -> int:
    if args.instance and not INSTANCE_RE.match(args.instance):
        raise UsageError(f"--instance: {args.instance!r} is not an instance id (i-...)")
    config, coordinator = _setup(args, need_identity=not args.instance)
    instance = args.instance or config.instance_id
    if config.member(instance) is None:
        raise UsageError(f"--instance: {instance} is not a member of group {config.group}")
    coordinator.set_request("drain#" + instance, "" if args.undo else "on")
    if args.undo:
        print(f"drain of {instance} ended; its route tables return after the fail-back hold-down")
        return 0
    print(f"drain of {instance} requested; waiting up to {args.wait:.0f} s for its route tables to move")
    ok = args.wait == 0 or _wait(
        coordinator, lambda s: not any(r.owner == instance for r in s.routes.values()), args.wait
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
    config, coordinator = _setup(args, need_identity=False)
    if args.route_table not in config.route_tables():
        raise UsageError(f"--route-table: {args.route_table} is not a route table of group {config.group}")
    if args.to and config.member(args.to) is None:
        raise UsageError(f"--to: {args.to} is not a member of group {config.group}")
    coordinator.set_request("pin#" + args.route_table, "" if args.clear else args.to)
    if args.clear:
        print(
            f"pin of {args.route_table} removed; it returns to {config.home_of(args.route_table)} "
            "after the fail-back hold-down"
        )
        return 0
    print(f"{args.route_table} pinned to {args.to}; waiting up to {args.wait:.0f} s")
    ok = args.wait == 0 or _wait(
        coordinator,
        lambda s: (r := s.routes.get(args.route_table)) is not None and r.owner == args.to,
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
