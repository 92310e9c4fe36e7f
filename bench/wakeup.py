#!/usr/bin/env python3
"""Measure what one wake-up of a sleeping Python thread costs in CPU on this machine.

The agent is idle most of the time and wakes about a dozen times a second (HA
cycles, DynamoDB answers, probe rounds); on a VM each wake-up has a cost of its
own, apart from the work done. A thread sleeps ``--interval`` seconds ``--wakes``
times and does nothing else; its CPU time comes from ``/proc/self/task/TID/schedstat``
(nanoseconds on CPU, Linux).

    python bench/wakeup.py --wakes 100 --interval 0.2
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench.cli import BenchParser

    p = BenchParser(prog="bench/wakeup.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--wakes", type=int, default=100, help="sleeps to time (default 100)")
    p.add_argument("--interval", type=float, default=0.2, help="seconds per sleep (default 0.2, a probe round)")
    args = p.parse_args(argv)
    if not 10 <= args.wakes <= 100_000:
        p.error("--wakes must be between 10 and 100000")
    if not 0.001 <= args.interval <= 10:
        p.error("--interval must be between 0.001 and 10 seconds")
    return args


def on_cpu_s() -> float:
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as fh:
        return int(fh.read().split()[0]) / 1e9


def measure(wakes: int, interval: float) -> dict[str, float]:
    result: dict[str, float] = {}

    def run() -> None:
        cpu0, t0 = on_cpu_s(), time.monotonic()
        for _ in range(wakes):
            time.sleep(interval)
        cpu, wall = on_cpu_s() - cpu0, time.monotonic() - t0
        result.update(cpu_us_per_wake=1e6 * cpu / wakes, cpu_percent=100 * cpu / wall)

    thread = threading.Thread(target=run, name="wakeup")
    thread.start()
    thread.join()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if sys.platform != "linux":
        print("wakeup: error: needs Linux (/proc/self/task/TID/schedstat)", file=sys.stderr)
        return 2
    r = measure(args.wakes, args.interval)
    print(f"{args.wakes} sleeps of {args.interval:g} s: {r['cpu_us_per_wake']:.0f} us of CPU per wake-up")
    print(f"cpu_percent {r['cpu_percent']:.3f} % of one core at {1 / args.interval:g} wake-ups a second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
