"""Both CloudFormation stacks deployed into moto's CloudFormation, then ``nat-ha status`` against them.

A moto server process on 127.0.0.1 plays CloudFormation, EC2, IAM, SSM and DynamoDB. Each
shipped template (as generate.py wrote it) is deployed, its resources and tags are asserted,
and ``nat-ha status --json`` runs with the config the stack's user data writes (read out of the
launch template moto rendered, not re-typed here), discovering members and route tables by tag.
No agent runs (moto starts no instance), so status lists each route table as having no live
owner, and nothing else.

What moto 5.2.5 lacks, worked around here and only here (the templates on disk are never
changed; each workaround also has a comment where it is made):

1. ``Fn::Cidr``: not implemented (CreateStack answers HTTP 500). Resolved with ``ipaddress``,
   the way CloudFormation splits the CIDR.
2. ``Fn::GetAtt <Subnet>.CidrBlock``: not an attribute moto knows (ValidationError). Replaced by
   that subnet's own ``CidrBlock`` expression.
3. ``LaunchTemplate`` on ``AWS::EC2::Instance``: ignored (moto requires ``ImageId``). The
   launch template's ImageId, InstanceType, UserData and instance profile are copied into each
   instance; the launch template itself is still created, and the user data is read from it.
4. ``SecurityGroupIds`` on ``AWS::EC2::Instance``: ignored (moto reads ``SecurityGroups``).
   Copied to ``SecurityGroups``.
5. Tags on ``AWS::EC2::RouteTable`` and ``AWS::EC2::EIP``: dropped. After CreateStack the
   template's tags are resolved against the stack's parameters and resources and applied with
   CreateTags (only the ones moto dropped).
6. ``AWS::EC2::SubnetRouteTableAssociation``: moto records it where DescribeRouteTables does
   not show it. Applied with AssociateRouteTable after CreateStack, from the template.

7. ``NetworkInterfaces`` on ``AWS::EC2::Instance`` (how EgressIp=follow describes the NAT's
   interface): ignored. The template's ``Fn::If [EgressFollow, ...]`` on the instance is resolved
   here for the stack's EgressIp; with follow the interface's subnet and groups become the
   instance's ``SubnetId`` and ``SecurityGroups``, and its ``SecondaryPrivateIpAddressCount`` is
   applied after CreateStack with AssignPrivateIpAddresses. The launch template's
   ``network-interface`` tags are not applied either (test_cloudformation.py asserts them).

Read around, not worked around: moto's DescribeStackResources gives SecurityGroupIngress
resources no PhysicalResourceId and lists a nameless entry for each resource whose Condition
is false (their rules are asserted on the security group instead).

Not worked around, so not asserted here: ``SourceDestCheck: false`` (moto keeps true),
``TimeToLiveSpecification`` (moto leaves TTL off), ``Rules`` (moto does not evaluate them);
test_cloudformation.py asserts those on the template, and cfn-lint checks it.

The existing-VPC stack is deployed before its route tables are tagged, as a user would:
status must say so and exit 1; the commands of the stack's TagRouteTables output are then
applied (parsed with shlex, sent with boto3: the aws CLI is not a test dependency) and status
finds every route table.
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

from tests.integration.test_cloudformation import load
from tests.servers import ServerProcess, child_env, moto_server_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REGION = "us-east-1"
CONFIG_PATH = "/etc/nat-ha/config.toml"


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


def for_moto(template: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    """The template with what moto 5.2.5 lacks resolved (workarounds 1-4 of the module docstring)."""
    t = copy.deepcopy(template)
    resources = t["Resources"]

    def param(node: Any) -> Any:
        if isinstance(node, dict) and set(node) == {"Ref"}:
            name = node["Ref"]
            return params.get(name, t["Parameters"].get(name, {}).get("Default"))
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
    resources = t["Resources"]
    for resource in resources.values():
        if resource["Type"] != "AWS::EC2::Instance":
            continue
        props = resource["Properties"]
        # Workaround 3: moto ignores LaunchTemplate on an instance; copy what the instance takes from it.
        lt_ref = props.pop("LaunchTemplate")["LaunchTemplateId"]["Ref"]
        data = resources[lt_ref]["Properties"]["LaunchTemplateData"]
        props["ImageId"] = data["ImageId"]
        props["InstanceType"] = data["InstanceType"]
        props["UserData"] = data["UserData"]
        profile = data["IamInstanceProfile"]["Arn"]["Fn::GetAtt"][0]
        props["IamInstanceProfile"] = {"Ref": profile}  # moto takes the profile's name (its Ref)
        # Workaround 7: moto ignores NetworkInterfaces; resolve the EgressFollow choice here.
        follow = param({"Ref": "EgressIp"}) == "follow"
        for key in ("SubnetId", "SecurityGroupIds", "NetworkInterfaces"):
            cond, yes, no = props[key]["Fn::If"]
            assert cond == "EgressFollow", props[key]
            props[key] = yes if follow else no
        if follow:
            (nic,) = props.pop("NetworkInterfaces")
            props["SubnetId"], props["SecurityGroupIds"] = nic["SubnetId"], nic["GroupSet"]
        else:
            props.pop("NetworkInterfaces")
        # Workaround 4: moto reads security groups from SecurityGroups, not SecurityGroupIds.
        props["SecurityGroups"] = props.pop("SecurityGroupIds")
    return t


def assign_secondary_addresses(server: ServerProcess, template: dict[str, Any], params: dict[str, str],
                               physical: dict[str, str]) -> list[str]:  # fmt: skip
    """Workaround 7, after CreateStack: each NAT's SecondaryPrivateIpAddressCount (EgressIp=follow)."""
    if params.get("EgressIp") != "follow":
        return []
    ec2 = client(server, "ec2")
    applied = []
    for logical, resource in template["Resources"].items():
        if resource["Type"] != "AWS::EC2::Instance" or logical not in physical:
            continue
        (nic,) = resource["Properties"]["NetworkInterfaces"]["Fn::If"][1]
        assert nic["SecondaryPrivateIpAddressCount"] == {"Ref": "AzCount"}
        (reservation,) = ec2.describe_instances(InstanceIds=[physical[logical]])["Reservations"]
        eni = reservation["Instances"][0]["NetworkInterfaces"][0]["NetworkInterfaceId"]
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, SecondaryPrivateIpAddressCount=int(params["AzCount"]))
        applied.append(f"secondary addresses on {logical}")
    return applied


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
    """Workarounds 5 and 6: apply what moto dropped; returns a line per thing applied."""
    ec2 = client(server, "ec2")
    applied = []
    for logical, resource in template["Resources"].items():
        if logical not in physical:
            continue  # its condition is false
        props = resource.get("Properties", {})
        if resource["Type"] in ("AWS::EC2::RouteTable", "AWS::EC2::EIP") and props.get("Tags"):
            wanted = {t["Key"]: resolve_value(t["Value"], params, physical) for t in props["Tags"]}
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


# --------------------------------------------------------------------- deploying
def deploy(server: ServerProcess, name: str, template_file: str, params: dict[str, str]) -> dict[str, Any]:
    """CreateStack (workarounds applied), wait for it, apply what moto dropped; the stack's facts."""
    template = load(template_file)
    cfn = client(server, "cloudformation")
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(for_moto(template, params)),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    deadline = time.monotonic() + 60
    while True:
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    resources = cfn.describe_stack_resources(StackName=name)["StackResources"]
    # moto also lists an entry without LogicalResourceId for each resource whose Condition is false
    resources = [r for r in resources if "LogicalResourceId" in r]
    assert all(r["ResourceStatus"] == "CREATE_COMPLETE" for r in resources), resources
    # moto gives SecurityGroupIngress resources no physical id (their rules are asserted on the group)
    physical = {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in resources}
    applied = copy_dropped_tags_and_associations(server, template, params, physical)
    applied += assign_secondary_addresses(server, template, params, physical)
    return {
        "template": template,
        "physical": physical,
        "types": {r["LogicalResourceId"]: r["ResourceType"] for r in resources},
        "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
        "applied": applied,
    }


def user_data(server: ServerProcess, stack: dict[str, Any]) -> str:
    """The user data of the stack's launch template, as CloudFormation (moto) rendered it."""
    ec2 = client(server, "ec2")
    lt_id = stack["physical"]["NatLaunchTemplate"]
    (version,) = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id)["LaunchTemplateVersions"]
    return base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode()


def written_file(script: str, path: str) -> str:
    """What ``script`` writes to ``path`` with a here-document (cat > PATH <<END ... END).

    An unquoted here-document expands the script's variables: bash itself expands it, with
    the script's own ``NAME='value'`` assignments (what runs on the instance, not a re-typing).
    """
    m = re.search(rf"^[ ]*cat >\s*{re.escape(path)}\s*<<-?\s*('?)(\w+)\1\n(.*?)^\2$", script, re.M | re.S)
    assert m, f"the user data writes no {path} with a here-document (did the bootstrap change?)"
    quoted, end, body = m.group(1), m.group(2), m.group(3)
    if quoted:
        return body
    assignments = "\n".join(re.findall(r"^[A-Z_]+='[^'\n]*'$", script, re.M))
    snippet = f"set -eu\n{assignments}\ncat <<{end}\n{body}{end}\n"
    return subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, check=True, timeout=10).stdout


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


def subnet_az(server: ServerProcess, subnet_ids: list[str]) -> dict[str, str]:
    data = client(server, "ec2").describe_subnets(SubnetIds=subnet_ids)["Subnets"]
    return {s["SubnetId"]: s["AvailabilityZone"] for s in data}


def assert_status_finds_the_group(
    code: int, found: dict[str, Any], stderr: str, homes: dict[str, str], azs: dict[str, str]
) -> None:
    """Every member and route table found, each table's home the NAT of its AZ, EC2 routing it there."""
    assert code == 1, stderr  # problems listed: no agent runs in moto, so no table has a live owner
    assert {m["instance_id"]: m["az"] for m in found["members"]} == azs
    assert all(m["state"] == "absent" for m in found["members"])
    got = {t["route_table"]: (t["home"], t["ec2_target"], t["ec2_state"]) for t in found["route_tables"]}
    assert got == {rtb: (nat, nat, "active") for rtb, nat in homes.items()}
    assert sorted(found["problems"]) == sorted(
        [
            *(f"{rtb}: no live owner (nobody holds it): nothing keeps its route on a healthy NAT" for rtb in homes),
            *(f"{nat}: no heartbeat item: its agent never ran (or its item was deleted)" for nat in azs),
            f"no redundancy: no member can serve a route table (of {len(azs)} members)",
        ]
    )


# -------------------------------------------------------------------------- tests
def test_vpc_stack_in_moto(moto: ServerProcess, tmp_path: Path) -> None:
    group = "cfn-vpc"
    ec2, ssm = client(moto, "ec2"), client(moto, "ssm")
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
    every = {k: v["Type"] for k, v in stack["template"]["Resources"].items() if not k.startswith("EgressEip")}
    assert stack["types"] == every  # all of them, 3 AZs, EgressIp off

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
        assert tags_of(private)["Name"] == f"{group}-private-{i}"

    nat_ids = out["NatInstanceIds"].split(",")
    assert nat_ids == [phys[f"NatInstance{i}"] for i in (1, 2, 3)]
    nats = instances(moto, nat_ids)
    image = ssm.get_parameter(Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64")
    for i, nat_id in enumerate(nat_ids, 1):
        nat = nats[nat_id]
        assert nat["SubnetId"] == phys[f"PublicSubnet{i}"]
        assert tags_of(nat)["nat-ha:group"] == group and tags_of(nat)["Name"] == f"{group}-nat-{i}"
        assert (nat["ImageId"], nat["InstanceType"]) == (image["Parameter"]["Value"], "t4g.nano")
        assert nat["IamInstanceProfile"]["Arn"].endswith("/" + phys["NatInstanceProfile"])
        assert [g["GroupId"] for g in nat["SecurityGroups"]] == [phys["NatSecurityGroup"]]

    homes, azs = {}, {}
    for i, nat_id in enumerate(nat_ids, 1):
        (rtb,) = ec2.describe_route_tables(RouteTableIds=[phys[f"PrivateRouteTable{i}"]])["RouteTables"]
        default = next(r for r in rtb["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0")
        assert default.get("InstanceId") == nat_id
        assert tags_of(rtb)["nat-ha:group"] == group and tags_of(rtb)["nat-ha:home"] == nat_id
        (assoc,) = [a["SubnetId"] for a in rtb["Associations"] if a.get("SubnetId")]
        assert subnets[assoc]["AvailabilityZone"] == nats[nat_id]["Placement"]["AvailabilityZone"]  # home in its AZ
        homes[rtb["RouteTableId"]] = nat_id
        azs[nat_id] = nats[nat_id]["Placement"]["AvailabilityZone"]
    assert out["PrivateRouteTableIds"].split(",") == list(homes)

    eips = ec2.describe_addresses(PublicIps=out["NatPublicIps"].split(","))["Addresses"]
    assert sorted(a["InstanceId"] for a in eips) == sorted(nat_ids)
    assert all(tags_of(a)["nat-ha:group"] == group for a in eips)

    (sg,) = ec2.describe_security_groups(GroupIds=[phys["NatSecurityGroup"]])["SecurityGroups"]
    rules = {(p["IpProtocol"], p.get("FromPort"), r["CidrIp"]) for p in sg["IpPermissions"] for r in p["IpRanges"]}
    assert rules == {("-1", None, c) for c in sixteenths[3:]} | {("tcp", 9510, "192.0.2.0/24")}
    pairs = {
        (p["IpProtocol"], p.get("FromPort"), g["GroupId"]) for p in sg["IpPermissions"] for g in p["UserIdGroupPairs"]
    }
    assert pairs == {("icmp", -1, sg["GroupId"]), ("tcp", 9510, prometheus)}  # peer probes; the scrapers' group
    assert tags_of(sg)["nat-ha:group"] == group

    ddb = client(moto, "dynamodb")
    table = ddb.describe_table(TableName=out["TableName"])["Table"]
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["group", "item"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert tags_of(ddb.list_tags_of_resource(ResourceArn=table["TableArn"])) == {"nat-ha:group": group}
    role = phys["NatRole"]
    (policy_name,) = client(moto, "iam").list_role_policies(RoleName=role)["PolicyNames"]
    document = client(moto, "iam").get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    assert table["TableArn"] in json.dumps(document)  # the policy names this stack's table
    assert {line.split(" on ")[1] for line in stack["applied"] if line.startswith("tags")} == {
        "PublicRouteTable",
        *(f"PrivateRouteTable{i}" for i in (1, 2, 3)),
        *(f"NatEip{i}" for i in (1, 2, 3)),
    }

    script = user_data(moto, stack)
    config = tmp_path / "config.toml"
    config.write_text(written_file(script, CONFIG_PATH))
    check_config(config)
    text = config.read_text()
    assert f'group = "{group}"' in text and f'region = "{REGION}"' in text and "members_from_tags = true" in text
    assert f'table = "{out["TableName"]}"' in text and 'listen = "0.0.0.0:9510"' in text
    assert_status_finds_the_group(*status(moto, config), homes=homes, azs=azs)


def test_vpc_stack_egress_follow_in_moto(moto: ServerProcess, tmp_path: Path) -> None:
    """EgressIp=follow: an EIP per route table tagged with it, secondary addresses on every NAT, and the
    [[egress.tables]] each NAT's user data writes at boot (its helper run against this stack in moto)."""
    group = "cfn-egress"
    params = {"NatHaGroup": group, "AzCount": "3", "InstanceType": "t4g.small", "EgressIp": "follow"}
    stack = deploy(moto, "nat-ha-egress", "nat-ha-vpc.yaml", params)
    phys, out = stack["physical"], stack["outputs"]
    conditional = ("NatEip", "NatMetrics")  # EgressIp off; no scrape source given
    every = {k: v["Type"] for k, v in stack["template"]["Resources"].items() if not k.startswith(conditional)}
    assert stack["types"] == every  # the tables' EIPs instead of the NATs' own
    ec2 = client(moto, "ec2")
    nat_ids = out["NatInstanceIds"].split(",")
    rtbs = out["PrivateRouteTableIds"].split(",")
    nats = instances(moto, nat_ids)
    secondaries = {}
    for nat_id in nat_ids:
        (eni,) = nats[nat_id]["NetworkInterfaces"]
        found = sorted((a["PrivateIpAddress"] for a in eni["PrivateIpAddresses"] if not a["Primary"]),
                       key=ipaddress.ip_address)  # fmt: skip
        assert len(found) == 3, eni  # 1 + AzCount addresses per interface
        secondaries[nat_id] = found
    eips = {a["PublicIp"]: a for a in ec2.describe_addresses(PublicIps=out["NatPublicIps"].split(","))["Addresses"]}
    assert list(eips) == [phys[f"EgressEip{i}"] for i in (1, 2, 3)]
    allocs = {}
    for i, address in enumerate(eips.values()):
        assert tags_of(address)["nat-ha:group"] == group and tags_of(address)["nat-ha:route-table"] == rtbs[i]
        assert not address.get("AssociationId"), "created unassociated: the holder's agent associates it"
        allocs[rtbs[i]] = address["AllocationId"]

    script = user_data(moto, stack)
    assert "EGRESS_IP='follow'" in script
    values = dict(re.findall(r"^([A-Z_]+)='([^'$]*)'$", script, re.M))
    private = [ec2.describe_subnets(SubnetIds=[phys[f"PrivateSubnet{i}"]])["Subnets"][0] for i in (1, 2, 3)]
    assert values["EGRESS_TABLES"] == ";".join(
        f"{phys[f'PublicSubnet{i}']}|{phys[f'PrivateSubnet{i}']}|{private[i - 1]['CidrBlock']}" for i in (1, 2, 3)
    )
    helper = tmp_path / "egress_config.py"
    helper.write_text(written_file(script, "/opt/nat-ha/egress_config.py"))
    assert helper.read_text() == (Path(__file__).parents[2] / "deploy" / "bootstrap" / "egress_config.py").read_text()
    base = written_file(script, CONFIG_PATH)
    assert 'egress_ip = "follow"' in base
    tables_of = {}
    for nat_id in nat_ids:  # what each NAT's first boot writes
        config = tmp_path / f"{nat_id}.toml"
        config.write_text(base)
        env = {**child_env(), "AWS_ENDPOINT_URL": moto.url, "NAT_HA_INSTANCE_ID": nat_id}
        done = subprocess.run(
            [sys.executable, str(helper), str(config), values["EGRESS_TABLES"], group, REGION, "--wait", "20"],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        check_config(config)
        text = config.read_text()
        assert text.startswith(f'instance_id = "{nat_id}"\n')
        tables_of[nat_id] = text[text.index("[[egress.tables]]") :]
        from agent.commands.setup_nat import egress_plan  # what setup-nat puts on this NAT

        plan = egress_plan(str(config), "")
        assert [(e.route_table, e.address) for e in plan] == list(zip(rtbs, secondaries[nat_id], strict=True))
        assert [e.subnets for e in plan] == [(p["CidrBlock"],) for p in private]
    assert len(set(tables_of.values())) == 1, "the NATs wrote different [[egress.tables]]"
    from agent.config import load as load_config

    cfg = load_config(tmp_path / f"{nat_ids[0]}.toml")
    assert [(e.route_table, e.allocation_id) for e in cfg.egress_tables] == list(allocs.items())
    for k, e in enumerate(cfg.egress_tables):
        assert dict(e.addresses) == {nat_id: secondaries[nat_id][k] for nat_id in nat_ids}

    # The helper gives up, bounded and in one line, when the stack is not all there.
    lonely = tmp_path / "lonely.toml"
    lonely.write_text(base)
    env = {**child_env(), "AWS_ENDPOINT_URL": moto.url, "NAT_HA_INSTANCE_ID": nat_ids[0]}
    spec = values["EGRESS_TABLES"] + ";subnet-00000000|rtb-00000000|10.9.0.0/24"
    done = subprocess.run([sys.executable, str(helper), str(lonely), spec, group, REGION, "--wait", "0"],
                          capture_output=True, text=True, timeout=60, env=env, check=False)  # fmt: skip
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "no single NAT with 4 secondary addresses in subnet-00000000" in done.stderr
    assert lonely.read_text() == base


def _existing_vpc(server: ServerProcess) -> dict[str, Any]:
    """What a user brings: a VPC with an internet gateway, public subnets and private route tables, in 2 AZs."""
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
        priv = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{10 + i}.0/24", AvailabilityZone=az)["Subnet"]["SubnetId"]
        rtb = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        ec2.associate_route_table(RouteTableId=rtb, SubnetId=priv)
        public.append(pub)
        private.append(rtb)
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
        "PrivateRouteTableIds": ",".join(net["private"]),
        "CreateDefaultRoutes": "true",
    }
    stack = deploy(moto, "nat-ha-existing", "nat-ha-existing-vpc.yaml", params)
    phys, out = stack["physical"], stack["outputs"]
    ec2 = client(moto, "ec2")
    assert "NatInstance3" not in phys and "NatMetricsFromCidr" not in phys  # 2 AZs, no scraper given

    nat_ids = out["NatInstanceIds"].split(",")
    nats = instances(moto, nat_ids)
    for i, nat_id in enumerate(nat_ids):
        assert nats[nat_id]["SubnetId"] == net["public"][i] and tags_of(nats[nat_id])["nat-ha:group"] == group
        (rtb,) = ec2.describe_route_tables(RouteTableIds=[net["private"][i]])["RouteTables"]
        default = next(r for r in rtb["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0")
        assert default.get("InstanceId") == nat_id  # CreateDefaultRoutes=true
        assert "nat-ha:home" not in tags_of(rtb)  # CloudFormation cannot tag what it did not create
    (sg,) = ec2.describe_security_groups(GroupIds=[phys["NatSecurityGroup"]])["SecurityGroups"]
    assert {(p["IpProtocol"], r["CidrIp"]) for p in sg["IpPermissions"] for r in p["IpRanges"]} == {
        ("-1", "10.20.0.0/16")
    }

    config = tmp_path / "config.toml"
    config.write_text(written_file(user_data(moto, stack), CONFIG_PATH))
    check_config(config)
    assert 'listen = "127.0.0.1:9510"' in config.read_text()  # the default: scraped from the NAT only

    # Before the operator tags the route tables: status says what is missing and how to fix it.
    code, found, stderr = status(moto, config)
    assert code == 1, stderr
    assert sorted(m["instance_id"] for m in found["members"]) == sorted(nat_ids)
    assert found["route_tables"] == []
    problem = found["problems"][0]  # then: no agent runs in moto (each member, and no redundancy)
    assert problem.startswith(f"no route tables: none is tagged nat-ha:group={group}")
    assert "aws ec2 create-tags" in problem and "TagRouteTables" in problem

    # The stack's TagRouteTables output: one create-tags command per private route table.
    commands = [shlex.split(c) for c in out["TagRouteTables"].split(" ; ")]
    assert len(commands) == 2
    for argv, rtb, nat_id in zip(commands, net["private"], nat_ids, strict=True):
        assert argv == [
            "aws", "ec2", "create-tags", "--region", REGION, "--resources", rtb,
            "--tags", f"Key=nat-ha:group,Value={group}", f"Key=nat-ha:home,Value={nat_id}",
        ]  # fmt: skip
        tags = [dict(kv.split("=", 1) for kv in t.split(",")) for t in argv[8:]]
        ec2.create_tags(Resources=[argv[6]], Tags=tags)

    homes = dict(zip(net["private"], nat_ids, strict=True))
    azs = {nat_id: nats[nat_id]["Placement"]["AvailabilityZone"] for nat_id in nat_ids}
    assert list(azs.values()) == net["azs"]  # NAT i is in the AZ of private route table i
    assert_status_finds_the_group(*status(moto, config), homes=homes, azs=azs)
