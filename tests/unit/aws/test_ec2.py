"""The EC2 adapter against moto in-process: targets by instance or ENI, missing and odd routes,
and every write behind the fence (a lease check right before the send, one write per check)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest
from moto import mock_aws

from agent.aws.ec2 import HOLDER_TAG, Ec2, Ec2Error, RouteView
from agent.aws.fence import Fence, FenceRefused, FenceTiming
from agent.config import Member
from agent.decide import Ec2Route


class Lease:
    """A session's time left, set by the test."""

    def __init__(self, left: float = 10.0) -> None:
        self.left = left

    def __call__(self) -> float:
        return self.left


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
        lease = Lease()
        fence = Fence(lease, time.monotonic, FenceTiming(0.6))
        yield {
            "client": c,
            "vpc": vpc,
            "ids": ids,
            "eni": eni,
            "rtb": rtb,
            # The adapter gets a client of its own: its calls are recorded for the IAM test,
            # the fixture's set-up calls (CreateVpc, CreateTags, ...) are not nat-ha's.
            "ec2": Ec2("us-east-1", members=members, client=setup_free_client(), fence=fence),
            "lease": lease,
            "fence": fence,
        }


def test_missing_default_route_is_created(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    a = world["ids"][0]
    assert ec2.routes([world["rtb"]]) == {world["rtb"]: Ec2Route("", "missing")}
    # The caller does not know the route is missing (a stale read said it exists):
    # ReplaceRoute says there is no route, and a CreateRoute (its own fenced write) follows.
    assert ec2.point_route(world["rtb"], a) == "created"
    assert ec2.routes([world["rtb"]])[world["rtb"]] == Ec2Route(a)


def test_known_missing_route_is_created_and_a_route_that_exists_after_all_is_replaced(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    a, b = world["ids"]
    assert ec2.point_route(world["rtb"], a, missing=True) == "created"
    # A stale read said "missing" although the route exists. AWS answers CreateRoute with
    # RouteAlreadyExists and the adapter falls back to ReplaceRoute (the simulator's EC2
    # does so, tests/sim); moto overwrites the route instead. Either way it ends at b.
    assert ec2.point_route(world["rtb"], b, missing=True) in ("replaced", "created")
    assert ec2.routes([world["rtb"]])[world["rtb"]] == Ec2Route(b)


def test_writes_are_blind_never_skipped_on_a_read(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    a = world["ids"][0]
    ec2.point_route(world["rtb"], a)
    # Already pointing at a: still written (a DescribeRouteTables may be stale), idempotently.
    assert ec2.point_route(world["rtb"], a) == "replaced"
    assert world["fence"].refusals == 0


def test_every_write_is_refused_unsent_when_the_lease_is_short(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    a = world["ids"][0]
    ec2.point_route(world["rtb"], a)
    world["lease"].left = 0.04  # below the fence's minimum window
    b = world["ids"][1]
    for write in (
        lambda: ec2.point_route(world["rtb"], b),
        lambda: ec2.tag_holder(world["rtb"], "arn:aws:ec2:us-east-1:123456789012:instance/" + b),
        lambda: ec2.stop(a),
        lambda: ec2.start(a),
    ):
        with pytest.raises(FenceRefused):
            write()
    assert ec2.routes([world["rtb"]])[world["rtb"]] == Ec2Route(a)  # nothing was sent
    assert ec2.instance_states([a]) == {a: "running"}
    assert world["fence"].refusals == 4


def test_a_write_without_a_permit_is_not_sent(world: dict[str, Any]) -> None:
    # A write that bypasses the adapter's fenced path (a bug) is refused by the transport hook.
    ec2: Ec2 = world["ec2"]
    with pytest.raises(FenceRefused):
        ec2.client.replace_route(RouteTableId=world["rtb"], DestinationCidrBlock="0.0.0.0/0", InstanceId="i-1")
    with pytest.raises(FenceRefused):
        ec2.client.stop_instances(InstanceIds=[world["ids"][0]])
    assert ec2.instance_states([world["ids"][0]]) == {world["ids"][0]: "running"}


def test_holder_tag_is_written_on_the_route_table(world: dict[str, Any]) -> None:
    arn = "arn:aws:ec2:us-east-1:123456789012:instance/" + world["ids"][0]
    world["ec2"].tag_holder(world["rtb"], arn)
    tags = world["client"].describe_route_tables(RouteTableIds=[world["rtb"]])["RouteTables"][0]["Tags"]
    assert {"Key": HOLDER_TAG, "Value": arn} in tags


def test_member_with_eni_is_routed_by_eni_and_matched_by_eni(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    a, b = world["ids"]
    ec2.point_route(world["rtb"], a)
    assert ec2.point_route(world["rtb"], b) == "replaced"
    routes = world["client"].describe_route_tables(RouteTableIds=[world["rtb"]])["RouteTables"][0]["Routes"]
    default = next(r for r in routes if r.get("DestinationCidrBlock") == "0.0.0.0/0")
    assert default.get("NetworkInterfaceId") == world["eni"]  # moto fills only the field given
    assert ec2.routes([world["rtb"]])[world["rtb"]] == Ec2Route(b)


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
    found = {m.instance_id: m for m in world["ec2"].discover("g1").members}
    assert set(found) == {a, b}
    assert found[a].route_tables == (world["rtb"],) and found[b].route_tables == ()
    assert found[a].address.startswith("10.0.1.")


def test_unreachable_endpoint_is_a_bounded_typed_error() -> None:
    ec2 = Ec2("us-east-1", "http://127.0.0.1:9", timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(Ec2Error):
        ec2.describe(["rtb-1"])
    assert time.monotonic() - t0 < 5


def test_discover_resolves_slots_and_keeps_homeless_tables(world: dict[str, Any]) -> None:
    """A table's nat-ha:home may name a slot (the nat-ha:slot tag of an Auto Scaling group's instances):
    it resolves to the slot's instance; a table whose home names nobody stays in the group, homeless."""
    c = world["client"]
    a, b = world["ids"]
    c.create_tags(Resources=[a, b], Tags=[{"Key": "nat-ha:group", "Value": "g2"}])
    c.create_tags(Resources=[a], Tags=[{"Key": "nat-ha:slot", "Value": "nat-1"},
                                       {"Key": "aws:autoscaling:groupName", "Value": "asg-1"}])  # fmt: skip
    rtb2 = c.create_route_table(VpcId=world["vpc"])["RouteTable"]["RouteTableId"]
    c.create_tags(Resources=[world["rtb"]], Tags=[{"Key": "nat-ha:group", "Value": "g2"},
                                                  {"Key": "nat-ha:home", "Value": "nat-1"}])  # fmt: skip
    c.create_tags(Resources=[rtb2], Tags=[{"Key": "nat-ha:group", "Value": "g2"},
                                          {"Key": "nat-ha:home", "Value": "nat-2"}])  # fmt: skip
    found = world["ec2"].discover("g2")
    by_id = {m.instance_id: m for m in found.members}
    assert by_id[a].route_tables == (world["rtb"],) and (by_id[a].slot, by_id[a].asg) == ("nat-1", "asg-1")
    assert by_id[b].route_tables == () and by_id[b].slot == ""
    assert found.homeless == (rtb2,)  # slot nat-2 has no instance (yet)
    assert found.homes() == {world["rtb"]: a, rtb2: ""}
    assert [m.instance_id for m in found.members] == sorted([a, b])  # one AZ here: by instance id
