"""``nat-ha iam-policy``: the agent's IAM policy for one group and table, ready to attach.

The policy files in deploy/iam are written for CloudFormation's ``Fn::Sub`` (the templates embed
them): ``${NatHaGroup}`` and the like are placeholders, and ``${!ec2:SourceInstanceARN}`` is
Fn::Sub's escape for the IAM policy variable ``${ec2:SourceInstanceARN}``. Pasted as they are,
every route write would be denied; this command fills in the placeholders and unescapes the
variables, the way CloudFormation does. ``nat-ha files`` prints where the deploy files are.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from agent.commands.cli import UsageError
from agent.config import GROUP_RE, TABLE_RE
from agent.files import location, read

POLICIES = {
    "agent": "iam/nat-ha-policy.json",  # the agent on every NAT
    "asg": "iam/nat-ha-asg-policy.json",  # NATs in Auto Scaling groups with the nat-ha-drain hook
    "admin": "iam/nat-ha-admin-policy.json",  # whoever runs `nat-ha init-table`
}
_PLACEHOLDER = re.compile(r"\$\{(!?)([A-Za-z0-9:]+)\}")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")


def partition_of(region: str) -> str:
    """The ARN partition of a region (aws, aws-cn, aws-us-gov)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def render(node: Any, values: dict[str, str]) -> Any:
    """Fill ``${Name}`` placeholders as Fn::Sub does; ``${!x}`` becomes the IAM variable ``${x}``.

    A placeholder without a value raises KeyError (naming it).
    """
    if isinstance(node, str):

        def one(m: re.Match[str]) -> str:
            if m.group(1):
                return "${" + m.group(2) + "}"
            if m.group(2) not in values:
                raise KeyError(m.group(2))
            return values[m.group(2)]

        return _PLACEHOLDER.sub(one, node)
    if isinstance(node, list):
        return [render(v, values) for v in node]
    if isinstance(node, dict):
        return {k: render(v, values) for k, v in node.items()}
    return node


def policy(kind: str, values: dict[str, str]) -> dict[str, Any]:
    """The policy ``kind`` (agent, asg or admin) rendered with ``values``."""
    document: dict[str, Any] = render(json.loads(read("deploy", POLICIES[kind])), values)
    return document


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", required=True, help="the NAT group (tag nat-ha:group)")
    p.add_argument("--table", default="nat-ha", help="the DynamoDB table (default nat-ha)")
    p.add_argument("--region", required=True, help="the AWS region, e.g. eu-west-1")
    p.add_argument("--account", required=True, help="the AWS account id (12 digits)")
    p.add_argument("--partition", default="", help="ARN partition (default: from the region: aws, aws-cn, aws-us-gov)")
    p.add_argument(
        "--kind",
        choices=sorted(POLICIES),
        default="agent",
        help="agent (default): the NATs' role; asg: add to it when the NATs run in Auto Scaling groups with "
        "the nat-ha-drain lifecycle hook; admin: for whoever runs `nat-ha init-table`",
    )


def add_arguments_files(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", choices=sorted(("deploy", "dashboards")), default="deploy")


def run(args: argparse.Namespace) -> int:
    problems = []
    if not GROUP_RE.match(args.group):
        problems.append(f"--group: {args.group!r} must be 1-64 letters, digits and _.:-")
    if not TABLE_RE.match(args.table):
        problems.append(f"--table: {args.table!r} is not a DynamoDB table name (3-255 of A-Za-z0-9_.-)")
    if not REGION_RE.match(args.region):
        problems.append(f"--region: {args.region!r} is not a region name (e.g. eu-west-1)")
    if not re.fullmatch(r"\d{12}", args.account):
        problems.append(f"--account: {args.account!r} is not an AWS account id (12 digits)")
    if args.partition and args.partition not in ("aws", "aws-cn", "aws-us-gov"):
        problems.append(f"--partition: {args.partition!r} must be aws, aws-cn or aws-us-gov")
    if problems:
        raise UsageError("; ".join(problems))
    values = {
        "AWS::Partition": args.partition or partition_of(args.region),
        "AWS::Region": args.region,
        "AWS::AccountId": args.account,
        "NatHaGroup": args.group,
        "NatHaTable": args.table,
    }
    print(json.dumps(policy(args.kind, values), indent=2))
    return 0


def run_files(args: argparse.Namespace) -> int:
    print(location(args.kind))
    return 0
