"""``nat-ha iam-policy`` renders the shipped policies as CloudFormation would, and ``nat-ha files`` finds them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.commands.cli import main
from tests.iam_eval import Request, allowed

REPO = Path(__file__).resolve().parents[3]
ARGS = ["iam-policy", "--group", "prod-nat", "--table", "nat-ha", "--region", "eu-west-1", "--account", "111122223333"]


def rendered(capsys: pytest.CaptureFixture[str], *extra: str) -> dict:  # type: ignore[type-arg]
    assert main([*ARGS, *extra]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_the_policy_is_ready_to_paste(capsys: pytest.CaptureFixture[str]) -> None:
    """Placeholders filled, and Fn::Sub's ${!ec2:SourceInstanceARN} unescaped to the IAM variable."""
    doc = rendered(capsys)
    text = json.dumps(doc)
    assert "${!" not in text and "${NatHa" not in text and "${AWS::" not in text
    # the route writes, the Elastic IP moves and the stops, each with the tag that names the caller
    assert text.count("${ec2:SourceInstanceARN}") == 6
    assert "arn:aws:dynamodb:eu-west-1:111122223333:table/nat-ha" in text
    me = "arn:aws:ec2:eu-west-1:111122223333:instance/i-0me"
    rt = "arn:aws:ec2:eu-west-1:111122223333:route-table/rtb-1"
    tags = {"ec2:ResourceTag/nat-ha:group": "prod-nat", "ec2:SourceInstanceARN": me}
    # As IAM evaluates it: the holder may write, another instance may not.
    assert allowed(doc, Request("ec2:ReplaceRoute", rt, {**tags, "ec2:ResourceTag/nat-ha:holder": me}))
    assert not allowed(doc, Request("ec2:ReplaceRoute", rt, {**tags, "ec2:ResourceTag/nat-ha:holder": me + "x"}))


def test_the_other_kinds_and_partitions(capsys: pytest.CaptureFixture[str]) -> None:
    asg = rendered(capsys, "--kind", "asg")
    (st,) = asg["Statement"]
    assert st["Action"] == ["autoscaling:CompleteLifecycleAction"]
    assert st["Condition"] == {"StringEquals": {"aws:ResourceTag/nat-ha:group": "prod-nat"}}
    admin = rendered(capsys, "--kind", "admin")
    assert "dynamodb:CreateTable" in json.dumps(admin)
    assert main([*ARGS[:5], "--region", "cn-north-1", "--account", "111122223333"]) == 0
    assert "arn:aws-cn:ec2:cn-north-1:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group", "bad group"], "--group: 'bad group'"),
        (["--account", "12"], "--account: '12' is not an AWS account id"),
        (["--region", "Europe"], "--region: 'Europe' is not a region name"),
        (["--partition", "aws-moon"], "--partition: 'aws-moon'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main([*ARGS, *args]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err


def test_files_points_at_the_deploy_and_dashboard_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["files"]) == 0
    assert Path(capsys.readouterr().out.strip()) == REPO / "deploy"  # a checkout; the wheel's agent/deploy
    assert main(["files", "dashboards"]) == 0
    assert (Path(capsys.readouterr().out.strip()) / "prometheus" / "alerts.yml").is_file()
