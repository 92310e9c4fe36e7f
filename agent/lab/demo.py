"""``nat-ha demo``: a 3-AZ NAT group on this machine, one NAT killed, every step shown.

No root and no AWS account: moto server (127.0.0.1, a free port) plays EC2 and
DynamoDB; three real ``nat-ha agent`` processes probe each other with TCP over
loopback. The demo kills one agent with SIGKILL (its "instance" dies), then
watches EC2 and the table and prints a timeline: detection and take-over, the
route switch, the restart of the dead peer, its recovery and the fail-back.

Every line says who: an agent's own log lines carry its NAT's name (nat-a,
nat-b, ...) and the time it logged them; what the demo sees in AWS is marked EC2
or DynamoDB. Instance and route table ids are shown once, then by name. EC2's
route tables are sampled every 25 ms (:class:`agent.lab.routewatch.RouteWatch`),
so the failover figure is when EC2 routed the table, to within a few tens of ms.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.lab.routewatch import RouteChange, RouteWatch, route_targets_of

SAMPLE_S = 0.025  # EC2 route sampling interval
SHOW_DELAY_S = 0.3  # events are printed in time order this long after they happened
IDS = re.compile(r"\b(?:i|rtb)-[0-9a-f]{8,17}\b")
SILENCE = re.compile(r"heartbeat silent (\d+(?:\.\d+)?) s")
# Lines about the loopback store's hiccups (moto server answers slowly on a busy machine): shown
# dim, they are not part of the failover's story.
HOUSEKEEPING = re.compile(r"^(cannot read the group|store unavailable|recovered: |heartbeat failed|session lapsed)")


# -------------------------------------------------------------------- output
class _PlainConsole:
    MARKUP = re.compile(r"\[/?[a-z ]+\]")

    def print(self, text: str = "") -> None:
        print(self.MARKUP.sub("", text), flush=True)

    def rule(self, text: str = "") -> None:
        print("--- " + self.MARKUP.sub("", text) + " ---", flush=True)

    def event(self, t: float, what: str, style: str) -> None:
        print(f"{t:7.2f} s  {what}", flush=True)


class _RichConsole:
    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False)

    def print(self, text: str = "") -> None:
        self.console.print(text, highlight=False)

    def rule(self, text: str = "") -> None:
        self.console.rule(text)

    def event(self, t: float, what: str, style: str) -> None:
        from rich.text import Text

        # Text, not markup: an agent's line may hold brackets ("[nat-b]" was once eaten as a style).
        self.console.print(Text.assemble((f"{t:7.2f} s  ", "dim"), (what, style)), highlight=False)


def _console(plain: bool) -> Any:
    if not plain:
        try:
            return _RichConsole()
        except ImportError:
            pass
    return _PlainConsole()


@dataclass(frozen=True)
class Event:
    t: float  # seconds after the kill
    what: str
    style: str = ""
    who: str = ""  # the NAT whose agent logged it; empty for what the demo saw in AWS


@dataclass
class Timeline:
    """Events at the moment they happened (seconds after ``t0``), printed in time order."""

    t0: float
    console: Any
    events: list[Event] = field(default_factory=list)  # in print (time) order
    marks: dict[str, float] = field(default_factory=dict)
    _pending: list[tuple[float, int, Event]] = field(default_factory=list)
    _count: int = 0

    def add(self, what: str, style: str = "", mark: str = "", at: float | None = None, who: str = "") -> None:
        """Record an event; ``at`` is its monotonic time (default: now)."""
        t = (time.monotonic() if at is None else at) - self.t0
        self._count += 1
        self._pending.append((t, self._count, Event(t, what, style, who)))
        if mark and (mark not in self.marks or t < self.marks[mark]):
            self.marks[mark] = t

    def flush(self, everything: bool = False) -> None:
        """Print the events older than :data:`SHOW_DELAY_S` (all of them at the end), oldest first."""
        horizon = float("inf") if everything else time.monotonic() - self.t0 - SHOW_DELAY_S
        self._pending.sort()
        while self._pending and self._pending[0][0] <= horizon:
            event = self._pending.pop(0)[2]
            self.events.append(event)
            self.console.event(event.t, event.what, event.style)


# --------------------------------------------------------------------- names
class Names:
    """Instance and route table ids -> the demo's names (nat-a, private-a, ...)."""

    def __init__(self, nats: list[Any]) -> None:
        self.of: dict[str, str] = {}
        for n in nats:
            self.of[n.instance_id] = n.name
            self.of[n.route_table] = n.table_name

    def __call__(self, ident: str) -> str:
        return self.of.get(ident, ident or "?")

    def text(self, line: str) -> str:
        return IDS.sub(lambda m: self.of.get(m.group(0), m.group(0)), line)


class LogTail:
    """Follow the agents' JSON log files: (NAT name, monotonic time logged, message) of each new line."""

    def __init__(self, names: dict[Path, str]) -> None:
        self.names = names
        self.offsets = {p: 0 for p in names}
        self.wall_to_mono = time.monotonic() - time.time()  # the agents stamp lines with wall-clock time

    def new_lines(self) -> list[tuple[str, float, str]]:
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
            for raw in data[:end].decode(errors="replace").splitlines():
                line = self._parse(raw)
                if line is not None:
                    out.append((name, *line))
        return out

    def _parse(self, raw: str) -> tuple[float, str] | None:
        try:
            rec = json.loads(raw)
        except ValueError:
            return None  # not a log record (a traceback goes to the log file, not the timeline)
        if not isinstance(rec, dict) or rec.get("level") not in ("info", "warning", "error"):
            return None
        try:
            wall = datetime.fromisoformat(str(rec["ts"]).replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError):
            wall = time.time()
        return wall + self.wall_to_mono, str(rec.get("msg", ""))


# ---------------------------------------------------------------------- demo
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
    try:
        with LocalGroup(workdir, n=args.nats, metrics=False, log_format="json", _log=lambda msg: None) as g:
            console.print(f"moto server at {g.moto.url if g.moto else '?'}; agents starting...")
            if not g.wait_for(g.at_home, max(5.0, deadline - time.monotonic() - 60)):
                console.print("[red]the group did not settle: every route table at home[/red]")
                return 1
            ok, _timeline = show(g, console, deadline)
            if getattr(args, "keep", False):
                keep_running(g, console)
            return 0 if ok else 1
    except RuntimeError as exc:
        print(f"nat-ha demo: {exc}", file=sys.stderr)
        return 1


def keep_running(g: Any, console: Any, stop: threading.Event | None = None) -> None:
    """``--keep``: leave the group running and say how to try the operator commands on it, until Ctrl-C
    (or ``stop``)."""
    from agent.lab.localgroup import DUMMY_ENV

    a, b = g.nats[0], g.nats[1]
    creds = " ".join(f"{k}={v}" for k, v in DUMMY_ENV.items())
    console.rule("the group keeps running: try the operator commands in another shell (Ctrl-C ends the demo)")
    for line in (
        f"export NAT_HA_CONFIG={a.config_path} {creds}",
        "nat-ha status                      # members, owners, EC2 routes; exit 1 when it lists a problem",
        "nat-ha history                     # the failover and fail-back you just saw, with who and how long",
        'nat-ha pause --reason "trying it"  # no EC2 write from now on; nat-ha resume ends it',
        f"nat-ha switchover --route-table {a.route_table} --to {b.instance_id}",
        f"nat-ha drain --instance {b.instance_id}    # and --undo",
        f"kill -9 {b.proc.pid if b.proc else '<pid>'}                      # {b.name}'s agent dies; watch status",
    ):
        console.print(f"  {line}")
    console.print(
        f"  (agent logs: {g.workdir})",
    )
    stop = stop or threading.Event()
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    console.print("stopping the group")


def show(g: Any, console: Any, deadline: float) -> tuple[bool, Timeline]:
    """Kill the first NAT of a settled group and show what follows; (fail-back done, the timeline)."""
    names = Names(g.nats)
    _show_group(console, g, names)
    victim = g.nats[0]
    tail = LogTail({n.log_path: n.name for n in g.nats})
    tail.new_lines()
    ec2 = g.client("ec2")
    tables = [n.route_table for n in g.nats]
    with RouteWatch(lambda: route_targets_of(ec2, tables), interval=SAMPLE_S) as routes:
        console.rule(f"killing {victim.name} ({victim.instance_id}) with SIGKILL")
        timeline = Timeline(time.monotonic(), console)
        g.kill(victim.instance_id)
        timeline.add(f"{victim.name} killed: its NAT stops answering", "bold red")
        ok = _watch(g, victim, names, timeline, tail, routes, ec2, deadline)
    timeline.flush(everything=True)
    _summary(console, g, timeline, names, routes)
    return ok, timeline


def _show_group(console: Any, g: Any, names: Names) -> None:
    snap = g.snapshot()
    targets = g.route_targets()
    console.print("")
    console.print("[bold]group settled[/bold]: every route table is served by its home NAT")
    for n in g.nats:
        console.print(f"  {n.name} is {n.instance_id} in {n.az}; its route table {n.table_name} is {n.route_table}")
    for n in g.nats:
        r = snap.routes.get(n.route_table)
        console.print(
            f"  {n.table_name}: home {n.name}, lease {names(r.owner) if r else '-'} (term {r.term if r else 0}),"
            f" EC2 routes it to {names(targets.get(n.route_table, ''))}"
        )
    console.print("")


def _watch(
    g: Any, victim: Any, names: Names, tl: Timeline, tail: LogTail, routes: RouteWatch, ec2: Any, deadline: float
) -> bool:
    vid = victim.instance_id
    seen_owner = {n.route_table: n.instance_id for n in g.nats}
    seen_target = dict(seen_owner)
    seen_state = "running"
    first = g.snapshot().members.get(vid)
    seen_member = (first.state, first.session) if first else ("absent", "")
    seen_changes = 0
    moved = False

    def agent_lines() -> None:
        for name, at, line in tail.new_lines():
            if at < tl.t0:
                continue  # logged before the kill (written to the file a moment later): not part of the story
            if name != victim.name or g.alive(vid):  # the dead agent's last words are not news
                style = "dim" if HOUSEKEEPING.match(line) else "cyan"
                tl.add(f"{name}: {names.text(line)}", style, mark=_agent_mark(name, line), at=at, who=name)

    while time.monotonic() < deadline:
        agent_lines()
        for change in routes.since(seen_changes):
            seen_changes += 1
            seen_target[change.route_table] = change.after
            back = change.after == vid
            tl.add(
                f"EC2 routes {names(change.route_table)} to {names(change.after)}",
                "bold green",
                mark="route_back" if back else "route_moved",
                at=change.at,
            )
            moved = moved or not back
        try:
            snap = g.snapshot()
            state = ec2.describe_instances(InstanceIds=[vid])["Reservations"][0]["Instances"][0]["State"]["Name"]
        except Exception:
            time.sleep(0.05)
            continue
        for rt, r in snap.routes.items():
            if r.owner and r.owner != seen_owner.get(rt):
                tl.add(
                    f"DynamoDB shows the lease on {names(rt)} held by {names(r.owner)} (term {r.term})",
                    "yellow",
                    mark="lease_moved" if r.owner != vid else "lease_back",
                )
                seen_owner[rt] = r.owner
        if state != seen_state:
            tl.add(f"EC2: {victim.name} is {state}", "magenta", mark=f"instance_{state}")
            seen_state = state
        m = snap.members.get(vid)
        member = (m.state, m.session) if m else ("absent", "")
        if member != seen_member:
            if m is not None and m.state == "expired":
                tl.add(f"DynamoDB shows {victim.name}'s session expired by {names(m.expired_by)}", "yellow")
            elif m is not None and m.state == "alive" and member[1] != seen_member[1]:
                tl.add(f"DynamoDB shows {victim.name} heartbeating again (new session)", "green", mark="peer_back")
            seen_member = member
        tl.flush()
        if moved and seen_target.get(victim.route_table) == vid and seen_owner.get(victim.route_table) == vid:
            agent_lines()  # everything logged until now
            tl.add(f"{victim.name} serves {victim.table_name} again: done", "bold")
            return True
        time.sleep(0.05)
    agent_lines()
    tl.add("timed out before the fail-back finished", "red")
    return False


def _agent_mark(name: str, line: str) -> str:
    return f"took_over:{name}" if line.startswith("took over") else ""


def _summary(console: Any, g: Any, tl: Timeline, names: Names, routes: RouteWatch) -> None:
    victim = g.nats[0]
    m = tl.marks
    moved = routes.first(victim.route_table, lambda c: c.after != victim.instance_id)
    logged = min(((t, k.split(":", 1)[1]) for k, t in m.items() if k.startswith("took_over:")), default=None)
    taker = names(moved.after) if moved else "?"
    rows = [
        (f"EC2 routes {victim.table_name} to {taker} (failover)", m.get("route_moved")),
        ("DynamoDB shows the lease taken over (sampled)", m.get("lease_moved")),
        (f'{logged[1]} logs "took over {victim.table_name}" (after acting)' if logged else "", logged),
        (f"EC2: {victim.name} stopped by a peer", m.get("instance_stopped")),
        (f"EC2: {victim.name} started again", m.get("instance_running")),
        (f"DynamoDB shows {victim.name} heartbeating again (recovery)", m.get("peer_back")),
        (f"EC2 routes {victim.table_name} back to {victim.name} (fail-back)", m.get("route_back")),
    ]
    console.rule("[bold]summary[/bold] (seconds after the kill)")
    for what, t in rows:
        if what:
            value = t[0] if isinstance(t, tuple) else t
            console.print(f"  {what:<52} {'-' if value is None else f'{value:6.2f} s'}")
    if moved is None:
        return
    console.print("")
    console.print(_failover_text(moved, tl, logged, taker, g))


def _failover_text(moved: RouteChange, tl: Timeline, logged: tuple[float, str] | None, taker: str, g: Any) -> str:
    """The failover figure, how exact it is, the demo's timing, and what the README's "about a second" means."""
    from agent.config import SCHEMA

    default = {k: key.default for k, key in SCHEMA["timing"].items()}
    t = {**default, **g.DEMO_TIMING, **g.timing}
    probe = SCHEMA["probe"]["interval"].default
    same = ("lease", "margin", "heartbeat_interval", "cycle_interval")
    changed = [k for k in sorted(t) if t[k] != default[k]]
    if any(t[k] != default[k] for k in same):
        kept = "The agents run a changed lease timing: " + ", ".join(f"{k} {t[k]:g} s" for k in same) + "."
    else:
        kept = (
            f"The agents run the production lease and detection timing: lease {t['lease']:g} s + margin "
            f"{t['margin']:g} s, a heartbeat every {t['heartbeat_interval']:g} s, an HA cycle every "
            f"{t['cycle_interval']:g} s, probes every {probe:g} s (TCP here, ICMP in production)."
        )
    shortened = ", ".join(f"{k} {t[k]:g} s (production {default[k]:g} s)" for k in changed)
    silence_s = t["lease"] + t["margin"]
    before = _silence(tl, logged)
    victim = g.nats[0].name
    last_beat = (
        f" ({taker} last saw {victim}'s heartbeat change about {before:.1f} s before the kill)" if before else ""
    )
    return "\n".join(
        [
            f"[bold]failover: {moved.at - tl.t0:.2f} s[/bold] from the kill to EC2 routing the table to {taker} "
            f"(EC2 sampled every {SAMPLE_S * 1000:.0f} ms: within {moved.error * 1000:.0f} ms); "
            "exactly one agent moved it. nat_monitor.sh needs 3-5 s to notice and has no arbiter.",
            kept + (f" Shortened so the story fits in about 15 s: {shortened}." if shortened else ""),
            f'The README\'s "about a second" is that lease + margin: {silence_s:g} s of heartbeat silence (with '
            "probes failing) before a peer takes over. The silence counts from the last heartbeat a peer saw, not "
            f"from the kill{last_beat}, so from the kill it takes {silence_s - t['heartbeat_interval']:g}-"
            f"{silence_s:g} s, plus up to one HA cycle and the EC2 call; the lab measures the outage with real "
            "packets (bench/failover.py).",
        ]
    )


def _silence(tl: Timeline, logged: tuple[float, str] | None) -> float | None:
    """How long before the kill the taker last saw a heartbeat: its logged silence minus the log line's time."""
    if logged is None:
        return None
    for e in tl.events:
        if e.t == logged[0] and e.what.startswith(f"{logged[1]}: took over"):
            found = SILENCE.search(e.what)
            if found:
                before = float(found.group(1)) - e.t  # the logged silence has 0.1 s steps
                return before if before >= 0.05 else None
    return None
