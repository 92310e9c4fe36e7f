"""What a nat-ha group costs a month, against NAT Gateways at the same traffic: the table in deploy/README.md.

Computed from published list prices (below: us-east-1, Linux on-demand, as AWS's EC2, VPC, EBS
and DynamoDB pricing pages published them in 2025; check your region and date), and from what
nat-ha does at its default cadence (coordinator/README.md: one heartbeat write per 0.7 s, one
consistent Query per 0.35 s cycle, each 1 unit; a month is 730 hours). Nothing is measured here.

    python bench/cost.py [--azs 3] [--instance t4g.nano] [--gb 1000] [--json FILE]

``--gb`` is the internet traffic through the NATs per month (all AZs together). Internet data
transfer out (about $0.09/GB) is billed the same through a NAT instance and a NAT Gateway, so it
is left out of both columns.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

HOURS = 730  # AWS's billing month
PRICES_AS_OF = "us-east-1, list prices published on the AWS pricing pages in 2025"
# USD per instance-hour, Linux on-demand (EC2 pricing page).
INSTANCE_HOUR = {
    "t4g.nano": 0.0042, "t4g.micro": 0.0084, "t4g.small": 0.0168, "t4g.medium": 0.0336,
    "c6gn.medium": 0.0432, "c7gn.medium": 0.0624,
}  # fmt: skip
# Published baseline / burst network bandwidth, Gbit/s (EC2 instance types, network performance).
BANDWIDTH = {
    "t4g.nano": (0.032, 5.0), "t4g.micro": (0.064, 5.0), "t4g.small": (0.128, 5.0), "t4g.medium": (0.256, 5.0),
    "c6gn.medium": (1.6, 16.0), "c7gn.medium": (3.125, 25.0),
}  # fmt: skip
NAT_GATEWAY_HOUR = 0.045  # per NAT Gateway (per AZ) hour (VPC pricing)
NAT_GATEWAY_GB = 0.045  # per GB processed
PUBLIC_IPV4_HOUR = 0.005  # every public IPv4 address, Elastic IP or not (VPC pricing, since 2024-02)
EIP_REMAP = 0.10  # per Elastic IP remap beyond the first 100 a month
CROSS_AZ_GB = 0.01  # per GB in each direction between AZs (billed on both sides)
EBS_GP3_GB_MONTH = 0.08  # the NAT's root volume (Amazon Linux 2023: 8 GB gp3)
ROOT_GB = 8
DDB_WRITE_M, DDB_READ_M = 0.625, 0.125  # on-demand, per million request units (since 2024-11)
DDB_WCU_HOUR, DDB_RCU_HOUR = 0.00065, 0.00013  # provisioned, per capacity-unit hour
WRITES_PER_S, READS_PER_S = 1 / 0.7, 1 / 0.35  # per agent at the default cadence
# Plus a re-read of the group in 14 % of renewal periods (a peer's renewal the renewal instant's read
# missed; coordinator/README.md): billed on-demand. The provisioned capacity below already covers a
# re-read in every period (3 agents: 3 x (1/0.35 + 1/0.7) = 12.9 RCU of the 13).
REREAD_SHARE = 0.14  # measured by bench/coordinator.py's lab runs; that bench imports it from here
REREADS_PER_S = REREAD_SHARE * WRITES_PER_S
HEADROOM = 1.5  # the stacks provision 1.5 x the steady load (rounded up): 3 agents 13 RCU / 7 WCU


@dataclass(frozen=True)
class Row:
    item: str
    nat_ha: float
    nat_gateway: float
    note: str


def capacity(azs: int) -> tuple[int, int]:
    """(RCU, WCU) the stacks provision for ``azs`` agents."""
    return math.ceil(azs * READS_PER_S * HEADROOM), math.ceil(azs * WRITES_PER_S * HEADROOM)


def table(azs: int, instance: str, gb: float, failover_hours: float, remaps: int) -> list[Row]:
    """Monthly USD, nat-ha against a NAT Gateway per AZ, item by item."""
    rcu, wcu = capacity(azs)
    on_demand = azs * HOURS * 3600 * (WRITES_PER_S * DDB_WRITE_M + (READS_PER_S + REREADS_PER_S) * DDB_READ_M) / 1e6
    provisioned = HOURS * (rcu * DDB_RCU_HOUR + wcu * DDB_WCU_HOUR)
    # After a failover one AZ's traffic crosses to another AZ until its NAT is back (replaced or failed back).
    crossing = gb / azs * failover_hours / HOURS
    return [
        Row(f"{azs} x {instance}", azs * HOURS * INSTANCE_HOUR[instance], 0.0, "on-demand"),
        Row(f"{azs} x {ROOT_GB} GB gp3 root volume", azs * ROOT_GB * EBS_GP3_GB_MONTH, 0.0, ""),
        Row(f"{azs} x NAT Gateway", 0.0, azs * HOURS * NAT_GATEWAY_HOUR, "one per AZ"),
        Row(
            f"{azs} public IPv4 (one Elastic IP per NAT)",
            azs * HOURS * PUBLIC_IPV4_HOUR,
            azs * HOURS * PUBLIC_IPV4_HOUR,
            "EgressIp=follow: 2 per AZ (the table's and the NAT's own)",
        ),
        Row(
            f"DynamoDB, provisioned {rcu} RCU / {wcu} WCU (stack default)",
            provisioned,
            0.0,
            f"on-demand instead: ${on_demand:.2f}; free tier (25/25) covers it",
        ),
        Row(f"{gb:,.0f} GB processed", 0.0, gb * NAT_GATEWAY_GB, "internet transfer out is the same for both"),
        Row(
            f"cross-AZ after failovers ({failover_hours:g} h/month off home)",
            crossing * 2 * CROSS_AZ_GB,
            0.0,
            "$0.01/GB each way, both sides billed",
        ),
        Row(
            f"Elastic IP remaps ({remaps}/month)",
            max(0, remaps - 100) * EIP_REMAP,
            0.0,
            "EgressIp=follow: 2 per table per failover and fail-back; first 100 free",
        ),
    ]


def sustained_tb(gbit_s: float) -> float:
    """TB a month that ``gbit_s`` carries, all month long (1 TB/month is about 3 Mbit/s on average)."""
    return gbit_s * 1e9 / 8 * HOURS * 3600 / 1e12


def break_even_gb(azs: int, instance: str) -> float:
    """Monthly GB above which nat-ha on ``instance`` is cheaper than NAT Gateways (0: always)."""
    fixed_ha = sum(r.nat_ha for r in table(azs, instance, 0.0, 0.0, 0))
    fixed_gw = sum(r.nat_gateway for r in table(azs, instance, 0.0, 0.0, 0))
    return max(0.0, (fixed_ha - fixed_gw) / NAT_GATEWAY_GB)


def render(azs: int, instance: str, gb: float, failover_hours: float, remaps: int) -> str:
    rows = table(azs, instance, gb, failover_hours, remaps)
    out = [f"nat-ha vs NAT Gateways, USD per month ({PRICES_AS_OF}; {HOURS} h)", ""]
    out.append(f"| {'item':<58} | {'nat-ha':>8} | {'NAT GW':>8} | note |")
    out.append(f"|{'-' * 60}|{'-' * 10}|{'-' * 10}|---|")
    for r in rows:
        out.append(f"| {r.item:<58} | {r.nat_ha:>8.2f} | {r.nat_gateway:>8.2f} | {r.note} |")
    ha, gw = sum(r.nat_ha for r in rows), sum(r.nat_gateway for r in rows)
    out.append(f"| {'total':<58} | {ha:>8.2f} | {gw:>8.2f} | |")
    out.append("")
    out.append("by instance type: nat-ha is cheaper above the break-even traffic; a NAT sustains its baseline")
    out.append(f"| {'type':<12} | {'$/month (group)':>15} | {'break-even GB/month':>19} | {'baseline Gbit/s':>15} |"
               f" {'burst Gbit/s':>12} | {'TB/month at baseline, per NAT':>29} |")  # fmt: skip
    out.append(f"|{'-' * 14}|{'-' * 17}|{'-' * 21}|{'-' * 17}|{'-' * 14}|{'-' * 31}|")
    for name in INSTANCE_HOUR:
        base, burst = BANDWIDTH[name]
        monthly = sum(r.nat_ha for r in table(azs, name, 0.0, 0.0, 0))
        out.append(f"| {name:<12} | {monthly:>15.2f} | {break_even_gb(azs, name):>19,.0f} | {base:>15g} |"
                   f" {burst:>12g} | {sustained_tb(base):>29.1f} |")  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--azs", type=int, default=3, choices=(2, 3))
    p.add_argument("--instance", default="t4g.nano", choices=sorted(INSTANCE_HOUR))
    p.add_argument("--gb", type=float, default=1000.0, help="internet traffic through the NATs per month")
    p.add_argument("--failover-hours", type=float, default=2.0, help="hours a month one AZ is served cross-AZ")
    p.add_argument("--remaps", type=int, default=12, help="Elastic IP remaps a month (EgressIp=follow)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.gb < 0 or args.failover_hours < 0 or args.remaps < 0:
        print("cost: --gb, --failover-hours and --remaps must be >= 0", file=sys.stderr)
        return 2
    print(render(args.azs, args.instance, args.gb, args.failover_hours, args.remaps))
    if args.json:
        rows = table(args.azs, args.instance, args.gb, args.failover_hours, args.remaps)
        data = {
            "prices": PRICES_AS_OF,
            "rows": [asdict(r) for r in rows],
            "total": {"nat_ha": sum(r.nat_ha for r in rows), "nat_gateway": sum(r.nat_gateway for r in rows)},
            "break_even_gb": {n: break_even_gb(args.azs, n) for n in INSTANCE_HOUR},
            "bandwidth_gbit_s": {n: {"baseline": b, "burst": u} for n, (b, u) in BANDWIDTH.items()},
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
