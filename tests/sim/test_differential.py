"""Differential checks: the simulator's doubles behave like the real backends.

* The same random sequences of the coordinator's store operations (its item
  shapes and its exact conditions: item absent, version, session+state+version,
  owner+owner_session+term) run on :class:`MemoryStore` and on :class:`DynamoStore`
  against moto server and against dynalite: every write must have the same
  outcome (applied / ConditionFailed) and every read the same items.
* The same random EC2 operations run through the real adapter (agent.aws.ec2.Ec2, with
  a fence) on the simulator's boto3-level EC2 (tests/sim/aws.py) and on moto's in-process
  ``mock_aws``: same results of point_route (ReplaceRoute, or CreateRoute when there is no
  route), DescribeRouteTables targets, and Stop/Start outcomes.

Known moto gaps, not compared: moto's stop/start are instant (the fake has
stopping/pending for seconds: states are compared once the fake's transition
is over); moto's route state is always ``active`` (the fake reports
``blackhole`` when the target is not running, as AWS does: point_route results
are compared only while the target runs); DescribeRouteTables in moto is never
stale (the fake is, for up to 50 ms without faults: each operation waits past it); moto's
CreateRoute over an existing route overwrites it where AWS answers RouteAlreadyExists (the
model answers as AWS does; the operations here never send a CreateRoute over a route).
"""

from __future__ import annotations

import random
import time
from typing import Any

import boto3
import pytest
from moto import mock_aws

from agent.aws.ec2 import Ec2, Ec2Error
from agent.aws.fence import Fence, FenceTiming
from agent.config import Member
from coordinator.dynamo import DynamoSettings, DynamoStore, init_table
from coordinator.items import (
    MEMBER_STATES,
    RESTART_PHASES,
    Attrs,
    Health,
    MemberItem,
    RequestItem,
    RestartItem,
    RouteItem,
    encode_member,
    encode_request,
    encode_restart,
    encode_route,
)
from coordinator.memory import MemoryStore
from coordinator.store import ConditionFailed, Expect, Store
from tests.sim.aws import SimEc2Client
from tests.sim.kernel import Proc
from tests.sim.scenario import START_DELAY, STOP_DELAY, Scenario
from tests.sim.world import World

pytestmark = pytest.mark.integration

SEQUENCES = 4
OPS = 60
IGNORED = {"group", "updated_at", "gc_at"}


# ------------------------------------------------------------------ store
def _op(rng: random.Random, n: int) -> tuple[str, Attrs | str, Expect | None]:
    """One of the coordinator's operations, with values from small domains so conditions both hold and fail."""
    version = rng.randint(1, 4)
    cond_version = rng.randint(1, 4)
    kind = rng.choice(("member", "member", "route", "route", "restart", "request", "get", "query"))
    who = rng.choice(("i-a", "i-b"))
    session = rng.choice(("s1", "s2"))
    if kind == "get":
        return "get", rng.choice(("member#i-a", "member#i-b", "route#rtb-0", "restart#i-a", "drain#i-a")), None
    if kind == "query":
        return "query", "", None
    expect_kind = rng.choice(("absent", "version", "owned"))
    if kind == "member":
        attrs = encode_member(
            MemberItem(
                who, session, rng.choice(MEMBER_STATES), version, f"t{n}", 1000,
                Health(rng.random() < 0.7, {"ip_forward": True}, ("i-b",)),
                expired_by=rng.choice(("", "i-b")), draining=rng.random() < 0.3,
            )
        )  # fmt: skip
        owned = Expect.matches(session=session, state="alive", version=cond_version)
    elif kind == "route":
        owner = rng.choice(("", "i-a", "i-b"))
        attrs = encode_route(
            RouteItem("rtb-0", owner, session if owner else "", rng.randint(0, 3), version, f"t{n}", "i-a")
        )
        owned = Expect.matches(owner=who, owner_session=session, term=rng.randint(0, 3))
    elif kind == "restart":
        owner = rng.choice(("", "i-a", "i-b"))
        attrs = encode_restart(
            RestartItem(
                "i-a", owner, session if owner else "", rng.randint(0, 3), version, f"t{n}",
                rng.choice(RESTART_PHASES), rng.randint(0, 3), 300_000,
            )
        )  # fmt: skip
        owned = Expect.matches(owner=who, owner_session=session, term=rng.randint(0, 3))
    else:
        attrs = encode_request(RequestItem("drain#i-a", "i-a", rng.choice(("", "on")), version, f"t{n}"))
        owned = Expect.matches(version=cond_version)
    expect = {"absent": Expect.item_absent(), "version": Expect.matches(version=cond_version), "owned": owned}
    return "put", attrs, expect[expect_kind]


def _norm(row: Attrs | None) -> Attrs | None:
    if row is None:
        return None
    return {k: v for k, v in sorted(row.items()) if k not in IGNORED and v is not None and v != ""}


def _play(store: Store, group: str, seed: int) -> list[Any]:
    rng = random.Random(seed)
    out: list[Any] = []
    for n in range(OPS):
        op, arg, expect = _op(rng, n)
        if op == "put":
            assert isinstance(arg, dict) and expect is not None
            try:
                store.put_item(group, arg, expect)
                out.append(("put", arg["item"], "applied"))
            except ConditionFailed:
                out.append(("put", arg["item"], "ConditionFailed"))
        elif op == "get":
            assert isinstance(arg, str)
            out.append(("get", arg, _norm(store.get_item(group, arg))))
        else:
            out.append(("query", [_norm(r) for r in store.query_group(group)]))
    out.append(("final", [_norm(r) for r in store.query_group(group)]))
    return out


def _compare(endpoint: str, name: str) -> None:
    settings = DynamoSettings(table=f"nat-ha-diff-{name}", endpoint_url=endpoint, read_timeout_s=5, connect_timeout_s=5)
    init_table(settings)
    dynamo = DynamoStore(settings)
    for seed in range(SEQUENCES):
        expected = _play(MemoryStore(), f"g{seed}", seed)
        got = _play(dynamo, f"g{seed}", seed)
        for i, (a, b) in enumerate(zip(expected, got, strict=True)):
            assert a == b, f"{name} seed {seed} op {i}: memory {a} != {name} {b}"
        outcomes = {x[2] for x in expected if x[0] == "put"}
        assert outcomes == {"applied", "ConditionFailed"}, "each sequence exercises both outcomes"


def test_memory_store_agrees_with_moto_server(moto_endpoint: str) -> None:
    _compare(moto_endpoint, "moto")


def test_memory_store_agrees_with_dynalite(dynalite_endpoint: str) -> None:
    _compare(dynalite_endpoint, "dynalite")


# -------------------------------------------------------------------- EC2
def _ec2_ops(seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    ops = [("point", "a"), ("point", "b"), ("describe", ""), ("states", ""), ("stop", "b"), ("start", "b")]
    ops += [("delete", "")] * 1
    return [rng.choice(ops) for _ in range(40)]


def _fence(clock: Any) -> Fence:
    return Fence(lambda: 60.0, clock, FenceTiming(5.0))  # a long lease: the differential is about EC2


def _moto_side(seed: int) -> list[Any]:
    with mock_aws():
        admin = boto3.client("ec2", region_name="us-east-1")
        vpc = admin.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = admin.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        image = admin.describe_images()["Images"][0]["ImageId"]
        ids = [
            i["InstanceId"]
            for i in admin.run_instances(ImageId=image, MinCount=2, MaxCount=2, SubnetId=subnet)["Instances"]
        ]
        rt = admin.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        admin.create_route(RouteTableId=rt, DestinationCidrBlock="0.0.0.0/0", InstanceId=ids[0])
        names = {"a": ids[0], "b": ids[1]}
        ec2 = Ec2("us-east-1", client=boto3.client("ec2", region_name="us-east-1"),
                  members={i: Member(i) for i in ids}, fence=_fence(time.monotonic))  # fmt: skip
        out: list[Any] = []
        for op, who in _ec2_ops(seed):
            out.append(_apply(op, names.get(who, ""), names, rt, ec2, admin))
        return [_rename(x, {v: k for k, v in names.items()}) for x in out]


def _apply(op: str, inst: str, names: dict[str, str], rt: str, ec2: Any, admin: Any) -> Any:
    try:
        if op == "point":
            running = ec2.instance_states([inst]).get(inst) == "running"
            done = ec2.point_route(rt, inst)
            return ("point", inst, done if running else "?", ec2.routes([rt])[rt].target)
        if op == "describe":
            return ("describe", ec2.routes([rt])[rt].target)
        if op == "states":
            states = ec2.instance_states(sorted(names.values()))
            return ("states", tuple(states[names[k]] for k in sorted(names)))
        if op == "stop":
            ec2.tag_stop_by(inst, STOPPER)  # IAM lets a member stop an instance only so tagged (issue 17)
            ec2.stop(inst)
            return ("stop", inst, ec2.instance_states([inst])[inst])
        if op == "start":
            ec2.start(inst)
            return ("start", inst, ec2.instance_states([inst])[inst])
        if ec2.routes([rt])[rt].state == "missing":
            return ("delete", "missing already")
        if admin is not None:
            admin.delete_route(RouteTableId=rt, DestinationCidrBlock="0.0.0.0/0")
        else:
            ec2.w.cloud.routes[rt].append((ec2.w.k.now, ""))
            ec2.proc.wait(0.1)  # past the model's staleness window
        return ("delete", ec2.routes([rt])[rt].state)
    except Ec2Error as exc:
        return (op, inst, "error", exc.code)


STOPPER = "arn:aws:ec2:sim:000000000000:instance/i-a"  # the caller on both sides (moto does not check)


def _rename(x: Any, names: dict[str, str]) -> Any:
    if isinstance(x, str):
        return names.get(x, x)
    if isinstance(x, (list, tuple)):
        return type(x)(_rename(v, names) for v in x)
    return x


class _Settled:
    """The real adapter on the simulator's EC2, waiting out transitions and staleness after each call."""

    def __init__(self, world: World, proc: Proc, me: str) -> None:
        clock = world.clocks[me]
        self.inner = Ec2("sim", client=SimEc2Client(world, me, proc.name), members={i: Member(i) for i in world.state},
                         fence=_fence(clock.monotonic))  # fmt: skip
        self.w = world
        self.proc = proc

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.inner, name)

        def settled(*args: Any, **kwargs: Any) -> Any:
            result = call(*args, **kwargs)
            if name in ("stop", "start"):
                self.proc.wait((STOP_DELAY if name == "stop" else START_DELAY) + 0.1)
            self.proc.wait(0.1)
            return result

        return settled


def _sim_side(seed: int) -> list[Any]:
    names = {"a": "i-a", "b": "i-b"}
    sc = Scenario(seed, ("i-a", "i-b"), {"i-a": ("rtb-0",), "i-b": ()}, {"i-a": 1.0, "i-b": 1.0}, (), holder_tag=False)
    world = World(sc)
    world.start_agent = lambda iid, why: None  # type: ignore[method-assign]  # EC2 only: no agent boots
    # This compares EC2 behaviour only: nobody holds a lease here, so the checker stays out.
    world.checker.authorized = lambda call: None  # type: ignore[method-assign]
    world.checker.sent = lambda call: None  # type: ignore[method-assign]
    world.checker.stopped = lambda call, target: None  # type: ignore[method-assign]
    out: list[Any] = []

    def body(p: Proc) -> None:
        ec2 = _Settled(world, p, "i-a")
        for op, who in _ec2_ops(seed):
            out.append(_apply(op, names.get(who, ""), names, "rtb-0", ec2, None))

    world.k.spawn("i-a#1", body)
    world.k.run_until(10_000)
    world.k.shutdown()
    return [_rename(x, {"i-a": "a", "i-b": "b", "rtb-0": "rt"}) for x in out]


@pytest.mark.parametrize("seed", range(3))
def test_simulated_ec2_agrees_with_moto_through_the_real_adapter(seed: int) -> None:
    moto = _moto_side(seed)
    sim = _sim_side(seed)
    assert sim == moto


# -------------------------------------------------- the transport (coordinator/awshttp.py)
# The simulator cannot run awshttp (it has no sockets): tests/sim/aws.py models it. These run the
# real transport on loopback and the model side by side: the fence's checks (botocore's before-send
# pre-check, the final check once the connection is up, one write per check), the deadline, what
# SendRecord says was sent, and what the kernel does with a request whose call gave up.
FENCE_CASES = ("write", "short_lease", "outside_the_fence", "frozen_before_the_send", "slow_connect", "read")


def _fence_case(case: str, ec2: Any, lease: list[float], freeze: Any) -> tuple[str, bool]:
    """Run one case through an adapter; returns (what happened, the fence saw an overrun)."""
    from agent.aws.fence import FenceRefused

    overruns_before = ec2.fence.overruns
    lease[0] = {"short_lease": 0.03, "frozen_before_the_send": 0.4, "slow_connect": 0.3}.get(case, 30.0)
    try:
        if case == "read":
            ec2.routes(["rtb-0"])
        elif case == "outside_the_fence":  # a write nobody armed: botocore's before-send refuses it
            ec2.client.replace_route(RouteTableId="rtb-0", DestinationCidrBlock="0.0.0.0/0", InstanceId="i-b")
        else:
            freeze(case)
            ec2.point_route("rtb-0", "i-b")
        outcome = "sent"
    except FenceRefused as exc:
        kind = "no permit" if "armed" in exc.reason else "used" if "used" in exc.reason else "lease"
        outcome = f"refused ({kind})"
    except Ec2Error as exc:
        outcome = f"error ({'timeout' if 'Timeout' in exc.code else exc.code})"
    return outcome, ec2.fence.overruns > overruns_before


def _production_fence(url: str) -> list[tuple[str, str, bool]]:
    from agent.aws.fence import Fence, FenceTiming
    from tests.scripted_http import PausingSocket

    lease = [30.0]
    t0 = time.monotonic()
    fence = Fence(lambda: lease[0] - (time.monotonic() - t0), time.monotonic, FenceTiming(0.6))
    ec2 = Ec2("us-east-1", url, timeout=0.6, fence=fence, members={"i-b": Member("i-b")})
    assert ec2.sender is not None
    real_connection = ec2.sender._connection

    def freeze(case: str) -> None:
        nonlocal t0
        t0 = time.monotonic()

        def connection(deadline: float) -> Any:
            if case == "slow_connect":
                time.sleep(0.5)  # the lease runs out while connecting: the final check refuses
            conn = real_connection(deadline)
            if case == "frozen_before_the_send":  # frozen after the last check, handing the bytes over
                conn.sock = PausingSocket(conn.sock)
            return conn

        ec2.sender.close()  # type: ignore[union-attr]
        ec2.sender._connection = connection  # type: ignore[union-attr,method-assign]

    out = []
    for case in FENCE_CASES:
        outcome, overran = _fence_case(case, ec2, lease, freeze)
        ec2.sender._connection = real_connection  # type: ignore[method-assign]
        out.append((case, outcome, overran))
    return out


def _simulated_fence() -> list[tuple[str, str, bool]]:
    from agent.aws.fence import Fence, FenceTiming
    from tests.sim.scenario import Fault

    sc = Scenario(1, ("i-a", "i-b"), {"i-a": ("rtb-0",), "i-b": ()}, {"i-a": 1.0, "i-b": 1.0}, (), holder_tag=False)
    world = World(sc)
    world.start_agent = lambda iid, why: None  # type: ignore[method-assign]  # EC2 only: no agent boots
    world.checker.authorized = lambda call: None  # type: ignore[method-assign]  # no lease holder here
    clock = world.clocks["i-a"]
    lease = [30.0]
    t0 = [clock.monotonic()]
    fence = Fence(lambda: lease[0] - (clock.monotonic() - t0[0]), clock.monotonic, FenceTiming(0.6))
    client = SimEc2Client(world, "i-a", "i-a#1")
    ec2 = Ec2("sim", client=client, members={"i-b": Member("i-b")}, fence=fence)
    ec2.sender = client.sender  # type: ignore[assignment]
    out: list[tuple[str, str, bool]] = []

    def freeze(case: str) -> None:
        t0[0] = clock.monotonic()
        point = {"frozen_before_the_send": "ec2_gap", "slow_connect": "ec2_prep"}.get(case)
        if point:
            world.armed["i-a"] = [Fault("hang", 0.0, 0.7 if point == "ec2_gap" else 0.5, "i-a", point=point)]

    def body(p: Proc) -> None:
        for case in FENCE_CASES:
            outcome, overran = _fence_case(case, ec2, lease, freeze)
            out.append((case, outcome, overran))
            p.wait(1.0)

    world.k.spawn("i-a#1", body)
    world.k.run_until(60)
    world.k.shutdown()
    return out


def test_the_fence_decides_alike_on_the_real_transport_and_in_the_simulator() -> None:
    from tests.scripted_http import scripted_servers

    body = b'<ReplaceRouteResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><return>true</return></ReplaceRouteResponse>'
    describe = (
        b'<DescribeRouteTablesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><routeTableSet><item>'
        b"<routeTableId>rtb-0</routeTableId><routeSet><item><destinationCidrBlock>0.0.0.0/0</destinationCidrBlock>"
        b"<instanceId>i-b</instanceId><state>active</state></item></routeSet></item></routeTableSet>"
        b"</DescribeRouteTablesResponse>"
    )

    def answer(request: bytes) -> bytes:
        data = describe if b"DescribeRouteTables" in request else body
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(data) + data

    with scripted_servers() as make:
        server = make([answer] * 20)
        production = _production_fence(server.url)
    simulated = _simulated_fence()
    assert simulated == production
    seen = dict((case, (outcome, overran)) for case, outcome, overran in production)
    assert seen["write"] == ("sent", False) and seen["read"] == ("sent", False)
    assert seen["short_lease"][0] == "refused (lease)" and seen["outside_the_fence"][0] == "refused (no permit)"
    assert seen["slow_connect"][0] == "refused (lease)" and seen["frozen_before_the_send"][1]


class _StalledPeer:
    """A loopback peer that takes almost nothing (a tiny receive buffer) and reads nothing for ``hold``
    seconds: the request's bytes stay in the client kernel's send queue, unacknowledged, after sendall
    returned. Then it reads what reaches it: the whole request, or the part before a reset."""

    def __init__(self, hold: float) -> None:
        import socket
        import threading

        self.hold = hold
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(5)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = b""
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            self.done.set()
            return
        with conn:
            time.sleep(self.hold)
            conn.settimeout(2)
            for _ in range(10_000):  # bounded: the request is 40 KB
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    break  # reset
                if not chunk:
                    break
                self.received += chunk
        self.sock.close()
        self.done.set()

    def complete(self, body: bytes) -> bool:
        return self.done.wait(5) and self.received.endswith(body)


def _give_up_on_a_stalled_peer() -> tuple[Any, bool]:
    """A 40-KB request to a stalled peer, its deadline 0.3 s: the SendRecord, and whether the peer
    got the complete request (after the call gave up and closed the connection)."""
    from botocore.awsrequest import AWSRequest

    from coordinator.awshttp import Sender

    peer = _StalledPeer(hold=1.0)
    body = b"Action=ReplaceRoute&" + b"x" * 40_000
    request = AWSRequest(method="POST", url=peer.url + "/", data=body).prepare()
    sender = Sender(peer.url, timeout=0.3)
    with pytest.raises(Exception, match="Read timeout"):
        sender.send(request, time.monotonic() + 0.3)
    return sender.last, peer.complete(body)


def test_the_kernel_send_queue_as_the_simulator_models_it() -> None:
    """sendall returned in time, the call gave up at its deadline, and the request still reached the
    peer (the kernel kept sending after a plain close) - unless awshttp aborts, which the simulator's
    TRANSPORT_ABORTS_INCOMPLETE must then say; and the model delivers a held request late the same way."""
    from tests.sim import aws as simaws
    from tests.sim.scenario import Fault

    record, delivered = _give_up_on_a_stalled_peer()
    assert record.sent_at is not None and record.sent_at <= record.deadline  # "sent" in time by sendall
    assert delivered == (not simaws.TRANSPORT_ABORTS_INCOMPLETE)
    # The model: a VM frozen right after sendall holds the bytes (its first transmission); the call gives
    # up. They leave on resume either way (a reset cannot call back what the device queue holds), and
    # the writer, giving up late, reports the write: the run stays clean. What the abort stops in the
    # model, as on loopback, is what the kernel would send after the deadline (retransmissions: seed 43).
    from tests.sim.scenario import draw
    from tests.sim.world import run

    freeze = Fault("vm_freeze", 1.0, 3.0, "i-a", point="ec2_sent")
    r = run(Scenario(1, ("i-a", "i-b"), {"i-a": ("rtb-0",), "i-b": ("rtb-1",)}, {"i-a": 1.0, "i-b": 1.0},
                     (freeze,), holder_tag=False))  # fmt: skip
    assert r.late_arrivals >= 1 and r.ok, r.report()
    r = run(draw(43))  # net_loss: a ReplaceRoute retransmitted past its deadline
    assert (r.late_arrivals >= 1) == (not simaws.TRANSPORT_ABORTS_INCOMPLETE), r.report()


def test_issue_17_finding_3_a_call_that_gave_up_sends_nothing_more() -> None:
    """Finding 3 on the real transport: once a call has given up, the rest of its request must not
    reach AWS (awshttp aborts the connection: SO_LINGER 0; before, the peer read the whole request),
    and the request, not acknowledged, is in doubt rather than "sent"."""
    record, delivered = _give_up_on_a_stalled_peer()
    assert not delivered
    assert record.in_doubt and record.acked_at is None
