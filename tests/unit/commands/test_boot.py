"""The first boot's commands (agent/commands/boot.py): signal, claim-address, wait-healthy's judgement.

CloudFormation is the lab recorder (agent.lab.awsrecorder: moto has no SignalResource); EC2 is
moto in-process; this instance's identity comes from the lab IMDSv2 on loopback. The whole
bootstrap, with wait-healthy against a running agent, runs in the systemd tier
(tests/systemd/test_bootstrap.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.commands.boot import health_line
from agent.commands.cli import main
from agent.lab import imds
from agent.lab.awsrecorder import Recorder
from coordinator.items import Health, MemberItem

SIGNAL = ["signal", "--stack", "nat-ha", "--resource", "NatGroup1", "--region", "us-east-1"]


@pytest.fixture
def instance(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This instance, as the lab IMDSv2 on loopback tells it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), imds.make_handler("i-0boot", "us-east-1", "us-east-1a"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield "i-0boot"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cfn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    with Recorder(tmp_path / "cfn.jsonl") as rec:
        monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDFORMATION", rec.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        yield rec


def test_success_is_signalled_for_this_instance(
    instance: str, cfn: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*SIGNAL, "--status", "SUCCESS"]) == 0
    (call,) = cfn.calls()
    assert {k: call[k] for k in ("Action", "StackName", "LogicalResourceId", "UniqueId", "Status")} == {
        "Action": "SignalResource", "StackName": "nat-ha", "LogicalResourceId": "NatGroup1",
        "UniqueId": instance, "Status": "SUCCESS",
    }  # fmt: skip
    assert capsys.readouterr().out.startswith("signalled SUCCESS to NatGroup1 of nat-ha for i-0boot")


def test_a_failure_is_signalled_even_when_imds_does_not_answer(cfn: Recorder, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
    assert main([*SIGNAL, "--status", "FAILURE", "--reason", "pip install failed"]) == 0
    (call,) = cfn.calls()
    assert (call["Status"], call["UniqueId"]) == ("FAILURE", "unknown-instance")
    assert "pip install failed" in capsys.readouterr().out
    # A success needs to know which instance succeeded.
    assert main([*SIGNAL, "--status", "SUCCESS"]) == 1
    assert "cannot tell which instance this is" in capsys.readouterr().err


def test_signal_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDFORMATION", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert main([*SIGNAL, "--status", "FAILURE", "--instance-id", "i-1"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("nat-ha signal: SignalResource FAILURE failed:")
    assert main(["signal", "--stack", "a b", "--resource", "R", "--region", "r", "--status", "SUCCESS"]) == 2


def test_claim_address_takes_a_free_elastic_ip_and_never_one_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto.mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        a, b = (i["InstanceId"] for i in ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2,
                                                            SubnetId=subnet)["Instances"])  # fmt: skip
        alloc = ec2.allocate_address(Domain="vpc")["AllocationId"]
        ec2.associate_address(AllocationId=alloc, InstanceId=b)  # the old NAT of the slot still has it
        monkeypatch.setattr("agent.aws.imds.identity", lambda timeout=1.0: (a, "us-east-1", "us-east-1a"))
        args = ["claim-address", "--allocation-id", alloc, "--region", "us-east-1"]
        assert main([*args, "--wait", "0"]) == 1, "taken from another instance"
        assert ec2.describe_addresses(AllocationIds=[alloc])["Addresses"][0]["InstanceId"] == b
        ec2.disassociate_address(AssociationId=ec2.describe_addresses(AllocationIds=[alloc])["Addresses"][0]
                                 ["AssociationId"])  # fmt: skip
        assert main([*args, "--wait", "30"]) == 0
        assert ec2.describe_addresses(AllocationIds=[alloc])["Addresses"][0]["InstanceId"] == a
        assert main([*args, "--wait", "0"]) == 0, "already ours: done"


def item(**kw: object) -> MemberItem:
    base: dict[str, object] = dict(instance="i-1", session="s", state="alive", version=3, token="t", lease_ms=1000,
                                   health=Health(True, {"ip_forward": True}))  # fmt: skip
    base.update(kw)
    return MemberItem(**base)  # type: ignore[arg-type]


def test_healthy_means_alive_renewing_checks_passing_not_draining() -> None:
    assert health_line(None, None) == "no heartbeat in the table yet"
    assert health_line(item(state="left"), 1) == "its session is left"
    sick = item(health=Health(False, {"ip_forward": True, "masquerade": False}))
    assert health_line(sick, 1) == "unhealthy by its own checks (masquerade)"
    assert health_line(item(draining=True), 1) == "draining"
    assert health_line(item(version=3), 3) == "heartbeat not renewed yet"
    assert health_line(item(version=4), 3) == ""
