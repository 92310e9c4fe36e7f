"""``nat-ha status``: the group at a glance - members, health, owners, terms, EC2 routes, Elastic IPs.

Exit 0 when it lists no problem, 1 when it does (or AWS did not answer within ``--timeout``),
2 for a bad config: scripts and monitoring can use the exit code alone.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from agent.commands.cli import UsageError
from agent.config import DEFAULT_PATH, Config, load

DEFAULT_TIMEOUT_S = 10.0  # the whole command; each AWS call also has its own 5 s limit (runtime.OPERATOR_TIMEOUT_S)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up when AWS has not answered within SECONDS in all (default {DEFAULT_TIMEOUT_S:g}; exit 1)",
    )


class Steps:
    """What :func:`collect` is waiting for now, so a timeout can say where it was stuck."""

    def __init__(self) -> None:
        self.now = "reading the config"


def collect(config: Config, steps: Steps | None = None) -> dict[str, Any]:
    """Read the group (consistent) and EC2's routes; flag every disagreement."""
    from agent.aws.ec2 import Ec2Error
    from agent.runtime import coordinator_for, resolve

    steps = steps or Steps()
    steps.now = "discovering the members from EC2 tags" if config.members_from_tags else "connecting"
    rt = resolve(config, need_identity=False, operator=True)
    config = rt.config
    steps.now = f"reading group {config.group} from DynamoDB table {config.store.table}"
    snapshot = coordinator_for(rt).read_group()
    now = time.time()
    problems: list[str] = list(rt.problems)  # what the discovered members break (the agent would refuse them)
    missing = _no_route_tables(config)
    if missing:
        problems.append(missing)
    steps.now = "reading the route tables from EC2"
    try:
        ec2 = rt.ec2.routes(config.route_tables())
    except Ec2Error as exc:
        ec2 = {}
        problems.append(str(exc))
    follow = config.egress()
    eips = {}
    if follow:
        steps.now = "reading the Elastic IPs from EC2"
        try:
            eips = rt.ec2.egress_ips(config.route_tables())
        except Ec2Error as exc:
            problems.append(str(exc))
    members = []
    for m in config.members:
        item = snapshot.members.get(m.instance_id)
        members.append(
            {
                "instance_id": m.instance_id,
                "az": m.az or (item.az if item else ""),
                "slot": m.slot,
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
        row = {
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
        if rtb in follow:
            row.update(_egress_row(rtb, eips.get(rtb), owner, problems))
        tables.append(row)
    for bad in snapshot.bad_items:
        problems.append(f"bad item {bad.key}: {bad.problem}")
    return {
        "group": config.group,
        "table": config.store.table,
        "members": members,
        "route_tables": tables,
        "problems": problems,
    }


def _egress_row(rtb: str, seen: Any, owner: str, problems: list[str]) -> dict[str, Any]:
    """Where ``rtb``'s Elastic IP sits and whether that is its holder's address for it (egress_ip = follow)."""
    holder = seen.holder if seen is not None else "unknown"
    ok = bool(owner) and holder == owner
    if owner and not ok:
        where = {"": "unassociated", "unknown": "unknown"}.get(holder, f"with {holder}")
        ip = f" {seen.public_ip}" if seen is not None and seen.public_ip else ""
        problems.append(
            f"{rtb}: its Elastic IP{ip} is {where}, not on its holder {owner}'s address for it: "
            "its traffic leaves without its own public address"
        )
    return {
        "egress_ip": seen.public_ip if seen is not None else "",
        "egress_holder": holder,
        "egress_ok": ok,
    }


def _sync_here(config: Config, problems: list[str]) -> dict[str, Any]:
    """This NAT's connection-sync service, when it runs here (its problems join the list)."""
    from agent.ctsync import control

    try:
        stats = control.request(config.conntrack_sync.control_socket, {"op": "stats"}, 2.0)
    except control.ControlError as exc:
        return {"summary": f"not asked ({exc})"}
    summary, found = control.health(stats)
    problems.extend(found)
    return {"summary": summary, "stats": stats}


def _no_route_tables(config: Config) -> str:
    """The problem line when no member has a home route table (nothing to fail over), with the fix."""
    if config.route_tables():
        return ""
    if not config.members_from_tags:
        return (
            "no route tables: no [[members]] entry lists route_tables; give each member its home private "
            'route tables (route_tables = ["rtb-..."]) or nothing is failed over'
        )
    homes = ", ".join(f"{m.instance_id} ({m.az})" if m.az else m.instance_id for m in config.members)
    return (
        f"no route tables: none is tagged nat-ha:group={config.group} with a nat-ha:home of a member, so nothing "
        f"is failed over; tag each private route table with the NAT of its AZ ({homes}): "
        f"aws ec2 create-tags --region {config.region or '<region>'} --resources <rtb-id> "
        f"--tags Key=nat-ha:group,Value={config.group} Key=nat-ha:home,Value=<its NAT's nat-ha:slot, or instance-id> "
        "(a nat-ha CloudFormation stack prints these commands as its TagRouteTables output)"
    )


def render(status: dict[str, Any]) -> str:
    lines = [f"group {status['group']} (table {status['table']})", ""]
    rows: list[tuple[str, ...]] = [("MEMBER", "AZ", "STATE", "HEALTH", "HEARTBEAT", "REACHES", "NOTE")]
    for m in status["members"]:
        health = "healthy" if m["healthy"] else ("unhealthy" if m["state"] != "absent" else "-")
        age = f"{m['heartbeat_age_s']:.1f} s ago" if m["heartbeat_age_s"] is not None else "-"
        note = "draining" if m["draining"] else (m["detail"] or "")
        rows.append((m["instance_id"], m["az"] or "-", m["state"], health, age, ",".join(m["reaches"]) or "-", note))
    lines += [*_table(rows), ""]
    egress = any("egress_ip" in t for t in status["route_tables"])
    rows = [("ROUTE TABLE", "HOME", "OWNER", "TERM", "EC2 ROUTES TO", *(("EGRESS IP",) if egress else ()), "")]
    for t in status["route_tables"]:
        owner = (t["owner"] or "-") + ("" if t["owner_live"] or not t["owner"] else " (dead)")
        flag = "MISMATCH" if t["mismatch"] else ("pinned to " + t["pinned_to"] if t["pinned_to"] else "ok")
        ec2 = t["ec2_target"] + ("" if t["ec2_state"] in ("active", "unknown") else f" ({t['ec2_state']})")
        eip: tuple[str, ...] = ()
        if egress:
            holder = t.get("egress_holder", "")
            eip = (f"{t.get('egress_ip') or '-'} ({holder or 'unassociated'})" if "egress_ip" in t else "-",)
            if "egress_ip" in t and not t["egress_ok"] and t["owner"] and flag == "ok":
                flag = "EGRESS IP ELSEWHERE"
        rows.append((t["route_table"], t["home"], owner, str(t["term"]), ec2, *eip, flag))
    lines += _table(rows)
    if "conntrack_sync" in status:
        lines += ["", f"conntrack sync (this NAT): {status['conntrack_sync']['summary']}"]
    if status["problems"]:
        lines += ["", "problems:"] + [f"  - {p}" for p in status["problems"]]
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def collect_within(config: Config, seconds: float) -> dict[str, Any] | str:
    """:func:`collect`, or a one-line reason if it has not finished after ``seconds``.

    botocore's timeouts are per socket operation and it retries, so an endpoint that accepts
    connections and never answers held ``status`` for 3 x 5 s; the whole command gets one deadline.
    The worker thread is a daemon: a call still hanging at the deadline dies with the process.
    """
    steps = Steps()
    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["status"] = collect(config, steps)
        except BaseException as exc:  # re-raised in the caller's thread, which maps it to an exit code
            out["error"] = exc

    worker = threading.Thread(target=work, name="nat-ha-status", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        return f"no answer from AWS within {seconds:g} s while {steps.now} (--timeout to wait longer)"
    if "error" in out:
        raise out["error"]
    status: dict[str, Any] = out["status"]
    return status


def run(args: argparse.Namespace) -> int:
    import math
    import sys

    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError("--timeout must be a number of seconds > 0")
    config = load(args.config)
    status = collect_within(config, args.timeout)
    if isinstance(status, str):
        print(f"nat-ha status: {status}", file=sys.stderr)
        return 1
    if config.conntrack_sync.enabled:
        status["conntrack_sync"] = _sync_here(config, status["problems"])
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else render(status))
    return 1 if status["problems"] else 0
