"""Both CloudFormation stacks deployed into moto's CloudFormation, updated, and read back by ``nat-ha status``.

A moto server process on 127.0.0.1 plays CloudFormation, EC2, Auto Scaling, IAM, SSM and DynamoDB.
Each shipped template (as generate.py wrote it) is deployed: its Auto Scaling groups launch one
instance each, tagged with their slot; the test asserts the resources and tags, then runs
``nat-ha status --json`` with the config the stack's user data writes (read out of the launch
template moto rendered, not re-typed here), discovering members and their home route tables by
tag and slot. No agent runs (moto boots nothing), so status lists each route table as having no
live owner and no default route yet (the home NAT's agent creates it when it first claims it).

What moto 5.2.6 lacks, worked around here and only here (the templates on disk are never
changed; each workaround also has a comment where it is made):

1. ``Fn::Cidr``: not implemented (CreateStack answers HTTP 500). Resolved with ``ipaddress``,
   the way CloudFormation splits the CIDR.
2. ``Fn::GetAtt <Subnet>.CidrBlock``: not an attribute moto knows (ValidationError). Replaced by
   that subnet's own ``CidrBlock`` expression.
3. An ``Fn::If`` whose false branch is ``AWS::NoValue`` inside a list (the role's ``Policies``:
   the bundle's S3 read policy): moto keeps a null entry and fails. Resolved for the stack's
   ``NatHaArtifact``.
4. Tags on ``AWS::EC2::RouteTable`` and ``AWS::EC2::EIP``, and ``SubnetRouteTableAssociation``:
   dropped or recorded where DescribeRouteTables does not show them. Applied after CreateStack
   from the template (CreateTags, AssociateRouteTable; only what moto dropped).
5. The launch template's ``NetworkInterfaces`` (security group, public IP, with EgressIp=follow
   the secondary addresses): moto's Auto Scaling launches with the default group and one
   address. The secondary addresses are assigned after CreateStack (AssignPrivateIpAddresses).
6. ``UpdateStack``: moto updates a resource for a changed parameter only when it sees a ``Ref``
   to it (not one inside an ``Fn::Sub`` string): the launch template gets a ``Metadata`` entry
   naming the user data's parameters with ``Ref`` (then moto makes the new version, as
   CloudFormation does). moto runs no ``UpdatePolicy``: the update test takes the order of the
   groups' updates from the template's dependencies as CloudFormation orders them, and carries
   out each group's ``AutoScalingRollingUpdate`` (MaxBatchSize 1, MinInstancesInService 0)
   through moto's Auto Scaling API: the group moves to the new version and its instance is
   terminated; moto launches the replacement. WaitOnResourceSignals cannot be shown (nothing
   boots): the test moves on once the replacement is there (the signal path is the systemd
   tier's: tests/systemd/test_bootstrap.py).

Not worked around, so not asserted here: the creation policy, the lifecycle hook (moto creates
none), the role's ``ManagedPolicyArns`` (SSM; moto attaches none), ``TimeToLiveSpecification``
and ``Rules``;
test_cloudformation.py asserts those on the template, and cfn-lint checks it.

The existing-VPC stack is deployed before its route tables are tagged, as a user would: status
must say so and exit 1; the commands of the stack's TagRouteTables output (one AZ with two route
tables) are then applied (parsed with shlex, sent with boto3: the aws CLI is not a test
dependency) and status finds every route table.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from agent.lab import userdata
from tests.integration.test_cloudformation import load
from tests.servers import ServerProcess, child_env, moto_server_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REGION = "us-east-1"
CONFIG_PATH = "/etc/nat-ha/config.toml"
AMI = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default"
ARTIFACT = {"NatHaArtifact": "https://releases.example.com/nat-ha-0.1.0-bundle.tar.gz", "NatHaArtifactSha256": "a" * 64}


# ----------------------------------------------------------------------------- moto
@pytest.fixture(scope="module")
def moto() -> Iterator[ServerProcess]:
    with moto_server_process() as server:
        yield server


def client(server: ServerProcess, service: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=server.url)


# ------------------------------------------------------------------ the workarounds
def _walk(node: Any, fn: Any) -> Any:
    """Rebuild a template tree bottom-up, letting ``fn`` replace any dict."""
    if isinstance(node, dict):
        node = {k: _walk(v, fn) for k, v in node.items()}
        return fn(node)
    if isinstance(node, list):
        return [_walk(v, fn) for v in node]
    return node


def param_value(template: dict[str, Any], params: dict[str, str], name: str) -> Any:
    return params.get(name, template["Parameters"].get(name, {}).get("Default"))


def for_moto(template: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    """The template with what moto lacks resolved (workarounds 1-3 of the module docstring)."""
    t = copy.deepcopy(template)

    def param(node: Any) -> Any:
        if isinstance(node, dict) and set(node) == {"Ref"}:
            return param_value(t, params, node["Ref"])
        return node

    # Workaround 1: moto has no Fn::Cidr; compute it as CloudFormation does (count blocks of
    # 2^bits addresses each, from the start of the CIDR).
    def cidr(node: dict[str, Any]) -> Any:
        if set(node) != {"Fn::Cidr"}:
            return node
        block, count, bits = (param(v) for v in node["Fn::Cidr"])
        net = ipaddress.ip_network(str(block))
        subnets = net.subnets(new_prefix=net.max_prefixlen - int(bits))
        return [str(s) for _, s in zip(range(int(count)), subnets, strict=False)]

    t = _walk(t, cidr)
    resources = t["Resources"]

    # Workaround 2: moto has no Subnet.CidrBlock attribute; use the subnet's own CidrBlock value.
    def subnet_cidr(node: dict[str, Any]) -> Any:
        if set(node) == {"Fn::GetAtt"} and node["Fn::GetAtt"][1] == "CidrBlock":
            target = resources[node["Fn::GetAtt"][0]]
            assert target["Type"] == "AWS::EC2::Subnet", node
            return target["Properties"]["CidrBlock"]
        return node

    t = _walk(t, subnet_cidr)
    # Workaround 3: moto keeps the AWS::NoValue of an Fn::If inside the role's Policies list.
    role = t["Resources"]["NatRole"]["Properties"]
    conditions = {
        "ArtifactFromS3": str(param_value(t, params, "NatHaArtifact")).startswith("s3://"),
        "ConntrackSyncOn": str(param_value(t, params, "ConntrackSync")) == "on",
    }
    kept = []
    for entry in role["Policies"]:
        if "Fn::If" in entry:
            cond, yes, no = entry["Fn::If"]
            assert cond in conditions and no == {"Ref": "AWS::NoValue"}, entry
            entry = yes if conditions[cond] else None
        if entry is not None:
            kept.append(entry)
    role["Policies"] = kept
    # Workaround 6 (first half): moto's UpdateStack updates a resource for a changed parameter only when
    # it sees a Ref to it, not one inside Fn::Sub's string: name the user data's parameters in a Ref too.
    named = sorted(userdata.names(userdata.template_text()) & set(t["Parameters"]))
    t["Resources"]["NatLaunchTemplate"]["Metadata"] = {"moto-sees-these": [{"Ref": n} for n in named]}
    return t


def resolve_value(node: Any, params: dict[str, str], physical: dict[str, str]) -> str:
    """A tag value of the template (a literal, Ref or a one-string Fn::Sub), as CloudFormation resolves it."""
    names = {**params, **physical, "AWS::Region": REGION}
    if isinstance(node, str):
        return node
    if set(node) == {"Ref"}:
        return names[node["Ref"]]
    if set(node) == {"Fn::Sub"} and isinstance(node["Fn::Sub"], str):
        return re.sub(r"\$\{([A-Za-z0-9:]+)\}", lambda m: names[m.group(1)], node["Fn::Sub"])
    raise AssertionError(f"tag value not resolvable here: {node}")


def copy_dropped_tags_and_associations(
    server: ServerProcess, template: dict[str, Any], params: dict[str, str], physical: dict[str, str]
) -> list[str]:
    """Workaround 4: apply what moto dropped; returns a line per thing applied."""
    ec2 = client(server, "ec2")
    applied = []
    for logical, resource in template["Resources"].items():
        if logical not in physical:
            continue  # its condition is false
        props = resource.get("Properties", {})
        if resource["Type"] in ("AWS::EC2::RouteTable", "AWS::EC2::EIP") and props.get("Tags"):
            names = {**params, "AWS::Region": REGION}
            wanted = {t["Key"]: resolve_value(t["Value"], names, physical) for t in props["Tags"]}
            if resource["Type"] == "AWS::EC2::EIP":  # moto's physical id of an EIP is its public IP
                (address,) = ec2.describe_addresses(PublicIps=[physical[logical]])["Addresses"]
                rid, have = address["AllocationId"], address.get("Tags", [])
            else:
                rid = physical[logical]
                (rtb,) = ec2.describe_route_tables(RouteTableIds=[rid])["RouteTables"]
                have = rtb.get("Tags", [])
            missing = {k: v for k, v in wanted.items() if {"Key": k, "Value": v} not in have}
            if missing:
                ec2.create_tags(Resources=[rid], Tags=[{"Key": k, "Value": v} for k, v in missing.items()])
                applied.append(f"tags {sorted(missing)} on {logical}")
        if resource["Type"] == "AWS::EC2::SubnetRouteTableAssociation":
            rtb_id = physical[props["RouteTableId"]["Ref"]]
            subnet_id = physical[props["SubnetId"]["Ref"]]
            shown = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [subnet_id]}])
            if not shown["RouteTables"]:
                ec2.associate_route_table(RouteTableId=rtb_id, SubnetId=subnet_id)
                applied.append(f"association {logical}")
    return applied


def assign_secondary_addresses(server: ServerProcess, params: dict[str, str], nat_ids: list[str]) -> list[str]:
    """Workaround 5, after CreateStack: the launch template's SecondaryPrivateIpAddressCount (EgressIp=follow)."""
    if params.get("EgressIp") != "follow":
        return []
    ec2 = client(server, "ec2")
    for nat_id in nat_ids:
        (nic,) = instances(server, [nat_id])[nat_id]["NetworkInterfaces"]
        ec2.assign_private_ip_addresses(
            NetworkInterfaceId=nic["NetworkInterfaceId"], SecondaryPrivateIpAddressCount=int(params["AzCount"])
        )
    return [f"secondary addresses on {n}" for n in nat_ids]


# --------------------------------------------------------------------- deploying
def wait_stack(server: ServerProcess, name: str) -> dict[str, Any]:
    cfn = client(server, "cloudformation")
    deadline = time.monotonic() + 60
    while True:
        stack: dict[str, Any] = cfn.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            return stack


def deploy(server: ServerProcess, name: str, template_file: str, params: dict[str, str]) -> dict[str, Any]:
    """CreateStack (workarounds applied), wait for it, apply what moto dropped; the stack's facts."""
    template = load(template_file)
    params = {**ARTIFACT, **params}
    cfn = client(server, "cloudformation")
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(for_moto(template, params)),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = wait_stack(server, name)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    resources = cfn.describe_stack_resources(StackName=name)["StackResources"]
    # moto also lists an entry without LogicalResourceId for each resource whose Condition is false
    resources = [r for r in resources if "LogicalResourceId" in r]
    assert all(r["ResourceStatus"] == "CREATE_COMPLETE" for r in resources), resources
    # moto gives SecurityGroupIngress resources no physical id (their rules are asserted on the group)
    physical = {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in resources}
    applied = copy_dropped_tags_and_associations(server, template, params, physical)
    groups = [physical[f"NatGroup{i}"] for i in (1, 2, 3) if f"NatGroup{i}" in physical]
    nat_ids = [group_instance(server, g) for g in groups]
    applied += assign_secondary_addresses(server, params, nat_ids)
    return {
        "name": name,
        "template": template,
        "params": params,
        "physical": physical,
        "types": {r["LogicalResourceId"]: r["ResourceType"] for r in resources},
        "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
        "applied": applied,
        "groups": groups,
        "nat_ids": nat_ids,
    }


def group_instance(server: ServerProcess, group: str) -> str:
    """The one instance of an Auto Scaling group of the stack (min = max = 1)."""
    (g,) = client(server, "autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
        "AutoScalingGroups"
    ]
    assert (g["MinSize"], g["MaxSize"], g["DesiredCapacity"]) == (1, 1, 1), g
    live = [i["InstanceId"] for i in g["Instances"] if i["LifecycleState"] == "InService"]
    assert len(live) == 1, g["Instances"]
    return str(live[0])


def user_data(server: ServerProcess, stack: dict[str, Any], version: int | None = None) -> str:
    """The user data of the stack's launch template (its latest version), as CloudFormation (moto) rendered it."""
    ec2 = client(server, "ec2")
    lt_id = stack["physical"]["NatLaunchTemplate"]
    versions = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id)["LaunchTemplateVersions"]
    chosen = max(versions, key=lambda v: v["VersionNumber"]) if version is None else next(
        v for v in versions if v["VersionNumber"] == version)  # fmt: skip
    return base64.b64decode(chosen["LaunchTemplateData"]["UserData"]).decode()


def written_config(script: str) -> str:
    """What the user data writes to the config (cat > ... <<CONFIG), its variables expanded by bash itself."""
    m = re.search(r"^[ ]*cat > /etc/nat-ha/config.toml.new <<CONFIG\n(.*?)^CONFIG$", script, re.M | re.S)
    assert m, "the user data writes no config with a here-document (did the bootstrap change?)"
    assignments = "\n".join(re.findall(r"^[A-Z_0-9]+='[^'\n]*'$", script, re.M))
    snippet = f"set -eu\n{assignments}\ncat <<CONFIG\n{m.group(1)}CONFIG\n"
    return subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, check=True, timeout=10).stdout


def values_of(script: str) -> dict[str, str]:
    """The user data's first block (NAME='value'), as Fn::Sub filled it in."""
    return dict(re.findall(r"^([A-Z_0-9]+)='([^'\n]*)'$", script, re.M))


def status(server: ServerProcess, config: Path) -> tuple[int, dict[str, Any], str]:
    """``nat-ha status --json``, pointed at moto by AWS_ENDPOINT_URL only (the config is the stack's)."""
    env = {**child_env(), "AWS_ENDPOINT_URL": server.url, "AWS_EC2_METADATA_DISABLED": "true"}
    env.pop("AWS_REGION", None)  # the region must come from the config the user data wrote
    env.pop("AWS_DEFAULT_REGION", None)
    done = subprocess.run(
        [sys.executable, "-m", "agent.commands.cli", "status", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, (json.loads(done.stdout) if done.stdout else {}), done.stderr


def discover_check(server: ServerProcess, config: Path) -> subprocess.CompletedProcess[str]:
    """``nat-ha check-config --discover``: the members found in moto, checked as status and the agent do."""
    env = {**child_env(), "AWS_ENDPOINT_URL": server.url, "AWS_EC2_METADATA_DISABLED": "true"}
    return subprocess.run(
        [sys.executable, "-m", "agent.commands.cli", "check-config", "--quiet", "--discover", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


def check_config(config: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent.commands.cli", "check-config", "--quiet", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr


def tags_of(item: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


def instances(server: ServerProcess, ids: list[str]) -> dict[str, dict[str, Any]]:
    data = client(server, "ec2").describe_instances(InstanceIds=ids)
    return {i["InstanceId"]: i for r in data["Reservations"] for i in r["Instances"]}


def assert_status_finds_the_group(
    code: int, found: dict[str, Any], stderr: str, homes: dict[str, str], azs: dict[str, str]
) -> None:
    """Every member and route table found, each table's home the NAT of its slot, no route yet (no agent runs)."""
    assert code == 1, stderr  # problems listed: no agent runs in moto, so no table has a live owner
    assert {m["instance_id"]: m["az"] for m in found["members"]} == azs
    assert all(m["state"] == "absent" for m in found["members"])
    got = {t["route_table"]: (t["home"], t["ec2_state"]) for t in found["route_tables"]}
    assert got == {rtb: (nat, "missing") for rtb, nat in homes.items()}
    assert sorted(found["problems"]) == sorted(
        [
            *(f"{rtb}: no live owner (nobody holds it): nothing keeps its route on a healthy NAT" for rtb in homes),
            *(f"{nat}: no heartbeat item: its agent never ran (or its item was deleted)" for nat in azs),
            f"no redundancy: no member can serve a route table (of {len(azs)} members)",
        ]
    )


def config_of(server: ServerProcess, stack: dict[str, Any], path: Path) -> Path:
    path.write_text(written_config(user_data(server, stack)))
    check_config(path)
    return path


# -------------------------------------------------------------------------- tests
def test_vpc_stack_in_moto(moto: ServerProcess, tmp_path: Path) -> None:
    group = "cfn-vpc"
    ec2 = client(moto, "ec2")
    prometheus = ec2.create_security_group(GroupName="prometheus", Description="scrapers")["GroupId"]
    params = {
        "NatHaGroup": group,
        "AzCount": "3",
        "MetricsListen": "0.0.0.0:9510",
        "MetricsScrapeCidr": "192.0.2.0/24",
        "MetricsScrapeSecurityGroupId": prometheus,
    }
    stack = deploy(moto, "nat-ha-vpc", "nat-ha-vpc.yaml", params)
    phys, out = stack["physical"], stack["outputs"]
    every = {
        k: v["Type"]
        for k, v in stack["template"]["Resources"].items()
        if not k.startswith("EgressEip") and v.get("Condition") != "ConntrackSyncOn"
    }
    assert stack["types"] == every  # all of them, 3 AZs, EgressIp off, ConntrackSync off

    (vpc,) = ec2.describe_vpcs(VpcIds=[phys["VPC"]])["Vpcs"]
    assert vpc["CidrBlock"] == "10.0.0.0/16" and tags_of(vpc)["Name"] == group
    subnets = {
        s["SubnetId"]: s
        for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])["Subnets"]
    }
    sixteenths = [f"10.0.{16 * k}.0/20" for k in range(6)]  # Fn::Cidr [VpcCidr, 6, 12]
    for i in (1, 2, 3):
        public, private = subnets[phys[f"PublicSubnet{i}"]], subnets[phys[f"PrivateSubnet{i}"]]
        assert (public["CidrBlock"], private["CidrBlock"]) == (sixteenths[i - 1], sixteenths[i + 2])
        assert public["AvailabilityZone"] == private["AvailabilityZone"] == f"{REGION}{'abc'[i - 1]}"

    # One Auto Scaling group of one per AZ; each instance in its AZ's public subnet, tagged with its slot.
    assert out["NatAutoScalingGroups"].split(",") == stack["groups"]
    nats = instances(moto, stack["nat_ids"])
    ssm = client(moto, "ssm")
    arm = ssm.get_parameter(Name=f"{AMI}-arm64")
    for i, nat_id in enumerate(stack["nat_ids"], 1):
        nat = nats[nat_id]
        assert nat["SubnetId"] == phys[f"PublicSubnet{i}"]
        assert tags_of(nat)["nat-ha:group"] == group and tags_of(nat)["nat-ha:slot"] == f"nat-{i}"
        assert tags_of(nat)["aws:autoscaling:groupName"] == stack["groups"][i - 1]
        assert (nat["ImageId"], nat["InstanceType"]) == (arm["Parameter"]["Value"], "t4g.nano")  # t4g: arm64

    homes, azs = {}, {}
    for i, nat_id in enumerate(stack["nat_ids"], 1):
        (rtb,) = ec2.describe_route_tables(RouteTableIds=[phys[f"PrivateRouteTable{i}"]])["RouteTables"]
        assert not [r for r in rtb["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"], "the agent makes it"
        assert tags_of(rtb)["nat-ha:group"] == group and tags_of(rtb)["nat-ha:home"] == f"nat-{i}"
        homes[rtb["RouteTableId"]] = nat_id
        azs[nat_id] = nats[nat_id]["Placement"]["AvailabilityZone"]
    assert out["PrivateRouteTableIds"].split(",") == list(homes)

    # Each AZ's own Elastic IP, tagged with its slot, unassociated: its NAT claims it at first boot.
    eips = ec2.describe_addresses(PublicIps=out["NatPublicIps"].split(","))["Addresses"]
    assert [tags_of(a)["nat-ha:slot"] for a in eips] == ["nat-1", "nat-2", "nat-3"]
    assert all(tags_of(a)["nat-ha:group"] == group and not a.get("AssociationId") for a in eips)

    (sg,) = ec2.describe_security_groups(GroupIds=[phys["NatSecurityGroup"]])["SecurityGroups"]
    rules = {(p["IpProtocol"], p.get("FromPort"), r["CidrIp"]) for p in sg["IpPermissions"] for r in p["IpRanges"]}
    assert rules == {("-1", None, c) for c in sixteenths[3:]} | {("tcp", 9510, "192.0.2.0/24")}
    pairs = {
        (p["IpProtocol"], p.get("FromPort"), g["GroupId"]) for p in sg["IpPermissions"] for g in p["UserIdGroupPairs"]
    }
    assert pairs == {("icmp", -1, sg["GroupId"]), ("tcp", 9510, prometheus)}  # peer probes; the scrapers' group

    ddb = client(moto, "dynamodb")
    table = ddb.describe_table(TableName=out["TableName"])["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PROVISIONED"
    assert (table["ProvisionedThroughput"]["ReadCapacityUnits"], table["ProvisionedThroughput"]["WriteCapacityUnits"]) \
        == (13, 7)  # fmt: skip  # sized for 3 agents: bench/cost.py
    iam = client(moto, "iam")
    role = phys["NatRole"]
    (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]  # https artifact: no S3 read policy
    document = json.dumps(iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"])
    assert table["TableArn"] in document and "autoscaling:CompleteLifecycleAction" in document
    assert "stack/nat-ha-vpc/*" in document and "cloudformation:SignalResource" in document

    script = user_data(moto, stack)
    values = values_of(script)
    assert values["NAT_SUBNETS"] == ",".join(phys[f"PublicSubnet{i}"] for i in (1, 2, 3))
    assert values["NAT_EIPS"] == ",".join(a["AllocationId"] for a in eips)
    assert (values["ARTIFACT"], values["ARTIFACT_SHA256"]) == (ARTIFACT["NatHaArtifact"], "a" * 64)
    config = config_of(moto, stack, tmp_path / "config.toml")
    text = config.read_text()
    assert f'group = "{group}"' in text and f'region = "{REGION}"' in text and "members_from_tags = true" in text
    assert f'table = "{out["TableName"]}"' in text and 'listen = "0.0.0.0:9510"' in text
    assert_status_finds_the_group(*status(moto, config), homes=homes, azs=azs)


def test_vpc_stack_egress_follow_in_moto(moto: ServerProcess, tmp_path: Path) -> None:
    """EgressIp=follow: an EIP per route table tagged with it, secondary addresses on every NAT, the
    [[egress.tables]] a NAT's first boot writes (its own addresses), and status deriving its peers'."""
    group = "cfn-egress"
    params = {"NatHaGroup": group, "AzCount": "3", "InstanceType": "t3.small", "EgressIp": "follow",
              "NatHaArtifact": "s3://my-bucket/nat-ha/nat-ha-0.1.0-bundle.tar.gz", "EnableSsm": "false"}  # fmt: skip
    stack = deploy(moto, "nat-ha-egress", "nat-ha-vpc.yaml", params)
    phys, out = stack["physical"], stack["outputs"]
    conditional = ("NatEip", "NatMetrics")  # EgressIp follow; no scrape source given
    every = {
        k: v["Type"]
        for k, v in stack["template"]["Resources"].items()
        if not k.startswith(conditional) and v.get("Condition") != "ConntrackSyncOn"  # ConntrackSync off
    }
    assert stack["types"] == every
    ec2 = client(moto, "ec2")
    x86 = client(moto, "ssm").get_parameter(Name=f"{AMI}-x86_64")
    assert {i["ImageId"] for i in instances(moto, stack["nat_ids"]).values()} == {x86["Parameter"]["Value"]}
    iam = client(moto, "iam")
    assert sorted(iam.list_role_policies(RoleName=phys["NatRole"])["PolicyNames"]) == ["nat-ha", "nat-ha-artifact"]
    bundle = json.dumps(iam.get_role_policy(RoleName=phys["NatRole"], PolicyName="nat-ha-artifact")["PolicyDocument"])
    assert "arn:aws:s3:::my-bucket/nat-ha/nat-ha-0.1.0-bundle.tar.gz" in bundle  # that object only

    rtbs = out["PrivateRouteTableIds"].split(",")
    eips = {a["PublicIp"]: a for a in ec2.describe_addresses(PublicIps=out["NatPublicIps"].split(","))["Addresses"]}
    allocs = {}
    for i, address in enumerate(eips.values()):
        assert tags_of(address)["nat-ha:group"] == group and tags_of(address)["nat-ha:route-table"] == rtbs[i]
        assert not address.get("AssociationId"), "created unassociated: the holder's agent associates it"
        allocs[rtbs[i]] = address["AllocationId"]
    secondaries = {}
    for nat_id, nat in instances(moto, stack["nat_ids"]).items():
        (nic,) = nat["NetworkInterfaces"]
        found = [a["PrivateIpAddress"] for a in nic["PrivateIpAddresses"] if not a["Primary"]]
        secondaries[nat_id] = sorted(found, key=ipaddress.ip_address)
        assert len(found) == 3

    script = user_data(moto, stack)
    values = values_of(script)
    private = [ec2.describe_subnets(SubnetIds=[phys[f"PrivateSubnet{i}"]])["Subnets"][0] for i in (1, 2, 3)]
    assert values["EGRESS_TABLES"] == ";".join(
        f"{rtbs[i]}|{allocs[rtbs[i]]}|{private[i]['CidrBlock']}" for i in range(3)
    )
    assert values["NAT_EIPS"] == ""  # the tables' EIPs move; no NAT has one of its own
    helper = Path(__file__).parents[2] / "deploy" / "bootstrap" / "egress_config.py"
    base = written_config(script)
    from agent.commands.setup_nat import egress_plan  # what setup-nat puts on this NAT

    first = stack["nat_ids"][0]
    config = tmp_path / "config.toml"
    config.write_text(base)
    env = {**child_env(), "NAT_HA_INSTANCE_ID": first, "NAT_HA_SECONDARIES": ",".join(secondaries[first])}
    done = subprocess.run([sys.executable, str(helper), str(config), values["EGRESS_TABLES"]],
                          capture_output=True, text=True, timeout=60, env=env, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    check_config(config)
    plan = egress_plan(str(config), "")
    assert [(e.route_table, e.address) for e in plan] == list(zip(rtbs, secondaries[first], strict=True))
    assert [e.subnets for e in plan] == [(p["CidrBlock"],) for p in private]
    # status discovers the members and derives every peer's address for every table the same way:
    # check-config's valid config is one status uses too.
    code, found, stderr = status(moto, config)
    assert code == 1 and "egress" not in stderr, stderr  # only the problems of a group no agent runs
    assert sorted(found["problems"]) == sorted(
        [
            *(f"{rtb}: no live owner (nobody holds it): nothing keeps its route on a healthy NAT" for rtb in rtbs),
            *(f"{nat}: no heartbeat item: its agent never ran (or its item was deleted)" for nat in stack["nat_ids"]),
            f"no redundancy: no member can serve a route table (of {len(stack['nat_ids'])} members)",
        ]
    )
    from agent.config import load as load_config

    cfg = load_config(config)
    assert [(e.route_table, e.allocation_id) for e in cfg.egress_tables] == list(allocs.items())
    assert discover_check(moto, config).returncode == 0

    # A NAT without its third secondary address: check-config --discover and status say the same thing.
    last = stack["nat_ids"][2]
    (nic,) = instances(moto, [last])[last]["NetworkInterfaces"]
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=nic["NetworkInterfaceId"],
                                      PrivateIpAddresses=[secondaries[last][2]])  # fmt: skip
    refused = discover_check(moto, config)
    problem = f"egress.tables[2].addresses: no address for member {last}"
    assert refused.returncode == 2 and f"{config}: {problem}" in refused.stderr, refused.stderr
    code, found, stderr = status(moto, config)
    assert code == 1 and problem in found["problems"], found.get("problems", stderr)


def _existing_vpc(server: ServerProcess) -> dict[str, Any]:
    """What a user brings: a VPC with an internet gateway, public subnets and private route tables, in 2 AZs
    (AZ a has two private route tables)."""
    ec2 = client(server, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    public_rtb = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=public_rtb, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    public, private, azs = [], [], []
    for i, az in enumerate(("us-east-1a", "us-east-1b")):
        pub = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=az)["Subnet"]["SubnetId"]
        ec2.associate_route_table(RouteTableId=public_rtb, SubnetId=pub)
        tables = []
        for j in range(2 if i == 0 else 1):
            priv = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{10 + 2 * i + j}.0/24",
                                     AvailabilityZone=az)["Subnet"]["SubnetId"]  # fmt: skip
            rtb = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
            ec2.associate_route_table(RouteTableId=rtb, SubnetId=priv)
            tables.append(rtb)
        public.append(pub)
        private.append(tables)
        azs.append(az)
    return {"vpc": vpc, "public": public, "private": private, "azs": azs}


def test_existing_vpc_stack_in_moto_before_and_after_tagging(moto: ServerProcess, tmp_path: Path) -> None:
    group = "cfn-existing"
    net = _existing_vpc(moto)
    params = {
        "NatHaGroup": group,
        "AzCount": "2",
        "VpcId": net["vpc"],
        "PrivateCidr": "10.20.0.0/16",
        "PublicSubnetIds": ",".join(net["public"]),
        "PrivateRouteTableIds": ",".join(" ".join(t) for t in net["private"]),  # two tables in AZ a
    }
    stack = deploy(moto, "nat-ha-existing", "nat-ha-existing-vpc.yaml", params)
    phys, out = stack["physical"], stack["outputs"]
    assert "NatGroup3" not in phys and "NatMetricsFromCidr" not in phys  # 2 AZs, no scraper given
    ec2 = client(moto, "ec2")
    nats = instances(moto, stack["nat_ids"])
    for i, nat_id in enumerate(stack["nat_ids"]):
        assert nats[nat_id]["SubnetId"] == net["public"][i] and tags_of(nats[nat_id])["nat-ha:slot"] == f"nat-{i + 1}"
    for rtb in [t for tables in net["private"] for t in tables]:
        (table,) = ec2.describe_route_tables(RouteTableIds=[rtb])["RouteTables"]
        assert "nat-ha:home" not in tags_of(table)  # CloudFormation cannot tag what it did not create
    (sg,) = ec2.describe_security_groups(GroupIds=[phys["NatSecurityGroup"]])["SecurityGroups"]
    assert {(p["IpProtocol"], r["CidrIp"]) for p in sg["IpPermissions"] for r in p["IpRanges"]} == {
        ("-1", "10.20.0.0/16")
    }
    config = config_of(moto, stack, tmp_path / "config.toml")
    assert 'listen = "127.0.0.1:9510"' in config.read_text()  # the default: scraped from the NAT only

    # Before the operator tags the route tables: status says what is missing and how to fix it.
    code, found, stderr = status(moto, config)
    assert code == 1, stderr
    assert sorted(m["instance_id"] for m in found["members"]) == sorted(stack["nat_ids"])
    assert found["route_tables"] == []
    problem = found["problems"][0]  # then: no agent runs in moto (each member, and no redundancy)
    assert problem.startswith(f"no route tables: none is tagged nat-ha:group={group}")
    assert "aws ec2 create-tags" in problem and "TagRouteTables" in problem

    # The stack's TagRouteTables output: one create-tags command per AZ, naming the AZ's tables and slot.
    commands = [shlex.split(c) for c in out["TagRouteTables"].split(" ; ")]
    assert len(commands) == 2
    for argv, tables, slot in zip(commands, net["private"], ("nat-1", "nat-2"), strict=True):
        assert argv == [
            "aws", "ec2", "create-tags", "--region", REGION, "--resources", *tables,
            "--tags", f"Key=nat-ha:group,Value={group}", f"Key=nat-ha:home,Value={slot}",
        ]  # fmt: skip
        tags = [dict(kv.split("=", 1) for kv in t.split(",")) for t in argv[-2:]]
        ec2.create_tags(Resources=argv[6:-3], Tags=tags)

    homes = {rtb: stack["nat_ids"][i] for i, tables in enumerate(net["private"]) for rtb in tables}
    azs = {nat_id: nats[nat_id]["Placement"]["AvailabilityZone"] for nat_id in stack["nat_ids"]}
    assert list(azs.values()) == net["azs"]  # NAT i is in the AZ of private route table i
    assert_status_finds_the_group(*status(moto, config), homes=homes, azs=azs)


# ----------------------------------------------------------------- the update
def update_order(template: dict[str, Any], changed: set[str]) -> list[list[str]]:
    """The order CloudFormation updates ``changed`` resources in: a resource starts only after every
    resource it depends on (DependsOn, Ref, GetAtt, Sub) is done; each wave starts together."""
    resources = template["Resources"]

    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            found: set[str] = set()
            if "Ref" in node and node["Ref"] in resources:
                found.add(node["Ref"])
            if "Fn::GetAtt" in node:
                found.add(node["Fn::GetAtt"][0])
            if "Fn::Sub" in node:
                text = node["Fn::Sub"] if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"][0]
                found |= {m for m in re.findall(r"\$\{([A-Za-z0-9]+)[.}]", text) if m in resources}
            return found | set().union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node)) if node else set()
        return set()

    def deps(name: str) -> set[str]:
        r = resources[name]
        depends = r.get("DependsOn", [])
        return (set([depends] if isinstance(depends, str) else depends) | refs(r.get("Properties", {}))) & changed

    waves, done = [], set()
    while len(done) < len(changed):
        wave = sorted(n for n in changed - done if deps(n) <= done)
        assert wave, "a dependency cycle"
        waves.append(wave)
        done |= set(wave)
    return waves


def test_an_update_replaces_one_nat_at_a_time(moto: ServerProcess, tmp_path: Path) -> None:
    """A new bundle: CloudFormation makes a new launch template version, then updates the groups one after
    another (their DependsOn chain), each by its rolling update (one instance, none kept in service: the
    leaving NAT drains in the lifecycle hook first). After each group, only its NAT is new, and nat-ha's
    discovery makes the new instance home of its slot's table without anyone re-tagging anything."""
    from agent.aws.ec2 import Ec2
    from agent.members import Tracker

    group = "cfn-update"
    stack = deploy(moto, "nat-ha-update", "nat-ha-vpc.yaml", {"NatHaGroup": group, "AzCount": "3"})
    template, params = stack["template"], stack["params"]
    for i in (1, 2, 3):
        policy = template["Resources"][f"NatGroup{i}"]["UpdatePolicy"]["AutoScalingRollingUpdate"]
        assert (policy["MaxBatchSize"], policy["MinInstancesInService"]) == (1, 0) and policy["WaitOnResourceSignals"]
    # Every group names the launch template's latest version: a new version updates all three ...
    assert {json.dumps(template["Resources"][f"NatGroup{i}"]["Properties"]["LaunchTemplate"]) for i in (1, 2, 3)} == {
        json.dumps({"LaunchTemplateId": {"Ref": "NatLaunchTemplate"},
                    "Version": {"Fn::GetAtt": ["NatLaunchTemplate", "LatestVersionNumber"]}})}  # fmt: skip
    # ... and CloudFormation's order puts them in waves of one.
    groups = {f"NatGroup{i}" for i in (1, 2, 3)}
    assert update_order(template, groups | {"NatLaunchTemplate"}) == [
        ["NatLaunchTemplate"],
        ["NatGroup1"],
        ["NatGroup2"],
        ["NatGroup3"],
    ]

    new = {**params, "NatHaArtifactSha256": "b" * 64}
    cfn, ec2, asg = (client(moto, s) for s in ("cloudformation", "ec2", "autoscaling"))
    cfn.update_stack(StackName=stack["name"], TemplateBody=json.dumps(for_moto(template, new)),
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in new.items()],
                     Capabilities=["CAPABILITY_IAM"])  # fmt: skip
    assert wait_stack(moto, stack["name"])["StackStatus"] == "UPDATE_COMPLETE"
    # CloudFormation made the launch template's new version (moto too, with workaround 6's first half).
    lt_id = stack["physical"]["NatLaunchTemplate"]
    versions = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id)["LaunchTemplateVersions"]
    version = max(v["VersionNumber"] for v in versions)
    assert version == 2 and values_of(user_data(moto, stack))["ARTIFACT_SHA256"] == "b" * 64
    assert values_of(user_data(moto, stack, 1))["ARTIFACT_SHA256"] == "a" * 64

    # Workaround 6 (second half): each group's AutoScalingRollingUpdate, in CloudFormation's order.
    tracker_ec2 = Ec2(REGION, moto.url, timeout=5.0)
    tracker = Tracker("operator", tracker_ec2.discover(group))  # a view from outside the group: nobody is "me"
    before = dict(zip(stack["groups"], stack["nat_ids"], strict=True))
    rtbs = stack["outputs"]["PrivateRouteTableIds"].split(",")
    assert tracker.current.homes() == dict(zip(rtbs, stack["nat_ids"], strict=True))
    replaced: dict[str, str] = {}
    for step, (name, old) in enumerate(before.items(), 1):
        asg.update_auto_scaling_group(AutoScalingGroupName=name,
                                      LaunchTemplate={"LaunchTemplateId": lt_id, "Version": str(version)})  # fmt: skip
        asg.terminate_instance_in_auto_scaling_group(InstanceId=old, ShouldDecrementDesiredCapacity=False)
        replaced[name] = group_instance(moto, name)
        assert replaced[name] != old
        now = {g: group_instance(moto, g) for g in before}
        assert [g for g in before if now[g] != before[g]] == list(before)[:step], "more than one NAT replaced"
        data = ec2.describe_instance_attribute(InstanceId=replaced[name], Attribute="userData")["UserData"]["Value"]
        assert values_of(base64.b64decode(data).decode())["ARTIFACT_SHA256"] == "b" * 64  # the new version's
        # nat-ha learns of it at run time: two discoveries later the old one has left, the new one is home.
        lines = tracker.update(tracker_ec2.discover(group)) + tracker.update(tracker_ec2.discover(group))
        assert f"member {replaced[name]} joined ({REGION}{'abc'[step - 1]}, slot nat-{step})" in lines
        assert tracker.current.homes()[rtbs[step - 1]] == replaced[name]
        assert old not in tracker.current.ids()
    assert set(tracker.current.ids()) == set(replaced.values())
