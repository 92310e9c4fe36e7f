"""Each route table's Elastic IP follows the table: what the fake internet sees (issue 14).

The egress lab (agent.lab.netlab, ``egress_ip="follow"``) puts an internet gateway between the
NATs and the fake internet: a stateless 1:1 translation between a private address and the
public address moto associates with it, dropping whatever has none. Every private host pings
with a pattern of its own, and the fake internet records the source address of every echo
request (agent.lab.egresswatch), so each test sees which address each subnet's traffic left
with: its own table's EIP, another table's, or none (dropped).

test_gateway_follows_moto_associations drives moto by hand (stand-in agents that do nothing)
and shows the lab itself: the mapping, the drop, and a wrong association that the record
exposes (the checks the fault tests rely on can fail). The fault tests run real agents.
"""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from agent.lab import netlab
from agent.lab.netlab import NetLab, Ping, sh

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

VICTIM = 0


def sources(lab: NetLab, since: float, until: float = float("inf")) -> dict[int, Counter[str]]:
    """Private host -> how many of its echo requests arrived with each source address, in [since, until)."""
    out: dict[int, Counter[str]] = {}
    for a in lab.arrivals(since):
        if a.t < until and a.host >= 0:
            out.setdefault(a.host, Counter())[a.source] += 1
    return out


def wrong(lab: NetLab, since: float, until: float = float("inf")) -> dict[int, Counter[str]]:
    """Echo requests that arrived with an address other than their own table's EIP."""
    return {
        host: bad
        for host, seen in sources(lab, since, until).items()
        if (bad := Counter({src: n for src, n in seen.items() if src != lab.eip(host)}))
    }


def first_right(lab: NetLab, host: int, since: float) -> float | None:
    """When the first echo request of ``host`` with its own EIP arrived at or after ``since``."""
    times = [a.t for a in lab.arrivals(since, host) if a.source == lab.eip(host)]
    return min(times) if times else None


@pytest.fixture  # one test's: gone before the module's other lab comes up (its moto server and reconciler poll)
def standin_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetLab]:
    """Two NATs with the internet gateway and agents that do nothing: moto is driven by the test."""
    reason = netlab.skip_reason()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("standin")
    the_lab = NetLab(workdir, n=2, egress_ip="follow", agent_command=lambda _lab, _i, _nat: ["sleep", "600"])
    names: list[str] = []
    try:
        the_lab.__enter__()
        names = list(the_lab.topo.made)
        yield the_lab
    finally:
        the_lab.close()
        left = sh("ip", "netns", "list", check=False).stdout
        assert not any(n in left for n in names), f"namespaces left behind: {left}"


def _ping_all(lab: NetLab, seconds: float) -> list[Ping]:
    return [lab.ping(i, seconds) for i in range(lab.n)]


def test_gateway_follows_moto_associations(standin_lab: NetLab) -> None:
    lab = standin_lab
    a, b = lab.nats
    ec2 = lab.client  # used on the inet thread only

    def call(fn_name: str, **kwargs: object) -> object:
        return lab.inet(lambda: getattr(ec2("ec2"), fn_name)(**kwargs))

    # At home: each subnet leaves with its own table's EIP through its own NAT.
    assert lab.wait_for(lambda: lab.egress_at_home() and lab.data_plane_at_home(), 10)
    t0 = time.time()
    assert [p.result().lost for p in _ping_all(lab, 1.5)] == [0, 0]
    assert sources(lab, t0) == {0: Counter({lab.eip(0): 15}), 1: Counter({lab.eip(1): 15})}

    # Table a moves to NAT b, route and EIP: the same address, through the other NAT.
    t1 = time.time()
    call("replace_route", RouteTableId=a.route_table, DestinationCidrBlock="0.0.0.0/0",
         NetworkInterfaceId=lab.enis[b.instance_id])  # fmt: skip
    call("associate_address", AllocationId=lab.allocations[0], NetworkInterfaceId=lab.enis[b.instance_id],
         PrivateIpAddress=lab.topo.egress_address(1, 0), AllowReassociation=True)  # fmt: skip
    assert lab.wait_for(lambda: lab.topo.igw_map().get(lab.topo.egress_address(1, 0)) == lab.eip(0), 5)
    assert lab.route_targets()[a.route_table] == b.instance_id
    assert [(e.data["private"], e.data["previous"]) for e in lab.events_since(t1, "eip")] == [
        (lab.topo.egress_address(1, 0), lab.topo.egress_address(0, 0))
    ]
    t2 = time.time()
    assert lab.ping(0, 1.0).result().lost == 0
    assert sources(lab, t2) == {0: Counter({lab.eip(0): 10})}

    # The EIP back on NAT a's address while the route stays at b: nothing has a public address
    # for NAT b's SNAT address, so the gateway drops subnet a's traffic rather than send it as another.
    call("associate_address", AllocationId=lab.allocations[0], NetworkInterfaceId=lab.enis[a.instance_id],
         PrivateIpAddress=lab.topo.egress_address(0, 0), AllowReassociation=True)  # fmt: skip
    assert lab.wait_for(lambda: lab.topo.igw_map().get(lab.topo.egress_address(0, 0)) == lab.eip(0), 5)
    dropped, t3 = lab.topo.igw_dropped(), time.time()
    assert lab.ping(0, 1.0).result().lost == 10
    assert sources(lab, t3) == {} and lab.topo.igw_dropped() - dropped == 10

    # A wrong association (table b's EIP on the address NAT b uses for table a) shows in the
    # record as subnet a leaving with subnet b's address: the fault tests' check can fail.
    call("associate_address", AllocationId=lab.allocations[1], NetworkInterfaceId=lab.enis[b.instance_id],
         PrivateIpAddress=lab.topo.egress_address(1, 0), AllowReassociation=True)  # fmt: skip
    assert lab.wait_for(lambda: lab.topo.igw_map().get(lab.topo.egress_address(1, 0)) == lab.eip(1), 5)
    t4 = time.time()
    assert lab.ping(0, 1.0).result().lost == 0
    assert wrong(lab, t4) == {0: Counter({lab.eip(1): 10})}

    # moto, like AWS, refuses an address the network interface does not have.
    with pytest.raises(Exception, match="InvalidParameterValue"):
        call("associate_address", AllocationId=lab.allocations[1], NetworkInterfaceId=lab.enis[b.instance_id],
             PrivateIpAddress=lab.topo.egress_address(0, 1), AllowReassociation=True)  # fmt: skip

    # Home again (route and both EIPs) for whatever runs next.
    call("replace_route", RouteTableId=a.route_table, DestinationCidrBlock="0.0.0.0/0", InstanceId=a.instance_id)
    for t, nat in enumerate(lab.nats):
        call("associate_address", AllocationId=lab.allocations[t], NetworkInterfaceId=lab.enis[nat.instance_id],
             PrivateIpAddress=lab.topo.egress_address(t, t), AllowReassociation=True)  # fmt: skip
    assert lab.wait_for(lambda: lab.egress_at_home() and lab.data_plane_at_home(), 5)


# ----------------------------------------------------------------- real agents
def _wait_event(lab: NetLab, since: float, kind: str, timeout: float, **match: str) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in lab.events_since(since, kind):
            if all(e.data.get(k) == v for k, v in match.items()):
                return e.t
        time.sleep(0.05)
    return None


def _moved(lab: NetLab, since: float, timeout: float, home: bool) -> float | None:
    """When the victim's route table and its EIP had both moved (away from home, or back home) after ``since``."""
    return lab.moved(VICTIM, since, timeout, home)


def _check_egress(lab: NetLab, t_start: float, t_fault: float, t_end: float) -> None:
    """Every subnet's traffic with its own EIP before the fault and at the end; never another's."""
    before = sources(lab, t_start, t_fault)
    assert set(before) == set(range(lab.n)), f"a subnet sent nothing before the fault: {before}"
    assert not wrong(lab, t_start, t_fault), wrong(lab, t_start, t_fault)
    bad = wrong(lab, t_fault, t_end)
    assert not bad, f"traffic left with another subnet's or a NAT's address: {bad}"
    for host in range(lab.n):
        assert first_right(lab, host, t_end - 1.0) is not None, f"subnet {host}: nothing with its EIP at the end"


def _failover_and_back(lab: NetLab, inject: str) -> None:
    victim = lab.nats[VICTIM]
    pings = _ping_all(lab, 60)  # stopped early, after the fail-back
    t_start = time.time()
    time.sleep(1.0)
    t_fault = time.time()
    if inject == "crash":
        lab.crash(VICTIM)
    else:
        lab.hang(VICTIM)
    moved = _moved(lab, t_fault, 8, home=False)
    assert moved is not None, "the victim's route table and EIP did not both move"
    resumed = lab.wait_for(lambda: first_right(lab, VICTIM, moved - 0.5) is not None, 3)
    assert resumed, "no traffic with its EIP after the move"
    right = first_right(lab, VICTIM, moved - 0.5)
    assert right is not None
    assert _wait_event(lab, t_fault, "stopped", 30, instance=victim.instance_id), "the dead NAT was not stopped"
    assert _wait_event(lab, t_fault, "running", 10, instance=victim.instance_id), "the dead NAT was not started again"
    back = _moved(lab, moved, 40, home=True)
    if back is None:
        for p in pings:
            p.stop()
    assert back is not None, "the route table and its EIP did not fail back"
    time.sleep(1.5)
    results = [p.finish() for p in pings]
    t_end = time.time()
    print(f"{inject}: moved {moved - t_fault:.2f} s after the fault, first packet with the right address "
          f"{right - t_fault:.2f} s, lost {results[VICTIM].lost}, dropped at the gateway "
          f"{lab.topo.igw_dropped()} (since the lab started)")  # fmt: skip
    assert right - t_fault <= 5.0, f"subnet a's traffic left with its EIP only {right - t_fault:.2f} s after the fault"
    _check_egress(lab, t_start, t_fault, t_end)
    assert lab.topo.igw_map().get(lab.topo.egress_address(VICTIM, VICTIM)) == lab.eip(VICTIM)
    others = [r.lost for i, r in enumerate(results) if i != VICTIM]
    assert others == [0] * (lab.n - 1), f"the other subnets lost packets: {others}"
    # The holder says so too: its table's EIP sits with it (what the dashboard and the alert read).
    ok = f'nat_ha_route_table_egress_ok{{route_table="{victim.route_table}"}} 1.0'
    assert lab.wait_for(lambda: ok in (lab.scrape(VICTIM) or ""), 10), "the holder does not report its EIP home"


def test_crash_eip_follows_and_fails_back(settled_egress_lab: NetLab) -> None:
    _failover_and_back(settled_egress_lab, "crash")


def test_hang_eip_follows_and_fails_back(settled_egress_lab: NetLab) -> None:
    _failover_and_back(settled_egress_lab, "hang")


@pytest.mark.parametrize("how", ["drain", "sigterm"])
def test_planned_drain_and_failback_keep_the_eip(settled_egress_lab: NetLab, how: str) -> None:
    """A planned hand-over and its fail-back: the EIP goes with the table both ways, never another's.

    Unlike the route alone, an EIP cannot be in two places: between the two writes landing
    (route and association) the subnet's packets are dropped at the gateway; the count is printed.
    """
    lab = settled_egress_lab
    victim = lab.nats[VICTIM]
    pings = _ping_all(lab, 60)
    t_start = time.time()
    time.sleep(1.0)
    t_fault = time.time()
    cmd = ["ip", "netns", "exec", lab.topo.nat_ns(VICTIM), sys.executable, "-m", "agent.commands.cli", "drain",
           "--config", str(victim.config_path), "--wait", "20"]  # fmt: skip
    if how == "drain":
        done = sh(*cmd, check=False, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
    else:
        lab.signal(victim.instance_id, signal.SIGTERM)
        assert victim.proc is not None and victim.proc.wait(10) == 0
    moved = _moved(lab, t_fault, 10, home=False)
    assert moved is not None, "the table and its EIP were not handed over"
    time.sleep(1.0)
    if how == "drain":
        undo = sh(*cmd, "--undo", check=False, timeout=30)
        assert undo.returncode == 0, undo.stdout + undo.stderr
    else:
        lab.start_agent(VICTIM)
    back = _moved(lab, moved, 35, home=True)
    if back is None:
        for p in pings:
            p.stop()
    assert back is not None, "no fail-back of the table and its EIP"
    time.sleep(1.5)
    results = [p.finish() for p in pings]
    t_end = time.time()
    print(f"{how}: hand-over lost {results[VICTIM].lost} of subnet a's packets (both moves)")
    _check_egress(lab, t_start, t_fault, t_end)
    assert [r.lost for i, r in enumerate(results) if i != VICTIM] == [0] * (lab.n - 1)


def test_moved_eip_is_put_back_by_its_holder(settled_egress_lab: NetLab) -> None:
    """Someone moves table a's EIP to another NAT (an operator, a stale write): table a's holder puts it back.

    Meanwhile table a's traffic, still routed through NAT a, has no public address and is dropped
    at the gateway: never sent with another address. The holder's reconcile (DescribeAddresses
    every ec2_reconcile_interval, 5 s) repairs it.
    """
    lab = settled_egress_lab
    pings = _ping_all(lab, 30)
    t_start = time.time()
    time.sleep(1.0)
    t_fault = time.time()
    other = lab.nats[1]

    def move() -> None:
        lab.client("ec2").associate_address(
            AllocationId=lab.allocations[VICTIM], NetworkInterfaceId=lab.enis[other.instance_id],
            PrivateIpAddress=lab.topo.egress_address(1, VICTIM), AllowReassociation=True,
        )  # fmt: skip

    lab.inet(move)
    assert _wait_event(lab, t_fault, "eip", 3, private=lab.topo.egress_address(1, VICTIM))
    back = _wait_event(lab, t_fault, "eip", 15, private=lab.topo.egress_address(VICTIM, VICTIM))
    if back is None:
        for p in pings:
            p.stop()
    assert back is not None, "the holder did not put its table's EIP back"
    time.sleep(1.5)
    results = [p.finish() for p in pings]
    t_end = time.time()
    print(f"moved away for {back - t_fault:.2f} s; subnet a lost {results[VICTIM].lost}")
    _check_egress(lab, t_start, t_fault, t_end)
    assert not lab.events_since(t_fault, "route"), "a route moved for an EIP moved by hand"
    assert [r.lost for i, r in enumerate(results) if i != VICTIM] == [0] * (lab.n - 1)
