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
    if suffix == "Ref":
        return {"Ref": value}
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
    script = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert isinstance(script, str)
    for unit in ("nat-ha.service", "nat-ha-setup.service"):
        body = re.search(rf"cat > /etc/systemd/system/{unit} <<'UNIT'\n(.*?)UNIT\n", script, re.DOTALL)
        assert body and body.group(1) == (REPO / "deploy" / "systemd" / unit).read_text(), unit
    assert "members_from_tags = true" in script and "TABLE='${Table}'" in script and 'table = "$TABLE"' in script
    assert "VERSION='${NatHaVersion}'" in script and 'PIP_SPEC="nat-ha==$VERSION"' in script
    assert "nat-ha setup-nat" in script
    assert "systemctl enable --now nat-ha-setup.service nat-ha.service" in script
    assert data["MetadataOptions"]["HttpTokens"] == "required"


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
    assert len(third) == 9 and all(res[k].get("Condition") == "ThreeAzs" for k in third), third
    table = res["Table"]["Properties"]
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["group", "item"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "gc_at", "Enabled": True}
