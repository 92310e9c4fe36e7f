#!/usr/bin/env python3
"""Measure one real agent's footprint: RSS, CPU and AWS calls per minute at the default cadence.

Starts a moto server (EC2, and DynamoDB unless ``--backend dynalite``) on 127.0.0.1,
a two-NAT :class:`agent.lab.localgroup.LocalGroup` with the *default* timing of
``agent/config.py`` (not the demo's shortened one), and samples the first agent
from ``/proc``: RSS (VmRSS, VmHWM) and CPU time (utime+stime). Its AWS calls are
counted over the steady part from its own /metrics (it records nothing to a file).

    python bench/footprint.py --seconds 240 --backend dynalite --json footprint.json

The steady part is the second half of the run: ``rss_mb_steady`` is the median RSS
there, ``cpu_percent`` the CPU time used there (with the processes it started) over
its wall time (100 = one core), and the per-minute rates are counted there. ``rss_mb_peak`` is the kernel's VmHWM.
``threads`` splits the CPU by thread (nanoseconds from ``schedstat``) with each thread's
wake-ups a second: on this VM a wake-up costs 0.1-0.3 ms of CPU by itself (bench/wakeup.py).
See bench/README.md for the figures and what was done to reach them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGETS = {"rss_mb_steady": 45.0, "cpu_percent": 1.0}
DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
DYNAMODB_READS = frozenset({"Query", "GetItem", "Scan", "BatchGetItem", "TransactGetItems", "DescribeTable"})
CLK_TCK = os.sysconf("SC_CLK_TCK")
CALLS_METRIC = "nat_ha_aws_request_duration_seconds_count"


class UsageError(Exception):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench.cli import BenchParser  # after the repository is on sys.path

    p = BenchParser(prog="bench/footprint.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--seconds",
        type=float,
        default=240.0,
        help="measured run length after start-up (default 240: the CPU is read over the second half, in 10 ms ticks)",
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument(
        "--backend",
        choices=("moto", "dynalite"),
        default="moto",
        help="DynamoDB server: moto (default) or dynalite (npm, installed on first use); EC2 is always moto",
    )
    p.add_argument(
        "--probe",
        choices=("icmp", "tcp-echo"),
        default="icmp",
        help="probe method of the agents (default icmp, as in production; needs root or ping_group_range)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=0.5,
        help="seconds between /proc samples (default 0.5)",
    )
    p.add_argument(
        "--scrape-interval",
        type=float,
        default=15.0,
        help="scrape the agent's /metrics this often like Prometheus would (0: never; default 15)",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the first cycle",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the measured agent (repeatable), e.g. MALLOC_ARENA_MAX=2",
    )
    p.add_argument(
        "--workdir",
        metavar="DIR",
        help="keep configs and logs here (default: a temporary directory)",
    )
    args = p.parse_args(argv)
    if args.seconds < 4:
        p.error("--seconds must be at least 4")
    if not 0.05 <= args.interval <= args.seconds / 4:
        p.error("--interval must be between 0.05 and a quarter of --seconds")
    if args.scrape_interval < 0:
        p.error("--scrape-interval must not be negative")
    if args.startup_timeout <= 0:
        p.error("--startup-timeout must be positive")
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            p.error(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    args.env = env
    if args.json:
        parent = Path(args.json).resolve().parent
        if not parent.is_dir():
            p.error(f"--json {args.json}: directory {parent} does not exist")
    return args


# ---------------------------------------------------------------------- /proc
def read_rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def read_cpu_s(pid: int) -> float:
    """CPU time of the process (all its threads) and of the children it waited for, in seconds.

    Children count: an agent running as root spawns iptables-save and nft for its
    firewall self checks, and that CPU is the agent's cost too.
    """
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17.
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def read_threads(pid: int) -> dict[int, tuple[float, int]]:
    """Per thread: (seconds on CPU, voluntary context switches), by thread id.

    ``schedstat`` counts nanoseconds, where ``/proc/PID/stat`` counts clock ticks
    (10 ms): over the 30 s steady part of a 60 s run one tick is 0.03 point, and
    ~30 ticks vary by several. A voluntary switch is a sleep: each one is a wake-up.
    """
    out: dict[int, tuple[float, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                on_cpu = int(fh.read().split()[0]) / 1e9
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                switches = next(int(line.split()[1]) for line in fh if line.startswith("voluntary_ctxt_switches"))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue  # the thread ended
        out[int(tid)] = (on_cpu, switches)
    return out


def thread_rates(
    start: dict[int, tuple[float, int]],
    end: dict[int, tuple[float, int]],
    seconds: float,
) -> list[dict[str, Any]]:
    """Threads alive over the whole window, oldest first (the first is the main thread)."""
    return [
        {
            "thread": "main" if i == 0 else f"thread {i + 1}",
            "cpu_percent": round(100.0 * (end[tid][0] - start[tid][0]) / seconds, 3),
            "wakeups_per_s": round((end[tid][1] - start[tid][1]) / seconds, 1),
        }
        for i, tid in enumerate(sorted(set(start) & set(end)))
    ]


def count_calls(metrics_text: str) -> dict[tuple[str, str], int]:
    """AWS calls so far by (service, operation): the agent's ``nat_ha_aws_request_duration_seconds_count``.

    Read from its /metrics rather than from a ``NAT_HA_RECORD_AWS_CALLS`` file: recording
    opens and appends to a file on every call, work the measured agent would not do in
    production (about 0.02-0.04 % of a core at four calls a second).
    """
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == CALLS_METRIC:
                key = (sample.labels.get("service", ""), sample.labels.get("operation", ""))
                counts[key] = counts.get(key, 0) + int(sample.value)
    return counts


def _diff(end: dict[tuple[str, str], int], start: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {k: v - start.get(k, 0) for k, v in end.items() if v - start.get(k, 0)}


# ----------------------------------------------------------------------- run
def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from agent.config import SCHEMA
    from agent.lab.localgroup import LocalGroup, wait_until
    from coordinator.instrument import RECORD_ENV
    from tests.servers import dynalite_server, set_test_aws_env

    set_test_aws_env()
    # Every timing key at its default: overrides the demo's shortened DEMO_TIMING.
    default_timing = {k: key.default for k, key in SCHEMA["timing"].items()}
    with ExitStack() as stack:
        dynamodb_url = ""
        if args.backend == "dynalite":
            dynamodb_url = stack.enter_context(dynalite_server())
        group = stack.enter_context(
            LocalGroup(
                workdir,
                n=2,
                metrics=True,
                timing=default_timing,
                probe_method=args.probe,
                dynamodb_url=dynamodb_url,
                nat_env={0: {RECORD_ENV: "", **args.env}},  # no call record: counted from /metrics
            )
        )
        nat = group.nats[0]
        assert nat.proc is not None
        pid = nat.proc.pid
        metrics_url = f"http://127.0.0.1:{nat.metrics_port}/metrics"

        def metrics_text() -> str:
            with urllib.request.urlopen(metrics_url, timeout=2) as resp:
                return str(resp.read().decode())

        def first_cycle_done() -> bool:
            text = metrics_text()
            return any(
                line.startswith("nat_ha_last_cycle_timestamp_seconds ") and float(line.split()[1]) > 0
                for line in text.splitlines()
            )

        if not wait_until(first_cycle_done, args.startup_timeout, 0.2):
            raise RuntimeError(f"the agent did not finish a cycle in {args.startup_timeout:.0f} s (see {nat.log_path})")

        stop = threading.Event()
        scrapes = [0]

        def scrape() -> None:  # Prometheus' scrape cost is part of the agent's CPU
            while args.scrape_interval and not stop.wait(args.scrape_interval):
                try:
                    metrics_text()
                    scrapes[0] += 1
                except OSError:
                    pass

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()

        samples: list[tuple[float, int]] = []  # (t, rss kB)
        t0 = time.monotonic()
        half = t0 + args.seconds / 2
        end = t0 + args.seconds
        steady_cpu0 = steady_t0 = None
        threads0: dict[int, tuple[float, int]] = {}
        steady_calls0: dict[tuple[str, str], int] = {}
        while True:
            now = time.monotonic()
            if nat.proc.poll() is not None:
                raise RuntimeError(f"the agent exited with {nat.proc.returncode} (see {nat.log_path})")
            rss, _hwm = read_rss_kb(pid)
            samples.append((now - t0, rss))
            if steady_t0 is None and now >= half:
                steady_calls0 = count_calls(metrics_text())  # before the CPU reading: not counted
                steady_t0, steady_cpu0, threads0 = (
                    time.monotonic(),
                    read_cpu_s(pid),
                    read_threads(pid),
                )
            if now >= end:
                break
            time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
        t1, cpu1, threads1 = time.monotonic(), read_cpu_s(pid), read_threads(pid)
        calls = _diff(count_calls(metrics_text()), steady_calls0)
        _rss, hwm = read_rss_kb(pid)
        stop.set()
        assert steady_t0 is not None and steady_cpu0 is not None
        steady_s = t1 - steady_t0
        per_min = 60.0 / steady_s
        steady_rss = [kb for t, kb in samples if t >= args.seconds / 2]

        def rate(pred: Any) -> float:
            return round(sum(v for k, v in calls.items() if pred(k)) * per_min, 1)

        return {
            "seconds": args.seconds,
            "backend": args.backend,
            "probe": args.probe,
            "env": args.env,
            "rss_mb_peak": round(hwm / 1024, 1),
            "rss_mb_steady": round(statistics.median(steady_rss) / 1024, 1),
            "rss_mb_max_sampled": round(max(kb for _t, kb in samples) / 1024, 1),
            "cpu_percent": round(100.0 * (cpu1 - steady_cpu0) / steady_s, 2),
            "cpu_seconds_total": round(cpu1, 2),
            "threads": thread_rates(threads0, threads1, steady_s),
            "dynamodb_writes_per_min": rate(lambda k: k[0] == "dynamodb" and k[1] in DYNAMODB_WRITES),
            "dynamodb_reads_per_min": rate(lambda k: k[0] == "dynamodb" and k[1] in DYNAMODB_READS),
            "ec2_calls_per_min": rate(lambda k: k[0] == "ec2"),
            "calls_per_min": {f"{s}:{a}": round(v * per_min, 1) for (s, a), v in sorted(calls.items())},
            "scrapes": scrapes[0],
            "samples": len(samples),
            "python": sys.version.split()[0],
        }


def table(result: dict[str, Any]) -> str:
    rows = [
        ("rss_mb_peak", "MB", ""),
        ("rss_mb_steady", "MB", f"target <= {TARGETS['rss_mb_steady']:g}"),
        ("cpu_percent", "% of one core", f"target <= {TARGETS['cpu_percent']:g}"),
        ("dynamodb_writes_per_min", "/min", ""),
        ("dynamodb_reads_per_min", "/min", ""),
        ("ec2_calls_per_min", "/min", ""),
    ]
    lines = [f"{'metric':<26}{'value':>10}  {'unit':<15}{'':s}"]
    for key, unit, note in rows:
        mark = ""
        if key in TARGETS:
            mark = "ok  " if result[key] <= TARGETS[key] else "OVER"
        lines.append(f"{key:<26}{result[key]:>10}  {unit:<15}{mark} {note}".rstrip())
    lines.append(
        "threads (schedstat): "
        + ", ".join(f"{t['thread']} {t['cpu_percent']:.2f} % {t['wakeups_per_s']:g} wakes/s" for t in result["threads"])
    )
    lines.append("calls/min: " + ", ".join(f"{k} {v}" for k, v in result["calls_per_min"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if sys.platform != "linux":
        print("footprint: error: needs Linux (/proc)", file=sys.stderr)
        return 2
    try:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            result = measure(args, workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="nat-ha-footprint-") as tmp:
                result = measure(args, Path(tmp))
    except KeyboardInterrupt:
        print("footprint: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"footprint: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
