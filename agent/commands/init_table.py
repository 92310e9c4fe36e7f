"""``nat-ha init-table``: create the DynamoDB table, idempotently."""

from __future__ import annotations

import argparse
import os

from agent.commands.cli import UsageError
from agent.config import DEFAULT_PATH, load


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", default=None, help=f"take table, region and endpoint from this config (e.g. {DEFAULT_PATH})"
    )
    p.add_argument("--table", help="table name (default: from --config, else nat-ha)")
    p.add_argument("--region", help="AWS region (default: from --config or AWS_DEFAULT_REGION)")
    p.add_argument("--endpoint-url", help="DynamoDB endpoint (moto server, dynalite); default: AWS")
    p.add_argument("--billing", choices=("PAY_PER_REQUEST", "PROVISIONED"), help="capacity mode (default on-demand)")
    p.add_argument("--read-capacity", type=int, default=5, help="RCU when PROVISIONED (default 5)")
    p.add_argument("--write-capacity", type=int, default=5, help="WCU when PROVISIONED (default 5)")


def run(args: argparse.Namespace) -> int:
    from coordinator.dynamo import DynamoSettings, init_table

    table, region, endpoint, billing = "nat-ha", "", "", "PAY_PER_REQUEST"
    if args.config:
        config = load(args.config)
        table, region, endpoint, billing = (
            config.store.table,
            config.region,
            config.store.endpoint_url,
            config.store.billing,
        )
    table = args.table or table
    region = args.region or region or os.environ.get("AWS_REGION", "") or os.environ.get("AWS_DEFAULT_REGION", "")
    if not region:
        raise UsageError("no region: pass --region or set AWS_DEFAULT_REGION")
    if args.read_capacity < 1 or args.write_capacity < 1:
        raise UsageError("capacities must be at least 1")
    settings = DynamoSettings(table=table, region=region, endpoint_url=args.endpoint_url or endpoint or None)
    for line in init_table(
        settings, billing=args.billing or billing, read_capacity=args.read_capacity, write_capacity=args.write_capacity
    ):
        print(line)
    return 0
