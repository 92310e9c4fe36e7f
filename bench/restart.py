#!/usr/bin/env python3
"""How long an agent restart keeps the NAT's heartbeat silent, against the 2 s its peers tolerate.

A loopback group (agent/lab/localgroup.py: a moto server plays DynamoDB and EC2, real agent
processes with runtime directories, as systemd's RuntimeDirectory= gives them, probing each other
by ICMP on 127.0.0.1, which the kernel answers as a NAT's does) runs two NATs;
NAT a's agent is ended and started again 0.1 s later (the unit's RestartSec=100ms), and the
benchmark reads DynamoDB every 50 ms:

* ``kill``: SIGKILL (a crash; its last renewal was up to heartbeat_interval before);
* ``restart``: SIGUSR2 (``systemctl restart``: a last renewal, then exit);
* ``cold``: SIGUSR2 with the trimmed service models deleted first (an upgrade that changes
  botocore): the exiting agent has a child make them before it exits (agent.handoff.NextProcess);
* ``cold_kill``: SIGKILL with the models deleted: the new process resumes through a temporary
  client on botocore's full models and makes the trimmed ones afterwards.

Per trial: ``exec_to_resume_s`` (from the new process's start to its resumed renewal, as the
agent logs it), ``silence_s`` (the longest time DynamoDB showed NAT a's heartbeat unchanged:
what its peers measure against ``silent_owner_after``), whether the session was kept, and how
often NAT a's route table changed owner or route (0 expected).

    python bench/restart.py [--trials 10] [--json FILE]

Run it alone (``flock /tmp/nat-ha-heavy.lock``): the figures are start-up times on this machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.lab.localgroup import LocalGroup  # noqa: E402

SCENARIOS = ("kill", "restart", "cold", "cold_kill")
RESTART_SEC = 0.1  # deploy/systemd/nat-ha.service
POLL = 0.05
WATCH_S = 5.0
PAUSE_S = 11.0  # > the crash-loop window (agent/host/runstate.py LOOP_WINDOW): no back-off between trials
TOOK_OVER = re.compile(r"took over session \w+ .*, ([0-9.]+) s after this process started")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench.cli import BenchParser

    p = BenchParser(prog="bench/restart.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=10, help="trials per scenario (default 10)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--workdir", metavar="DIR", help="keep the agents' logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    if not 1 <= args.trials <= 200:
        p.error("--trials must be between 1 and 200")
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    if bad or not args.scenarios:
        p.error(f"--scenarios: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(SCENARIOS)}")
    return args


def trial(g: LocalGroup, scenario: str, models: Path) -> dict[str, Any]:
    nat = g.nats[0]
    me, rtb = nat.instance_id, nat.route_table
    before = g.snapshot()
    route0 = before.routes[rtb]
    session0 = before.members[me].session
    log_offset = nat.log_path.stat().st_size
    seen: list[tuple[float, int]] = [(time.monotonic(), before.members[me].version)]
    if scenario.startswith("cold"):
        shutil.rmtree(models, ignore_errors=True)
    assert nat.proc is not None
    nat.proc.send_signal(signal.SIGKILL if scenario.endswith("kill") else signal.SIGUSR2)
    nat.proc.wait(10)
    time.sleep(RESTART_SEC)
    g.restart_agent(me)
    owners, targets = {(route0.owner, route0.term)}, {g.route_targets().get(rtb)}
    end = time.monotonic() + WATCH_S
    while time.monotonic() < end:
        snap = g.snapshot()
        m, r = snap.members[me], snap.routes[rtb]
        if m.version != seen[-1][1]:
            seen.append((time.monotonic(), m.version))
        owners.add((r.owner, r.term))
        time.sleep(POLL)
    targets.add(g.route_targets().get(rtb))
    after = g.snapshot()
    log = nat.log_path.read_bytes()[log_offset:].decode(errors="replace")
    m = TOOK_OVER.search(log)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    return {
        "scenario": scenario,
        "exec_to_resume_s": float(m.group(1)) if m else None,
        "silence_s": round(max(gaps), 3) if gaps else None,
        "session_kept": after.members[me].session == session0,
        "route_changes": len(owners) - 1 + len(targets) - 1,
    }


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        ts = [t for t in trials if t["scenario"] == scenario]
        if not ts:
            continue
        row: dict[str, Any] = {"trials": len(ts)}
        for key in ("exec_to_resume_s", "silence_s"):
            vals = sorted(t[key] for t in ts if t[key] is not None)
            row[key] = {"median": round(statistics.median(vals), 3), "max": round(vals[-1], 3)} if vals else None
        row["session_kept"] = sum(1 for t in ts if t["session_kept"])
        row["route_changes"] = sum(t["route_changes"] for t in ts)
        out[scenario] = row
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nat-ha-restart-") as tmp:
        if args.workdir:
            tmp = args.workdir
        models = Path(tmp) / "models"
        env = {"NAT_HA_MODEL_CACHE": str(models)}
        # ICMP probes of 127.0.0.1 are answered by the kernel, as a NAT's are while its agent restarts
        # (the demo's tcp-echo probes are answered by the agent itself: a restart would look like a death).
        group = LocalGroup(
            Path(tmp) / "group", n=2, metrics=False, runtime_dirs=True, extra_env=env, probe_method="icmp"
        )
        with group as g:
            if not g.wait_for(g.at_home, 90, 0.3):
                print("restart: the group did not settle", file=sys.stderr)
                return 1
            time.sleep(PAUSE_S)
            for scenario in args.scenarios:
                for k in range(args.trials):
                    t = trial(g, scenario, models)
                    trials.append(t)
                    print(f"{scenario:<8} trial {k + 1}/{args.trials}: {json.dumps(t)}", flush=True)
                    time.sleep(PAUSE_S - WATCH_S)
    results = {"restart_sec": RESTART_SEC, "poll_s": POLL, "scenarios": summarize(trials)}
    print()
    head = (
        f"{'scenario':<9} {'exec->resume med':>16} {'max':>6} {'silence med':>11} {'max':>6} {'kept':>5} {'routes':>6}"
    )
    print(head)
    print("-" * len(head))
    for name, row in results["scenarios"].items():
        e, s = row["exec_to_resume_s"] or {}, row["silence_s"] or {}
        print(
            f"{name:<9} {e.get('median', '-'):>16} {e.get('max', '-'):>6} {s.get('median', '-'):>11} "
            f"{s.get('max', '-'):>6} {row['session_kept']:>3}/{row['trials']:<1} {row['route_changes']:>6}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
