"""CloudFormation templates: cfn-lint clean, generated (no drift), embedding the IAM policy and the units."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.iam_eval import render

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
CFN = REPO / "deploy" / "cloudformation"
TEMPLATES = ["nat-ha-vpc.yaml", "nat-ha-existing-vpc.yaml"]
SUBST = {"AWS::Partition": "aws", "AWS::Region": "eu-west-1", "AWS::AccountId": "111122223333", "NatHaGroup": "G"}


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that turns the short intrinsic tags into their long form."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix in ("Ref", "Condition"):  # their long forms have no Fn:: prefix
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _tag)


def load(name: str) -> dict[str, Any]:
    return dict(yaml.load((CFN / name).read_text(), Loader=_CfnLoader))  # a SafeLoader subclass


def resolve(node: Any, refs: dict[str, str]) -> Any:
    """Resolve Fn::Sub and Ref (enough for the policy document)."""
    if isinstance(node, dict):
        if set(node) == {"Ref"}:
            return refs[node["Ref"]]
        if set(node) == {"Fn::Sub"}:
            sub = node["Fn::Sub"]
            text, extra = (sub, {}) if isinstance(sub, str) else (sub[0], sub[1])
            local = {**refs, **{k: resolve(v, refs) for k, v in extra.items()}}
            return render(text, local)
        return {k: resolve(v, refs) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, refs) for v in node]
    return node


@pytest.mark.parametrize("name", TEMPLATES)
def test_cfn_lint_clean(name: str) -> None:
    exe = shutil.which("cfn-lint")
    if exe is None:
        pytest.skip("cfn-lint not installed (pip install cfn-lint; it is in the test extra)")
    proc = subprocess.run(
        [exe, "--format", "parseable", str(CFN / name)], capture_output=True, text=True, timeout=100, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_templates_are_generated_from_policy_and_units() -> None:
    proc = subprocess.run(
        [sys.executable, str(CFN / "generate.py"), "--check"], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", TEMPLATES)
def test_embedded_policy_equals_the_standalone_json(name: str) -> None:
    template = load(name)
    role = template["Resources"]["NatRole"]["Properties"]
    (entry,) = role["Policies"]
    embedded = resolve(entry["PolicyDocument"], {**SUBST, "Table": "TBL"})
    standalone = render(json.loads((REPO / "deploy" / "iam" / "nat-ha-policy.json").read_text()),
                        {**SUBST, "NatHaTable": "TBL"})  # fmt: skip
    assert embedded == standalone


@pytest.mark.parametrize("name", TEMPLATES)
def test_user_data_installs_the_shipped_units_and_config(name: str) -> None:
    template = load(name)
    data = template["Resources"]["NatLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    script, variables = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert isinstance(script, str) and set(variables) == {"EgressTables"}
    for unit in ("nat-ha.service", "nat-ha-setup.service"):
        body = re.search(rf"cat > /etc/systemd/system/{unit} <<'UNIT'\n(.*?)UNIT\n", script, re.DOTALL)
        assert body and body.group(1) == (REPO / "deploy" / "systemd" / unit).read_text(), unit
    assert "members_from_tags = true" in script and "TABLE='${Table}'" in script and 'table = "$TABLE"' in script
    assert "VERSION='${NatHaVersion}'" in script and 'PIP_SPEC="nat-ha==$VERSION"' in script
    assert "nat-ha setup-nat" in script
    assert "systemctl enable --now nat-ha-setup.service nat-ha.service" in script
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    # EgressIp=follow: the helper, byte for byte, runs after the config is written and before setup-nat.
    helper = re.search(r"cat > /opt/nat-ha/egress_config.py <<'EGRESS'\n(.*?)EGRESS\n", script, re.DOTALL)
    assert helper and helper.group(1) == (REPO / "deploy" / "bootstrap" / "egress_config.py").read_text()
    assert 'egress_ip = "$EGRESS_IP"' in script and "EGRESS_TABLES='${EgressTables}'" in script
    assert script.index("chmod 0644 /etc/nat-ha/config.toml") < script.index("egress_config.py /etc/nat-ha")
    assert script.index("egress_config.py /etc/nat-ha") < script.index("/opt/nat-ha/bin/nat-ha setup-nat")
    tagged = {t["ResourceType"]: t["Tags"] for t in data["TagSpecifications"]}
    assert tagged["network-interface"] == [{"Key": "nat-ha:group", "Value": {"Ref": "NatHaGroup"}}]  # IAM scope


@pytest.mark.parametrize("name", TEMPLATES)
def test_egress_follow_resources(name: str) -> None:
    """EgressIp=follow: an EIP per route table, tagged with it; each NAT's interface with a secondary address
    per route table and a public IP of its own; t4g.nano and micro refused (2 addresses per interface)."""
    template = load(name)
    res, conditions = template["Resources"], template["Conditions"]
    assert template["Parameters"]["EgressIp"]["AllowedValues"] == ["off", "follow"]
    assert template["Parameters"]["EgressIp"]["Default"] == "off"
    assert conditions["EgressFollow"] == {"Fn::Equals": [{"Ref": "EgressIp"}, "follow"]}
    rule = template["Rules"]["EgressNeedsAddresses"]
    assert rule["Assertions"][0]["Assert"] == {
        "Fn::Not": [{"Fn::Contains": [["t4g.nano", "t4g.micro"], {"Ref": "InstanceType"}]}]
    }
    for i in (1, 2, 3):
        eip = res[f"EgressEip{i}"]
        assert eip["Condition"] == ("ThreeAzsEgressFollow" if i == 3 else "EgressFollow")
        assert "InstanceId" not in eip["Properties"]  # the holder's agent associates it
        tags = {t["Key"]: t["Value"] for t in eip["Properties"]["Tags"]}
        assert tags["nat-ha:group"] == {"Ref": "NatHaGroup"}
        table = {"Ref": f"PrivateRouteTable{i}"} if "PrivateRouteTable1" in res else {
            "Fn::Select": [i - 1, {"Ref": "PrivateRouteTableIds"}]}  # fmt: skip
        assert tags["nat-ha:route-table"] == table
        assert res[f"NatEip{i}"]["Condition"] == ("ThreeAzsEgressOff" if i == 3 else "EgressOff")
        props = res[f"NatInstance{i}"]["Properties"]
        cond, (nic,), no_value = props["NetworkInterfaces"]["Fn::If"]
        assert cond == "EgressFollow" and no_value == {"Ref": "AWS::NoValue"}
        assert nic["SecondaryPrivateIpAddressCount"] == {"Ref": "AzCount"} and nic["AssociatePublicIpAddress"] is True
        assert nic["DeviceIndex"] == "0" and nic["GroupSet"] == [{"Ref": "NatSecurityGroup"}]
        assert props["SubnetId"]["Fn::If"][:2] == ["EgressFollow", {"Ref": "AWS::NoValue"}]
        assert props["SubnetId"]["Fn::If"][2] == nic["SubnetId"]
    outputs = template["Outputs"]["NatPublicIps"]["Value"]["Fn::If"]
    assert (
        outputs[0] == "EgressFollow" and "EgressEip3" in json.dumps(outputs[1]) and "NatEip3" in json.dumps(outputs[2])
    )


@pytest.mark.parametrize("name", TEMPLATES)
def test_conntrack_sync_security_group_rules(name: str) -> None:
    """ConntrackSync=on: the sync port only from the group's own NATs; the world reaches the high ports a moved
    flow's server packets use, never 1-1023 nor 9510-9511 (metrics, sync); off by default, needs EgressIp=follow."""
    template = load(name)
    assert template["Parameters"]["ConntrackSync"]["Default"] == "off"
    assert template["Rules"]["ConntrackSyncNeedsEgressFollow"]["Assertions"][0]["Assert"] == {
        "Fn::Equals": [{"Ref": "EgressIp"}, "follow"]
    }
    rules = {k: r for k, r in template["Resources"].items() if r.get("Condition") == "ConntrackSyncOn"}
    sync = [r["Properties"] for r in rules.values() if r["Properties"].get("FromPort") == 9511]
    assert sync == [{**sync[0], "SourceSecurityGroupId": {"Ref": "NatSecurityGroup"}}]
    assert "CidrIp" not in sync[0]
    world = [r["Properties"] for r in rules.values() if r["Properties"].get("CidrIp") == "0.0.0.0/0"]
    ports = {p: set() for p in ("tcp", "udp")}
    for r in world:
        if r["IpProtocol"] in ports:
            ports[r["IpProtocol"]] |= set(range(r["FromPort"], r["ToPort"] + 1))
    for proto, opened in ports.items():
        assert opened == set(range(1024, 65536)) - {9510, 9511}, proto
    assert [(r["FromPort"], r["ToPort"]) for r in world if r["IpProtocol"] == "icmp"] == [(3, -1)]
    assert len(rules) == 1 + len(world)


def test_vpc_stack_shape() -> None:
    res = load("nat-ha-vpc.yaml")["Resources"]
    for i in (1, 2, 3):
        nat = res[f"NatInstance{i}"]["Properties"]
        assert nat["SourceDestCheck"] is False
        tags = {t["Key"]: t["Value"] for t in nat["Tags"]}
        assert tags["nat-ha:group"] == {"Ref": "NatHaGroup"}
        rt_tags = {t["Key"]: t["Value"] for t in res[f"PrivateRouteTable{i}"]["Properties"]["Tags"]}
        assert rt_tags["nat-ha:home"] == {"Ref": f"NatInstance{i}"}
        assert res[f"PrivateDefaultRoute{i}"]["Properties"]["InstanceId"] == {"Ref": f"NatInstance{i}"}
    third = [k for k in res if k.endswith("3") or k.startswith(("PublicSubnet3", "PrivateSubnet3"))]
    assert len(third) == 10 and all("ThreeAzs" in res[k].get("Condition", "") for k in third), third
    table = res["Table"]["Properties"]
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["group", "item"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "gc_at", "Enabled": True}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "ValueError: no egress tables"),
        ("subnet-1|rtb-1", "is not subnet|rtb-or-subnet|cidrs"),
        ("subnet-1|igw-1|10.0.0.0/24", "is not subnet|rtb-or-subnet|cidrs"),
        ("subnet-1|rtb-1|10.0.0.1/24", "has host bits set"),
        ("subnet-1|rtb-1| ", "no private subnet CIDR"),
    ],
)
def test_egress_helper_refuses_a_bad_spec_in_one_line(spec: str, message: str, tmp_path: Path) -> None:
    """The first-boot helper (deploy/bootstrap/egress_config.py) with a spec it cannot use: one line, exit 1."""
    config = tmp_path / "config.toml"
    config.write_text('group = "g"\n')
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "bootstrap" / "egress_config.py"), str(config), spec, "g", "us-east-1",
         "--wait", "0"],
        capture_output=True, text=True, timeout=60, check=False, env={"NAT_HA_INSTANCE_ID": "i-1", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("nat-ha egress config: ") and message in done.stderr
    assert len(done.stderr.splitlines()) == 1 and config.read_text() == 'group = "g"\n'
