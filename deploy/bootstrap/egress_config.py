"""First boot, EgressIp=follow: add this stack's [[egress.tables]] to /etc/nat-ha/config.toml.

The stacks' user data runs this with the venv's Python (deploy/bootstrap/nat-ha-bootstrap.sh,
which generate.py embeds in both templates). The launch template the NATs share cannot name
what depends on the NATs (their instance ids; in the VPC stack also the route tables, whose
``nat-ha:home`` tag names their NAT, and the Elastic IPs tagged with those route tables), nor the
secondary addresses EC2 gives each NAT's interface (``SecondaryPrivateIpAddressCount``). It
gives, per route table in AZ order: the public subnet of its home NAT, the route table itself or
a private subnet associated with it, and its private subnets' CIDRs. At boot every NAT reads the
rest (DescribeInstances, DescribeRouteTables, DescribeAddresses: its role allows them), waits
until every NAT and Elastic IP of the stack is there, and writes the same tables every other NAT
writes: on each NAT its secondary addresses in ascending order serve the route tables in AZ
order (NAT j's k-th secondary is its address for table k, the home table's included; the
primary stays the NAT's own, with its own public IP, for its calls to AWS). A table's Elastic IP
is the group's EIP tagged ``nat-ha:route-table=<table>``.

    python egress_config.py CONFIG 'subnet-pub1|rtb-or-subnet-priv1|10.0.48.0/20;...' GROUP REGION

Bounded: it gives up after ``--wait`` seconds (default 900) with one line and exit 1. For tests,
``NAT_HA_INSTANCE_ID`` replaces the IMDSv2 lookup and ``AWS_ENDPOINT_URL`` points botocore
elsewhere. It must contain no dollar-brace sequence: the templates embed it in an Fn::Sub string.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMDS = "http://169.254.169.254/latest"


@dataclass(frozen=True)
class Table:
    nat_subnet: str  # the public subnet of the table's home NAT (one NAT per subnet in the stacks)
    route: str  # the route table (rtb-...) or a private subnet associated with it (subnet-...)
    cidrs: tuple[str, ...]


def parse_tables(spec: str) -> list[Table]:
    """``nat subnet|rtb or private subnet|cidr cidr;...`` (the stack's EgressTables value), in AZ order."""
    out = []
    for entry in (e.strip() for e in spec.split(";")):
        if not entry:
            continue
        fields = entry.split("|")
        if len(fields) != 3 or not fields[0].startswith("subnet-") or not fields[1].startswith(("rtb-", "subnet-")):
            raise ValueError(f"egress table {entry!r} is not subnet|rtb-or-subnet|cidrs")
        cidrs = tuple(str(ipaddress.ip_network(c, strict=True)) for c in fields[2].split())
        if not cidrs:
            raise ValueError(f"egress table {fields[1]}: no private subnet CIDR")
        out.append(Table(fields[0], fields[1], cidrs))
    if not out:
        raise ValueError("no egress tables")
    return out


def instance_id() -> str:
    """This instance's id (IMDSv2), or NAT_HA_INSTANCE_ID."""
    given = os.environ.get("NAT_HA_INSTANCE_ID", "")
    if given:
        return given
    put = urllib.request.Request(
        f"{IMDS}/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    )
    with urllib.request.urlopen(put, timeout=2) as r:
        token = r.read().decode()
    get = urllib.request.Request(f"{IMDS}/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token})
    with urllib.request.urlopen(get, timeout=2) as r:
        return str(r.read().decode())


def secondaries(instance: dict[str, Any]) -> list[str]:
    """The secondary private addresses of an instance's primary network interface, in ascending order."""
    nics = [n for n in instance.get("NetworkInterfaces", []) if n.get("Attachment", {}).get("DeviceIndex", 0) == 0]
    found = [a["PrivateIpAddress"] for n in nics[:1] for a in n.get("PrivateIpAddresses", []) if not a.get("Primary")]
    return sorted(found, key=ipaddress.ip_address)


def nats_by_subnet(ec2: Any, group: str, subnets: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The group's pending or running instances in each NAT subnet."""
    filters = [
        {"Name": "tag:nat-ha:group", "Values": [group]},
        {"Name": "instance-state-name", "Values": ["pending", "running"]},
        {"Name": "subnet-id", "Values": subnets},
    ]
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in subnets}
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for r in page["Reservations"]:
            for i in r["Instances"]:
                if i.get("SubnetId") in out:
                    out[i["SubnetId"]].append(i)
    return out


def route_tables(ec2: Any, tables: list[Table]) -> dict[str, str]:
    """Each table's route table id (given, or the one a given private subnet is associated with)."""
    out = {t.route: t.route for t in tables if t.route.startswith("rtb-")}
    subnets = [t.route for t in tables if t.route.startswith("subnet-")]
    if subnets:
        found = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": subnets}])
        for rt in found["RouteTables"]:
            for a in rt.get("Associations", []):
                if a.get("SubnetId") in subnets:
                    out[a["SubnetId"]] = rt["RouteTableId"]
    return out


def allocations(ec2: Any, group: str, rtbs: list[str]) -> dict[str, str]:
    """Route table -> the allocation id of the group's Elastic IP tagged with it."""
    if not rtbs:
        return {}
    filters = [{"Name": "tag:nat-ha:group", "Values": [group]}, {"Name": "tag:nat-ha:route-table", "Values": rtbs}]
    out: dict[str, str] = {}
    for a in ec2.describe_addresses(Filters=filters)["Addresses"]:
        tags = {t["Key"]: t["Value"] for t in a.get("Tags", [])}
        out.setdefault(tags.get("nat-ha:route-table", ""), a["AllocationId"])
    return out


def tables_toml(
    tables: list[Table], nats: dict[str, dict[str, Any]], rtbs: dict[str, str], allocs: dict[str, str]
) -> str:
    """The [[egress.tables]] entries: NAT j's k-th secondary address is its address for table k."""
    lines = []
    for k, t in enumerate(tables):
        addresses = ", ".join(
            f'"{nats[x.nat_subnet]["InstanceId"]}" = "{secondaries(nats[x.nat_subnet])[k]}"' for x in tables
        )
        rtb = rtbs[t.route]
        lines += [
            "",
            "[[egress.tables]]",
            f'route_table = "{rtb}"',
            f'allocation_id = "{allocs[rtb]}"',
            "subnets = [" + ", ".join(f'"{c}"' for c in t.cidrs) + "]",
            f"addresses = {{ {addresses} }}",
        ]
    return "\n".join(lines) + "\n"


def wait_for_stack(ec2: Any, group: str, tables: list[Table], wait: float, pause: float = 5.0) -> str:
    """The [[egress.tables]] text, once every NAT, route table and Elastic IP is there (bounded by ``wait``)."""
    deadline = time.monotonic() + wait
    subnets = [t.nat_subnet for t in tables]
    while True:
        found = nats_by_subnet(ec2, group, subnets)
        nats = {s: found[s][0] for s in subnets if len(found[s]) == 1 and len(secondaries(found[s][0])) >= len(tables)}
        rtbs = route_tables(ec2, tables)
        allocs = allocations(ec2, group, sorted(set(rtbs.values())))
        missing = [f"single NAT with {len(tables)} secondary addresses in {s}" for s in subnets if s not in nats]
        missing += [f"route table of {t.route}" for t in tables if t.route not in rtbs]
        missing += [f"Elastic IP tagged nat-ha:route-table={r}" for r in sorted(set(rtbs.values())) if r not in allocs]
        if not missing:
            return tables_toml(tables, nats, rtbs, allocs)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"after {wait:.0f} s still no {'; no '.join(missing)}")
        time.sleep(pause)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("config", type=Path)
    p.add_argument("tables")
    p.add_argument("group")
    p.add_argument("region")
    p.add_argument("--wait", type=float, default=900.0)
    args = p.parse_args(argv)
    try:
        import botocore.session

        tables = parse_tables(args.tables)
        me = instance_id()
        ec2 = botocore.session.get_session().create_client("ec2", region_name=args.region)
        entries = wait_for_stack(ec2, args.group, tables, args.wait)
        text = args.config.read_text()
        args.config.write_text(f'instance_id = "{me}"\n' + text + entries)
    except Exception as exc:  # one line in cloud-init-output.log
        print(f"nat-ha egress config: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"nat-ha egress config: {len(tables)} route tables written to {args.config} for {me}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
