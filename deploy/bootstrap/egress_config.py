"""First boot, EgressIp=follow: add this stack's [[egress.tables]] to the new config, with this NAT's addresses.

The stacks' user data runs this with the venv's Python (deploy/bootstrap/nat-ha-bootstrap.sh,
which generate.py embeds in both templates). It gets, per route table in AZ order, the table, its
Elastic IP's allocation id and its private subnets' CIDRs (the stack's EgressTables value), and
reads from IMDSv2 this instance's id and the secondary private addresses of its primary interface
(the stack's launch template gives it one per route table). It writes ``instance_id`` and one
``[[egress.tables]]`` per table whose ``addresses`` name this NAT only: its k-th secondary address
(ascending) carries the k-th table's traffic - setup-nat SNATs the table's subnets to it at every
boot. The agent fills in its peers' addresses by the same rule from EC2 (members_from_tags), so no
NAT waits for another at boot and a replaced NAT needs nobody's config changed.

    python egress_config.py CONFIG 'rtb-1|eipalloc-1|10.0.48.0/20;rtb-2|eipalloc-2|10.0.64.0/20 10.0.80.0/20'

One line and exit 1 when it cannot (IMDS does not answer, too few secondary addresses); the
bootstrap then fails and signals FAILURE. For tests, ``NAT_HA_INSTANCE_ID`` and
``NAT_HA_SECONDARIES`` (comma separated) replace IMDS. It must contain no dollar-brace sequence:
the templates embed it in an Fn::Sub string.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

IMDS = "http://169.254.169.254/latest"


@dataclass(frozen=True)
class Table:
    route_table: str
    allocation_id: str
    cidrs: tuple[str, ...]


def parse_tables(spec: str) -> list[Table]:
    """``rtb|eipalloc|cidr cidr;...`` (the stack's EgressTables value), in AZ order."""
    out = []
    for entry in (e.strip() for e in spec.split(";")):
        if not entry:
            continue
        fields = entry.split("|")
        if len(fields) != 3 or not fields[0].startswith("rtb-") or not fields[1].startswith("eipalloc-"):
            raise ValueError(f"egress table {entry!r} is not rtb|eipalloc|cidrs")
        if " " in fields[0]:
            raise ValueError(f"egress table {entry!r}: one route table per AZ with EgressIp=follow")
        cidrs = tuple(str(ipaddress.ip_network(c, strict=True)) for c in fields[2].split())
        if not cidrs:
            raise ValueError(f"egress table {fields[0]}: no private subnet CIDR")
        out.append(Table(fields[0], fields[1], cidrs))
    if not out:
        raise ValueError("no egress tables")
    return out


def imds(paths: list[str]) -> list[str]:
    """IMDSv2 values of ``paths`` (under meta-data/)."""
    put = urllib.request.Request(
        f"{IMDS}/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    )
    with urllib.request.urlopen(put, timeout=2) as r:
        token = r.read().decode()
    out = []
    for path in paths:
        req = urllib.request.Request(f"{IMDS}/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token})
        with urllib.request.urlopen(req, timeout=2) as r:
            out.append(r.read().decode().strip())
    return out


def me() -> tuple[str, list[str]]:
    """This instance's id and its primary interface's secondary private addresses, ascending."""
    given = os.environ.get("NAT_HA_INSTANCE_ID", "")
    if given:
        found = [a for a in os.environ.get("NAT_HA_SECONDARIES", "").split(",") if a]
        return given, sorted(found, key=ipaddress.ip_address)
    instance, mac, primary = imds(["instance-id", "mac", "local-ipv4"])
    (addresses,) = imds([f"network/interfaces/macs/{mac}/local-ipv4s"])
    found = [a for a in addresses.split() if a and a != primary]
    return instance, sorted(set(found), key=ipaddress.ip_address)


def tables_toml(tables: list[Table], instance: str, secondaries: list[str]) -> str:
    """The [[egress.tables]] entries: this NAT's k-th secondary address is its address for table k."""
    if len(secondaries) < len(tables):
        need = f"{len(tables)} route tables need one each"
        raise ValueError(f"{instance} has {len(secondaries)} secondary addresses, {need}")
    lines = []
    for k, t in enumerate(tables):
        lines += [
            "",
            "[[egress.tables]]",
            f'route_table = "{t.route_table}"',
            f'allocation_id = "{t.allocation_id}"',
            "subnets = [" + ", ".join(f'"{c}"' for c in t.cidrs) + "]",
            f'addresses = {{ "{instance}" = "{secondaries[k]}" }}',
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("config", type=Path)
    p.add_argument("tables")
    args = p.parse_args(argv)
    try:
        tables = parse_tables(args.tables)
        instance, secondaries = me()
        entries = tables_toml(tables, instance, secondaries)
        text = args.config.read_text()
        args.config.write_text(f'instance_id = "{instance}"\n' + text + entries)
    except Exception as exc:  # one line in cloud-init-output.log
        print(f"nat-ha egress config: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"nat-ha egress config: {len(tables)} route tables written to {args.config} for {instance}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
