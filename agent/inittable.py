"""``nat-ha init-table``: create the DynamoDB table, idempotently."""

from __future__ import annotations

import argparse
import os
import sys

from agent.config import DEFAULT_PATH, ConfigError, load


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
    from coordinator.errors import StoreConfigError

    table, region, endpoint, billing = "nat-ha", "", "", "PAY_PER_REQUEST"
    if args.config:
        try:
            config = load(args.config)
        except ConfigError as exc:
            for line in exc.problems:
                print(f"{args.config}: {line}", file=sys.stderr)
            return 2
        table, region, endpoint, billing = (
            config.store.table,
            config.region,
            config.store.endpoint_url,
            config.store.billing,
        )
    table = args.table or table
    region = args.region or region or os.environ.get("AWS_REGION", "") or os.environ.get("AWS_DEFAULT_REGION", "")
    if not region:
        print("nat-ha init-table: no region: pass --region or set AWS_DEFAULT_REGION", file=sys.stderr)
        return 2
    if args.read_capacity < 1 or args.write_capacity < 1:
        print("nat-ha init-table: capacities must be at least 1", file=sys.stderr)
        return 2
    settings = DynamoSettings(table=table, region=region, endpoint_url=args.endpoint_url or endpoint or None)
    try:
        for line in init_table(
            settings,
            billing=args.billing or billing,
            read_capacity=args.read_capacity,
            write_capacity=args.write_capacity,
        ):
            print(line)
    except StoreConfigError as exc:
        print(f"nat-ha init-table: {exc}", file=sys.stderr)
        return 1
    return 0
