"""EC2 as the simulator models it, reached through a boto3-level client.

The agent's real adapter (``agent.aws.ec2.Ec2``) runs unchanged on top of
:class:`SimEc2Client`, which has the botocore client's methods and raises
botocore's own exceptions. What real EC2 does that moto does not is modelled
here (from AWS's documentation and published behaviour):

* every call takes virtual time and other agents run meanwhile; the request
  leaves the client at one instant (right after the fence's lease check, unless
  the process is frozen in between), reaches AWS, is applied, and the reply comes
  back; the client gives up at the fence's deadline and AWS may still apply a
  write after that, up to ``ec2_apply_horizon`` later (``ec2_late``, ``ec2_slow``);
* token buckets per account and region, shared by the group: Describe* 100 burst
  / 20 per s, mutating calls 50 / 5, StartInstances 5 / 2, CreateTags 100 / 10;
  another tenant can drain them (``ec2_busy``): ``RequestLimitExceeded``;
* DescribeRouteTables is eventually consistent: up to 50 ms behind, up to 1.5 s
  under ``ec2_stale``, when it may also show no default route while one exists;
* CreateRoute on an existing route is ``RouteAlreadyExists``, ReplaceRoute on a
  missing one ``InvalidParameterValue`` ("no route"), a route to a stopped
  instance is ``blackhole``; stop/start take seconds (``stopping``, ``pending``);
* the IAM holder-tag policy (deploy/iam): when the scenario uses holder tags,
  AWS applies a route write only if the table's ``nat-ha:holder`` tag names the
  caller when it processes the request; ``ec2_denied`` refuses one member's writes;
* Elastic IPs (egress_ip = follow): one per route table, associated with one
  (network interface, private address); AssociateAddress is a mutating call like a
  route write (same bucket, late landing, errors, ``ec2_denied``; the shipped policy
  scopes it by group tags only, no holder tag), DescribeAddresses lags like
  DescribeRouteTables (up to 50 ms, up to 1.5 s under ``ec2_stale``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from agent.aws.ec2 import HOLDER_TAG
from agent.aws.fence import Fence
from tests.sim.scenario import EC2_STALE_MAX

if TYPE_CHECKING:
    from tests.sim.world import World

ENDPOINT = "https://ec2.sim.amazonaws.com"
LATENCY = (0.004, 0.03)  # one way, client <-> AWS
PROCESSING = (0.005, 0.04)
STALE_BASE = 0.05


def arn(instance: str) -> str:
    return f"arn:aws:ec2:sim:000000000000:instance/{instance}"


class Bucket:
    """An EC2 token bucket (per account and region), refilled continuously."""

    def __init__(self, burst: float, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = burst
        self.at = 0.0

    def take(self, now: float, n: float = 1.0) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


@dataclass
class Call:
    """One EC2 request, as the checker sees it."""

    op: str  # botocore operation name (ReplaceRoute, ...)
    caller: str  # instance
    session: str  # the caller's session id at the lease check ("" none)
    process: str  # the process name (i-a#2)
    params: dict[str, Any]
    write: bool
    checked_at: float = -1.0  # global time of the fence's check
    deadline: float = -1.0  # global time the client gives up
    sent_at: float = -1.0
    overran: bool = False
    applied_at: float = -1.0
    result: Any = None
    error: tuple[str, str] | None = None  # (code, message)
    reply_at: float = -1.0
    info: dict[str, Any] = field(default_factory=dict)  # the checker's notes (term, target, ...)


class SimCloud:
    """EC2 state of the whole account: route tables with history and tags, buckets."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.routes: dict[str, list[tuple[float, str]]] = {}  # table -> [(applied at, target)], "" = no route
        self.tags: dict[str, str] = {}  # table -> holder tag value
        self.last_throttle = -1e9  # when AWS last answered a mutating call RequestLimitExceeded
        # Elastic IPs: allocation id -> [(applied at, (eni, private address))], ("", "") = unassociated
        self.addresses: dict[str, list[tuple[float, tuple[str, str]]]] = {}
        self.buckets = {
            "describe": Bucket(100, 20),
            "mutate": Bucket(50, 5),
            "start": Bucket(5, 2),
            "tags": Bucket(100, 10),
        }

    def bucket(self, op: str) -> Bucket:
        if op.startswith("Describe"):
            return self.buckets["describe"]
        if op == "StartInstances":
            return self.buckets["start"]
        if op == "CreateTags":
            return self.buckets["tags"]
        return self.buckets["mutate"]

    def target(self, table: str) -> str:
        return self.routes[table][-1][1]

    def throttling(self, within: float) -> bool:
        """AWS refused a mutating call for the account's bucket within the last ``within`` seconds."""
        return self.w.k.now - self.last_throttle < within

    def eip_holder(self, table: str) -> str:
        """The member whose address for ``table`` holds its Elastic IP now ("" unassociated, "other:..." else)."""
        e = self.w.egress.get(table)
        if e is None:
            return ""
        eni, ip = self.addresses[e.allocation_id][-1][1]
        return self.w.address_owner(table, eni, ip)

    def view_address(self, allocation_id: str, lag: float) -> dict[str, Any]:
        """The Elastic IP as a (possibly stale) DescribeAddresses shows it."""
        hist = self.addresses[allocation_id]
        eni, ip = hist[0][1]
        for t, where in hist:
            if t <= self.w.k.now - lag:
                eni, ip = where
        out: dict[str, Any] = {"AllocationId": allocation_id, "PublicIp": self.w.public_ip[allocation_id]}
        if eni:
            out.update(NetworkInterfaceId=eni, PrivateIpAddress=ip, AssociationId=f"eipassoc-{len(hist)}")
        return out

    def view(self, table: str, lag: float, missing: bool) -> dict[str, Any]:
        """The route table as a (possibly stale) DescribeRouteTables shows it."""
        hist = self.routes[table]
        seen = hist[0][1]
        for t, tgt in hist:
            if t <= self.w.k.now - lag:
                seen = tgt
        local = {"DestinationCidrBlock": "10.0.0.0/16", "GatewayId": "local", "State": "active"}
        routes: list[dict[str, Any]] = [local]
        if seen.startswith("nat-") and not missing:  # the last-resort NAT gateway
            routes.append({"DestinationCidrBlock": "0.0.0.0/0", "NatGatewayId": seen, "State": "active"})
        elif seen and not missing:
            state = "active" if self.w.state.get(seen) == "running" else "blackhole"
            routes.append({"DestinationCidrBlock": "0.0.0.0/0", "InstanceId": seen, "State": state})
        return {"RouteTableId": table, "Routes": routes, "Tags": []}


class _Events:
    def register(self, *args: Any, **kwargs: Any) -> None:
        """instrument_client's hooks: the simulator records calls itself."""

    register_first = register


class _Meta:
    def __init__(self) -> None:
        self.events = _Events()
        self.service_model = type("ServiceModel", (), {"service_name": "ec2"})()


class SimEc2Client:
    """One agent's EC2 client: botocore's methods, exceptions and response shapes."""

    def __init__(self, world: World, instance: str, process: str) -> None:
        self.w = world
        self.me = instance
        self.process = process
        self.meta = _Meta()
        self.fence: Fence | None = None

    def attach_fence(self, fence: Fence) -> None:
        self.fence = fence

    # ---------------------------------------------------------------- the wire
    def _request(self, op: str, params: dict[str, Any], write: bool, serve: Callable[[Call], Any]) -> Any:
        w = self.w
        p = w.k.current
        assert p is not None and self.fence is not None
        clock = w.clocks[self.me]
        if w.unreachable_aws(self.me):
            p.wait(w.rng.uniform(0.01, 0.05), "ec2")  # connect fails: nothing is sent
            raise EndpointConnectionError(endpoint_url=ENDPOINT)
        w.freeze_point(self.me, "ec2_prep", p)
        p.wait(0.0005, "ec2")  # signing, the connection checked
        run = w.process_run(self.process)
        session = run.agent.coordinator.session if run is not None else None
        call = Call(op, self.me, session.session if session else "", self.process, dict(params), write)
        local_deadline = self.fence.authorize(op)  # FenceRefused: nothing is sent
        call.checked_at = w.k.now
        call.deadline = w.k.now + max(0.0, local_deadline - clock.monotonic()) / clock.rate
        if write:
            w.checker.authorized(call)
        w.freeze_point(self.me, "ec2_gap", p)  # frozen between the check and the send
        p.wait(0.0001, "ec2")
        self.fence.sent()
        call.sent_at = w.k.now
        permit = self.fence._armed()
        call.overran = bool(permit is not None and permit.overran)
        if write:
            w.checker.sent(call)
        arrive = w.k.now + w.rng.uniform(*LATENCY)
        call.info["proc"] = p
        w.k.at(arrive, lambda: self._receive(call, serve))
        w.freeze_point(self.me, "ec2_call", p)
        # Wait for the reply, never past the deadline (the fence's hard deadline on the whole call).
        for _ in range(100):
            if 0 <= call.reply_at <= w.k.now:
                break
            until = call.deadline if call.reply_at < 0 else min(call.reply_at, call.deadline)
            if w.k.now >= call.deadline:
                break
            p.wait(max(until - w.k.now, 0.0001), "ec2")
        if call.reply_at < 0 or call.reply_at > call.deadline:
            raise ReadTimeoutError(endpoint_url=ENDPOINT)
        if call.error is not None:
            code, message = call.error
            raise ClientError({"Error": {"Code": code, "Message": message}}, op)
        return call.result

    def _receive(self, call: Call, serve: Callable[[Call], Any]) -> None:
        """AWS got the request: throttling and errors now; the write applied a little later."""
        w = self.w
        now = w.k.now
        back = w.rng.uniform(*LATENCY)
        proc = call.info["proc"]

        def reply(at: float) -> None:
            call.reply_at = at
            proc.wake_at(at)

        if not w.cloud.bucket(call.op).take(now):
            call.error = ("RequestLimitExceeded", "Request limit exceeded.")
            if call.write:
                w.cloud.last_throttle = now
            reply(now + back)
            return
        f = w.faulty("ec2_errors")
        if f is not None and w.rng.random() < f.rate:
            call.error = ("InternalError", "An internal error has occurred")
            reply(now + back)
            if not (call.write and w.rng.random() < 0.5):
                return
        elif call.write and w.faulty("ec2_denied", self.me):
            call.error = ("UnauthorizedOperation", "You are not authorized to perform this operation.")
            reply(now + back)
            return
        processing = w.rng.uniform(*PROCESSING)
        if w.faulty("ec2_slow"):
            processing = w.rng.uniform(0.1, 1.0) * max(0.05, call.deadline - now) * 1.5
        if call.write and w.faulty("ec2_late"):
            processing = w.rng.uniform(0.0, max(0.0, call.deadline - now) + w.sc.timing.ec2_apply_horizon)
        failed = call.error is not None

        def apply() -> None:
            try:
                call.result = serve(call)
                if call.write:
                    call.applied_at = w.k.now
            except ClientError as exc:
                err = exc.response["Error"]
                call.error = (str(err["Code"]), str(err["Message"]))
            if not failed:
                reply(w.k.now + back)

        w.k.at(now + processing, apply)

    # ---------------------------------------------------------- the operations
    def describe_route_tables(self, **params: Any) -> dict[str, Any]:
        def serve(call: Call) -> dict[str, Any]:
            stale = self.w.faulty("ec2_stale") is not None
            out = []
            by_filter = _filtered(params, "route-table-id")  # a filter: unknown ids are absent, not an error
            for table in params.get("RouteTableIds") or by_filter:
                if table not in self.w.cloud.routes:
                    if by_filter:
                        continue
                    raise ClientError(
                        {"Error": {"Code": "InvalidRouteTableID.NotFound", "Message": table}}, "DescribeRouteTables"
                    )
                lag = self.w.rng.uniform(0.0, EC2_STALE_MAX if stale else STALE_BASE)
                missing = stale and self.w.rng.random() < 0.2
                out.append(self.w.cloud.view(table, lag, missing))
            return {"RouteTables": out}

        result: dict[str, Any] = self._request("DescribeRouteTables", params, False, serve)
        return result

    def _route_write(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        table = params["RouteTableId"]
        target = (
            params.get("InstanceId")
            or params.get("NatGatewayId")
            or self.w.eni_owner.get(params.get("NetworkInterfaceId", ""), "?")
        )

        def serve(call: Call) -> dict[str, Any]:
            cloud = self.w.cloud
            if self.w.sc.holder_tag and cloud.tags.get(table) != arn(self.me):
                self.w.checker.refused_by_iam(call, cloud.tags.get(table, ""))
                raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "holder tag"}}, op)
            exists = bool(cloud.target(table))
            if op == "CreateRoute" and exists:
                raise ClientError({"Error": {"Code": "RouteAlreadyExists", "Message": "already exists"}}, op)
            if op == "ReplaceRoute" and not exists:
                message = "There is no route defined for '0.0.0.0/0' in the route table. Use CreateRoute instead."
                raise ClientError({"Error": {"Code": "InvalidParameterValue", "Message": message}}, op)
            self.w.write_route(call, table, target)
            return {"Return": True}

        result: dict[str, Any] = self._request(op, params, True, serve)
        return result

    def replace_route(self, **params: Any) -> dict[str, Any]:
        return self._route_write("ReplaceRoute", params)

    def create_route(self, **params: Any) -> dict[str, Any]:
        return self._route_write("CreateRoute", params)

    def create_tags(self, **params: Any) -> dict[str, Any]:
        def serve(call: Call) -> dict[str, Any]:
            for table in params["Resources"]:
                for tag in params["Tags"]:
                    if tag["Key"] == HOLDER_TAG:
                        self.w.cloud.tags[table] = tag["Value"]
                        self.w.checker.tagged(call, table, tag["Value"])
            return {}

        result: dict[str, Any] = self._request("CreateTags", params, True, serve)
        return result

    def describe_addresses(self, **params: Any) -> dict[str, Any]:
        def serve(call: Call) -> dict[str, Any]:
            stale = self.w.faulty("ec2_stale") is not None
            out = []
            by_filter = _filtered(params, "allocation-id")
            for alloc in params.get("AllocationIds") or by_filter:
                if alloc not in self.w.cloud.addresses:
                    if by_filter:
                        continue
                    raise ClientError(
                        {"Error": {"Code": "InvalidAllocationID.NotFound", "Message": alloc}}, "DescribeAddresses"
                    )
                lag = self.w.rng.uniform(0.0, EC2_STALE_MAX if stale else STALE_BASE)
                out.append(self.w.cloud.view_address(alloc, lag))
            return {"Addresses": out}

        result: dict[str, Any] = self._request("DescribeAddresses", params, False, serve)
        return result

    def associate_address(self, **params: Any) -> dict[str, Any]:
        alloc, eni, ip = params["AllocationId"], params["NetworkInterfaceId"], params["PrivateIpAddress"]

        def serve(call: Call) -> dict[str, Any]:
            if alloc not in self.w.cloud.addresses:
                error = {"Error": {"Code": "InvalidAllocationID.NotFound", "Message": alloc}}
                raise ClientError(error, "AssociateAddress")
            if ip not in self.w.eni_addresses.get(eni, ()):
                message = f"{ip} is not a private address of {eni}"
                raise ClientError({"Error": {"Code": "InvalidParameterValue", "Message": message}}, "AssociateAddress")
            self.w.write_address(call, alloc, eni, ip)
            return {"AssociationId": f"eipassoc-{len(self.w.cloud.addresses[alloc])}"}

        result: dict[str, Any] = self._request("AssociateAddress", params, True, serve)
        return result

    def describe_instances(self, **params: Any) -> dict[str, Any]:
        def serve(call: Call) -> dict[str, Any]:
            state = self.w.state
            instances = [{"InstanceId": i, "State": {"Name": state[i]}} for i in params["InstanceIds"] if i in state]
            return {"Reservations": [{"Instances": instances}]}

        result: dict[str, Any] = self._request("DescribeInstances", params, False, serve)
        return result

    def stop_instances(self, **params: Any) -> dict[str, Any]:
        def serve(call: Call) -> dict[str, Any]:
            for i in params["InstanceIds"]:
                self.w.stop_instance(call, i)
            return {"StoppingInstances": []}

        result: dict[str, Any] = self._request("StopInstances", params, True, serve)
        return result

    def start_instances(self, **params: Any) -> dict[str, Any]:
        def serve(call: Call) -> dict[str, Any]:
            for i in params["InstanceIds"]:
                self.w.start_instance(call, i)
            return {"StartingInstances": []}

        result: dict[str, Any] = self._request("StartInstances", params, True, serve)
        return result


def _filtered(params: dict[str, Any], name: str) -> list[str]:
    """The values of the ``Filters`` entry ``name`` of a Describe call ([] when there is none)."""
    for f in params.get("Filters", []):
        if f.get("Name") == name:
            return [str(v) for v in f.get("Values", [])]
    return []
