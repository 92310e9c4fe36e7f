#!/usr/bin/env python3
"""Measure the CPU cost of the peer prober alone: ICMP probes on loopback at the default cadence.

Runs one :class:`agent.host.probes.Prober` (method ``icmp``, as in production) in this
process against 127.0.0.1 (and 127.0.0.2, 127.0.0.3, ... with ``--targets N``; all
of 127.0.0.0/8 answers on loopback) every ``--interval`` seconds with ``--timeout``
(defaults: probe.interval 0.2 s and probe.timeout 0.15 s of agent/config.py) for
``--seconds``, after one second of warm-up that is not measured. Nothing else runs.

    python bench/probes.py --seconds 30 --json probes.json

Figures, over the measured part only:

* ``cpu_percent``: CPU time of the whole process (``time.process_time()``, user +
  system of every thread; the main thread only sleeps) over the wall time; 100 =
  one core. This includes the kernel's loopback work for each echo request and
  reply, which is charged to the sending thread;
* ``probe_thread_cpu_percent``: the same for the "nat-ha-probes" thread alone, from
  ``/proc/self/task/TID/schedstat`` (nanoseconds on CPU), when available;
* ``probes``, ``answered``: observer calls, and those that got an answer in time;
* ``rounds``: probe rounds done.

Needs root (CAP_NET_RAW) or a ``net.ipv4.ping_group_range`` that allows the group
(``--privileged``, default auto like the agent).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WARMUP_S = 1.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench.cli import BenchParser  # after the repository is on sys.path

    p = BenchParser(prog="bench/probes.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0, help="measured run length after warm-up (default 30)")
    p.add_argument("--targets", type=int, default=1, help="peers probed each round: 127.0.0.1, .2, ... (default 1)")
    p.add_argument("--interval", type=float, default=0.2, help="probe.interval in seconds (default 0.2)")
    p.add_argument("--timeout", type=float, default=0.15, help="probe.timeout in seconds (default 0.15)")
    p.add_argument(
        "--privileged", choices=("auto", "true", "false"), default="auto", help="probe.privileged (default auto)"
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    args = p.parse_args(argv)
    if args.seconds < 1:
        p.error("--seconds must be at least 1")
    if not 1 <= args.targets <= 254:
        p.error("--targets must be between 1 and 254")
    if args.interval <= 0 or args.timeout <= 0:
        p.error("--interval and --timeout must be positive")
    if args.json:
        parent = Path(args.json).resolve().parent
        if not parent.is_dir():
            p.error(f"--json {args.json}: directory {parent} does not exist")
    return args


def thread_cpu_ns(native_id: int | None) -> int | None:
    """Nanoseconds the thread has run on a CPU (schedstat's first field), None when unknown."""
    if native_id is None:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def probe_thread_id() -> int | None:
    for t in threading.enumerate():
        if t.name == "nat-ha-probes":
            return t.native_id
    return None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from agent.host.probes import Prober, Target

    counts = {"probes": 0, "answered": 0}
    lock = threading.Lock()

    def observe(peer: str, ok: bool, rtt: float) -> None:
        with lock:
            counts["probes"] += 1
            counts["answered"] += ok

    targets = [Target(f"i-{n}", f"127.0.0.{n}") for n in range(1, args.targets + 1)]
    prober = Prober(
        targets,
        method="icmp",
        interval=args.interval,
        timeout=args.timeout,
        window=5,
        down_after=3,
        privileged=args.privileged,
        observer=observe,
    )
    prober.start()
    try:
        time.sleep(WARMUP_S)
        tid = probe_thread_id()
        with lock:
            start_counts = dict(counts)
        start_rounds = prober.rounds
        t0, cpu0, th0 = time.monotonic(), time.process_time(), thread_cpu_ns(tid)
        time.sleep(args.seconds)
        t1, cpu1, th1 = time.monotonic(), time.process_time(), thread_cpu_ns(tid)
        with lock:
            end_counts = dict(counts)
        end_rounds = prober.rounds
        views = prober.snapshot()
    finally:
        prober.stop()
    wall = t1 - t0
    return {
        "seconds": round(wall, 2),
        "targets": args.targets,
        "interval": args.interval,
        "timeout": args.timeout,
        "privileged": prober.privileged,
        "cpu_percent": round(100.0 * (cpu1 - cpu0) / wall, 3),
        "probe_thread_cpu_percent": (
            round(100.0 * (th1 - th0) / 1e9 / wall, 3) if th0 is not None and th1 is not None else None
        ),
        "rounds": end_rounds - start_rounds,
        "probes": end_counts["probes"] - start_counts["probes"],
        "answered": end_counts["answered"] - start_counts["answered"],
        "all_up": all(v.up for v in views.values()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from agent.host.probes import ProbeSetupError

    try:
        result = measure(args)
    except ProbeSetupError as exc:
        print(f"probes: {exc}", file=sys.stderr)
        return 2
    thread = result["probe_thread_cpu_percent"]
    rows = [
        ("run", f"{result['seconds']:.1f} s, {result['targets']} target(s), every {args.interval} s"),
        ("socket", "raw (privileged)" if result["privileged"] else "datagram (unprivileged)"),
        ("process CPU", f"{result['cpu_percent']:.3f} % of one core"),
        ("probe thread CPU", "n/a" if thread is None else f"{thread:.3f} % of one core"),
        ("rounds", str(result["rounds"])),
        ("probes sent / answered", f"{result['probes']} / {result['answered']}"),
        ("all targets up", str(result["all_up"])),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
