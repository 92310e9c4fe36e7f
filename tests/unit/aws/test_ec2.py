"""The EC2 adapter against moto in-process: targets by instance or ENI, missing and odd routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest
from moto import mock_aws

from agent.aws.ec2 import Ec2, Ec2Error, RouteView
from agent.config import Member
from agent.decide import Ec2Route


def setup_free_client() -> Any:
    return botocore.session.get_session().create_client("ec2", region_name="us-east-1")


@pytest.fixture
def world() -> Iterator[dict[str, Any]]:
    with mock_aws():
        c = botocore.session.get_session().create_client("ec2", region_name="us-east-1")
        vpc = c.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = c.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        image = "ami-12c6146b"  # in moto's default AMI list; describe_images costs seconds
        ids = [
            i["InstanceId"]
            for i in c.run_instances(ImageId=image, MinCount=2, MaxCount=2, SubnetId=subnet)["Instances"]
        ]
        eni = c.create_network_interface(SubnetId=subnet)["NetworkInterface"]["NetworkInterfaceId"]
        rtb = c.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        members = {ids[0]: Member(ids[0], "10.0.1.10"), ids[1]: Member(ids[1], "10.0.1.11", eni=eni)}
        yield {
            "client": c,
            "vpc": vpc,
            "ids": ids,
            "eni": eni,
            "rtb": rtb,
            # The adapter gets a client of its own: its calls are recorded for the IAM test,
            # the fixture's set-up calls (CreateVpc, CreateTags, ...) are not nat-ha's.
            "ec2": Ec2("us-east-1", members=members, client=setup_free_client(), sleep=lambda _s: None),
        }


def test_missing_default_route_is_created(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    a = world["ids"][0]
    assert ec2.routes([world["rtb"]]) == {world["rtb"]: Ec2Route("", "missing")}
    assert ec2.point_route(world["rtb"], a) == "created"
    assert ec2.verify(world["rtb"], a)
    assert ec2.routes([world["rtb"]])[world["rtb"]] == Ec2Route(a)


def test_replace_is_idempotent(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    a = world["ids"][0]
    ec2.point_route(world["rtb"], a)
    assert ec2.point_route(world["rtb"], a) == "already"


def test_member_with_eni_is_routed_by_eni_and_matched_by_eni(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    a, b = world["ids"]
    ec2.point_route(world["rtb"], a)
    assert ec2.point_route(world["rtb"], b) == "replaced"
    routes = world["client"].describe_route_tables(RouteTableIds=[world["rtb"]])["RouteTables"][0]["Routes"]
    default = next(r for r in routes if r.get("DestinationCidrBlock") == "0.0.0.0/0")
    assert default.get("NetworkInterfaceId") == world["eni"]  # moto fills only the field given
    assert ec2.routes([world["rtb"]])[world["rtb"]] == Ec2Route(b)
    assert ec2.verify(world["rtb"], b)


def test_route_to_something_else_is_reported_as_other(world: dict[str, Any]) -> None:
    c = world["client"]
    igw = c.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    c.attach_internet_gateway(InternetGatewayId=igw, VpcId=world["vpc"])
    c.create_route(RouteTableId=world["rtb"], DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    assert world["ec2"].routes([world["rtb"]])[world["rtb"]] == Ec2Route(f"other:{igw}")


def test_blackhole_route_to_a_member_is_seen_as_blackhole(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    a = world["ids"][0]
    # moto always reports "active": build the view AWS would give for a stopped target.
    view = RouteView(world["rtb"], a, "", "", "blackhole")
    assert ec2.as_decision_input(view) == Ec2Route(a, "blackhole")
    # ... and a blackhole route to the right instance is rewritten, not taken as done.
    ec2.point_route(world["rtb"], a)
    assert ec2.point_route(world["rtb"], a, current=view) == "replaced"


def test_aws_reports_both_ids_and_either_matches(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    b = world["ids"][1]
    assert ec2.member_of(RouteView("rtb-x", b, world["eni"], "", "active")) == b
    assert ec2.member_of(RouteView("rtb-x", "", world["eni"], "", "active")) == b
    assert ec2.member_of(RouteView("rtb-x", "i-unknown", "", "", "active")) == ""


def test_unknown_route_table_is_a_typed_error(world: dict[str, Any]) -> None:
    with pytest.raises(Ec2Error) as err:
        world["ec2"].describe(["rtb-00000000000000000"])
    assert err.value.code == "InvalidRouteTableID.NotFound"
    assert "DescribeRouteTables" in str(err.value) or "describe_route_tables" in str(err.value)


def test_stop_start_and_states(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    a = world["ids"][0]
    assert ec2.instance_states([a]) == {a: "running"}
    ec2.stop(a)
    assert ec2.instance_states([a])[a] in ("stopping", "stopped")
    ec2.start(a)
    assert ec2.instance_states([a])[a] in ("pending", "running")


def test_discover_members_from_tags(world: dict[str, Any]) -> None:
    c = world["client"]
    a, b = world["ids"]
    c.create_tags(Resources=[a, b], Tags=[{"Key": "nat-ha:group", "Value": "g1"}])
    c.create_tags(
        Resources=[world["rtb"]], Tags=[{"Key": "nat-ha:group", "Value": "g1"}, {"Key": "nat-ha:home", "Value": a}]
    )
    found = {m.instance_id: m for m in world["ec2"].discover("g1")}
    assert set(found) == {a, b}
    assert found[a].route_tables == (world["rtb"],) and found[b].route_tables == ()
    assert found[a].address.startswith("10.0.1.")


def test_unreachable_endpoint_is_a_bounded_typed_error() -> None:
    import time

    ec2 = Ec2("us-east-1", "http://127.0.0.1:9", timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(Ec2Error):
        ec2.describe(["rtb-1"])
    assert time.monotonic() - t0 < 5
