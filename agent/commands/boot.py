"""What a NAT's first boot needs besides the agent: ``wait-healthy``, ``signal``, ``claim-address``.

The stacks' user data (deploy/bootstrap/nat-ha-bootstrap.sh) runs them, in this order, after
setup-nat and the units:

* ``nat-ha claim-address``: with EgressIp=off, associate this NAT's own Elastic IP (the one of its
  slot) with this instance - only once nobody else has it (no reassociation: a NAT still draining
  keeps its address until it is gone);
* ``nat-ha wait-healthy``: wait until the agent's first healthy cycle shows in the group, as its
  peers see it - its heartbeat item alive, renewing, healthy by its own checks and not draining;
* ``nat-ha signal``: tell CloudFormation (SignalResource) that this instance succeeded or failed,
  for the Auto Scaling group's creation policy and rolling update. A failure is signalled by the
  bootstrap's error trap from whatever step failed.

Each is bounded and ends in one line: 0 done, 1 the world refused or time ran out, 2 bad input.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

from agent.commands.cli import UsageError
from agent.config import DEFAULT_PATH, EIPALLOC_RE, load

STACK_RE = re.compile(r"^(arn:aws[a-z-]*:cloudformation:[^ ]+|[A-Za-z][A-Za-z0-9-]{0,127})$")
LOGICAL_RE = re.compile(r"^[A-Za-z0-9]{1,255}$")


# ------------------------------------------------------------------------ slots
def slot(subnets: str) -> int:
    """Which of the stack's NAT subnets (comma separated, in AZ order) this instance is in: 1, 2, ...

    The stacks' NATs share one launch template, so the user data finds its Auto Scaling group (and
    its Elastic IP) by its own subnet: the N-th subnet is NatGroupN's. Raises UsageError when the
    instance is in none of them, ImdsError when IMDS does not answer.
    """
    from agent.aws.imds import fetch

    (mac,) = fetch(["mac"]).values()
    path = f"network/interfaces/macs/{mac}/subnet-id"
    mine = fetch([path])[path]
    listed = [x.strip() for x in subnets.split(",") if x.strip()]
    if mine not in listed:
        raise UsageError(f"--subnets: this instance's subnet {mine} is not one of {', '.join(listed) or 'none'}")
    return listed.index(mine) + 1


# ----------------------------------------------------------------------- signal
def add_arguments_signal(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stack", required=True, help="the stack's name or id")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--resource", help="the logical id of the resource to signal (the NAT's group)")
    target.add_argument("--resource-prefix", help="signal PREFIX<N>: N is where this instance's subnet is in --subnets")
    p.add_argument("--subnets", default="", help="the NAT subnets in AZ order, comma separated")
    p.add_argument("--region", required=True)
    p.add_argument("--status", required=True, choices=("SUCCESS", "FAILURE"))
    p.add_argument("--reason", default="", help="why (printed here; SignalResource carries no reason)")
    p.add_argument("--instance-id", default="", help="the signal's unique id (default: this instance, from IMDS)")


def run_signal(args: argparse.Namespace) -> int:
    from agent.aws.imds import ImdsError, identity
    from agent.aws.lifecycle import plain_client

    if not STACK_RE.match(args.stack):
        raise UsageError(f"--stack: {args.stack!r} is not a stack name or id")
    resource = args.resource
    if resource is None:
        try:
            resource = f"{args.resource_prefix}{slot(args.subnets)}"
        except ImdsError as exc:
            print(f"nat-ha signal: cannot tell which group this instance is in: {exc}", file=sys.stderr)
            return 1
    if not LOGICAL_RE.match(resource):
        raise UsageError(f"--resource: {resource!r} is not a logical resource id")
    unique = args.instance_id
    if not unique:
        try:
            unique = identity()[0]
        except ImdsError as exc:
            if args.status == "SUCCESS":
                print(f"nat-ha signal: cannot tell which instance this is: {exc}", file=sys.stderr)
                return 1
            unique = "unknown-instance"  # a failure still fails the resource, whoever sends it
    try:
        plain_client("cloudformation", args.region).signal_resource(
            StackName=args.stack, LogicalResourceId=resource, UniqueId=unique, Status=args.status
        )
    except Exception as exc:  # botocore's errors, one line
        print(f"nat-ha signal: SignalResource {args.status} failed: {exc}", file=sys.stderr)
        return 1
    why = f": {args.reason}" if args.reason else ""
    print(f"signalled {args.status} to {resource} of {args.stack} for {unique}{why}")
    return 0


# ----------------------------------------------------------------- wait-healthy
def add_arguments_wait_healthy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="give up after (default 600)")


def health_line(item: Any, first_version: int | None) -> str:
    """Why this agent is not (yet) healthy as its peers see it; "" when it is."""
    if item is None:
        return "no heartbeat in the table yet"
    if item.state != "alive":
        return f"its session is {item.state}"
    if not item.health.healthy:
        failed = ", ".join(k for k, ok in sorted(item.health.checks.items()) if not ok) or "self check"
        return f"unhealthy by its own checks ({failed})"
    if item.draining:
        return "draining"
    if first_version is None or item.version == first_version:
        return "heartbeat not renewed yet"
    return ""


def run_wait_healthy(args: argparse.Namespace) -> int:
    from agent.runtime import coordinator_for, resolve

    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    deadline = time.monotonic() + args.timeout
    config = load(args.config)
    rt = resolve(config, operator=True)
    me = rt.config.instance_id
    coordinator = coordinator_for(rt)
    first: int | None = None
    why = "the table was never read"
    while True:
        try:
            item = coordinator.read_group().members.get(me)
            if item is not None and item.state == "alive" and first is None:
                first = item.version
            why = health_line(item, first)
        except Exception as exc:  # the store did not answer: try again until the deadline
            why = f"cannot read the group ({exc})"
        if not why:
            print(f"nat-ha agent of {me} is healthy: its heartbeat renews and its checks pass")
            return 0
        if time.monotonic() >= deadline:
            print(f"nat-ha wait-healthy: not healthy after {args.timeout:.0f} s: {why}", file=sys.stderr)
            return 1
        time.sleep(1.0)


# ---------------------------------------------------------------- claim-address
def add_arguments_claim_address(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--allocation-id", help="the Elastic IP (eipalloc-...)")
    which.add_argument("--allocation-ids", help="one per NAT subnet, comma separated: the one of this NAT's subnet")
    p.add_argument("--subnets", default="", help="the NAT subnets in AZ order, comma separated (with --allocation-ids)")
    p.add_argument("--region", required=True)
    p.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                   help="how long to wait for another instance to let it go (default 600)")  # fmt: skip


def run_claim_address(args: argparse.Namespace) -> int:
    from agent.aws.imds import ImdsError, identity
    from agent.aws.lifecycle import plain_client

    try:
        me = identity()[0]
        allocation = args.allocation_id
        if allocation is None:
            listed = [x.strip() for x in args.allocation_ids.split(",")]
            n = slot(args.subnets)
            if n > len(listed):
                raise UsageError(f"--allocation-ids: no allocation id for subnet {n} of --subnets")
            allocation = listed[n - 1]
    except ImdsError as exc:
        print(f"nat-ha claim-address: cannot tell which instance this is: {exc}", file=sys.stderr)
        return 1
    if not EIPALLOC_RE.match(allocation):
        raise UsageError(f"--allocation-id: {allocation!r} is not an allocation id (eipalloc-...)")
    args.allocation_id = allocation
    ec2 = plain_client("ec2", args.region)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            (address,) = ec2.describe_addresses(AllocationIds=[args.allocation_id])["Addresses"]
            holder = address.get("InstanceId", "")
            if holder == me:
                print(f"Elastic IP {address.get('PublicIp', '')} ({args.allocation_id}) is on this instance")
                return 0
            if not address.get("AssociationId"):
                ec2.associate_address(AllocationId=args.allocation_id, InstanceId=me, AllowReassociation=False)
                continue  # read it back
            why = f"it is still associated with {holder or address.get('NetworkInterfaceId', 'another interface')}"
        except Exception as exc:  # botocore's errors: retried until the deadline
            why = str(exc)
        if time.monotonic() >= deadline:
            print(f"nat-ha claim-address: {args.allocation_id} not claimed after {args.wait:.0f} s: {why}",
                  file=sys.stderr)  # fmt: skip
            return 1
        time.sleep(5.0)
