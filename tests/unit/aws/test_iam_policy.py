"""Least privilege: the IAM policy allows every AWS call nat-ha makes, and nothing more.

(a) the small evaluator in tests/iam_eval.py is itself tested;
(b) every call recorded during the whole test run (conftest's ``aws_call_record``; this
    module is marked ``iam_last`` and runs at the end) plus calls this module drives itself
    through the real EC2 adapter and DynamoDB store on moto is allowed for resources tagged
    into the group, and denied for another group's route tables and instances;
(c) the policy's actions == agent.aws.calls.AGENT_CALLS, and the code calls nothing outside
    agent.aws.calls.ALL_CALLS.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent.aws import calls as awscalls
from tests.iam_eval import PolicyError, Request, allowed, granted_actions, render

pytestmark = pytest.mark.iam_last

REPO = Path(__file__).resolve().parents[3]
POLICY = REPO / "deploy" / "iam" / "nat-ha-policy.json"
ASG_POLICY = REPO / "deploy" / "iam" / "nat-ha-asg-policy.json"
ADMIN_POLICY = REPO / "deploy" / "iam" / "nat-ha-admin-policy.json"
STACK = "nat-ha-prod"
# The stacks' own statement (deploy/cloudformation/generate.py STACK_STATEMENTS; test_cloudformation.py
# shows the templates embed it), rendered for one stack.
STACK_POLICY = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": ["cloudformation:SignalResource"],
    "Resource": f"arn:aws:cloudformation:us-east-1:123456789012:stack/{STACK}/*"}]}  # fmt: skip
REGION, ACCOUNT, GROUP, TABLE = "us-east-1", "123456789012", "prod-nat", "nat-ha-iam-test"
TAG = "ec2:ResourceTag/nat-ha:group"


def values(group: str = GROUP, table: str = TABLE) -> dict[str, str]:
    return {
        "AWS::Partition": "aws",
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT,
        "NatHaGroup": group,
        "NatHaTable": table,
    }


def policy(path: Path = POLICY, **kw: str) -> dict[str, Any]:
    return dict(render(json.loads(path.read_text()), values(**kw)))


def arn(kind: str, rid: str) -> str:
    service = "dynamodb" if kind == "table" else "ec2"
    return f"arn:aws:{service}:{REGION}:{ACCOUNT}:{kind}/{rid}"


# ------------------------------------------------------------------ (a) the evaluator
def test_evaluator_allow_deny_and_default() -> None:
    pol = {
        "Statement": [
            {"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"},
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/logs/*"},
            {"Effect": "Deny", "Action": "ec2:DescribeImages", "Resource": "*"},
        ]
    }
    assert allowed(pol, Request("ec2:DescribeInstances", "*"))
    assert allowed(pol, Request("EC2:describeinstances", "*")), "actions are case-insensitive"
    assert not allowed(pol, Request("ec2:DescribeImages", "*")), "explicit deny wins"
    assert not allowed(pol, Request("ec2:ReplaceRoute", "*")), "default deny"
    assert allowed(pol, Request("s3:GetObject", "arn:aws:s3:::b/logs/x/y"))
    assert not allowed(pol, Request("s3:GetObject", "arn:aws:s3:::b/LOGS/x")), "resources are case-sensitive"
    assert not allowed(pol, Request("s3:GetObject", "arn:aws:s3:::c/logs/x"))


def test_evaluator_conditions_on_tags() -> None:
    stmt = {
        "Effect": "Allow",
        "Action": "ec2:ReplaceRoute",
        "Resource": "arn:aws:ec2:*:*:route-table/*",
        "Condition": {"StringEquals": {TAG: "g1"}},
    }
    pol = {"Statement": [stmt]}
    rt = arn("route-table", "rtb-1")
    assert allowed(pol, Request("ec2:ReplaceRoute", rt, {TAG: "g1"}))
    assert not allowed(pol, Request("ec2:ReplaceRoute", rt, {TAG: "g2"}))
    assert not allowed(pol, Request("ec2:ReplaceRoute", rt)), "a missing tag fails StringEquals"
    assert not allowed(pol, Request("ec2:ReplaceRoute", arn("instance", "i-1"), {TAG: "g1"}))
    like = {"Statement": [{**stmt, "Condition": {"StringLike": {TAG: "g?-*"}}}]}
    assert allowed(like, Request("ec2:ReplaceRoute", rt, {TAG: "g1-prod"}))
    assert not allowed(like, Request("ec2:ReplaceRoute", rt, {TAG: "g10"}))
    not_eq = {"Statement": [{**stmt, "Condition": {"StringNotEquals": {TAG: "g1"}}}]}
    assert allowed(not_eq, Request("ec2:ReplaceRoute", rt, {TAG: "g2"}))
    assert not allowed(not_eq, Request("ec2:ReplaceRoute", rt, {TAG: "g1"}))


def test_evaluator_rejects_what_it_does_not_understand() -> None:
    with pytest.raises(PolicyError):
        allowed({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"IpAddress": {}}}]},
                Request("ec2:X", "*"))  # fmt: skip
    with pytest.raises(PolicyError):
        granted_actions({"Statement": [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]})
    with pytest.raises(PolicyError):
        render({"a": "${Missing}"}, {})
    assert render({"a": ["x${A}y"]}, {"A": "1"}) == {"a": ["x1y"]}


# ------------------------------------------------------------------ (b) recorded calls
def _drive_representative_calls() -> None:
    """Make every agent call once through the real adapters, on moto (records via the hook)."""
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    from coordinator.dynamo import DynamoSettings, DynamoStore, init_table
    from coordinator.store import Expect

    with moto.mock_aws():
        settings = DynamoSettings(table=TABLE, region=REGION, connect_timeout_s=5, read_timeout_s=5)
        init_table(settings, wait_s=10)
        store = DynamoStore(settings)
        store.put_item(GROUP, {"item": "member#i-1", "kind": "member"}, Expect.item_absent())
        store.get_item(GROUP, "member#i-1")
        store.query_group(GROUP)

        raw = boto3.client("ec2", region_name=REGION)
        vpc = raw.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = raw.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        image = raw.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "nat-ha:group", "Value": GROUP}]}]
        insts = raw.run_instances(ImageId=image, MinCount=2, MaxCount=2, SubnetId=subnet, TagSpecifications=tags)
        a, b = (i["InstanceId"] for i in insts["Instances"])
        rtb = raw.create_route_table(
            VpcId=vpc,
            TagSpecifications=[
                {
                    "ResourceType": "route-table",
                    "Tags": [{"Key": "nat-ha:group", "Value": GROUP}, {"Key": "nat-ha:home", "Value": a}],
                }
            ],
        )["RouteTable"]["RouteTableId"]
        try:
            from agent.aws.ec2 import Ec2
        except ImportError:  # the adapter is not there yet: same calls on an instrumented client
            from coordinator.instrument import instrument_client

            ec2 = instrument_client(boto3.client("ec2", region_name=REGION))
            ec2.describe_instances(Filters=[{"Name": "tag:nat-ha:group", "Values": [GROUP]}])
            ec2.describe_route_tables(RouteTableIds=[rtb])
            ec2.create_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", InstanceId=a)
            ec2.replace_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", InstanceId=b)
            ec2.stop_instances(InstanceIds=[b])
            ec2.start_instances(InstanceIds=[b])
        else:
            import time

            from agent.aws.fence import Fence, FenceTiming
            from agent.config import EgressTable

            members = {m.instance_id: m for m in Ec2(REGION, timeout=5).discover(GROUP, with_eni=True).members}
            eni = members[a].eni
            raw.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.0.1.200"])
            eip = [{"ResourceType": "elastic-ip", "Tags": [{"Key": "nat-ha:group", "Value": GROUP}]}]
            alloc = raw.allocate_address(Domain="vpc", TagSpecifications=eip)["AllocationId"]
            egress = {rtb: EgressTable(rtb, alloc, ("10.0.11.0/24",), ((a, "10.0.1.200"),))}
            fence = Fence(lambda: 60.0, time.monotonic, FenceTiming(5.0))
            adapter = Ec2(REGION, timeout=5, fence=fence, members=members, egress=egress)
            adapter.tag_holder(rtb, holder_arn(a))  # CreateTags (the IAM fence)
            adapter.point_route(rtb, a, missing=True)  # CreateRoute (no default route yet)
            adapter.point_route(rtb, b)  # ReplaceRoute
            adapter.tag_address_holder(rtb, holder_arn(a))  # CreateTags on the Elastic IP
            adapter.associate_address(rtb, a)  # AssociateAddress (egress_ip = follow)
            adapter.egress_ips([rtb])  # DescribeAddresses
            adapter.instance_states([a, b])
            adapter.tag_stop_by(a, holder_arn(a))  # a session's first write: its own instance
            adapter.tag_stop_by(b, holder_arn(a))  # a stopper tags its target
            adapter.stop(b)
            adapter.start(b)


def holder_arn(instance: str) -> str:
    return arn("instance", instance)


CALLER = holder_arn("i-0caller")
HOLDER_KEY = "nat-ha:holder"
HOLDER = "ec2:ResourceTag/nat-ha:holder"
STOP_BY = "ec2:ResourceTag/nat-ha:stop-by"


def _kind(resource: str) -> str:
    return {"rtb": "route-table", "i": "instance", "eipalloc": "elastic-ip"}[resource.split("-")[0]]


def _requests(record: dict[str, Any], group: str) -> list[Request]:
    """The IAM requests one recorded call makes, for resources tagged nat-ha:group=<group>.

    Route writes and associations are made by the holder (the agent tags the table and its Elastic
    IP before writing them), and a stop by the member that tagged its target stop-by itself, so
    those requests carry the caller's ARN both as ``ec2:SourceInstanceARN`` and in the tag.
    """
    action = awscalls.iam_action(record["service"], record["action"])
    res = record.get("resources", {})
    me = {"ec2:SourceInstanceARN": CALLER}
    if record["service"] == "dynamodb":
        return [Request(action, arn("table", res["TableName"]))]
    if record["action"] in ("ReplaceRoute", "CreateRoute"):
        context = {TAG: group, HOLDER: CALLER, **me}
        return [Request(action, arn("route-table", res["RouteTableId"]), context)]
    if record["action"] == "CreateTags":
        out = []
        for r, key in ((r, t["Key"]) for r in res["Resources"] for t in res.get("Tags", [{"Key": HOLDER_KEY}])):
            context = {TAG: group, f"aws:RequestTag/{key}": CALLER, "aws:TagKeys": [key], **me}
            out.append(Request(action, arn(_kind(r), r), context))
        return out
    if record["action"] == "StopInstances":
        return [Request(action, arn("instance", i), {TAG: group, STOP_BY: CALLER, **me}) for i in res["InstanceIds"]]
    if record["action"] == "StartInstances":
        return [Request(action, arn("instance", i), {TAG: group}) for i in res["InstanceIds"]]
    if record["service"] == "autoscaling":
        name = res["AutoScalingGroupName"]
        asg = f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:uuid-1:autoScalingGroupName/{name}"
        return [Request(action, asg, {"aws:ResourceTag/nat-ha:group": group})]
    if record["service"] == "cloudformation":  # the stack the NAT belongs to (the recorded name is a test's)
        return [Request(action, f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/uuid-1")]
    if record["action"] == "AssociateAddress":
        # IAM authorizes the request against every resource it names: the Elastic IP and the ENI.
        onto = (
            arn("network-interface", res["NetworkInterfaceId"])
            if "NetworkInterfaceId" in res
            else arn("instance", res["InstanceId"])
        )
        return [
            Request(action, arn("elastic-ip", res["AllocationId"]), {TAG: group, HOLDER: CALLER, **me}),
            Request(action, onto, {TAG: group}),
        ]
    return [Request(action, "*")]


def _records(path: Path) -> list[dict[str, Any]]:
    """Every distinct call recorded (a line is its service, action and resources, keys sorted: what IAM
    decides by). A CI run records tens of thousands, most of them the same heartbeat or read."""
    if not path.exists():
        return []
    return [json.loads(line) for line in sorted({ln for ln in path.read_text().splitlines() if ln.strip()})]


def test_every_recorded_call_is_allowed_and_other_groups_are_denied(aws_call_record: Path) -> None:
    _drive_representative_calls()
    records = _records(aws_call_record)
    # Calls made by tests to set up fixtures (moto's run_instances, describe_images, ...) go through
    # plain boto3 clients and are not recorded; every recorded call is nat-ha's own.
    seen = {(r["service"], r["action"]) for r in records}
    assert set(awscalls.AGENT_CALLS) <= seen, f"not exercised: {set(awscalls.AGENT_CALLS) - seen}"
    unknown = seen - awscalls.ALL_CALLS
    assert not unknown, f"nat-ha called {unknown}, not in agent.aws.calls.ALL_CALLS (add it there and to the policy)"

    for record in records:
        key = (record["service"], record["action"])
        table = record.get("resources", {}).get("TableName", TABLE)
        pols = (
            [policy(table=table)] if key in awscalls.AGENT_CALLS
            else [policy(ASG_POLICY)] if key in awscalls.ASG_CALLS
            else [STACK_POLICY] if key in awscalls.STACK_CALLS
            else [policy(ADMIN_POLICY, table=table)]
        )  # fmt: skip
        for req in _requests(record, GROUP):
            assert any(allowed(p, req) for p in pols), f"denied: {req} (recorded {record})"
        if key in awscalls.AGENT_CALLS or key in awscalls.ASG_CALLS:
            for req in _requests(record, "another-group"):
                if req.resource != "*" and record["service"] in ("ec2", "autoscaling"):
                    assert not allowed(pols[0], req), f"another group's resource allowed: {req}"
            if record["service"] == "dynamodb":
                other = Request(_requests(record, GROUP)[0].action, arn("table", "someone-elses-table"))
                assert not allowed(pols[0], other)


def test_untagged_resources_and_other_actions_are_denied() -> None:
    pol = policy()
    rt, inst = arn("route-table", "rtb-9"), arn("instance", "i-9")
    assert not allowed(pol, Request("ec2:ReplaceRoute", rt))
    assert not allowed(pol, Request("ec2:StopInstances", inst))
    assert not allowed(pol, Request("ec2:StopInstances", inst, {TAG: GROUP})), "a stop needs the stop-by tag"
    assert not allowed(pol, Request("ec2:TerminateInstances", inst, {TAG: GROUP}))
    assert not allowed(pol, Request("ec2:DeleteRoute", rt, {TAG: GROUP}))
    assert not allowed(pol, Request("dynamodb:DeleteTable", arn("table", TABLE)))
    assert not allowed(pol, Request("dynamodb:Scan", arn("table", TABLE)))
    assert not allowed(pol, Request("dynamodb:CreateTable", arn("table", TABLE))), "admin calls are separate"
    assert not allowed(pol, Request("iam:PassRole", "*"))


# ------------------------------------------------------------------ the holder-tag fence
def test_route_writes_are_allowed_only_to_the_instance_the_holder_tag_names() -> None:
    """The IAM fence: AWS evaluates the tag when it processes the request, so a stale holder's late
    ReplaceRoute - sent inside its lease, processed after the new holder re-tagged the table - is
    refused by AWS, whatever the client did."""
    pol = policy()
    rt = arn("route-table", "rtb-1")
    old, new = holder_arn("i-0old"), holder_arn("i-0new")
    for action in ("ec2:ReplaceRoute", "ec2:CreateRoute"):
        # The old holder, while the tag names it: allowed.
        assert allowed(pol, Request(action, rt, {TAG: GROUP, HOLDER: old, "ec2:SourceInstanceARN": old}))
        # The same request processed after the new holder's CreateTags landed: refused.
        assert not allowed(pol, Request(action, rt, {TAG: GROUP, HOLDER: new, "ec2:SourceInstanceARN": old}))
        # An untagged table (nobody has taken it yet): nobody may write its routes before tagging it.
        assert not allowed(pol, Request(action, rt, {TAG: GROUP, "ec2:SourceInstanceARN": old}))
        # Credentials used outside an instance (no SourceInstanceARN): refused.
        assert not allowed(pol, Request(action, rt, {TAG: GROUP, HOLDER: old}))
        # Another group's table, even if tagged with the caller: refused.
        assert not allowed(pol, Request(action, rt, {TAG: "another", HOLDER: old, "ec2:SourceInstanceARN": old}))


def test_an_instance_may_only_tag_itself_as_holder_and_nothing_else() -> None:
    pol = policy()
    rt = arn("route-table", "rtb-1")
    me, other = holder_arn("i-0me"), holder_arn("i-0other")

    def tag(value: str, keys: list[str], group: str = GROUP) -> Request:
        ctx: dict[str, str | list[str]] = {TAG: group, "ec2:SourceInstanceARN": me, "aws:TagKeys": keys}
        ctx["aws:RequestTag/nat-ha:holder"] = value
        return Request("ec2:CreateTags", rt, ctx)

    assert allowed(pol, tag(me, ["nat-ha:holder"]))
    assert not allowed(pol, tag(other, ["nat-ha:holder"])), "naming another instance as holder"
    assert not allowed(pol, tag(me, ["nat-ha:holder", "nat-ha:group"])), "changing the group tag too"
    assert not allowed(pol, tag(me, ["nat-ha:holder"], group="another")), "another group's table"
    assert not allowed(pol, Request("ec2:CreateTags", arn("instance", "i-0me"), {TAG: GROUP})), "not a route table"


# ------------------------------------------------------------------ Elastic IPs (egress_ip = follow)
def test_elastic_ips_move_only_within_the_group() -> None:
    """AssociateAddress names two resources, and IAM must allow both: the group's Elastic IP, onto the
    network interface (or instance) of a group member. Another group's or an untagged EIP, or any
    EIP onto an interface outside the group, is refused; so is taking an EIP away (DisassociateAddress)."""
    pol = policy()
    eip, eni, inst = arn("elastic-ip", "eipalloc-1"), arn("network-interface", "eni-1"), arn("instance", "i-1")
    act = "ec2:AssociateAddress"
    me = {HOLDER: CALLER, "ec2:SourceInstanceARN": CALLER}
    assert allowed(pol, Request(act, eip, {TAG: GROUP, **me}))
    assert allowed(pol, Request(act, eni, {TAG: GROUP}))
    assert allowed(pol, Request(act, inst, {TAG: GROUP})), "AWS may also authorize the ENI's instance"
    assert not allowed(pol, Request(act, eip, {TAG: "another", **me})), "another group's Elastic IP"
    assert not allowed(pol, Request(act, eip, me)), "an untagged Elastic IP (the account's others)"
    assert not allowed(pol, Request(act, eni, {TAG: "another"})), "onto another group's interface"
    assert not allowed(pol, Request(act, eni)), "onto an untagged interface"
    assert not allowed(pol, Request(act, arn("route-table", "rtb-1"), {TAG: GROUP})), "not an EIP, ENI or instance"
    for action in ("ec2:DisassociateAddress", "ec2:ReleaseAddress", "ec2:AllocateAddress"):
        assert not allowed(pol, Request(action, eip, {TAG: GROUP})), action
    assert allowed(pol, Request("ec2:DescribeAddresses", "*"))


# ------------------------------------------------------------------ (c) exactly the calls
def test_only_this_stack_may_be_signalled_and_only_the_group_s_hooks_completed() -> None:
    sig = "cloudformation:SignalResource"
    assert allowed(STACK_POLICY, Request(sig, f"arn:aws:cloudformation:us-east-1:123456789012:stack/{STACK}/u-1"))
    assert not allowed(STACK_POLICY, Request(sig, "arn:aws:cloudformation:us-east-1:123456789012:stack/other/u-2"))
    asg = policy(ASG_POLICY)
    group_arn = f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:u-1:autoScalingGroupName/nat-ha-NatGroup1-X"
    act = "autoscaling:CompleteLifecycleAction"
    assert allowed(asg, Request(act, group_arn, {"aws:ResourceTag/nat-ha:group": GROUP}))
    assert not allowed(asg, Request(act, group_arn, {"aws:ResourceTag/nat-ha:group": "another"}))
    assert not allowed(asg, Request(act, group_arn)), "an untagged group (someone else's)"
    for other in ("autoscaling:TerminateInstanceInAutoScalingGroup", "autoscaling:SetDesiredCapacity",
                  "autoscaling:UpdateAutoScalingGroup"):  # fmt: skip
        assert not allowed(asg, Request(other, group_arn, {"aws:ResourceTag/nat-ha:group": GROUP})), other


def test_policies_grant_exactly_the_listed_calls() -> None:
    files = ((POLICY, awscalls.AGENT_CALLS), (ASG_POLICY, awscalls.ASG_CALLS), (ADMIN_POLICY, awscalls.ADMIN_CALLS))
    assert granted_actions(STACK_POLICY) == {awscalls.iam_action(*c) for c in awscalls.STACK_CALLS}
    for path, calls in files:
        granted = granted_actions(policy(path))
        assert not [a for a in granted if "*" in a or "?" in a], f"{path.name}: no wildcard actions"
        assert granted == {awscalls.iam_action(*c) for c in calls}, path.name


def test_code_calls_nothing_outside_the_list() -> None:
    """Static scan: any botocore operation of EC2, DynamoDB, Auto Scaling or CloudFormation named in the
    source must be listed."""
    botocore_session = pytest.importorskip("botocore.session").get_session()
    from botocore import xform_name

    ops: dict[str, tuple[str, str]] = {}
    for service in ("ec2", "dynamodb", "autoscaling", "cloudformation"):
        for op in botocore_session.get_service_model(service).operation_names:
            ops[xform_name(op)] = (service, op)
    pattern = re.compile(r"""[."'](""" + "|".join(sorted(ops, key=len, reverse=True)) + r")\b")
    found: set[tuple[str, str]] = set()
    for source in [*(REPO / "agent").rglob("*.py"), *(REPO / "coordinator").rglob("*.py")]:
        if source.relative_to(REPO).as_posix().startswith(awscalls.LOCAL_ONLY_PACKAGE):
            continue
        found |= {ops[m.group(1)] for m in pattern.finditer(source.read_text())}
    assert found, "the scan found no call at all: it is broken"
    assert found <= awscalls.ALL_CALLS, f"called but not listed: {found - awscalls.ALL_CALLS}"


# ------------------------------------------------------------------ issue 17: stops and associations fenced by AWS
def _stop(target_tag: str | None, caller: str, group: str = GROUP) -> Request:
    ctx: dict[str, str | list[str]] = {TAG: group, "ec2:SourceInstanceARN": caller}
    if target_tag is not None:
        ctx[STOP_BY] = target_tag
    return Request("ec2:StopInstances", arn("instance", "i-0target"), ctx)


def test_which_late_stops_iam_refuses() -> None:
    """A stop is allowed only while the target's nat-ha:stop-by tag names the caller. AWS evaluates the
    tag when it processes the request, so a stop sent late (a stopper frozen between its checks and the
    send, issue 17 finding 1) is refused once the target's agent, back with a new session, has tagged
    its own instance - whatever the stopper's own checks said."""
    pol = policy()
    stopper, target, third = holder_arn("i-0stopper"), holder_arn("i-0target"), holder_arn("i-0third")
    assert allowed(pol, _stop(stopper, stopper)), "the stopper, right after tagging its target"
    assert not allowed(pol, _stop(target, stopper)), "late: the target came back and tagged itself"
    assert not allowed(pol, _stop(third, stopper)), "late: another member has since prepared a stop"
    assert not allowed(pol, _stop(None, stopper)), "never tagged (a stop without the tag step)"
    assert not allowed(pol, _stop(stopper, stopper, group="another")), "another group's instance"
    assert not allowed(pol, Request("ec2:StopInstances", arn("instance", "i-0target"), {TAG: GROUP, STOP_BY: stopper}))
    start = Request("ec2:StartInstances", arn("instance", "i-0target"), {TAG: GROUP})
    assert allowed(pol, start), "starting a stopped group member needs no tag (it never harms forwarding)"


def test_an_instance_may_name_only_itself_as_stopper() -> None:
    pol = policy()
    me, other = holder_arn("i-0me"), holder_arn("i-0other")

    def tag(value: str, keys: list[str], resource: str = "i-0target", group: str = GROUP) -> Request:
        ctx: dict[str, str | list[str]] = {TAG: group, "ec2:SourceInstanceARN": me, "aws:TagKeys": keys}
        ctx["aws:RequestTag/nat-ha:stop-by"] = value
        return Request("ec2:CreateTags", arn("instance", resource), ctx)

    assert allowed(pol, tag(me, ["nat-ha:stop-by"])), "a stopper tags its target"
    assert allowed(pol, tag(me, ["nat-ha:stop-by"], resource="i-0me")), "a new session tags its own instance"
    assert not allowed(pol, tag(other, ["nat-ha:stop-by"])), "naming another member as stopper"
    assert not allowed(pol, tag(me, ["nat-ha:stop-by", "nat-ha:group"])), "changing the group tag too"
    assert not allowed(pol, tag(me, ["nat-ha:stop-by"], group="another")), "another group's instance"


def test_elastic_ips_are_associated_only_by_the_instance_their_holder_tag_names() -> None:
    """Issue 17: AssociateAddress fenced like route writes. The holder tags the table's Elastic IP with its
    ARN before it associates it; a stale holder's late association, processed after the new holder
    re-tagged the Elastic IP, is refused by AWS."""
    pol = policy()
    eip = arn("elastic-ip", "eipalloc-1")
    old, new = holder_arn("i-0old"), holder_arn("i-0new")
    act = "ec2:AssociateAddress"
    assert allowed(pol, Request(act, eip, {TAG: GROUP, HOLDER: old, "ec2:SourceInstanceARN": old}))
    assert not allowed(pol, Request(act, eip, {TAG: GROUP, HOLDER: new, "ec2:SourceInstanceARN": old})), "late"
    assert not allowed(pol, Request(act, eip, {TAG: GROUP, "ec2:SourceInstanceARN": old})), "never tagged"
    ctx: dict[str, str | list[str]] = {
        TAG: GROUP,
        "ec2:SourceInstanceARN": new,
        "aws:RequestTag/nat-ha:holder": new,
        "aws:TagKeys": ["nat-ha:holder"],
    }
    assert allowed(pol, Request("ec2:CreateTags", eip, ctx)), "the holder tags the group's Elastic IP"
    assert not allowed(pol, Request("ec2:CreateTags", eip, {**ctx, "aws:RequestTag/nat-ha:holder": old}))
    assert not allowed(pol, Request("ec2:CreateTags", eip, {**ctx, TAG: "another"}))
