#!/usr/bin/env python3
"""CPU per DynamoDB call of the agent's store: the lean path against botocore.

Starts dynalite (default; keeps connections alive, as AWS does) or a moto server
on 127.0.0.1, creates the table, and times ``DynamoStore.query_group`` (a group of
five member items, as the HA cycle reads it) and a conditional ``put_item`` (a
heartbeat) in a loop, once through the lean path (coordinator/dynamo_http.py) and
once through botocore's own request building and parsing
(``NAT_HA_DYNAMODB_BOTOCORE=1``); both send over coordinator/awshttp.py. CPU is this process's
``time.process_time()`` (user + system, so the client's share of the loopback
socket work counts) per call; the server's CPU is not counted.

A tight loop keeps every cache warm. ``--cadence S`` also runs each path for S
seconds at the agent's own pace (a Query every 0.35 s cycle, a heartbeat every
other cycle) and reports CPU per call there: on a machine whose other work
evicts the caches between calls, that figure is several times the loop's.

    python bench/store_calls.py --calls 1000 --json store-calls.json
    python bench/store_calls.py --calls 100 --cadence 40
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GROUP = "bench"
MEMBERS = 5
CYCLE_S = 0.35  # the agent's default cycle_interval; a heartbeat every other cycle (0.7 s)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench.cli import BenchParser  # after the repository is on sys.path

    p = BenchParser(prog="bench/store_calls.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1000, help="calls per operation and path (default 1000)")
    p.add_argument("--backend", choices=("dynalite", "moto"), default="dynalite", help="server (default dynalite)")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON to FILE")
    p.add_argument(
        "--cadence",
        type=float,
        default=0.0,
        metavar="S",
        help="also run S seconds at the agent's pace (default 0: off)",
    )
    args = p.parse_args(argv)
    if not 10 <= args.calls <= 100_000:
        p.error("--calls must be between 10 and 100000")
    if not 0 <= args.cadence <= 600:
        p.error("--cadence must be between 0 and 600 seconds")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        p.error(f"--json {args.json}: directory does not exist")
    return args


def _store(url: str, botocore: bool) -> Any:
    from coordinator.dynamo import DynamoSettings, DynamoStore
    from coordinator.dynamo_http import OFF_ENV

    if botocore:
        os.environ[OFF_ENV] = "1"
    else:
        os.environ.pop(OFF_ENV, None)
    try:
        from agent.aws.models import botocore_session

        settings = DynamoSettings(table="nat-ha", endpoint_url=url, connect_timeout_s=5, read_timeout_s=5)
        return DynamoStore(settings, session=botocore_session())
    finally:
        os.environ.pop(OFF_ENV, None)


def _cpu_ms_per_call(call: Any, n: int) -> float:
    for _ in range(min(50, n)):  # warm up: connection, caches
        call()
    t0 = time.process_time()
    for _ in range(n):
        call()
    return 1000.0 * (time.process_time() - t0) / n


def _cpu_ms_at_cadence(query: Any, heartbeat: Any, seconds: float) -> float:
    """CPU per call when calls come at the agent's pace (caches go cold in between on a busy machine)."""
    calls, cycle = 0, 0
    t0, end = time.process_time(), time.monotonic() + seconds
    while time.monotonic() < end:
        query()
        calls += 1
        if cycle % 2 == 0:
            heartbeat()
            calls += 1
        cycle += 1
        time.sleep(CYCLE_S)
    return 1000.0 * (time.process_time() - t0) / calls


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from coordinator.dynamo import DynamoSettings, init_table
    from coordinator.store import Expect
    from tests.servers import dynalite_server, moto_server, set_test_aws_env

    set_test_aws_env()
    with ExitStack() as stack:
        url = stack.enter_context(dynalite_server() if args.backend == "dynalite" else moto_server())
        init_table(DynamoSettings(table="nat-ha", endpoint_url=url))
        results: dict[str, dict[str, float]] = {}
        for path in ("lean", "botocore"):
            store = _store(url, botocore=path == "botocore")
            for i in range(MEMBERS):
                item = {"item": f"member#i-{path}{i}", "kind": "member", "session": "s", "version": 1, "lease_ms": 1000}
                store.put_item(f"{GROUP}-{path}", item, Expect.item_absent())
            version = [1]

            def heartbeat(store: Any = store, path: str = path, version: list[int] = version) -> None:
                attrs = {"item": f"member#i-{path}0", "kind": "member", "session": "s", "lease_ms": 1000}
                store.put_item(
                    f"{GROUP}-{path}", {**attrs, "version": version[0] + 1}, Expect.matches(version=version[0])
                )
                version[0] += 1

            def query(store: Any = store, path: str = path) -> None:
                store.query_group(f"{GROUP}-{path}")

            results[path] = {
                "query_ms": round(_cpu_ms_per_call(query, args.calls), 3),
                "put_ms": round(_cpu_ms_per_call(heartbeat, args.calls), 3),
            }
            if args.cadence:
                results[path]["cadence_ms"] = round(_cpu_ms_at_cadence(query, heartbeat, args.cadence), 3)
    return {"backend": args.backend, "calls": args.calls, "members": MEMBERS, "cpu_ms_per_call": results}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = measure(args)
    except Exception as exc:  # a server that would not start, a port taken: one line
        print(f"store_calls: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    r = out["cpu_ms_per_call"]
    print(f"CPU per call, {args.backend} on 127.0.0.1, {args.calls} calls each ({MEMBERS} items per Query)")
    cadence = f"  {'at cadence':>12}" if args.cadence else ""
    print(f"{'':10} {'Query':>10} {'PutItem':>10}{cadence}")
    for path in ("lean", "botocore"):
        at = f"  {r[path]['cadence_ms']:>9.3f} ms" if args.cadence else ""
        print(f"{path:10} {r[path]['query_ms']:>7.3f} ms {r[path]['put_ms']:>7.3f} ms{at}")
    if args.cadence:
        print(f"at cadence: {args.cadence:g} s per path, a Query every {CYCLE_S} s and a PutItem every other cycle")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
