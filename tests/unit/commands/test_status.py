"""``nat-ha status`` as a user meets it: a group with nothing to fail over, an endpoint that never answers.

moto runs in this process (ThreadedMotoServer, a real HTTP endpoint on 127.0.0.1); the
endpoint that never answers is a listening socket on 127.0.0.1 that accepts and stays silent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from agent.commands import cli
from coordinator.dynamo import DynamoSettings, init_table
from tests.servers import moto_server_process, threaded_moto_server

REGION = "us-east-1"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with threaded_moto_server() as url:
        yield url


def _group_without_route_tables(url: str, group: str) -> list[str]:
    """Two running instances tagged with ``group`` and the table; no route table tagged (an existing VPC's stack)."""
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=url)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    ids = []
    for i, az in enumerate(("us-east-1a", "us-east-1b")):
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone=az)["Subnet"]["SubnetId"]
        ec2.create_route_table(VpcId=vpc)  # exists, untagged: what the operator has not tagged yet
        done = ec2.run_instances(
            ImageId="ami-12c6146b",
            MinCount=1,
            MaxCount=1,
            SubnetId=subnet,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "nat-ha:group", "Value": group}]}],
        )
        ids.append(done["Instances"][0]["InstanceId"])
    list(init_table(DynamoSettings(table=f"t-{group}", region=REGION, endpoint_url=url)))
    return ids


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(body)
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_group_without_route_tables_says_what_to_tag_and_fails(
    moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It exited 0 and listed no problem: an existing-VPC stack before its tables are tagged looked fine."""
    ids = _group_without_route_tables(moto_url, "untagged")
    path = _config(
        tmp_path,
        f'group = "untagged"\nregion = "{REGION}"\nmembers_from_tags = true\n\n'
        f'[store]\ntable = "t-untagged"\nendpoint_url = "{moto_url}"\n\n[ec2]\nendpoint_url = "{moto_url}"\n',
    )
    code, out, err = _run(["status", "--json", "--config", str(path)], capsys)
    assert code == 1, err
    status = json.loads(out)
    assert sorted(m["instance_id"] for m in status["members"]) == sorted(ids)
    assert status["route_tables"] == []
    (problem,) = status["problems"]
    assert problem.startswith("no route tables: none is tagged nat-ha:group=untagged")
    assert (
        f"aws ec2 create-tags --region {REGION} --resources <rtb-id> "
        "--tags Key=nat-ha:group,Value=untagged Key=nat-ha:home,Value=<its NAT's nat-ha:slot, or instance-id>"
    ) in problem
    assert all(f"{i} (us-east-1" in problem for i in ids), problem  # which NAT is which AZ's home
    code, out, _ = _run(["status", "--config", str(path)], capsys)
    assert code == 1 and "problems:\n  - no route tables" in out


def test_static_members_without_route_tables_fail_too(
    moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    list(init_table(DynamoSettings(table="t-static", region=REGION, endpoint_url=moto_url)))
    path = _config(
        tmp_path,
        f'group = "static"\nregion = "{REGION}"\n\n[store]\ntable = "t-static"\nendpoint_url = "{moto_url}"\n\n'
        f'[ec2]\nendpoint_url = "{moto_url}"\n\n'
        '[[members]]\ninstance_id = "i-0aaa"\naddress = "10.0.1.10"\n\n'
        '[[members]]\ninstance_id = "i-0bbb"\naddress = "10.0.2.10"\n',
    )
    code, out, _ = _run(["status", "--json", "--config", str(path)], capsys)
    assert code == 1
    assert json.loads(out)["problems"] == [
        "no route tables: no [[members]] entry lists route_tables; give each member its home private "
        'route tables (route_tables = ["rtb-..."]) or nothing is failed over'
    ]


def test_an_endpoint_that_never_answers_is_given_up_after_timeout(tmp_path: Path) -> None:
    """It held the command for 3 tries x 5 s with no option to shorten it; now one deadline, said on one line."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel accepts connections; nobody ever reads or answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    path = _config(
        tmp_path,
        f'group = "g"\nregion = "{REGION}"\n\n[store]\nendpoint_url = "{url}"\n\n[ec2]\nendpoint_url = "{url}"\n\n'
        '[[members]]\ninstance_id = "i-0aaa"\naddress = "10.0.1.10"\nroute_tables = ["rtb-0aaa"]\n\n'
        '[[members]]\ninstance_id = "i-0bbb"\naddress = "10.0.2.10"\nroute_tables = ["rtb-0bbb"]\n',
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.commands.cli", "status", "--timeout", "1", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=12,  # a hang guard only: without the deadline it took 15 s
            env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        )
    finally:
        silent.close()
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr == (
        "nat-ha status: no answer from AWS within 1 s while reading group g from DynamoDB table nat-ha "
        "(--timeout to wait longer)\n"
    )


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_timeout_must_be_positive_seconds(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["status", "--timeout", value, "--config", "/nonexistent.toml"], capsys)
    assert code == 2 and err == "nat-ha status: --timeout must be a number of seconds > 0\n"


@pytest.fixture(scope="module")
def moto_eip_url() -> Iterator[str]:
    """A moto server process that binds an Elastic IP to the private address asked for, as AWS does
    (agent/lab/motofix.py; moto alone reports the interface's primary address)."""
    with moto_server_process(module="agent.lab.motofix") as server:
        yield server.url


def test_each_tables_elastic_ip_and_whether_it_sits_with_its_holder(
    moto_eip_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """egress_ip = follow: the EGRESS IP column and JSON fields; an EIP off its holder's address is a problem.

    Each member's address for a table is a secondary one (check-config refuses a primary address).
    """
    from coordinator.clock import FakeClock
    from coordinator.dynamo import DynamoStore
    from coordinator.items import Health
    from coordinator.leases import Coordinator

    moto_url = moto_eip_url
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto_url)
    vpc = ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.8.1.0/24")["Subnet"]["SubnetId"]
    insts = ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2, SubnetId=subnet)["Instances"]
    (a, ip_a, eni_a), (b, ip_b, eni_b) = (
        (i["InstanceId"], i["PrivateIpAddress"], i["NetworkInterfaces"][0]["NetworkInterfaceId"]) for i in insts
    )
    rtb_a, rtb_b = (ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"] for _ in range(2))
    ec2.create_route(RouteTableId=rtb_a, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=eni_a)
    ec2.create_route(RouteTableId=rtb_b, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=eni_b)
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_a, PrivateIpAddresses=["10.8.1.200", "10.8.1.201"])
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_b, PrivateIpAddresses=["10.8.1.202", "10.8.1.203"])
    eip_a, eip_b = (ec2.allocate_address(Domain="vpc") for _ in range(2))
    ec2.associate_address(AllocationId=eip_a["AllocationId"], NetworkInterfaceId=eni_a, PrivateIpAddress="10.8.1.200")
    ec2.associate_address(AllocationId=eip_b["AllocationId"], NetworkInterfaceId=eni_a, PrivateIpAddress="10.8.1.200")
    settings = DynamoSettings(table="t-egress", region=REGION, endpoint_url=moto_url)
    list(init_table(settings))
    store = DynamoStore(settings)
    for who, rtb in ((a, rtb_a), (b, rtb_b)):
        c = Coordinator(store, "egress", who, FakeClock(), 600.0)
        c.start_session(Health(True, {}))
        c.claim_route(rtb, None, who)
    path = _config(
        tmp_path,
        f'group = "egress"\nregion = "{REGION}"\negress_ip = "follow"\n\n'
        f'[store]\ntable = "t-egress"\nendpoint_url = "{moto_url}"\n\n[ec2]\nendpoint_url = "{moto_url}"\n\n'
        f'[[members]]\ninstance_id = "{a}"\naddress = "{ip_a}"\neni = "{eni_a}"\nroute_tables = ["{rtb_a}"]\n\n'
        f'[[members]]\ninstance_id = "{b}"\naddress = "{ip_b}"\neni = "{eni_b}"\nroute_tables = ["{rtb_b}"]\n\n'
        f'[[egress.tables]]\nroute_table = "{rtb_a}"\nallocation_id = "{eip_a["AllocationId"]}"\n'
        f'subnets = ["10.8.11.0/24"]\naddresses = {{ "{a}" = "10.8.1.200", "{b}" = "10.8.1.202" }}\n\n'
        f'[[egress.tables]]\nroute_table = "{rtb_b}"\nallocation_id = "{eip_b["AllocationId"]}"\n'
        f'subnets = ["10.8.12.0/24"]\naddresses = {{ "{a}" = "10.8.1.201", "{b}" = "10.8.1.203" }}\n',
    )
    code, out, err = _run(["status", "--json", "--config", str(path)], capsys)
    assert code == 1, err
    status = json.loads(out)
    rows = {t["route_table"]: t for t in status["route_tables"]}
    assert (rows[rtb_a]["egress_ip"], rows[rtb_a]["egress_holder"], rows[rtb_a]["egress_ok"]) == (
        eip_a["PublicIp"],
        a,
        True,
    )
    # rtb-b's EIP sits on a's address for rtb-a, which is not a's address for rtb-b (10.8.1.201).
    assert rows[rtb_b]["egress_holder"] == f"other:{eni_a}/10.8.1.200" and rows[rtb_b]["egress_ok"] is False
    assert status["problems"] == [
        f"{rtb_b}: its Elastic IP {eip_b['PublicIp']} is with other:{eni_a}/10.8.1.200, not on its holder {b}'s "
        "address for it: its traffic leaves without its own public address"
    ]
    code, out, _ = _run(["status", "--config", str(path)], capsys)
    assert code == 1
    line_a = next(x for x in out.splitlines() if x.startswith(rtb_a))
    line_b = next(x for x in out.splitlines() if x.startswith(rtb_b))
    assert f"{eip_a['PublicIp']} ({a})" in line_a and line_a.rstrip().endswith("ok")
    assert line_b.rstrip().endswith("EGRESS IP ELSEWHERE")
    header = next(x for x in out.splitlines() if x.startswith("ROUTE TABLE"))
    assert header.split() == ["ROUTE", "TABLE", "HOME", "OWNER", "TERM", "EC2", "ROUTES", "TO", "EGRESS", "IP"]
