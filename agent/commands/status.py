"""``nat-ha status``: the group at a glance - members, health, owners, terms, EC2 routes, Elastic IPs.

It never calls a dead NAT healthy. A member item that still says "alive" may belong to an agent
that died a moment ago (a peer expires it only after its lease): status reads the group twice,
a lease plus a margin apart (about 1.1 s), and a member whose heartbeat did not change in between
is ``stale``; only a member whose heartbeat changed shows its health and reaches. What is a
problem - a member not running, lost redundancy, a table without a live owner or away from its
home, EC2 routing a table elsewhere or refusing to say, a pause - is one line each.

Exit 0 when it lists no problem, 1 when it does (or AWS did not answer within ``--timeout``),
2 for bad input: scripts and monitoring can use the exit code alone. With ``--json`` errors are
JSON too.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent.commands import target as targets
from agent.commands.cli import UsageError
from agent.config import Config
from coordinator.items import MEMBER_ALIVE, GroupSnapshot, MemberItem, RequestItem

DEFAULT_TIMEOUT_S = 10.0  # the whole command; each AWS call also has its own 5 s limit (runtime.OPERATOR_TIMEOUT_S)
WATCH_CAP_S = 3.0  # the longest status watches heartbeats (a member declaring a longer lease is not judged)


def add_arguments(p: argparse.ArgumentParser) -> None:
    targets.add_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON for scripts (errors too)")
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


@dataclass
class Reads:
    """What status read: the group twice (``observed_s`` apart), EC2's routes and Elastic IPs, or their errors."""

    first: GroupSnapshot
    second: GroupSnapshot
    observed_s: float
    routes: dict[str, Any] = field(default_factory=dict)
    routes_error: str = ""
    eips: dict[str, Any] = field(default_factory=dict)
    eips_error: str = ""
    where: str = ""  # table, region, endpoint
    discovery: list[str] = field(default_factory=list)  # what the discovered members break (the agent refuses them)


def collect(target: targets.Target | Config, steps: Steps | None = None) -> dict[str, Any]:
    """Read the group (twice, to see who heartbeats) and EC2's routes; judge every row."""
    from agent.aws.ec2 import Ec2Error
    from agent.runtime import coordinator_for, resolve

    if isinstance(target, Config):
        target = targets.Target(target, False, "")
    steps = steps or Steps()
    config = target.config
    steps.now = "discovering the members from EC2 tags" if config.members_from_tags else "connecting"
    rt = resolve(config, need_identity=False, operator=True)
    config = rt.config
    where = f"DynamoDB table {config.store.table} in {config.region} at {rt.store.endpoint_url}"
    steps.now = f"reading group {config.group} from {where}"
    coordinator = coordinator_for(rt)
    first = coordinator.read_group()
    seen = time.monotonic()
    if target.from_store:
        config = targets.members_from_store(config, first)
        rt.ec2.members = {m.instance_id: m for m in config.members}
    reads = Reads(first, first, 0.0, where=where, discovery=list(rt.problems))
    window = watch_window(config, first)
    if window > 0:
        steps.now = f"watching the heartbeats for {window:.1f} s (reading group {config.group} again from {where})"
        time.sleep(max(0.0, seen + window - time.monotonic()))
        reads.second = coordinator.read_group()
        reads.observed_s = time.monotonic() - seen
    # EC2 after the second read: a move between the two reads shows as the new owner on the new route,
    # not as a mismatch that lasted only while status looked.
    ec2_where = f"EC2 in {config.region} at {rt.ec2.client.meta.endpoint_url}"
    steps.now = f"reading the route tables from {ec2_where}"
    try:
        reads.routes = rt.ec2.routes(config.route_tables())
    except Ec2Error as exc:
        reads.routes_error = str(exc)
    if config.egress():
        steps.now = f"reading the Elastic IPs from {ec2_where}"
        try:
            reads.eips = rt.ec2.egress_ips(config.route_tables())
        except Ec2Error as exc:
            reads.eips_error = str(exc)
    return assess(config, reads, time.time())


def watch_window(config: Config, snapshot: GroupSnapshot) -> float:
    """How long to watch for heartbeats: the longest lease a live member declares, plus the margin.

    A member declaring a lease longer than WATCH_CAP_S is not judged (it is ``alive`` as long as its
    item says so): watching less than its lease could not tell, and status would only wait longer.
    """
    windows = [m.lease_ms / 1000 + config.timing.margin for m in snapshot.members.values() if m.state == MEMBER_ALIVE]
    return max((w for w in windows if w <= WATCH_CAP_S), default=0.0)


def member_state(config: Config, reads: Reads, instance: str) -> str:
    """alive | stale | expired | left | absent: "alive" only for a heartbeat seen to change (or too young to judge)."""
    m = reads.second.members.get(instance)
    if m is None:
        return "absent"
    if m.state != MEMBER_ALIVE:
        return m.state
    before = reads.first.members.get(instance)
    changed = before is None or (before.session, before.version) != (m.session, m.version)
    if changed or reads.observed_s < m.lease_ms / 1000 + config.timing.margin:
        return "alive"
    return "stale"


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def describe_request(r: RequestItem, now: float) -> str:
    """``pause of the group by alice@laptop, 12 min ago: maintenance``."""
    what = {
        "drain": f"drain of {r.target}",
        "pin": f"pin of {r.target} to {r.value}",
        "pause": "pause of the group" if r.target == "group" else f"pause of {r.target}",
    }[r.kind]
    who = f" by {r.by}" if r.by else ""
    when = f", {_ago(max(0.0, now - r.since))}" if r.since else ""
    why = f": {r.why}" if r.why else ""
    return f"{what}{who}{when}{why}"


def assess(config: Config, reads: Reads, now: float) -> dict[str, Any]:
    """The status document: every member and route table with its verdict, and the problems (pure)."""
    snapshot = reads.second
    problems: list[str] = list(reads.discovery)
    missing = _no_route_tables(config)
    if missing:
        problems.append(missing)
    states = {m.instance_id: member_state(config, reads, m.instance_id) for m in config.members}
    members = []
    for m in config.members:
        item = snapshot.members.get(m.instance_id)
        state = states[m.instance_id]
        live = state == "alive"
        draining = bool(item and item.draining) or snapshot.draining(m.instance_id)
        members.append(
            {
                "instance_id": m.instance_id,
                "az": m.az or (item.az if item else ""),
                "slot": m.slot,
                "state": state,
                "healthy": (item.health.healthy if item else False) if live else None,
                "checks": dict(item.health.checks) if item and live else {},
                "reaches": list(item.health.reaches) if item and live else [],
                "draining": draining,
                "paused": bool(item and live and item.paused),
                "heartbeat_age_s": round(now - item.updated_at, 1) if item and item.updated_at else None,
                "agent_version": item.agent_version if item else "",
                "detail": (item.health.detail if item and live else _not_running(item, state)),
            }
        )
        if not live:
            problems.append(f"{m.instance_id}: {_not_running(item, state)}")
        elif item is not None and not item.health.healthy:
            failed = ", ".join(k for k, ok in sorted(item.health.checks.items()) if not ok) or "self check"
            detail = f": {item.health.detail}" if item.health.detail else ""
            problems.append(f"{m.instance_id}: unhealthy ({failed}){detail}")
    servers = [r["instance_id"] for r in members if r["state"] == "alive" and r["healthy"] and not r["draining"]]
    if len(config.members) >= 2 and len(servers) < 2:
        can = f"only {servers[0]} can serve route tables" if servers else "no member can serve a route table"
        problems.append(f"no redundancy: {can} (of {len(config.members)} members)")
    if reads.routes_error:
        problems.append(f"{reads.routes_error}: where EC2 routes each table is unknown")
    if reads.eips_error:
        problems.append(f"{reads.eips_error}: where each table's Elastic IP sits is unknown")
    for r in snapshot.pauses():
        problems.append(
            f"{describe_request(r, now)}: no EC2 write and no failover for "
            f"{'the group' if r.target == 'group' else r.target} until `nat-ha resume"
            f"{'' if r.target == 'group' else ' --route-table ' + r.target}`"
        )
    pins = snapshot.pins()
    follow = config.egress()
    tables = []
    for rtb in config.route_tables():
        tables.append(_table_row(config, reads, rtb, states, pins.get(rtb, ""), rtb in follow, problems))
    for bad in snapshot.bad_items:
        problems.append(f"bad item {bad.key}: {bad.problem}")
    return {
        "group": config.group,
        "table": config.store.table,
        "region": config.region,
        "watched_s": round(reads.observed_s, 2),
        "members": members,
        "route_tables": tables,
        "requests": [
            {"kind": r.kind, "target": r.target, "value": r.value, "by": r.by, "why": r.why, "since": r.since}
            for r in snapshot.active_requests()
        ],
        "requests_text": [describe_request(r, now) for r in snapshot.active_requests()],
        "problems": problems,
    }


def _not_running(item: MemberItem | None, state: str) -> str:
    if item is None:
        return "no heartbeat item: its agent never ran (or its item was deleted)"
    if state == "stale":
        return "its heartbeat stopped: the agent (or the NAT) died; a peer takes over its tables"
    if state == "expired":
        by = f" by {item.expired_by}" if item.expired_by else ""
        return f"its session was expired{by}: its agent is not running (or cannot reach DynamoDB)"
    if state == "left":
        return "its agent stopped (drained and left the group)"
    return ""


def _table_row(
    config: Config, reads: Reads, rtb: str, states: dict[str, str], pinned: str, follow: bool, problems: list[str]
) -> dict[str, Any]:
    snapshot = reads.second
    r = snapshot.routes.get(rtb)
    owner = r.owner if r else ""
    owner_item = snapshot.members.get(owner) if owner else None
    live = bool(r and owner_item and states.get(owner, member_state(config, reads, owner)) == "alive")
    live = live and owner_item is not None and r is not None and owner_item.session == r.owner_session
    home = config.home_of(rtb)
    target = reads.routes.get(rtb)
    known = target is not None and not reads.routes_error
    ec2_target = target.target if target is not None else "unknown"
    flags: list[str] = []
    if not live:
        flags.append("NO LIVE OWNER")
        why = f"its owner {owner} is {states.get(owner, 'not a member')}" if owner else "nobody holds it"
        problems.append(f"{rtb}: no live owner ({why}): nothing keeps its route on a healthy NAT")
    mismatch = bool(owner and known and target is not None and (target.target != owner or target.state != "active"))
    if mismatch:
        flags.append("MISMATCH")
        problems.append(
            f"{rtb}: EC2 routes to {ec2_target} ({target.state if target else '?'}) but the lease is held by {owner}"
        )
    if live and home and owner != home and owner != pinned:
        flags.append("AWAY FROM HOME")
        drained = snapshot.draining(home) or bool((h := snapshot.members.get(home)) and h.draining)
        why = (
            f"{home} is drained"
            if drained and states.get(home) == "alive"
            else f"{home} is {states.get(home, 'unknown')}"
        )
        problems.append(f"{rtb}: served by {owner}, away from its home {home} ({why})")
    if not known:
        flags.append("UNKNOWN")
    pause = snapshot.pause_of(rtb)
    row: dict[str, Any] = {
        "route_table": rtb,
        "home": home,
        "pinned_to": pinned,
        "paused": pause is not None,
        "owner": owner,
        "owner_live": live,
        "term": r.term if r else 0,
        "ec2_target": ec2_target,
        "ec2_state": target.state if target is not None else "unknown",
        "mismatch": mismatch,
    }
    if follow:
        row.update(_egress_row(rtb, reads.eips.get(rtb), owner, problems, known=not reads.eips_error))
        if owner and not row["egress_ok"] and row["egress_holder"] != "unknown":
            flags.append("EGRESS IP GONE" if row["egress_holder"] == "missing" else "EGRESS IP ELSEWHERE")
    if pause is not None:
        flags.append("PAUSED")
    row["flags"] = flags
    row["verdict"] = (
        flags[0] if flags else ("ok" if not pinned else f"pinned to {pinned}")
    )  # the worst first: a script can test verdict == "ok"
    return row


def _egress_row(rtb: str, seen: Any, owner: str, problems: list[str], *, known: bool) -> dict[str, Any]:
    """Where ``rtb``'s Elastic IP sits and whether that is its holder's address for it (egress_ip = follow)."""
    holder = seen.holder if seen is not None and known else "unknown"
    ok = bool(owner) and holder == owner
    if owner and not ok and known:
        where = {"": "unassociated"}.get(holder, f"with {holder}")
        if holder.startswith("missing"):
            where = "gone from the account (released?)"
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
    region = f", {status['region']}" if status.get("region") else ""
    lines = [f"group {status['group']} (table {status['table']}{region})", ""]
    rows: list[tuple[str, ...]] = [("MEMBER", "AZ", "STATE", "HEALTH", "HEARTBEAT", "REACHES", "NOTE")]
    for m in status["members"]:
        health = {True: "healthy", False: "unhealthy", None: "-"}[m["healthy"]]
        age = f"{m['heartbeat_age_s']:.1f} s ago" if m["heartbeat_age_s"] is not None else "-"
        note = "draining" if m["draining"] else (m["detail"] or "")
        if m.get("paused") and not m["draining"]:
            note = ("paused; " + note).rstrip("; ")
        rows.append((m["instance_id"], m["az"] or "-", m["state"], health, age, ",".join(m["reaches"]) or "-", note))
    lines += [*_table(rows), ""]
    egress = any("egress_ip" in t for t in status["route_tables"])
    rows = [("ROUTE TABLE", "HOME", "OWNER", "TERM", "EC2 ROUTES TO", *(("EGRESS IP",) if egress else ()), "VERDICT")]
    for t in status["route_tables"]:
        owner = (t["owner"] or "-") + ("" if t["owner_live"] or not t["owner"] else " (dead)")
        ec2 = t["ec2_target"] + ("" if t["ec2_state"] in ("active", "unknown") else f" ({t['ec2_state']})")
        eip: tuple[str, ...] = ()
        if egress:
            holder = t.get("egress_holder", "")
            eip = (f"{t.get('egress_ip') or '-'} ({holder or 'unassociated'})" if "egress_ip" in t else "-",)
        verdict = ", ".join(t["flags"]) if t["flags"] else t["verdict"]
        rows.append((t["route_table"], t["home"], owner, str(t["term"]), ec2, *eip, verdict))
    lines += _table(rows)
    if status.get("requests_text"):
        lines += ["", "requests:"] + [f"  - {r}" for r in status["requests_text"]]
    if "conntrack_sync" in status:
        lines += ["", f"conntrack sync (this NAT): {status['conntrack_sync']['summary']}"]
    if status["problems"]:
        lines += ["", "problems:"] + [f"  - {p}" for p in status["problems"]]
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def collect_within(target: targets.Target | Config, seconds: float) -> dict[str, Any] | str:
    """:func:`collect`, or a one-line reason if it has not finished after ``seconds``.

    botocore's timeouts are per socket operation and it retries, so an endpoint that accepts
    connections and never answers held ``status`` for 3 x 5 s; the whole command gets one deadline.
    The worker thread is a daemon: a call still hanging at the deadline dies with the process.
    """
    import agent.runtime  # noqa: F401  # botocore's load is not AWS's answer: before the clock starts

    steps = Steps()
    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["status"] = collect(target, steps)
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
    target = targets.target(args)
    config = target.config
    status = collect_within(target, args.timeout)
    if isinstance(status, str):
        print(f"nat-ha status: {status}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": status, "exit_code": 1}, indent=2))
        return 1
    if config.conntrack_sync.enabled:
        status["conntrack_sync"] = _sync_here(config, status["problems"])
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else render(status))
    return 1 if status["problems"] else 0
