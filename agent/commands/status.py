"""``nat-ha status``: the group at a glance - members, health, owners, terms, EC2 routes."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from agent.config import DEFAULT_PATH, load


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def collect(config: Any) -> dict[str, Any]:
    """Read the group (consistent) and EC2's routes; flag every disagreement."""
    from agent.aws.ec2 import Ec2Error
    from agent.runtime import coordinator_for, resolve

    rt = resolve(config, need_identity=False, operator=True)
    config = rt.config
    snapshot = coordinator_for(rt).read_group()
    now = time.time()
    problems: list[str] = []
    try:
        ec2 = rt.ec2.routes(config.route_tables())
    except Ec2Error as exc:
        ec2 = {}
        problems.append(str(exc))
    members = []
    for m in config.members:
        item = snapshot.members.get(m.instance_id)
        members.append(
            {
                "instance_id": m.instance_id,
                "az": m.az or (item.az if item else ""),
                "state": item.state if item else "absent",
                "healthy": bool(item and item.health.healthy),
                "checks": dict(item.health.checks) if item else {},
                "reaches": list(item.health.reaches) if item else [],
                "draining": bool(item and item.draining) or snapshot.draining(m.instance_id),
                "heartbeat_age_s": round(now - item.updated_at, 1) if item and item.updated_at else None,
                "agent_version": item.agent_version if item else "",
                "detail": item.health.detail if item else "",
            }
        )
    pins = snapshot.pins()
    tables = []
    for rtb in config.route_tables():
        r = snapshot.routes.get(rtb)
        owner = r.owner if r else ""
        owner_item = snapshot.members.get(owner) if owner else None
        live = bool(r and owner_item and owner_item.state == "alive" and owner_item.session == r.owner_session)
        target = ec2.get(rtb)
        ec2_target = target.target if target else "unknown"
        mismatch = bool(owner and target is not None and (target.target != owner or target.state != "active"))
        if mismatch:
            problems.append(
                f"{rtb}: EC2 routes to {ec2_target} ({target.state if target else '?'}) "
                f"but the lease is held by {owner}"
            )
        if not live:
            problems.append(f"{rtb}: no live owner")
        tables.append(
            {
                "route_table": rtb,
                "home": config.home_of(rtb),
                "pinned_to": pins.get(rtb, ""),
                "owner": owner,
                "owner_live": live,
                "term": r.term if r else 0,
                "ec2_target": ec2_target,
                "ec2_state": target.state if target else "unknown",
                "mismatch": mismatch,
            }
        )
    for bad in snapshot.bad_items:
        problems.append(f"bad item {bad.key}: {bad.problem}")
    return {
        "group": config.group,
        "table": config.store.table,
        "members": members,
        "route_tables": tables,
        "problems": problems,
    }


def render(status: dict[str, Any]) -> str:
    lines = [f"group {status['group']} (table {status['table']})", ""]
    rows: list[tuple[str, ...]] = [("MEMBER", "AZ", "STATE", "HEALTH", "HEARTBEAT", "REACHES", "NOTE")]
    for m in status["members"]:
        health = "healthy" if m["healthy"] else ("unhealthy" if m["state"] != "absent" else "-")
        age = f"{m['heartbeat_age_s']:.1f} s ago" if m["heartbeat_age_s"] is not None else "-"
        note = "draining" if m["draining"] else (m["detail"] or "")
        rows.append((m["instance_id"], m["az"] or "-", m["state"], health, age, ",".join(m["reaches"]) or "-", note))
    lines += [*_table(rows), ""]
    rows = [("ROUTE TABLE", "HOME", "OWNER", "TERM", "EC2 ROUTES TO", "")]
    for t in status["route_tables"]:
        owner = (t["owner"] or "-") + ("" if t["owner_live"] or not t["owner"] else " (dead)")
        flag = "MISMATCH" if t["mismatch"] else ("pinned to " + t["pinned_to"] if t["pinned_to"] else "ok")
        ec2 = t["ec2_target"] + ("" if t["ec2_state"] in ("active", "unknown") else f" ({t['ec2_state']})")
        rows.append((t["route_table"], t["home"], owner, str(t["term"]), ec2, flag))
    lines += _table(rows)
    if status["problems"]:
        lines += ["", "problems:"] + [f"  - {p}" for p in status["problems"]]
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def run(args: argparse.Namespace) -> int:
    status = collect(load(args.config))
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else render(status))
    return 0
