"""The EC2 adapter's Elastic IP calls (egress_ip = follow): DescribeAddresses read back as "whose address
holds it", AssociateAddress with exactly AWS's parameters, behind the fence like every write.

moto accepts AssociateAddress but ignores its PrivateIpAddress (it reports the interface's primary
address): the moto tests use primary addresses; the exact request is checked with botocore's Stubber
against the real EC2 model, and the mapping of a secondary address with a plain view.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from agent.aws.ec2 import AddressView, Ec2, Ec2Error
from agent.aws.fence import Fence, FenceRefused, FenceTiming
from agent.config import EgressTable, Member
from agent.decide import Ec2Address

RTB = "rtb-0a"


class Lease:
    def __init__(self, left: float = 10.0) -> None:
        self.left = left

    def __call__(self) -> float:
        return self.left


def client() -> Any:
    return botocore.session.get_session().create_client("ec2", region_name="us-east-1")


@pytest.fixture
def world() -> Iterator[dict[str, Any]]:
    with mock_aws():
        c = client()
        vpc = c.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = c.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        insts = c.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2, SubnetId=subnet)["Instances"]
        members = {
            i["InstanceId"]: Member(
                i["InstanceId"], i["PrivateIpAddress"], eni=i["NetworkInterfaces"][0]["NetworkInterfaceId"]
            )
            for i in insts
        }
        a, b = (i["InstanceId"] for i in insts)
        alloc = c.allocate_address(Domain="vpc")
        egress = {
            RTB: EgressTable(
                RTB, alloc["AllocationId"], ("10.0.11.0/24",), tuple((m, members[m].address) for m in (a, b))
            )
        }
        lease = Lease()
        fence = Fence(lease, time.monotonic, FenceTiming(0.6))
        ec2 = Ec2("us-east-1", members=members, client=client(), fence=fence, egress=egress)
        yield {"ec2": ec2, "a": a, "b": b, "lease": lease, "public_ip": alloc["PublicIp"], "raw": c}


def test_unassociated_then_follows_its_holder(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    a, b, ip = world["a"], world["b"], world["public_ip"]
    assert ec2.egress_ips([RTB, "rtb-no-egress"]) == {RTB: Ec2Address("", ip)}
    assert ec2.associate_address(RTB, a).startswith("eipassoc-")
    assert ec2.egress_ips([RTB]) == {RTB: Ec2Address(a, ip)}
    ec2.associate_address(RTB, b)  # AllowReassociation: taken from a in one call
    assert ec2.egress_ips([RTB]) == {RTB: Ec2Address(b, ip)}


def test_an_association_is_a_fenced_write(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    a, b = world["a"], world["b"]
    ec2.associate_address(RTB, a)
    world["lease"].left = 0.03  # less than the fence's minimum window: nothing may be sent
    with pytest.raises(FenceRefused):
        ec2.associate_address(RTB, b)
    world["lease"].left = 10.0
    assert ec2.egress_ips([RTB])[RTB].holder == a, "the refused association was not sent"
    assert ec2.fence is not None and ec2.fence.refusals == 1


def test_a_write_outside_the_fence_is_refused(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    with pytest.raises(FenceRefused):  # the raw client, no permit armed: the transport refuses to send
        ec2.client.associate_address(AllocationId=ec2.egress[RTB].allocation_id, InstanceId=world["a"])


def test_unknown_allocation_is_an_ec2_error(world: dict[str, Any]) -> None:
    ec2: Ec2 = world["ec2"]
    with pytest.raises(Ec2Error) as exc:
        ec2.addresses(["eipalloc-00000000"])
    assert exc.value.operation == "describe_addresses"


def test_a_member_without_address_or_eni_is_not_sent() -> None:
    members = {"i-a": Member("i-a", "10.0.1.10", eni="eni-a"), "i-b": Member("i-b", "10.0.2.10")}
    egress = {RTB: EgressTable(RTB, "eipalloc-1", ("10.0.11.0/24",), (("i-a", "10.0.1.10"),))}
    ec2 = Ec2("us-east-1", members=members, client=client(), egress=egress)
    for instance in ("i-b", "i-z"):
        with pytest.raises(Ec2Error) as exc:
            ec2.associate_address(RTB, instance)
        assert exc.value.code == "NotConfigured"
    with pytest.raises(Ec2Error):
        ec2.associate_address("rtb-other", "i-a")


def test_the_request_names_the_eni_the_secondary_address_and_allows_reassociation() -> None:
    members = {"i-a": Member("i-a", "10.0.1.10", eni="eni-a"), "i-b": Member("i-b", "10.0.2.10", eni="eni-b")}
    egress = {RTB: EgressTable(RTB, "eipalloc-1", ("10.0.11.0/24",), (("i-a", "10.0.1.10"), ("i-b", "10.0.2.21")))}
    c = client()
    ec2 = Ec2("us-east-1", members=members, client=c, egress=egress)
    ec2.attach_fence(Fence(lambda: 10.0, time.monotonic, FenceTiming(0.6)))
    expected = {
        "AllocationId": "eipalloc-1",
        "NetworkInterfaceId": "eni-b",
        "PrivateIpAddress": "10.0.2.21",
        "AllowReassociation": True,
    }
    with Stubber(c) as stub:
        stub.add_response("associate_address", {"AssociationId": "eipassoc-1"}, expected)
        assert ec2.associate_address(RTB, "i-b") == "eipassoc-1"
        stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("view", "holder"),
    [
        (None, ""),
        (AddressView("eipalloc-1", "203.0.113.7", "", ""), ""),
        (AddressView("eipalloc-1", "203.0.113.7", "eni-b", "10.0.2.21"), "i-b"),
        (AddressView("eipalloc-1", "203.0.113.7", "eni-a", "10.0.1.10"), "i-a"),
        # On b's interface but its primary address: b's traffic for the table leaves from 10.0.2.21,
        # which has no public mapping then. Not "with b".
        (AddressView("eipalloc-1", "203.0.113.7", "eni-b", "10.0.2.10"), "other:eni-b/10.0.2.10"),
        (AddressView("eipalloc-1", "203.0.113.7", "eni-x", "10.0.9.9"), "other:eni-x/10.0.9.9"),
    ],
)
def test_whose_address_holds_it(view: AddressView | None, holder: str) -> None:
    members = {"i-a": Member("i-a", "10.0.1.10", eni="eni-a"), "i-b": Member("i-b", "10.0.2.10", eni="eni-b")}
    egress = {RTB: EgressTable(RTB, "eipalloc-1", ("10.0.11.0/24",), (("i-a", "10.0.1.10"), ("i-b", "10.0.2.21")))}
    ec2 = Ec2("us-east-1", members=members, client=client(), egress=egress)
    seen = ec2.holder_of(RTB, view)
    assert seen.holder == holder
    assert seen.public_ip == (view.public_ip if view else "")


def test_discovery_fills_in_the_primary_interface_only_when_asked(world: dict[str, Any]) -> None:
    raw = world["raw"]
    raw.create_tags(Resources=[world["a"], world["b"]], Tags=[{"Key": "nat-ha:group", "Value": "g"}])
    ec2: Ec2 = world["ec2"]
    plain = {m.instance_id: m.eni for m in ec2.discover("g").members}
    assert plain == {world["a"]: "", world["b"]: ""}, "routes keep naming instances unless egress follows"
    found = {m.instance_id: m.eni for m in ec2.discover("g", with_eni=True).members}
    assert found == {i: ec2.members[i].eni for i in (world["a"], world["b"])}
