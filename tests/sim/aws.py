"""EC2 as the simulator models it, reached through a boto3-level client.

The agent's real adapter (``agent.aws.ec2.Ec2``) runs unchanged on top of
:class:`SimEc2Client`, which has the botocore client's methods and raises
botocore's own exceptions. What real EC2 does that moto does not is modelled
here (research/aws-realism.md):

* the transport as coordinator/awshttp does it: the fence's pre-check at botocore's
  ``before-send`` and its final check (``authorize_armed``) once the connection is up, a
  real :class:`~coordinator.awshttp.SendRecord` in the adapter's ``sender.last`` (so the
  adapter's own ``_record_send`` and the fence's overrun rule run as in production), and the
  whole call ended by its deadline on the caller's own clock;
* the kernel send queue: ``sendall`` returning means the guest's kernel took the bytes,
  not that AWS got them. They leave at once, or when a frozen VM resumes; a lost segment is
  retransmitted after the RTO (0.2 s, doubling); a call that gave up closes its socket, and
  with a plain ``close()`` (what awshttp does: :data:`TRANSPORT_ABORTS_INCOMPLETE`) the
  kernel goes on sending, so a request can reach AWS after its call returned, after its
  deadline, after a freeze. AWS may also apply a write after the client gave up, up to
  ``ec2_apply_horizon`` later (``ec2_late``, ``ec2_slow``);
* token buckets per account, region **and API action** (EC2 meters each action on its own):
  Describe* 100 burst / 20 per s each, mutating calls 50 / 5 each, StartInstances 5 / 2,
  CreateTags 100 / 10; another tenant drains them (``ec2_busy``: every action the group uses;
  ``ec2_busy_describe``: the Describe* actions only) at rate / 10 x the refill: when its demand
  exceeds the refill, the bucket runs dry and the refill is shared with it: ``RequestLimitExceeded``;
* IAM is the shipped policy (tests/sim/iam.py) evaluated when AWS processes the request,
  against the tags as IAM sees them: tag writes reach IAM up to ``Scenario.tag_lag`` late;
  ``ec2_denied`` refuses one member's writes;
* DescribeRouteTables is eventually consistent: up to 50 ms behind, up to 1.5 s
  under ``ec2_stale``, when it may also show no default route while one exists;
* CreateRoute on an existing route is ``RouteAlreadyExists``, ReplaceRoute on a
  missing one ``InvalidParameterValue`` ("no route"), a route to a stopped
  instance is ``blackhole``; stop/start take seconds (``stopping``, ``pending``);
* Elastic IPs (egress_ip = follow): one per route table, associated with one
  (network interface, private address); AssociateAddress is a mutating call like a
  route write (its own bucket, late landing, errors, ``ec2_denied``, the policy's group
  tags), DescribeAddresses lags like DescribeRouteTables (up to 50 ms, up to 1.5 s under
  ``ec2_stale``);
* the path to the endpoint: ``ec2_outage`` (every member), ``lost_egress`` and a member
  whose own path went with the Elastic IP on its primary address: the connection never
  comes up (``ConnectTimeoutError`` at the call's deadline), or is refused at once.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

from agent.aws.fence import Fence
from coordinator.awshttp import SendRecord
from tests.sim import iam
from tests.sim.scenario import EC2_STALE_MAX

if TYPE_CHECKING:
    from tests.sim.world import World

ENDPOINT = "https://ec2.sim.amazonaws.com"
LATENCY = (0.004, 0.03)  # one way, client <-> AWS
PROCESSING = (0.005, 0.04)
STALE_BASE = 0.05
RTO = 0.2  # Linux's shortest TCP retransmission timeout; it doubles with each retransmission
RETRANSMISSIONS = 8  # then the kernel would go on for minutes; the simulator delivers
# What coordinator/awshttp does with a call that did not complete by its deadline: it aborts the
# connection (SO_LINGER 0: the kernel drops the queue and sends a reset; issue 17, finding 3), so
# what the kernel still held never reaches AWS. (Before: a plain close(), and the kernel kept
# (re)sending it.) test_differential.py checks this against the real Sender on loopback.
TRANSPORT_ABORTS_INCOMPLETE = True

DESCRIBE_ACTIONS = ("DescribeRouteTables", "DescribeInstances", "DescribeAddresses")
WRITE_ACTIONS = ("ReplaceRoute", "CreateRoute", "AssociateAddress", "CreateTags", "DeleteTags")
WRITE_ACTIONS += ("StopInstances", "StartInstances")
# The writes a takeover needs: while AWS refuses these for the account, nobody can fail over.
TAKEOVER_ACTIONS = ("ReplaceRoute", "CreateRoute", "AssociateAddress")
SPECIFIC_BUCKETS = {"StartInstances": (5.0, 2.0), "CreateTags": (100.0, 10.0)}


def arn(instance: str) -> str:
    return f"arn:aws:ec2:{iam.REGION}:{iam.ACCOUNT}:instance/{instance}"


def bucket_size(op: str) -> tuple[float, float]:
    """(burst, refill per s) of one action's bucket (EC2's published defaults)."""
    if op in SPECIFIC_BUCKETS:
        return SPECIFIC_BUCKETS[op]
    return (100.0, 20.0) if op.startswith("Describe") else (50.0, 5.0)


class Bucket:
    """One action's token bucket (per account and region), refilled continuously.

    ``drain`` is another tenant's demand (requests per s). Above the refill the bucket runs
    dry and stays dry; each refilled token then goes to whoever asks, so one of our requests
    gets one with the chance refill / demand.
    """

    def __init__(self, burst: float, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = burst
        self.at = 0.0
        self.drain = 0.0

    def level(self, now: float) -> float:
        self.tokens = min(self.burst, max(0.0, self.tokens + (now - self.at) * (self.rate - self.drain)))
        self.at = now
        return self.tokens

    def take(self, now: float, luck: float) -> bool:
        if self.level(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return self.drain > 0 and luck < self.rate / max(self.drain, self.rate)

    def dry(self, now: float) -> bool:
        """AWS refuses this action for the account now (dry, and the tenant takes the refill)."""
        return self.level(now) < 1.0 and self.drain >= self.rate


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
    deadline: float = -1.0  # global time the client gives up (as of the check; its clock may stop)
    sent_at: float = -1.0  # sendall returned: the guest's kernel has the bytes
    arrived_at: float = -1.0  # the request reached AWS
    gave_up: float = -1.0  # the client's deadline passed first
    aborted: bool = False  # the client reset the connection: the kernel sends nothing more
    applied_at: float = -1.0
    result: Any = None
    error: tuple[str, str] | None = None  # (code, message)
    reply_at: float = -1.0  # global time the reply reached the guest's kernel
    reply_local: float | None = None  # the caller's clock then
    info: dict[str, Any] = field(default_factory=dict)  # the checker's notes (term, target, ...)


class SimCloud:
    """EC2 state of the whole account: route tables with history, tags, buckets, Elastic IPs."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.routes: dict[str, list[tuple[float, str]]] = {}  # table -> [(applied at, target)], "" = no route
        self.tags = iam.Tags()
        self.throttled_s = 0.0  # time the takeover's write buckets were dry (reported)
        # Elastic IPs: allocation id -> [(applied at, (eni, private address))], ("", "") = unassociated
        self.addresses: dict[str, list[tuple[float, tuple[str, str]]]] = {}
        self.buckets: dict[str, Bucket] = {}
        self.refused: Counter[str] = Counter()  # action -> RequestLimitExceeded answers to the group

    def bucket(self, op: str) -> Bucket:
        if op not in self.buckets:
            self.buckets[op] = Bucket(*bucket_size(op))
        return self.buckets[op]

    def tenants(self) -> None:
        """Set every bucket's drain from the active ``ec2_busy*`` faults (another tenant's demand)."""
        now = self.w.k.now
        for op in DESCRIBE_ACTIONS + WRITE_ACTIONS:
            b = self.bucket(op)
            b.level(now)
            b.drain = 0.0
            for f in self.w.active:
                if f.kind == "ec2_busy" or (f.kind == "ec2_busy_describe" and op in DESCRIBE_ACTIONS):
                    b.drain += f.rate / 10 * b.rate

    def target(self, table: str) -> str:
        return self.routes[table][-1][1]

    def writes_refused(self) -> bool:
        """AWS refuses the account the writes a takeover needs (their buckets are dry) right now:
        the route writes and AssociateAddress, and CreateTags where holder tags are used."""
        now = self.w.k.now
        ops = TAKEOVER_ACTIONS + (("CreateTags",) if self.w.sc.holder_tag else ())
        return any(self.bucket(op).dry(now) for op in ops)

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
        tags = self.tags.ec2(table, self.w.k.now - lag)
        return {"RouteTableId": table, "Routes": routes, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}


class _Events:
    def register(self, *args: Any, **kwargs: Any) -> None:
        """instrument_client's hooks: the simulator records calls itself."""

    register_first = register


class _Meta:
    def __init__(self) -> None:
        self.events = _Events()
        self.service_model = type("ServiceModel", (), {"service_name": "ec2"})()


class SimSender:
    """Stands where the adapter keeps its coordinator.awshttp.Sender: ``last`` is the last call's record."""

    def __init__(self) -> None:
        self.last: SendRecord | None = None


# Whether SendRecord knows when the peer acknowledged the bytes (awshttp fills it once it does).
_ACKED = "acked_at" in {f.name for f in dataclasses.fields(SendRecord)}


class SimEc2Client:
    """One agent's EC2 client: botocore's methods, exceptions and response shapes."""

    def __init__(self, world: World, instance: str, process: str) -> None:
        self.w = world
        self.me = instance
        self.process = process
        self.meta = _Meta()
        self.fence: Fence | None = None
        self.sender = SimSender()

    def attach_fence(self, fence: Fence) -> None:
        self.fence = fence

    # ---------------------------------------------------------------- the wire
    def _request(self, op: str, params: dict[str, Any], write: bool, serve: Callable[[Call], Any]) -> Any:
        w = self.w
        clock = w.clocks[self.me]
        now = clock.monotonic()
        record = SendRecord(started=now, deadline=now + w.sc.timing_of(self.me).ec2_timeout)
        self.sender.last = record
        try:
            return self._exchange(op, params, write, serve, record)
        except BaseException as exc:
            record.error = type(exc).__name__
            raise
        finally:
            record.ended = clock.monotonic()

    def _wait_until(self, deadline: float, done: Callable[[], bool]) -> None:
        """Wait until ``done()`` or until the caller's own clock reaches ``deadline`` (it may stop)."""
        w = self.w
        p = w.k.current
        assert p is not None
        clock = w.clocks[self.me]
        for _ in range(1000):
            left = deadline - clock.monotonic()
            if done() or left <= 0:
                return
            p.wait(max(left / clock.rate, 0.0001), "ec2")

    def _exchange(
        self, op: str, params: dict[str, Any], write: bool, serve: Callable[[Call], Any], record: SendRecord
    ) -> Any:
        w = self.w
        p = w.k.current
        assert p is not None and self.fence is not None
        clock = w.clocks[self.me]
        p.ec2_op = op  # type: ignore[attr-defined]  # an armed freeze may wait for this operation
        self.fence.precheck(op)  # botocore's before-send (agent.aws.ec2.install_fence_hook): signed, not sent
        w.freeze_point(self.me, "ec2_prep", p)
        path = w.ec2_path(self.me)
        if path == "refused":
            p.wait(w.rng2.uniform(0.01, 0.05), "ec2")  # connection refused or reset: nothing is sent
            raise EndpointConnectionError(endpoint_url=ENDPOINT)
        if path:  # no answer to the connection: nothing is sent, the call ends at its deadline
            self._wait_until(record.deadline, lambda: False)
            raise ConnectTimeoutError(endpoint_url=ENDPOINT, error="connect: no answer before the deadline")
        p.wait(0.0005, "ec2")  # the connection is up (kept alive, or connected now)
        run = w.process_run(self.process)
        session = run.agent.coordinator.session if run is not None else None
        call = Call(op, self.me, session.session if session else "", self.process, dict(params), write)
        record.deadline = min(record.deadline, self.fence.authorize_armed())  # FenceRefused: nothing is sent
        call.checked_at = w.k.now
        call.deadline = w.k.now + max(0.0, record.deadline - clock.monotonic()) / clock.rate
        call.info["local_deadline"] = record.deadline
        if write:
            w.checker.authorized(call)
        w.freeze_point(self.me, "ec2_gap", p)  # frozen between awshttp's last deadline check and the send
        p.wait(0.0001, "ec2")
        record.send_started = clock.monotonic()
        record.sent_at = clock.monotonic()  # sendall returned: the guest's kernel took the bytes
        call.sent_at = w.k.now
        call.info["proc"] = p
        w.k.at(w.k.now, lambda: self._transmit(call, serve, 0))  # the guest's kernel, not this process
        w.freeze_point(self.me, "ec2_sent", p)  # a VM frozen now holds the bytes until it resumes
        p.wait(0.0, "ec2")  # the kernel sends them (the event above runs first)
        w.freeze_point(self.me, "ec2_call", p)  # frozen with the request on its way
        self._wait_until(record.deadline, lambda: call.reply_local is not None)
        if _ACKED and call.info.get("acked_local") is not None:  # awshttp counts a request sent when acknowledged
            record.acked_at = call.info["acked_local"]  # type: ignore[attr-defined]
        if call.reply_local is None or call.reply_local > record.deadline:
            call.gave_up = w.k.now
            call.aborted = TRANSPORT_ABORTS_INCOMPLETE
            raise ReadTimeoutError(endpoint_url=ENDPOINT)
        if call.error is not None:
            code, message = call.error
            raise ClientError({"Error": {"Code": code, "Message": message}}, op)
        return call.result

    def _transmit(self, call: Call, serve: Callable[[Call], Any], attempt: int) -> None:
        """The guest's kernel sends the request (again): now, when the VM resumes, or after a loss."""
        w = self.w
        if attempt > 0:  # a retransmission (the first transmission left with sendall, or on resume)
            if call.aborted:
                return  # reset: the kernel dropped what it still held
            local_deadline = call.info.get("local_deadline", float("inf"))
            if TRANSPORT_ABORTS_INCOMPLETE and w.clocks[self.me].monotonic() > local_deadline:
                # TCP_USER_TIMEOUT (the time left, set before the write): the kernel gives up retransmitting
                # by the deadline on its own clock, the process frozen or not. (A first transmission held
                # by a VM pause still leaves on resume: the writer, giving up late, reports it.)
                return
        if w.vm_frozen[self.me]:
            w.on_thaw(self.me, lambda: self._transmit(call, serve, attempt))
            return
        if attempt < RETRANSMISSIONS and w.rng2.random() < w.loss_rate(self.me):
            w.k.at(w.k.now + RTO * 2**attempt, lambda: self._transmit(call, serve, attempt + 1))
            return
        w.k.at(w.k.now + w.rng.uniform(*LATENCY), lambda: self._arrive(call, serve))

    def _arrive(self, call: Call, serve: Callable[[Call], Any]) -> None:
        w = self.w
        if call.arrived_at >= 0:
            return
        call.arrived_at = w.k.now
        if _ACKED:  # the ACK reaches the caller's kernel one way later
            clock = w.clocks[self.me]
            w.k.at(w.k.now + w.rng2.uniform(*LATENCY), lambda: call.info.setdefault("acked_local", clock.monotonic()))
        if w.faulty("ec2_outage"):
            return  # the endpoint went away with the request: no answer
        if call.write:
            w.checker.arrived(call)
        self._receive(call, serve)

    def _reply(self, call: Call, at: float) -> None:
        """The answer leaves AWS now and reaches the caller's kernel at ``at`` (later if lost or frozen)."""
        w = self.w
        clock = w.clocks[self.me]
        proc = call.info["proc"]
        lost = 0
        while lost < RETRANSMISSIONS and w.rng2.random() < w.loss_rate(self.me):
            lost += 1
        at += RTO * (2**lost - 1)

        def deliver() -> None:
            if call.reply_local is not None:
                return
            if w.vm_frozen[self.me]:
                w.on_thaw(self.me, deliver)
                return
            call.reply_at = w.k.now
            call.reply_local = clock.monotonic()
            proc.wake_at(w.k.now)

        w.k.at(at, deliver)

    def _iam(self, call: Call) -> bool:
        """The shipped policy, on the tags IAM sees now; a refusal is UnauthorizedOperation."""
        w = self.w
        now = w.k.now
        op, params = call.op, call.params
        extra: dict[str, str | list[str]] = {}
        if op in ("ReplaceRoute", "CreateRoute"):
            names = [params["RouteTableId"]]
        elif op in ("CreateTags", "DeleteTags"):
            names = list(params["Resources"])
            tags = params.get("Tags", [])
            for t in tags:
                extra[f"aws:RequestTag/{t['Key']}"] = str(t.get("Value", ""))
            extra["aws:TagKeys"] = [str(t["Key"]) for t in tags]
        elif op in ("StopInstances", "StartInstances"):
            names = list(params["InstanceIds"])
        elif op == "AssociateAddress":
            names = [params["AllocationId"], params.get("NetworkInterfaceId") or params.get("InstanceId", "")]
        else:
            names = ["*"]
        resources = [(r, w.cloud.tags.iam(r, now) if r != "*" else {}) for r in names]
        ok, refused = iam.decide(w.sc.holder_tag, op, resources, arn(self.me), extra)
        if not ok:
            w.checker.refused_by_iam(call, refused, resources)
        return ok

    def _receive(self, call: Call, serve: Callable[[Call], Any]) -> None:
        """AWS got the request: throttling, IAM and errors now; the write applied a little later."""
        w = self.w
        now = w.k.now
        back = w.rng.uniform(*LATENCY)
        if not w.cloud.bucket(call.op).take(now, w.rng2.random()):
            w.cloud.refused[call.op] += 1
            call.error = ("RequestLimitExceeded", "Request limit exceeded.")
            self._reply(call, now + back)
            return
        if not self._iam(call):
            call.error = ("UnauthorizedOperation", "You are not authorized to perform this operation.")
            self._reply(call, now + back)
            return
        f = w.faulty("ec2_errors")
        if f is not None and w.rng.random() < f.rate:
            call.error = ("InternalError", "An internal error has occurred")
            self._reply(call, now + back)
            if not (call.write and w.rng.random() < 0.5):
                return
        elif call.write and w.faulty("ec2_denied", self.me):
            call.error = ("UnauthorizedOperation", "You are not authorized to perform this operation.")
            self._reply(call, now + back)
            return
        processing = w.rng.uniform(*PROCESSING)
        if w.faulty("ec2_slow"):
            processing = w.rng.uniform(0.1, 1.0) * max(0.05, call.deadline - now) * 1.5
        if call.write and w.faulty("ec2_late"):
            horizon = w.sc.timing_of(self.me).ec2_apply_horizon
            processing = w.rng.uniform(0.0, max(0.0, call.deadline - now) + horizon)
        failed = call.error is not None

        def apply() -> None:
            try:
                call.result = serve(call)
                if call.write:
                    call.applied_at = w.k.now
                    w.checker.applied(call)
            except ClientError as exc:
                err = exc.response["Error"]
                call.error = (str(err["Code"]), str(err["Message"]))
            if not failed:
                self._reply(call, w.k.now + back)

        w.k.at(now + processing, apply)

    # ---------------------------------------------------------- the operations
    def describe_route_tables(self, **params: Any) -> dict[str, Any]:
        def serve(call: Call) -> dict[str, Any]:
            stale = self.w.faulty("ec2_stale") is not None
            out = []
            for table in params["RouteTableIds"]:
                if table not in self.w.cloud.routes:
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

    def _tag_write(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        def serve(call: Call) -> dict[str, Any]:
            w = self.w
            lag = w.rng2.uniform(0.0, w.sc.tag_lag) if w.sc.tag_lag else 0.0
            for resource in params["Resources"]:
                for tag in params.get("Tags", []):
                    value = str(tag.get("Value", "")) if op == "CreateTags" else None
                    w.cloud.tags.write(resource, str(tag["Key"]), value, w.k.now, w.k.now + lag)
                    w.checker.tagged(call, resource, str(tag["Key"]), value, lag)
            return {}

        result: dict[str, Any] = self._request(op, params, True, serve)
        return result

    def create_tags(self, **params: Any) -> dict[str, Any]:
        return self._tag_write("CreateTags", params)

    def delete_tags(self, **params: Any) -> dict[str, Any]:
        return self._tag_write("DeleteTags", params)

    def describe_addresses(self, **params: Any) -> dict[str, Any]:
        def serve(call: Call) -> dict[str, Any]:
            stale = self.w.faulty("ec2_stale") is not None
            out = []
            for alloc in params["AllocationIds"]:
                if alloc not in self.w.cloud.addresses:
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
            tags = self.w.cloud.tags
            instances = [
                {
                    "InstanceId": i,
                    "State": {"Name": state[i]},
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.ec2(i, self.w.k.now - STALE_BASE).items()],
                }
                for i in params["InstanceIds"]
                if i in state
            ]
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
