"""The EC2 adapter: route tables, Elastic IPs, instance states, stop/start. Thin, bounded, typed errors.

Every write goes through the agent's :class:`~agent.aws.fence.Fence`: the lease is checked
right before each send, one write per check, under a hard deadline on the whole call
(agent/aws/fence.py). Route writes are blind (ReplaceRoute, or CreateRoute when the route
is missing): DescribeRouteTables is eventually consistent - it may show the previous target,
or no route while one exists - so a read never decides that a write can be skipped. A route
may name the instance or one of its network interfaces (AWS fills in both, moto only the one
given), and may be ``blackhole``. With ``egress_ip = "follow"`` each route table's Elastic IP
is associated, like a route, blindly and fenced (AssociateAddress with AllowReassociation);
DescribeAddresses is read the same way as DescribeRouteTables: it may lag.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.aws.fence import Fence, FenceRefused, Permit
from agent.config import EgressTable, Member
from agent.decide import Ec2Address, Ec2Route
from agent.members import ASG_TAG, HOME_TAG, SLOT_TAG, Instance, Membership, assemble, sorted_addresses
from coordinator.instrument import CallObserver, instrument_client

if TYPE_CHECKING:
    from coordinator.awshttp import Sender

DEFAULT_ROUTE = "0.0.0.0/0"
HOLDER_TAG = "nat-ha:holder"  # on a route table and its Elastic IP: the instance ARN that may write them
STOP_TAG = "nat-ha:stop-by"  # on an instance: the ARN of the one member that may stop it
# A call given up this long after its deadline was frozen after its bytes were handed to the kernel:
# what it did not see acknowledged may have left late (a VM pause holds them; on resume they go).
LATE_ABORT = 0.05
# Error codes that mean "the account's request bucket is empty": back off, nothing is wrong with us.
THROTTLED = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})


class Ec2Error(Exception):
    """An EC2 call failed; ``code`` is AWS's error code or the exception name."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(f"EC2 {operation} failed: {code}: {message}")
        self.operation = operation
        self.code = code


def make_client(service: str, region: str, endpoint_url: str, timeout: float, attempts: int) -> Any:
    """A botocore client with bounded connect/read timeouts and retry budget (rule 3)."""
    from botocore.config import Config

    from agent.aws.models import botocore_session

    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"total_max_attempts": attempts, "mode": "standard"},
        max_pool_connections=4,
    )
    endpoint = (
        endpoint_url or os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL")
    )
    return botocore_session().create_client(service, region_name=region, endpoint_url=endpoint or None, config=config)


@dataclass(frozen=True)
class RouteView:
    """One route table's default route as EC2 reports it."""

    route_table: str
    instance_id: str
    eni: str
    other: str  # a target that is not an instance or ENI (NAT gateway, IGW, ...)
    state: str  # active | blackhole | missing


@dataclass(frozen=True)
class AddressView:
    """One Elastic IP as DescribeAddresses reports it (eni and private_ip empty when unassociated)."""

    allocation_id: str
    public_ip: str
    eni: str
    private_ip: str


class Ec2:
    """EC2 calls of one agent. ``members`` maps instance ids to their config (for ENI targets);
    ``egress`` maps route tables to their Elastic IP and per-member addresses (egress_ip = follow)."""

    def __init__(
        self,
        region: str,
        endpoint_url: str = "",
        *,
        timeout: float = 0.6,
        members: dict[str, Member] | None = None,
        on_call: CallObserver | None = None,
        client: Any = None,
        fence: Fence | None = None,
        egress: dict[str, EgressTable] | None = None,
    ) -> None:
        # Our own client sends through coordinator.awshttp: one keep-alive connection whose every
        # call ends by a hard deadline (botocore's timeouts are per socket operation, not per call).
        self.sender: Sender | None = None
        if client is None:
            from agent.aws.models import botocore_session
            from coordinator.awshttp import sender_for

            client = make_client("ec2", region, endpoint_url, timeout, 1)
            self.sender = sender_for(client, botocore_session(), timeout)
        self.client = client
        instrument_client(self.client, on_call)
        self.members = members or {}
        self.egress = egress or {}
        self.fence: Fence | None = None
        if fence is not None:
            self.attach_fence(fence)

    def attach_fence(self, fence: Fence) -> None:
        """Route every call through ``fence`` (writes need a permit; every call gets a deadline).

        botocore's ``before-send`` pre-checks a write (signed, before anything is sent); then
        awshttp asks the fence again once the connection is up, right before the bytes go out,
        and ends the whole call at the deadline the fence gives.
        """
        self.fence = fence
        attach = getattr(self.client, "attach_fence", None)
        if attach is not None:  # a simulated client (tests/sim) calls the fence itself
            attach(fence)
            return
        install_fence_hook(self.client, fence)
        if self.sender is not None:
            from coordinator.awshttp import install

            install(self.client, self.sender, authorize=lambda _request: fence.authorize_armed())

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            result: dict[str, Any] = getattr(self.client, operation)(**params)
            return result
        except FenceRefused:
            raise
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise Ec2Error(operation, str(err.get("Code", "ClientError")), str(err.get("Message", ""))) from exc
        except BotoCoreError as exc:
            raise Ec2Error(operation, type(exc).__name__, str(exc)) from exc

    def _write(self, operation: str, resource: str, **params: Any) -> dict[str, Any]:
        """One fenced write: the lease is checked by the transport right before the send."""
        if self.fence is None:
            raise RuntimeError(f"EC2 write {operation} without a fence: attach the agent's Fence first")
        with self.fence.write(api_name(operation), resource) as permit:
            try:
                return self._call(operation, **params)
            finally:
                self._record_send(permit)

    def _record_send(self, permit: Permit) -> None:
        """When the request's bytes reached AWS (awshttp's record of this call): the fence's overrun check.

        Sent means acknowledged: the time the peer had every byte. Bytes that left but were not
        all acknowledged leave the write in doubt (it may still land, until its deadline plus
        ec2_apply_horizon: nothing of it leaves after the deadline, the connection is reset).
        """
        record = self.sender.last if self.sender is not None else None
        if record is None or not permit.used or not record.started <= permit.checked_at:
            return  # not sent through awshttp (refused before, or a test's mock answered)
        if record.acked_at is not None:
            permit.sent_at = max(record.acked_at, record.sent_at or record.acked_at)
        elif record.send_started is not None:
            permit.in_doubt = True
            permit.sent_at = record.sent_at if record.sent_at is not None else record.send_started
            if record.ended is not None and record.ended > record.deadline + LATE_ABORT:
                # We gave up late (frozen after the bytes were handed over): the kernel may have let them
                # go after the deadline, before our reset. Treat them as sent when we gave up: a stray.
                permit.sent_at = record.ended

    # ---------------------------------------------------------------- routes
    def describe(self, route_tables: list[str]) -> dict[str, RouteView]:
        if not route_tables:
            return {}
        data = self._call("describe_route_tables", RouteTableIds=sorted(route_tables))
        out: dict[str, RouteView] = {}
        for rt in data.get("RouteTables", []):
            rid = rt["RouteTableId"]
            route = next((r for r in rt.get("Routes", []) if r.get("DestinationCidrBlock") == DEFAULT_ROUTE), None)
            if route is None:
                out[rid] = RouteView(rid, "", "", "", "missing")
                continue
            other = next(
                (
                    str(route[k])
                    for k in ("NatGatewayId", "GatewayId", "TransitGatewayId", "VpcPeeringConnectionId")
                    if route.get(k)
                ),
                "",
            )
            out[rid] = RouteView(
                rid,
                str(route.get("InstanceId") or ""),
                str(route.get("NetworkInterfaceId") or ""),
                other,
                str(route.get("State") or "active"),
            )
        return out

    def member_of(self, view: RouteView) -> str:
        """The member a route points at ("" if none): matched on instance id or on its ENI."""
        if view.instance_id and view.instance_id in self.members:
            return view.instance_id
        if view.eni:
            for m in self.members.values():
                if m.eni and m.eni == view.eni:
                    return m.instance_id
        return ""

    def as_decision_input(self, view: RouteView) -> Ec2Route:
        if view.state == "missing":
            return Ec2Route("", "missing")
        target = self.member_of(view) or f"other:{view.instance_id or view.eni or view.other or '?'}"
        return Ec2Route(target, view.state)

    def routes(self, route_tables: list[str]) -> dict[str, Ec2Route]:
        return {rt: self.as_decision_input(v) for rt, v in self.describe(route_tables).items()}

    def _target(self, instance: str) -> dict[str, str]:
        if instance.startswith("nat-"):  # the last-resort NAT gateway (ec2.last_resort_nat_gateway)
            return {"NatGatewayId": instance}
        m = self.members.get(instance)
        if m is not None and m.eni:
            return {"NetworkInterfaceId": m.eni}
        return {"InstanceId": instance}

    def point_route(self, route_table: str, instance: str, *, missing: bool = False) -> str:
        """Point 0.0.0.0/0 of ``route_table`` at ``instance`` (or a NAT gateway, nat-...), blindly;
        returns "replaced" or "created".

        ReplaceRoute first (the usual case), CreateRoute when the last read showed no route
        (``missing``) or ReplaceRoute says there is none; a CreateRoute that finds the route
        after all falls back to ReplaceRoute. Each of these is its own fenced write, with its
        own lease check right before it is sent.
        """
        target = self._target(instance)

        def write(operation: str) -> None:
            self._write(operation, route_table, RouteTableId=route_table, DestinationCidrBlock=DEFAULT_ROUTE, **target)

        if missing:
            try:
                write("create_route")
                return "created"
            except Ec2Error as exc:
                if exc.code != "RouteAlreadyExists":
                    raise
        try:
            write("replace_route")
            return "replaced"
        except Ec2Error as exc:
            if missing or not route_missing(exc):
                raise
        write("create_route")
        return "created"

    def tag_holder(self, route_table: str, holder: str) -> None:
        """Tag the route table with its holder: the IAM policy lets only that instance write its routes."""
        self._write("create_tags", route_table, Resources=[route_table], Tags=[{"Key": HOLDER_TAG, "Value": holder}])

    def tag_address_holder(self, route_table: str, holder: str) -> None:
        """Tag the table's Elastic IP with its holder: the IAM policy lets only that instance associate it.

        One fenced write whose lease is the table's (the resource the permit names).
        """
        e = self.egress.get(route_table)
        if e is None:
            raise Ec2Error("create_tags", "NotConfigured", f"no Elastic IP configured for {route_table}")
        tags = [{"Key": HOLDER_TAG, "Value": holder}]
        self._write("create_tags", route_table, Resources=[e.allocation_id], Tags=tags)

    def tag_stop_by(self, instance: str, stopper: str) -> None:
        """Tag ``instance`` nat-ha:stop-by=<stopper's ARN>: the IAM policy lets only that ARN stop it.

        A stopper tags its target right before the stop; an agent whose session starts tags itself
        (its own ARN), which takes the right to stop it from whoever tagged it before.
        """
        self._write("create_tags", instance, Resources=[instance], Tags=[{"Key": STOP_TAG, "Value": stopper}])

    # ---------------------------------------------------------- Elastic IPs
    def addresses(self, allocation_ids: list[str]) -> dict[str, AddressView]:
        """DescribeAddresses by allocation id: where each Elastic IP is associated (eventually consistent)."""
        if not allocation_ids:
            return {}
        data = self._call("describe_addresses", AllocationIds=sorted(set(allocation_ids)))
        return {
            str(a["AllocationId"]): AddressView(
                str(a["AllocationId"]),
                str(a.get("PublicIp") or ""),
                str(a.get("NetworkInterfaceId") or ""),
                str(a.get("PrivateIpAddress") or ""),
            )
            for a in data.get("Addresses", [])
        }

    def holder_of(self, route_table: str, view: AddressView | None) -> Ec2Address:
        """Whose address for ``route_table`` holds its Elastic IP: a member, "" (nobody) or "other:<eni>/<ip>"."""
        if view is None:
            return Ec2Address("", "")
        if not view.eni:
            return Ec2Address("", view.public_ip)
        e = self.egress.get(route_table)
        for m in self.members.values():
            if m.eni == view.eni and e is not None and e.address(m.instance_id) == view.private_ip:
                return Ec2Address(m.instance_id, view.public_ip)
        return Ec2Address(f"other:{view.eni}/{view.private_ip}", view.public_ip)

    def egress_ips(self, route_tables: list[str]) -> dict[str, Ec2Address]:
        """Where each route table's Elastic IP sits, as one DescribeAddresses shows it (tables with egress only)."""
        tables = [self.egress[rt] for rt in route_tables if rt in self.egress]
        views = self.addresses([e.allocation_id for e in tables])
        return {e.route_table: self.holder_of(e.route_table, views.get(e.allocation_id)) for e in tables}

    def associate_address(self, route_table: str, instance: str) -> str:
        """Associate ``route_table``'s Elastic IP with ``instance``'s address for it; returns the association id.

        One fenced write (the resource is the route table: its lease authorizes the write),
        blind like a route write, with AllowReassociation: the address moves from wherever it is.
        """
        e = self.egress.get(route_table)
        m = self.members.get(instance)
        address = e.address(instance) if e is not None else ""
        if e is None or m is None or not m.eni or not address:
            why = f"no Elastic IP, ENI or address configured for {route_table} on {instance}"
            raise Ec2Error("associate_address", "NotConfigured", why)
        done = self._write(
            "associate_address",
            route_table,
            AllocationId=e.allocation_id,
            NetworkInterfaceId=m.eni,
            PrivateIpAddress=address,
            AllowReassociation=True,
        )
        return str(done.get("AssociationId", ""))

    # ------------------------------------------------------------- instances
    def instance_states(self, instances: list[str]) -> dict[str, str]:
        if not instances:
            return {}
        data = self._call("describe_instances", InstanceIds=sorted(instances))
        return {
            i["InstanceId"]: str(i.get("State", {}).get("Name", "unknown"))
            for r in data.get("Reservations", [])
            for i in r.get("Instances", [])
        }

    def stop(self, instance: str) -> None:
        self._write("stop_instances", instance, InstanceIds=[instance])

    def start(self, instance: str) -> None:
        self._write("start_instances", instance, InstanceIds=[instance])

    # ------------------------------------------------------------- discovery
    def discover(self, group: str, *, with_eni: bool = False) -> Membership:
        """Members and their home route tables from tags (members_from_tags = true): agent.members.

        ``with_eni`` (egress_ip = follow): each member's primary network interface too, where its
        Elastic IPs are associated (its routes then name the interface, as with a configured eni).
        """
        data = self._call(
            "describe_instances",
            Filters=[
                {"Name": "tag:nat-ha:group", "Values": [group]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
            ],
        )
        instances = [instance_view(i) for r in data.get("Reservations", []) for i in r.get("Instances", [])]
        if not with_eni:
            instances = [dataclasses.replace(i, eni="") for i in instances]
        found = self._call("describe_route_tables", Filters=[{"Name": "tag:nat-ha:group", "Values": [group]}])
        tables = {
            str(rt["RouteTableId"]): {t["Key"]: t["Value"] for t in rt.get("Tags", [])}.get(HOME_TAG, "")
            for rt in found.get("RouteTables", [])
        }
        return assemble(instances, {rt: home for rt, home in tables.items() if home})


def instance_view(i: dict[str, Any]) -> Instance:
    """One DescribeInstances entry as agent.members reads it."""
    tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
    nics: list[dict[str, Any]] = i.get("NetworkInterfaces", [])
    nic = next((n for n in nics if n.get("Attachment", {}).get("DeviceIndex") == 0), {})
    launched = i.get("LaunchTime", "")
    return Instance(
        instance_id=str(i["InstanceId"]),
        az=str(i.get("Placement", {}).get("AvailabilityZone", "")),
        address=str(i.get("PrivateIpAddress", "")),
        eni=str(nic.get("NetworkInterfaceId") or ""),
        secondaries=sorted_addresses(
            [str(a["PrivateIpAddress"]) for a in nic.get("PrivateIpAddresses", []) if not a.get("Primary")]
        ),
        slot=tags.get(SLOT_TAG, ""),
        asg=tags.get(ASG_TAG, ""),
        state=str(i.get("State", {}).get("Name", "")),
        launched=launched.isoformat() if hasattr(launched, "isoformat") else str(launched),
    )


def route_missing(exc: Ec2Error) -> bool:
    """ReplaceRoute's way of saying the route does not exist (AWS: InvalidParameterValue "no route")."""
    return exc.code == "InvalidRoute.NotFound" or (
        exc.code == "InvalidParameterValue" and "no route" in str(exc).lower()
    )


def api_name(operation: str) -> str:
    """``replace_route`` -> ``ReplaceRoute`` (botocore's operation name)."""
    return "".join(part.capitalize() for part in operation.split("_"))


def install_fence_hook(client: Any, fence: Fence) -> None:
    """Pre-check at botocore's ``before-send`` (after signing): a write without a permit is not sent.

    Raising there sends nothing. It runs before any handler that answers instead of sending
    (moto's ``mock_aws`` in unit tests), so those tests see the same refusals.
    """

    def before_send(request: Any, event_name: str = "", **_: Any) -> None:
        fence.precheck(event_name.rsplit(".", 1)[-1])

    client.meta.events.register_first(
        f"before-send.{client.meta.service_model.service_name}", before_send, unique_id=f"nat-ha-fence-{id(client)}"
    )
