"""CloudFormation templates: cfn-lint clean, generated (no drift), their shape read from the YAML.

What moto cannot show is asserted here on the template: the embedded IAM policy, the install source
(no default), the Auto Scaling groups' creation and update policies and their order, the drain
hook, the instance architecture, SSM, the table's capacity.
"""

from __future__ import annotations

import json
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


def agent_policy(name: str) -> Any:
    return json.loads((REPO / "deploy" / "iam" / name).read_text())


@pytest.mark.parametrize("name", TEMPLATES)
def test_embedded_policy_is_the_agent_and_asg_policies_and_the_stack_signal(name: str) -> None:
    template = load(name)
    role = template["Resources"]["NatRole"]["Properties"]
    main, artifact, _ctsync_key = role["Policies"]  # the key's: test_conntrack_sync_key_and_unit
    refs = {**SUBST, "Table": "TBL", "AWS::StackName": "STK"}
    embedded = resolve(main["PolicyDocument"], refs)
    files = agent_policy("nat-ha-policy.json")["Statement"] + agent_policy("nat-ha-asg-policy.json")["Statement"]
    standalone = render({"Version": "2012-10-17", "Statement": files}, {**SUBST, "NatHaTable": "TBL"})
    signal = {
        "Sid": "SignalThisStack",
        "Effect": "Allow",
        "Action": ["cloudformation:SignalResource"],
        "Resource": "arn:aws:cloudformation:eu-west-1:111122223333:stack/STK/*",
    }
    assert embedded == {**standalone, "Statement": [*standalone["Statement"], signal]}
    from agent.aws.calls import STACK_CALLS, iam_action

    assert signal["Action"] == [iam_action(*c) for c in STACK_CALLS]
    # The bundle's S3 object (that object only), when the artifact is on S3.
    cond, read, no_value = artifact["Fn::If"]
    assert cond == "ArtifactFromS3" and no_value == {"Ref": "AWS::NoValue"}
    (st,) = read["PolicyDocument"]["Statement"]
    assert st["Action"] == "s3:GetObject"
    split = {"Fn::Split": ["s3://", {"Ref": "NatHaArtifact"}]}
    assert st["Resource"]["Fn::Sub"][1]["Object"] == {"Fn::Select": [1, split]}
    # SSM Session Manager: the managed policy, on by default.
    assert template["Parameters"]["EnableSsm"]["Default"] == "true"
    assert role["ManagedPolicyArns"]["Fn::If"][:2] == [
        "Ssm", [{"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"}]]  # fmt: skip


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_install_source_is_yours_and_verified(name: str) -> None:
    """No default that resolves to a package index: the bundle's URL and sha256 have no default; the
    user data checks the sha256 before anything is installed and installs with pip's hash-checking mode."""
    template = load(name)
    params = template["Parameters"]
    assert "Default" not in params["NatHaArtifact"] and "Default" not in params["NatHaArtifactSha256"]
    assert params["NatHaArtifactSha256"]["AllowedPattern"] == "^[0-9a-f]{64}$"
    assert "NatHaVersion" not in params and "PipSpec" not in params
    data = template["Resources"]["NatLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    script, variables = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert set(variables) == {"EgressTables", "NatSubnets", "NatEips", "CtsyncKeySecret"}
    assert script == (REPO / "deploy" / "bootstrap" / "nat-ha-bootstrap.sh").read_text()
    assert "pip install nat-ha" not in script and "--index-url" not in script and "pypi" not in script.lower()
    install = "pip install --no-index --find-links \"$BUNDLE/wheels\" --require-hashes --only-binary=:all:"
    order = ['sha256sum --check --strict', install, "nat-ha setup-nat", "systemctl enable --now nat-ha-setup.service",
             "nat-ha wait-healthy", 'signal SUCCESS']  # fmt: skip
    at = [script.index(step) for step in order]
    assert at == sorted(at), "verify, install, setup-nat, units, healthy, then SUCCESS"
    assert script.index("trap failed ERR") < at[0] and "signal FAILURE" in script
    assert '"$FILES/systemd/nat-ha.service" \\\n' in script  # the units from the verified bundle
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    tagged = {t["ResourceType"]: t["Tags"] for t in data["TagSpecifications"]}
    assert tagged["network-interface"] == [{"Key": "nat-ha:group", "Value": {"Ref": "NatHaGroup"}}]  # IAM scope


@pytest.mark.parametrize("name", TEMPLATES)
def test_one_auto_scaling_group_per_az_replaced_one_at_a_time(name: str) -> None:
    """Each NAT an Auto Scaling group of one: created and updated only on its instance's signal, a rolling
    update of one instance, a drain hook on termination, and each group after the one before."""
    from agent.aws.lifecycle import HOOK

    res = load(name)["Resources"]
    for i in (1, 2, 3):
        group = res[f"NatGroup{i}"]
        props = group["Properties"]
        assert (props["MinSize"], props["MaxSize"], props["DesiredCapacity"]) == ("1", "1", "1")
        assert group["CreationPolicy"] == {"ResourceSignal": {"Count": 1, "Timeout": "PT15M"}}
        rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
        assert rolling["MaxBatchSize"] == 1 and rolling["MinInstancesInService"] == 0
        assert rolling["WaitOnResourceSignals"] is True and rolling["PauseTime"] == "PT15M"
        assert {"HealthCheck", "ReplaceUnhealthy"} <= set(rolling["SuspendProcesses"])
        (hook,) = props["LifecycleHookSpecificationList"]
        assert hook == {"LifecycleHookName": HOOK, "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
                        "HeartbeatTimeout": 300, "DefaultResult": "CONTINUE"}  # fmt: skip
        assert props["LaunchTemplate"]["Version"] == {"Fn::GetAtt": ["NatLaunchTemplate", "LatestVersionNumber"]}
        tags = {t["Key"]: (t["Value"], t["PropagateAtLaunch"]) for t in props["Tags"]}
        assert tags["nat-ha:slot"] == (f"nat-{i}", True) and tags["nat-ha:group"] == ({"Ref": "NatHaGroup"}, True)
        depends = group.get("DependsOn", [])
        assert (f"NatGroup{i - 1}" in depends) == (i > 1)
        assert group.get("Condition") == ("ThreeAzs" if i == 3 else None)
    assert "NatInstance1" not in res and not [k for k in res if k.startswith("PrivateDefaultRoute")]


@pytest.mark.parametrize("name", TEMPLATES)
def test_egress_follow_resources(name: str) -> None:
    """EgressIp=follow: an EIP per route table, tagged with it; the NATs' interface with a secondary address
    per route table; nano and micro types refused (2 addresses per interface). Off: an EIP per slot."""
    template = load(name)
    res, conditions = template["Resources"], template["Conditions"]
    assert template["Parameters"]["EgressIp"]["Default"] == "off"
    assert conditions["EgressFollow"] == {"Fn::Equals": [{"Ref": "EgressIp"}, "follow"]}
    rule = template["Rules"]["EgressNeedsAddresses"]
    refused = rule["Assertions"][0]["Assert"]["Fn::Not"][0]["Fn::Contains"][0]
    assert {"t4g.nano", "t4g.micro", "t3.nano", "t3.micro"} <= set(refused)
    assert not [t for t in refused if t.endswith(("small", "medium", "large"))]
    for i in (1, 2, 3):
        eip = res[f"EgressEip{i}"]
        assert eip["Condition"] == ("ThreeAzsEgressFollow" if i == 3 else "EgressFollow")
        tags = {t["Key"]: t["Value"] for t in eip["Properties"]["Tags"]}
        table = {"Ref": f"PrivateRouteTable{i}"} if "PrivateRouteTable1" in res else {
            "Fn::Select": [i - 1, {"Ref": "PrivateRouteTableIds"}]}  # fmt: skip
        assert tags["nat-ha:route-table"] == table and "InstanceId" not in eip["Properties"]
        own = res[f"NatEip{i}"]
        assert own["Condition"] == ("ThreeAzsEgressOff" if i == 3 else "EgressOff")
        assert {t["Key"]: t["Value"] for t in own["Properties"]["Tags"]}["nat-ha:slot"] == f"nat-{i}"
    (nic,) = res["NatLaunchTemplate"]["Properties"]["LaunchTemplateData"]["NetworkInterfaces"]
    assert nic["SecondaryPrivateIpAddressCount"] == {"Fn::If": ["EgressFollow", {"Ref": "AzCount"},
                                                                {"Ref": "AWS::NoValue"}]}  # fmt: skip
    assert nic["AssociatePublicIpAddress"] is True and nic["Groups"] == [{"Ref": "NatSecurityGroup"}]


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_ami_follows_the_instance_type_and_the_table_is_provisioned(name: str) -> None:
    template = load(name)
    allowed = template["Parameters"]["InstanceType"]["AllowedValues"]
    arch = template["Mappings"]["InstanceArch"]
    assert set(arch) == set(allowed)
    assert {t for t in allowed if arch[t]["Arch"] == "arm64"} == {t for t in allowed if t[:2] in ("t4", "c6", "c7")
                                                                   and "g" in t.split(".")[0]}  # fmt: skip
    assert {arch[t]["Arch"] for t in allowed} == {"arm64", "x86_64"}
    data = template["Resources"]["NatLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["ImageId"] == {"Fn::If": ["Arm64", {"Ref": "ImageIdArm64"}, {"Ref": "ImageIdX86"}]}
    params = template["Parameters"]
    assert params["ImageIdX86"]["Default"].endswith("al2023-ami-kernel-default-x86_64")
    assert params["TableBillingMode"]["Default"] == "PROVISIONED"
    throughput = template["Resources"]["Table"]["Properties"]["ProvisionedThroughput"]["Fn::If"][1]
    assert throughput["ReadCapacityUnits"]["Fn::If"][1] == {"Fn::If": ["ThreeAzs", 13, 9]}
    assert throughput["WriteCapacityUnits"]["Fn::If"][1] == {"Fn::If": ["ThreeAzs", 7, 5]}


@pytest.mark.parametrize("name", TEMPLATES)
def test_conntrack_sync_security_group_rules(name: str) -> None:
    """ConntrackSync=on: the sync port only from the group's own NATs; the world reaches the high ports a moved
    flow's server packets use, never 1-1023 nor 9510-9511 (metrics, sync); off by default, needs EgressIp=follow."""
    template = load(name)
    assert template["Parameters"]["ConntrackSync"]["Default"] == "off"
    assert template["Rules"]["ConntrackSyncNeedsEgressFollow"]["Assertions"][0]["Assert"] == {
        "Fn::Equals": [{"Ref": "EgressIp"}, "follow"]
    }
    rules = {k: r for k, r in template["Resources"].items()
             if r.get("Condition") == "ConntrackSyncOn" and r["Type"] == "AWS::EC2::SecurityGroupIngress"}  # fmt: skip
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


@pytest.mark.parametrize("name", TEMPLATES)
def test_conntrack_sync_key_and_unit(name: str) -> None:
    """ConntrackSync=on: the stack generates the group key in Secrets Manager, only the NATs' role may read it (that
    secret only), and the bootstrap puts it in the key file (mode 0600), turns the sync on in the config and enables
    the hardened unit from the verified bundle; with it off nothing of that runs (the unit is installed, idle)."""
    template = load(name)
    res = template["Resources"]
    secret = res["ConntrackSyncKey"]
    assert secret["Condition"] == "ConntrackSyncOn" and secret["Type"] == "AWS::SecretsManager::Secret"
    assert secret["Properties"]["GenerateSecretString"]["PasswordLength"] >= 32  # the config's minimum
    cond, key_policy, no_value = res["NatRole"]["Properties"]["Policies"][2]["Fn::If"]
    assert cond == "ConntrackSyncOn" and no_value == {"Ref": "AWS::NoValue"}
    (st,) = key_policy["PolicyDocument"]["Statement"]
    assert (st["Effect"], st["Action"], st["Resource"]) == (
        "Allow", "secretsmanager:GetSecretValue", {"Ref": "ConntrackSyncKey"})  # fmt: skip
    data = res["NatLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    script, variables = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert variables["CtsyncKeySecret"] == {"Fn::If": ["ConntrackSyncOn", {"Ref": "ConntrackSyncKey"}, ""]}
    order = ["conntrack-tools", "[conntrack_sync]\\nenabled = true", "umask 077 && aws secretsmanager get-secret-value",
             '"$FILES/systemd/nat-ha-ctsync.service" /etc/systemd/system/',
             "systemctl enable --now nat-ha-ctsync.service", "nat-ha wait-healthy"]  # fmt: skip
    at = [script.index(step) for step in order]
    assert at == sorted(at)
    for step in order[:3] + order[4:5]:
        line = next(x for x in script.splitlines() if step in x or step.split(" && ")[-1] in x)
        guard = script[: script.index(line)].rsplit("\n", 3)
        assert '"$CONNTRACK_SYNC" = on' in line or any('"$CONNTRACK_SYNC" = on' in g for g in guard), step


def test_vpc_stack_shape() -> None:
    res = load("nat-ha-vpc.yaml")["Resources"]
    for i in (1, 2, 3):
        rt_tags = {t["Key"]: t["Value"] for t in res[f"PrivateRouteTable{i}"]["Properties"]["Tags"]}
        assert rt_tags["nat-ha:home"] == f"nat-{i}"  # the slot: whichever instance holds it
        assert rt_tags["nat-ha:group"] == {"Ref": "NatHaGroup"}
    third = [k for k in res if k.endswith("3") or k.startswith(("PublicSubnet3", "PrivateSubnet3"))]
    assert len(third) == 9 and all("ThreeAzs" in res[k].get("Condition", "") for k in third), third
    table = res["Table"]["Properties"]
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["group", "item"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "gc_at", "Enabled": True}


def test_templates_fit_a_template_body() -> None:
    """create-stack --template-body takes at most 51,200 bytes (more needs an S3 URL)."""
    for name in TEMPLATES:
        assert (CFN / name).stat().st_size < 51_200, name


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "ValueError: no egress tables"),
        ("rtb-1|eipalloc-1", "is not rtb|eipalloc|cidrs"),
        ("igw-1|eipalloc-1|10.0.0.0/24", "is not rtb|eipalloc|cidrs"),
        ("rtb-1|eipalloc-1|10.0.0.1/24", "has host bits set"),
        ("rtb-1|eipalloc-1| ", "no private subnet CIDR"),
        ("rtb-1 rtb-2|eipalloc-1|10.0.0.0/24", "one route table per AZ"),
        ("rtb-1|eipalloc-1|10.0.0.0/24;rtb-2|eipalloc-2|10.0.1.0/24", "has 1 secondary addresses, 2 route tables"),
    ],
)
def test_egress_helper_refuses_what_it_cannot_use_in_one_line(spec: str, message: str, tmp_path: Path) -> None:
    """The first-boot helper (deploy/bootstrap/egress_config.py) with a spec or an instance it cannot use."""
    config = tmp_path / "config.toml"
    config.write_text('group = "g"\n')
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "bootstrap" / "egress_config.py"), str(config), spec],
        capture_output=True, text=True, timeout=60, check=False,
        env={"NAT_HA_INSTANCE_ID": "i-1", "NAT_HA_SECONDARIES": "10.0.0.21", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("nat-ha egress config: ") and message in done.stderr
    assert len(done.stderr.splitlines()) == 1 and config.read_text() == 'group = "g"\n'
