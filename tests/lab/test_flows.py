"""Established connections survive a planned hand-over, a crash and the fail-backs (conntrack_sync, issue 18).

The lab with an internet gateway and egress_ip = "follow" (each table's Elastic IP follows it), two
NATs, and `nat-ha ctsync` on each NAT (agent.lab.netlab, ``conntrack_sync=True``): setup-nat adds the
guard rule, the host firewall and the conntrack sysctls. A flow server on the fake internet and a
client in AZ a's private subnet keep two flows of each kind open (agent.lab.flowtool: TCP where the
client talks, TCP where only the server pushes, UDP both ways, and TCP whose public port the NAT had
to remap), every 100 ms each, while NAT a's route table moves and comes back. A flow survives when
it saw no error, received data within 1.5 s of the end, and the server saw it from one public
address and port all along. bench/flows.py runs the same with 50 flows per trial and sync off.

What the lab cannot show: AWS's security groups (a flow's first packets from the server reach a
new NAT only because the shipped group lets the world reach the NATs' high ports; the lab has no
security groups), and AWS's own delay in moving an Elastic IP (3-6 s published; moto moves it at
once), during which a flow's inbound packets still reach the old NAT.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.lab.flowtrial import FlowRun, entries
from agent.lab.netlab import NetLab, sh

pytestmark = [pytest.mark.lab, pytest.mark.timeout(150)]

VICTIM = 0
KINDS = {"tcp_client": 2, "tcp_push": 2, "udp_client": 2, "udp_push": 2, "tcp_remapped": 2}


def _moved(lab: NetLab, since: float, timeout: float, home: bool) -> float | None:
    return lab.moved(VICTIM, since, timeout, home)


def _check(verdict: dict[str, Any], what: str) -> None:
    print(f"{what}: {verdict['kinds']}, resets {verdict['resets']}, "
          f"largest gap {max(f['max_gap'] for f in verdict['flows']):.2f} s")  # fmt: skip
    assert not verdict["lost"], f"{what}: flows lost: {verdict['lost']}"
    assert verdict["resets"] == 0, f"{what}: resets seen: {verdict['server']['resets']}"
    assert sum(k["flows"] for k in verdict["kinds"].values()) == sum(KINDS.values())


def test_flows_survive_a_drain_and_its_undo(settled_sync_lab: NetLab) -> None:
    """A planned hand-over and its fail-back: every flow of every kind survives both, no reset.

    The sync services run with CAP_NET_ADMIN and no other capability, as their unit runs them."""
    lab = settled_sync_lab
    for proc in lab.ctsync.values():
        caps = dict(
            ln.split(":\t") for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if ln.startswith("Cap")
        )
        assert int(caps["CapEff"], 16) == int(caps["CapBnd"], 16) == 1 << 12, caps  # CAP_NET_ADMIN = 12
    run = FlowRun(lab, VICTIM, KINDS, seconds=90, name="drain").start()
    try:
        time.sleep(1.5)  # every flow established and synced
        cmd = ["ip", "netns", "exec", lab.topo.nat_ns(VICTIM), sys.executable, "-m", "agent.commands.cli", "drain",
               "--config", str(lab.nats[VICTIM].config_path), "--wait", "20"]  # fmt: skip
        t0 = time.time()
        done = sh(*cmd, check=False, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        moved = _moved(lab, t0, 10, home=False)
        assert moved is not None, "the table and its Elastic IP were not handed over"
        log = lab.agent_log(VICTIM)
        assert "loaded" in log and "connection-tracking entries" in log, "the drain did not push the flows first"
        time.sleep(3.0)
        undo = sh(*cmd, "--undo", check=False, timeout=30)
        assert undo.returncode == 0, undo.stdout + undo.stderr
        back = _moved(lab, moved, 30, home=True)
        assert back is not None, "no fail-back"
        time.sleep(3.0)
    finally:
        verdict = run.finish()
    _check(verdict, "drain and undo")


def test_flows_survive_a_crash_and_the_failback_meets_no_stale_entries(settled_sync_lab: NetLab) -> None:
    """A crash: the survivor had every flow's entry already; the dead NAT, stopped and started by its peer,
    gets the table back by a planned fail-back, which flushes what it had of the table first (here an entry
    planted on it that holds a live flow's public port: loaded without the flush, that flow would get
    another port and die)."""
    lab = settled_sync_lab
    victim = lab.nats[VICTIM]
    run = FlowRun(lab, VICTIM, KINDS, seconds=120, name="crash").start()
    try:
        time.sleep(1.5)
        peer = 1 - VICTIM
        assert len(entries(lab, peer, VICTIM)) >= sum(KINDS.values()), "the peer has no copies of the flows"
        t0 = time.time()
        lab.crash(VICTIM)
        moved = _moved(lab, t0, 8, home=False)
        assert moved is not None, "the table did not move"
        assert lab.wait_event(t0, "stopped", 30, instance=victim.instance_id), "the dead NAT was not stopped"
        assert lab.wait_event(t0, "running", 15, instance=victim.instance_id), "the dead NAT was not started"
        assert lab.wait_for(lambda: lab.agent_running(VICTIM), 10)
        time.sleep(1.0)
        # A stale entry of the table on the returning NAT, holding the public port of live flow f0.
        f0 = next(f for f in run.spec if f[0] == "f0")
        stale = (f"-A -t 3000 -u SEEN_REPLY,ASSURED -s 10.0.1.99 -d 203.0.113.10 -r 203.0.113.10 "
                 f"-n {lab.topo.egress_address(VICTIM, VICTIM)} -p tcp --sport 7 --dport 8000 --reply-port-src 8000 "
                 f"--reply-port-dst {f0[3]} --state ESTABLISHED")  # fmt: skip
        sh("ip", "netns", "exec", lab.topo.nat_ns(VICTIM), "conntrack", "-R", "-", stdin=stale + "\n")
        assert any(" -s 10.0.1.99 " in e for e in entries(lab, VICTIM, VICTIM))
        back = _moved(lab, moved, 40, home=True)
        assert back is not None, "no fail-back"
        time.sleep(3.0)
        left = entries(lab, VICTIM, VICTIM)
    finally:
        verdict = run.finish()
    _check(verdict, "crash and fail-back")
    assert not any(" -s 10.0.1.99 " in e for e in left), "the fail-back met the stale entry"
    taken = lab.scrape(1 - VICTIM) or ""
    assert f'nat_ha_conntrack_sync_takeover_entries{{route_table="{victim.route_table}"}}' in taken


def _listen(lab: NetLab, ns: str, port: int, udp: bool = False) -> Any:
    """A listener in namespace ``ns`` that prints every connection or datagram it gets (bounded)."""
    code = (
        "import socket,sys,select,time\n"
        f"s=socket.socket(socket.AF_INET,socket.{'SOCK_DGRAM' if udp else 'SOCK_STREAM'})\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"s.bind(('0.0.0.0',{port}))\n"
        + ("" if udp else "s.listen(8)\n")
        + "print('ready',flush=True)\nend=time.time()+60\n"
        "while time.time()<end:\n"
        "  r,_,_=select.select([s],[],[],0.2)\n"
        f"  if r: print('got', {'s.recvfrom(100)[1]' if udp else 's.accept()[1]'}, flush=True)\n"
    )
    import subprocess

    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _knock(lab: NetLab, targets: list[tuple[str, int]]) -> dict[str, str]:
    """From the fake internet: a TCP connect (0.5 s) and a UDP datagram to each target; what the connects got."""
    out: dict[str, str] = {}

    def go() -> None:
        for host, port in targets:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.sendto(b"hello", (host, port))
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                out[f"{host}:{port}"] = "connected"
            except TimeoutError:
                out[f"{host}:{port}"] = "no answer"
            except ConnectionRefusedError:
                out[f"{host}:{port}"] = "refused (a reset came back)"
            except OSError as exc:
                out[f"{host}:{port}"] = str(exc)

    lab.inet(go)
    return out


def test_unsolicited_packets_from_the_internet_reach_nothing(settled_sync_lab: NetLab) -> None:
    """The security group lets the world reach the NATs' high ports (for moved flows); the host firewall
    and the guard keep every packet that belongs to no connection away from the NAT's own services and
    the private subnets, without answering it. The last step takes the firewall away and shows the
    same packets do get through then (the test can fail)."""
    lab = settled_sync_lab
    nat_ns, priv_ns = lab.topo.nat_ns(VICTIM), lab.topo.priv_ns(VICTIM)
    # What the fake internet can address: the NAT's own public IP and its table's Elastic IP (the gateway
    # translates both), and - as if it were routed there - a private host behind the NAT.
    sh("ip", "-n", lab.topo.igw, "route", "replace", "10.0.1.0/24", "via", lab.topo.pub_ip(VICTIM))
    sh("ip", "-n", lab.topo.inet, "route", "replace", "10.0.1.0/24", "via", "203.0.113.2")
    public, eip, host = lab.topo.nat_public_ip(VICTIM), lab.eip(VICTIM), lab.topo.priv_ip(VICTIM)
    # TCP connects and UDP datagrams to the NAT's own services (a listener, the sync and metrics ports),
    # to its table address, and UDP to a private host (a TCP reply from there would not get back out).
    targets = [(public, 2222), (public, 2223), (eip, 2222), (eip, 2223), (public, 9511), (public, 9510),
               (host, 2225)]  # fmt: skip
    listeners: list[Any] = []

    def heard() -> list[str]:
        for p in listeners:
            p.terminate()
        return [line for p in listeners for line in p.communicate(timeout=5)[0].splitlines() if line.startswith("got")]

    try:
        listeners = [
            _listen(lab, nat_ns, 2222),
            _listen(lab, nat_ns, 2223, udp=True),
            _listen(lab, priv_ns, 2225, udp=True),
        ]
        got = _knock(lab, targets)
        print(got)
        assert set(got.values()) == {"no answer"}, got  # dropped, not refused: no reset, no ICMP error
        time.sleep(0.3)
        assert heard() == [], "unsolicited packets reached a listener"
        # Control: without the firewall's chains the same packets reach the NAT's and the host's listeners.
        for chain in ("input", "forward"):
            sh("ip", "netns", "exec", nat_ns, "nft", "delete", "chain", "ip", "nat_ha", chain)
        listeners = [
            _listen(lab, nat_ns, 2222),
            _listen(lab, nat_ns, 2223, udp=True),
            _listen(lab, priv_ns, 2225, udp=True),
        ]
        got = _knock(lab, [(public, 2222), (public, 2223), (host, 2225)])
        assert got[f"{public}:2222"] == "connected", got
        time.sleep(0.3)
        assert len(heard()) == 3, "the control packets did not get through without the firewall"
    finally:
        for p in listeners:
            p.kill()
        sh("ip", "-n", lab.topo.igw, "route", "del", "10.0.1.0/24", check=False)
        sh("ip", "-n", lab.topo.inet, "route", "del", "10.0.1.0/24", check=False)
        lab.topo.setup_nat(lab.workdir / "setup-root", [n.config_path for n in lab.nats])  # the firewall back
    guard = sh("ip", "netns", "exec", nat_ns, "nft", "list", "chain", "ip", "nat_ha", "input").stdout
    assert "nat-ha firewall" in guard
