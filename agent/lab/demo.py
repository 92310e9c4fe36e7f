"""``nat-ha demo``: a 3-AZ NAT group on this machine, one NAT killed, every step shown.

No root and no AWS account: moto server (127.0.0.1, a free port) plays EC2 and
DynamoDB; three real ``nat-ha agent`` processes probe each other with TCP over
loopback. The demo kills one agent with SIGKILL (its "instance" dies), then
watches EC2 and the table and prints a timeline: detection and take-over, the
route switch, the restart of the dead peer, its recovery and the fail-back.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Timeline:
    t0: float
    console: Any
    events: list[tuple[float, str, str]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def add(self, what: str, style: str = "", mark: str = "") -> None:
        t = time.monotonic() - self.t0
        self.events.append((t, what, style))
        if mark and mark not in self.marks:
            self.marks[mark] = t
        self.console.print(
            f"[dim]{t:7.2f} s[/dim]  " + (f"[{style}]{what}[/{style}]" if style else what), highlight=False
        )


MARKUP = re.compile(r"\[/?[a-z ]+\]")


class _PlainConsole:
    def print(self, text: str = "", **_: Any) -> None:
        print(MARKUP.sub("", str(text)), flush=True)

    def rule(self, text: str = "") -> None:
        print("--- " + MARKUP.sub("", text) + " ---", flush=True)


def _console(plain: bool) -> Any:
    if not plain:
        try:
            from rich.console import Console

            return Console(highlight=False)
        except ImportError:
            pass
    return _PlainConsole()


class LogTail:
    """Follow the agents' log files: their decision lines go into the timeline."""

    def __init__(self, names: dict[Path, str]) -> None:
        self.names = names
        self.offsets = {p: 0 for p in names}

    def new_lines(self) -> list[tuple[str, str]]:
        out = []
        for path, name in self.names.items():
            try:
                with open(path, "rb") as fh:
                    fh.seek(self.offsets[path])
                    data = fh.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1
            self.offsets[path] += end
            for line in data[:end].decode(errors="replace").splitlines():
                if line.startswith(("INFO ", "WARNING ")):
                    out.append((name, line.split(" ", 1)[1]))
        return out


def main(workdir: Path, args: argparse.Namespace) -> int:
    """Run the loopback demo in ``workdir`` (the command checked the arguments)."""
    from agent.lab.localgroup import LocalGroup

    console = _console(args.plain)
    console.rule("[bold]nat-ha demo[/bold]")
    console.print(
        f"A group of {args.nats} NAT instances in {args.nats} AZs, played by moto server on 127.0.0.1 "
        "and real agent processes.\nEach agent answers TCP probes for its NAT; killing it is the NAT dying."
    )
    deadline = time.monotonic() + args.timeout
    timeline: Timeline | None = None
    try:
        with LocalGroup(workdir, n=args.nats, metrics=False, _log=lambda msg: None) as g:
            names = {n.instance_id: f"nat-{chr(ord('a') + i)}" for i, n in enumerate(g.nats)}
            label = {iid: f"{names[iid]} ({iid})" for iid in names}
            console.print(f"moto server at {g.moto.url if g.moto else '?'}; agents starting...")
            if not g.wait_for(g.at_home, max(5.0, deadline - time.monotonic() - 60)):
                console.print("[red]the group did not settle: every route table at home[/red]")
                return 1
            _show_group(console, g, names)
            victim = g.nats[0]
            tail = LogTail({n.log_path: names[n.instance_id] for n in g.nats})
            tail.new_lines()
            console.rule(f"killing {label[victim.instance_id]} with SIGKILL")
            timeline = Timeline(time.monotonic(), console)
            g.kill(victim.instance_id)
            timeline.add(f"{names[victim.instance_id]} killed: its NAT stops answering", "bold red")
            ok = _watch(g, victim, names, timeline, tail, deadline)
            _summary(console, timeline, names[victim.instance_id])
            return 0 if ok else 1
    except RuntimeError as exc:
        print(f"nat-ha demo: {exc}", file=sys.stderr)
        return 1


def _show_group(console: Any, g: Any, names: dict[str, str]) -> None:
    snap = g.snapshot()
    targets = g.route_targets()
    console.print("")
    console.print("[bold]group settled[/bold]: every route table is served by its home NAT")
    for n in g.nats:
        r = snap.routes.get(n.route_table)
        console.print(
            f"  {n.route_table}  home {names[n.instance_id]}  lease {names.get(r.owner, '?') if r else '-'}"
            f" (term {r.term if r else 0})  EC2 routes to {names.get(targets.get(n.route_table, ''), '?')}"
        )
    console.print("")


def _watch(g: Any, victim: Any, names: dict[str, str], tl: Timeline, tail: LogTail, deadline: float) -> bool:
    vid = victim.instance_id
    seen_owner = {n.route_table: n.instance_id for n in g.nats}
    seen_target = dict(seen_owner)
    seen_state = "running"
    first = g.snapshot().members.get(vid)
    seen_member = (first.state, first.session) if first else ("absent", "")
    moved = False
    while time.monotonic() < deadline:
        for name, line in tail.new_lines():
            if name != names[vid] or g.alive(vid):
                tl.add(f"  [{name}] {line}", "cyan")
        try:
            targets = g.route_targets()
            snap = g.snapshot()  # read after the routes: a lease change behind a route change is visible
            state = g.client("ec2").describe_instances(InstanceIds=[vid])["Reservations"][0]["Instances"][0]["State"][
                "Name"
            ]
        except Exception:
            time.sleep(0.05)
            continue
        for rt, r in snap.routes.items():
            if r.owner and r.owner != seen_owner.get(rt):
                tl.add(
                    f"lease on {rt} -> {names.get(r.owner, r.owner)} (term {r.term})",
                    "yellow",
                    mark="lease_moved" if r.owner != vid else "lease_back",
                )
                seen_owner[rt] = r.owner
        for rt, target in targets.items():
            if target and target != seen_target.get(rt):
                back = target == vid
                tl.add(
                    f"EC2 routes {rt} -> {names.get(target, target)}",
                    "bold green",
                    mark="route_back" if back else "route_moved",
                )
                seen_target[rt] = target
                moved = moved or not back
        if state != seen_state:
            tl.add(f"EC2: {names[vid]} is {state}", "magenta", mark=f"instance_{state}")
            seen_state = state
        m = snap.members.get(vid)
        member = (m.state, m.session) if m else ("absent", "")
        if member != seen_member:
            if m is not None and m.state == "expired":
                tl.add(f"{names[vid]}'s session expired by {names.get(m.expired_by, m.expired_by)}", "yellow")
            elif m is not None and m.state == "alive" and member[1] != seen_member[1]:
                tl.add(f"{names[vid]} heartbeats again (new session)", "green", mark="peer_back")
            seen_member = member
        if m is not None and m.state == "alive" and m.health.healthy and "peer_back" in tl.marks:
            tl.marks.setdefault("peer_healthy", time.monotonic() - tl.t0)
        if moved and seen_target.get(victim.route_table) == vid and seen_owner.get(victim.route_table) == vid:
            tl.add(f"{names[vid]} serves its route table again: done", "bold")
            return True
        time.sleep(0.05)
    tl.add("timed out before the fail-back finished", "red")
    return False


def _summary(console: Any, tl: Timeline, victim: str) -> None:
    m = tl.marks
    rows = [
        ("route switched to a live NAT (failover)", m.get("route_moved")),
        ("lease taken over", m.get("lease_moved")),
        (f"{victim} stopped by a peer", m.get("instance_stopped")),
        (f"{victim} started again", m.get("instance_running")),
        (f"{victim} heartbeating again (recovery)", m.get("peer_back")),
        ("route failed back home", m.get("route_back")),
    ]
    console.rule("[bold]summary[/bold] (seconds after the kill)")
    for what, t in rows:
        console.print(f"  {what:<42} {'-' if t is None else f'{t:6.2f} s'}")
    if m.get("route_moved") is not None:
        console.print(
            f"\n[bold]failover: {m['route_moved']:.2f} s[/bold]; nat_monitor.sh needs 3-5 s to notice and "
            "has no arbiter; here exactly one agent moved each route table."
        )
