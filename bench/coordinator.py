"""Coordinator benchmark on a real dynalite server: latency, scale, and cost.

Measures, against dynalite started on 127.0.0.1 by this script (tests/servers.py):

* renew (heartbeat) latency p50/p99 and single-client throughput;
* take-over latency (expire the silent owner + claim its route table) p50/p99;
* a scale run: G groups x M members heartbeating at the default cadence
  (every 0.7 s, lease 1.0 s), counting *missed renewals*: a heartbeat that
  completed after the member's previous lease had already run out;
* requests and cost per agent per month at the default cadence (one heartbeat
  write per 0.7 s, one consistent Query of the group per 0.35 s cycle), checking
  that an item stays under 1 KB (1 WCU per write) and a group under 4 KB (1 RCU
  per consistent Query).

Prices (us-east-1, as published after the November 2024 on-demand price cut;
checked 2026-11): on-demand $0.625 per million write request units, $0.125 per
million read request units; provisioned $0.00065 per WCU-hour, $0.00013 per
RCU-hour. A month is 730 hours (AWS's billing month). The free tier is ignored.

Usage: python bench/coordinator.py [--quick] [--duration 60] [--json FILE]
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import threading
import time
from pathlib import Path
from typing import Any

# This file is named like the package it measures: make sure "coordinator" is the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

# Share of renewal periods with one extra consistent Query: a peer's renewal that the renewal
# instant's read missed is read again between cycles (agent.cycle.observe.Observer.reread_at), and
# while a peer is dead, until its expiry. 8-14 % of periods in the network-namespace lab
# (bench/failover.py runs); a healthy group on AWS, whose round trips spread more, may see more.
# One figure for both cost models: bench/cost.py holds it.
from bench.cost import REREAD_SHARE  # noqa: E402
from coordinator import Coordinator, Health, SystemClock  # noqa: E402
from coordinator.dynamo import DynamoSettings, DynamoStore, init_table  # noqa: E402
from tests import servers  # noqa: E402

HEARTBEAT_S = 0.7
CYCLE_S = 0.35
LEASE_S = 1.0
HOURS_PER_MONTH = 730
OD_WRU_PER_MILLION = 0.625
OD_RRU_PER_MILLION = 0.125
PROV_WCU_HOUR = 0.00065
PROV_RCU_HOUR = 0.00013
PRICES: dict[str, Any] = {
    "region": "us-east-1",
    "as_of": "2026-11 (on-demand prices after the 2024-11-01 cut)",
    "on_demand_usd_per_million_wru": OD_WRU_PER_MILLION,
    "on_demand_usd_per_million_rru": OD_RRU_PER_MILLION,
    "provisioned_usd_per_wcu_hour": PROV_WCU_HOUR,
    "provisioned_usd_per_rcu_hour": PROV_RCU_HOUR,
}
HEALTH = Health(True, {"forwarding": True, "internet": True, "iptables": True}, ("i-0123456789abcdef1",), "ok")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# ------------------------------------------------------------------- item sizes
def _value_size(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, (int, float)):
        digits = len(str(abs(value)).replace(".", "").lstrip("0")) or 1
        return (digits + 1) // 2 + 1
    return len(str(value).encode())


def item_size(row: dict[str, Any]) -> int:
    """DynamoDB's item size: attribute names plus values (numbers ~ digits/2 + 1)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in row.items())


# ---------------------------------------------------------------------- latency
def measure_latency(settings: DynamoSettings, samples: int) -> dict[str, Any]:
    store = DynamoStore(settings)
    clock = SystemClock()
    me = Coordinator(store, "bench-latency", "i-renew", clock, LEASE_S)
    me.start_session(HEALTH)
    renew: list[float] = []
    for _ in range(samples):
        t0 = time.perf_counter()
        me.heartbeat(HEALTH)
        renew.append(time.perf_counter() - t0)
    reads: list[float] = []
    for _ in range(samples):
        t0 = time.perf_counter()
        me.read_group()
        reads.append(time.perf_counter() - t0)

    takeover: list[float] = []
    for i in range(samples):
        group = f"bench-takeover-{i}"
        owner = Coordinator(store, group, "i-owner", clock, LEASE_S)
        peer = Coordinator(store, group, "i-peer", clock, LEASE_S)
        owner.start_session(HEALTH)
        owner.claim_route("rtb-1", None)
        peer.start_session(HEALTH)
        snap = peer.read_group()  # the peer's consistent read, watched until stale (not timed)
        t0 = time.perf_counter()
        peer.expire_member(snap.members["i-owner"])
        peer.claim_route("rtb-1", snap.routes["rtb-1"])
        takeover.append(time.perf_counter() - t0)

    # single-client renew throughput for a fixed time
    count, t_end = 0, time.monotonic() + 2.0
    while time.monotonic() < t_end:
        me.heartbeat(HEALTH)
        count += 1

    rows = store.query_group("bench-takeover-0")
    member_row = next(r for r in store.query_group("bench-latency") if str(r["item"]).startswith("member#"))
    sizes = {str(r["item"]).split("#")[0]: item_size(r) for r in rows}
    sizes["member"] = item_size(member_row)
    # a group of 3 NATs with 3 route tables and one restart lease, as one Query returns it
    group_bytes = 3 * sizes["member"] + 3 * sizes["route"] + sizes["route"]
    return {
        "renew_p50_ms": ms(pct(renew, 50)),
        "renew_p99_ms": ms(pct(renew, 99)),
        "read_group_p50_ms": ms(pct(reads, 50)),
        "read_group_p99_ms": ms(pct(reads, 99)),
        "takeover_p50_ms": ms(pct(takeover, 50)),
        "takeover_p99_ms": ms(pct(takeover, 99)),
        "renew_throughput_per_s": round(count / 2.0, 1),
        "latency_samples": samples,
        "member_item_bytes": sizes["member"],
        "route_item_bytes": sizes["route"],
        "group_query_bytes_estimate": group_bytes,
    }


# ------------------------------------------------------------------------ scale
def _scale_thread(
    settings: DynamoSettings, members: list[tuple[str, str]], until: float, out: list[dict[str, Any]]
) -> None:
    store = DynamoStore(settings)  # one connection per thread
    clock = SystemClock()
    coords = [Coordinator(store, g, m, clock, LEASE_S) for g, m in members]
    for c in coords:
        c.start_session(HEALTH)
    # stagger the first heartbeats over one interval, as independently started agents would be;
    # the first heartbeat of each member is a warm-up (its session began before the window)
    begin = time.monotonic()
    due = [begin + HEARTBEAT_S * i / max(1, len(coords)) for i in range(len(coords))]
    warm = [False] * len(coords)
    missed = errors = beats = 0
    latencies: list[float] = []
    lags: list[float] = []
    for _ in range(10_000_000):  # bounded; ends on time
        i = min(range(len(coords)), key=due.__getitem__)
        now = time.monotonic()
        if now >= until:
            break
        if due[i] > now:
            time.sleep(min(due[i] - now, until - now))
            continue
        c = coords[i]
        valid_until = c.session.valid_until if c.session is not None else now
        lags.append(now - due[i])
        t0 = time.monotonic()
        try:
            c.heartbeat(HEALTH)
            beats += 1
        except Exception:
            errors += 1
            if c.session is None:
                try:
                    c.start_session(HEALTH)
                except Exception:
                    errors += 1
        done = time.monotonic()
        latencies.append(done - t0)
        if done > valid_until and warm[i]:
            missed += 1
        warm[i] = True
        due[i] = t0 + HEARTBEAT_S
    out.append({"beats": beats, "missed": missed, "errors": errors, "latencies": latencies, "lags": lags})


def _scale_process(
    endpoint: str, table: str, members: list[tuple[str, str]], threads: int, seconds: float, q: Any
) -> None:
    servers.set_test_aws_env()
    settings = DynamoSettings(table=table, endpoint_url=endpoint)
    until = time.monotonic() + seconds
    results: list[dict[str, Any]] = []
    workers = [
        threading.Thread(target=_scale_thread, args=(settings, members[t::threads], until, results), daemon=True)
        for t in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=seconds + 30)
    q.put(results)


def measure_scale(settings: DynamoSettings, groups: int, members: int, seconds: float, processes: int,
                  threads: int) -> dict[str, Any]:  # fmt: skip
    everyone = [(f"scale-{g:03d}", f"i-{g:03d}-{m}") for g in range(groups) for m in range(members)]
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(
            target=_scale_process,
            args=(settings.endpoint_url, settings.table, everyone[p::processes], threads, seconds, q),
        )
        for p in range(processes)
    ]
    for p in procs:
        p.start()
    results: list[dict[str, Any]] = []
    for _ in procs:
        results.extend(q.get(timeout=seconds + 90))
    for p in procs:
        p.join(timeout=30)
    lat = [x for r in results for x in r["latencies"]]
    lags = [x for r in results for x in r["lags"]]
    beats = sum(r["beats"] for r in results)
    expected = len(everyone) * seconds / HEARTBEAT_S
    return {
        "groups": groups,
        "members_per_group": members,
        "scale_seconds": seconds,
        "scale_processes": processes,
        "scale_threads_per_process": threads,
        "heartbeats": beats,
        "heartbeats_expected": round(expected),
        "heartbeats_per_s": round(beats / seconds, 1),
        "missed_renewals": sum(r["missed"] for r in results),
        "missed_renewal_fraction": round(sum(r["missed"] for r in results) / max(1, beats), 4),
        "scale_errors": sum(r["errors"] for r in results),
        "scale_renew_p50_ms": ms(pct(lat, 50)),
        "scale_renew_p99_ms": ms(pct(lat, 99)),
        "scale_schedule_lag_p99_ms": ms(pct(lags, 99)),
    }


# ------------------------------------------------------------------------- cost
def _usd(reread_share: float) -> tuple[float, float, float, float, float, float]:
    """Writes and reads per month, WCU and RCU, on-demand and provisioned USD, at a share of re-reads."""
    seconds = HOURS_PER_MONTH * 3600
    writes = seconds / HEARTBEAT_S  # 1 WCU each (item < 1 KB)
    reads = seconds / CYCLE_S + reread_share * seconds / HEARTBEAT_S  # 1 RCU each (consistent Query < 4 KB)
    on_demand = (
        writes / 1e6 * PRICES["on_demand_usd_per_million_wru"] + reads / 1e6 * PRICES["on_demand_usd_per_million_rru"]
    )
    wcu, rcu = writes / seconds, reads / seconds  # sustained units per second, no headroom
    provisioned = HOURS_PER_MONTH * (wcu * PROV_WCU_HOUR + rcu * PROV_RCU_HOUR)
    return writes, reads, wcu, rcu, on_demand, provisioned


def cost_per_agent(reread_share: float = REREAD_SHARE) -> dict[str, Any]:
    writes, reads, wcu, rcu, on_demand, provisioned = _usd(reread_share)
    *_, on_demand_bound, provisioned_bound = _usd(1.0)
    return {
        "writes_per_agent_month": round(writes),
        "reads_per_agent_month": round(reads),
        "wcu_per_agent": round(wcu, 3),
        "rcu_per_agent": round(rcu, 3),
        "reread_share": reread_share,
        "usd_per_agent_month_on_demand": round(on_demand, 2),
        "usd_per_agent_month_provisioned": round(provisioned, 2),
        "usd_per_agent_month_on_demand_reread_every_period": round(on_demand_bound, 2),
        "usd_per_agent_month_provisioned_reread_every_period": round(provisioned_bound, 2),
        "prices": PRICES,
        "hours_per_month": HOURS_PER_MONTH,
        "heartbeat_s": HEARTBEAT_S,
        "cycle_s": CYCLE_S,
        "lease_s": LEASE_S,
    }


def main(argv: list[str] | None = None) -> int:
    from bench.cli import BenchParser  # after the repository is on sys.path

    p = BenchParser(description="Benchmark the coordinator on a local dynalite (latency, scale, cost).")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument("--quick", action="store_true", help="short run: 100 samples, 10 s scale run")
    p.add_argument("--duration", type=float, default=None, help="scale run length in seconds (default 60, quick 10)")
    p.add_argument("--samples", type=int, default=None, help="latency samples (default 500, quick 100)")
    p.add_argument("--groups", type=int, default=100)
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--processes", type=int, default=2, help="client processes for the scale run")
    p.add_argument("--threads", type=int, default=6, help="threads per client process")
    args = p.parse_args(argv)
    duration = args.duration if args.duration is not None else (10.0 if args.quick else 60.0)
    samples = args.samples if args.samples is not None else (100 if args.quick else 500)
    servers.set_test_aws_env()

    started = time.time()
    with servers.dynalite_server() as endpoint:
        settings = DynamoSettings(table="nat-ha-bench", endpoint_url=endpoint)
        init_table(settings)
        result: dict[str, Any] = {
            "backend": "dynalite " + servers.DYNALITE_VERSION,
            "cpus": multiprocessing.cpu_count(),
        }
        result.update(measure_latency(settings, samples))
        result.update(measure_scale(settings, args.groups, args.members, duration, args.processes, args.threads))
    result.update(cost_per_agent())
    result["one_wcu_per_write"] = result["member_item_bytes"] < 1024
    result["one_rcu_per_query"] = result["group_query_bytes_estimate"] < 4096
    result["date"] = time.strftime("%Y-%m-%d", time.gmtime(started))

    r = result
    rows = [
        ("renew (heartbeat) p50 / p99", f"{r['renew_p50_ms']} / {r['renew_p99_ms']} ms"),
        ("take-over (expire + claim) p50 / p99", f"{r['takeover_p50_ms']} / {r['takeover_p99_ms']} ms"),
        ("read group (consistent Query) p50 / p99", f"{r['read_group_p50_ms']} / {r['read_group_p99_ms']} ms"),
        ("renew throughput, one client", f"{r['renew_throughput_per_s']} /s"),
        (
            f"scale: {args.groups} groups x {args.members} members, {duration:.0f} s",
            f"{r['heartbeats']} heartbeats ({r['heartbeats_per_s']}/s, expected {r['heartbeats_expected']})",
        ),
        ("scale: renew p50 / p99 under load", f"{r['scale_renew_p50_ms']} / {r['scale_renew_p99_ms']} ms"),
        (
            "scale: missed renewals / errors",
            f"{r['missed_renewals']} ({100 * r['missed_renewal_fraction']:.1f} %) / {r['scale_errors']}",
        ),
        ("member item / group query size", f"{r['member_item_bytes']} B / {r['group_query_bytes_estimate']} B"),
        ("writes / reads per agent per month", f"{r['writes_per_agent_month']:,} / {r['reads_per_agent_month']:,}"),
        ("USD per agent per month, on-demand", f"${r['usd_per_agent_month_on_demand']}"),
        ("USD per agent per month, provisioned", f"${r['usd_per_agent_month_provisioned']}"),
        (
            "  the same with a re-read every period",
            f"${r['usd_per_agent_month_on_demand_reread_every_period']} on-demand, "
            f"${r['usd_per_agent_month_provisioned_reread_every_period']} provisioned",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"nat-ha coordinator benchmark, {result['backend']} on 127.0.0.1, {result['cpus']} CPUs, {result['date']}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print(
        f"  prices: {PRICES['region']} {PRICES['as_of']}: on-demand ${PRICES['on_demand_usd_per_million_wru']}/M WRU, "
        f"${PRICES['on_demand_usd_per_million_rru']}/M RRU; provisioned ${PRICES['provisioned_usd_per_wcu_hour']}"
        f"/WCU-h, ${PRICES['provisioned_usd_per_rcu_hour']}/RCU-h; {HOURS_PER_MONTH} h/month, no free tier"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
