"""The operators' IAM policies: the commands run from a workstation are allowed, and nothing else.

deploy/iam/nat-ha-operator-read-policy.json lets `status` and `history` read the group;
deploy/iam/nat-ha-operator-policy.json adds the PutItem that drain, switchover, pause and resume
need. Neither may write to EC2 (only the agents move routes). The commands are run for real,
from the group's items alone (--group/--region/--table, no config file), against moto in this
process, with every AWS call recorded as the agent policy's test records them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from agent.aws import calls as awscalls
from agent.commands import cli
from coordinator.clock import FakeClock
from coordinator.dynamo import DynamoSettings, DynamoStore, init_table
from coordinator.instrument import RECORD_ENV
from coordinator.items import Health
from coordinator.leases import Coordinator
from tests.iam_eval import Request, allowed, granted_actions, render
from tests.servers import threaded_moto_server

REPO = Path(__file__).resolve().parents[3]
READ = REPO / "deploy" / "iam" / "nat-ha-operator-read-policy.json"
OPERATOR = REPO / "deploy" / "iam" / "nat-ha-operator-policy.json"
REGION, ACCOUNT, TABLE, GROUP = "us-east-1", "123456789012", "t-operators", "ops"


def policy(path: Path) -> dict[str, Any]:
    values = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "NatHaTable": TABLE}
    return dict(render(json.loads(path.read_text()), values))


def request(record: dict[str, Any]) -> Request:
    action = awscalls.iam_action(record["service"], record["action"])
    if record["service"] == "dynamodb":
        return Request(action, f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{record['resources']['TableName']}")
    return Request(action, "*")


def test_each_policy_grants_exactly_its_list() -> None:
    for path, wanted in ((READ, awscalls.OPERATOR_READ_CALLS), (OPERATOR, awscalls.OPERATOR_CALLS)):
        assert granted_actions(policy(path)) == {awscalls.iam_action(*c) for c in wanted}, path.name
    for path in (READ, OPERATOR):
        pol = policy(path)
        for write in ("ec2:ReplaceRoute", "ec2:CreateRoute", "ec2:AssociateAddress", "ec2:StopInstances"):
            assert not allowed(pol, Request(write, "*")), (path.name, write)
        assert not allowed(pol, Request("dynamodb:Query", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/other"))
        assert not allowed(pol, Request("dynamodb:DeleteItem", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{TABLE}"))


@pytest.fixture(scope="module")
def group() -> Iterator[tuple[str, list[str]]]:
    """A two-member group in moto: route tables, the table, the members' heartbeats and leases."""
    with threaded_moto_server() as url:
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=url)
        vpc = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
        tables = [ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"] for _ in range(2)]
        settings = DynamoSettings(table=TABLE, region=REGION, endpoint_url=url, connect_timeout_s=5, read_timeout_s=5)
        list(init_table(settings))
        store = DynamoStore(settings)
        for who, rtb in zip(("i-0aaa", "i-0bbb"), tables, strict=True):
            c = Coordinator(store, GROUP, who, FakeClock(), 600.0)
            c.start_session(Health(True, {}))
            c.claim_route(rtb, None, who)
        yield url, tables


def run(argv: list[str], url: str, record: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv(RECORD_ENV, str(record))
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("NAT_HA_GROUP", GROUP)
    monkeypatch.setenv("NAT_HA_REGION", REGION)
    monkeypatch.setenv("NAT_HA_TABLE", TABLE)
    monkeypatch.setenv("NAT_HA_CONFIG", "")
    return cli.main(argv)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def test_reading_needs_only_the_read_policy(
    group: tuple[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, tables = group
    record = tmp_path / "calls.jsonl"
    assert run(["status", "--json"], url, record, monkeypatch) in (0, 1)  # a problem line is fine here
    status = json.loads(capsys.readouterr().out)
    assert sorted(t["route_table"] for t in status["route_tables"]) == sorted(tables), "found from the items alone"
    assert run(["history"], url, record, monkeypatch) == 0
    seen = records(record)
    assert {r["action"] for r in seen} >= {"Query", "DescribeRouteTables"}
    for r in seen:
        assert allowed(policy(READ), request(r)), r


def test_requests_need_the_operator_policy_and_never_write_ec2(
    group: tuple[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, tables = group
    record = tmp_path / "calls.jsonl"
    for argv in (
        ["pause", "--wait", "0", "--reason", "iam test"],
        ["resume", "--wait", "0"],
        ["switchover", "--route-table", tables[0], "--to", "i-0bbb", "--wait", "0"],
        ["switchover", "--route-table", tables[0], "--clear", "--wait", "0"],
        ["drain", "--instance", "i-0bbb", "--wait", "0"],
        ["drain", "--instance", "i-0bbb", "--undo", "--wait", "0"],
    ):
        assert run(argv, url, record, monkeypatch) == 0, argv
    seen = records(record)
    assert not [r for r in seen if r["service"] == "ec2" and not r["action"].startswith("Describe")]
    writes = [r for r in seen if r["action"] == "PutItem"]
    assert len(writes) >= 12, "a request item and a history entry per command"
    for r in seen:
        assert allowed(policy(OPERATOR), request(r)), r
    assert not allowed(policy(READ), request(writes[0])), "the read-only policy cannot pause"
