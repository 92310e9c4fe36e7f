"""Every AWS API call nat-ha can make, in one place, with why it is needed.

The IAM policy (``deploy/iam/nat-ha-policy.json``, also embedded in the CloudFormation
templates) grants exactly :data:`AGENT_CALLS`; ``deploy/iam/nat-ha-asg-policy.json`` exactly
:data:`ASG_CALLS`; the stacks add :data:`STACK_CALLS` for their own stack; the optional admin
policy (``deploy/iam/nat-ha-admin-policy.json``) grants exactly :data:`ADMIN_CALLS`.
``tests/unit/aws/test_iam_policy.py`` checks that the code calls nothing outside
:data:`ALL_CALLS`, that every call recorded during the test suite is allowed, and
that the policies grant nothing else. Add a call here first, then to the policy.
"""

from __future__ import annotations

# (service, botocore operation name) -> why the agent (and status/drain/switchover) needs it.
AGENT_CALLS: dict[tuple[str, str], str] = {
    ("ec2", "DescribeRouteTables"): "read the group's route tables (discovery by tag, reconcile, confirm a move)",
    ("ec2", "DescribeInstances"): "discover members by tag, read a peer's state before and during a restart",
    ("ec2", "CreateRoute"): "point 0.0.0.0/0 of a group route table at a NAT when the route is missing",
    ("ec2", "ReplaceRoute"): "move 0.0.0.0/0 of a group route table to the NAT holding its lease",
    ("ec2", "CreateTags"): "tag a group route table or its Elastic IP nat-ha:holder=<own ARN> before writing it, and "
    "a group instance nat-ha:stop-by=<own ARN> before stopping it or when our session starts (the IAM fences)",
    ("ec2", "AssociateAddress"): "egress_ip = follow: move a group route table's Elastic IP to its holder's address",
    ("ec2", "DescribeAddresses"): "egress_ip = follow: read where the group's Elastic IPs are associated (reconcile)",
    ("ec2", "StopInstances"): "stop a dead peer of the group tagged stop-by us (restart lease, cooldown, cap apply)",
    ("ec2", "StartInstances"): "start that peer again",
    ("dynamodb", "DescribeTable"): "pynamodb reads the table's key schema once per process",
    ("dynamodb", "GetItem"): "consistent read of one lease or heartbeat",
    ("dynamodb", "PutItem"): "conditional writes: heartbeats, lease claims and renewals, terms",
    ("dynamodb", "Query"): "consistent read of the whole group (one partition) every cycle",
}

# `nat-ha init-table` only: run once by an operator or the stack, not by the agent.
ADMIN_CALLS: dict[tuple[str, str], str] = {
    ("dynamodb", "CreateTable"): "create the coordination table",
    ("dynamodb", "DescribeTable"): "wait until the table is ACTIVE",
    ("dynamodb", "UpdateTimeToLive"): "enable TTL on gc_at (garbage collection of old items only)",
}

# NATs in Auto Scaling groups with the nat-ha-drain termination hook (deploy/iam/nat-ha-asg-policy.json;
# the stacks include it): the agent completes the hook's action once it has drained.
ASG_CALLS: dict[tuple[str, str], str] = {
    ("autoscaling", "CompleteLifecycleAction"): "let Auto Scaling terminate this NAT once it has drained",
}

# The stacks only (their templates grant it to this stack alone): the first boot's `nat-ha signal`.
STACK_CALLS: dict[tuple[str, str], str] = {
    ("cloudformation", "SignalResource"): "tell the stack this NAT's bootstrap succeeded or failed",
}

ALL_CALLS: frozenset[tuple[str, str]] = (
    frozenset(AGENT_CALLS) | frozenset(ADMIN_CALLS) | frozenset(ASG_CALLS) | frozenset(STACK_CALLS)
)


def iam_action(service: str, operation: str) -> str:
    """``("ec2", "ReplaceRoute")`` -> ``"ec2:ReplaceRoute"`` (the IAM prefixes equal the service names here)."""
    return f"{service}:{operation}"


# The lab package (``nat-ha demo``, the loopback group, the namespace lab) only ever talks to a
# local moto server it started: it builds a fake VPC with CreateVpc, RunInstances, ... Those calls
# never reach AWS and are not in the policy; the static scan in tests/unit/aws/test_iam_policy.py
# skips this folder.
LOCAL_ONLY_PACKAGE = "agent/lab/"
