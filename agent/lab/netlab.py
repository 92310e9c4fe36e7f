"""The network-namespace lab: real packets through real NATs, moto as EC2 and DynamoDB.

Root only. Used by ``tests/lab``, ``bench/failover.py``, ``bench/soak.py`` and
``nat-ha demo --netns``. The topology is routed (a VPC router namespace between the private
hosts and the NATs, as a VPC's route tables are), one AZ per NAT (i = 0, 1, 2 ...)::

    priv<i> 10.0.<1+i>.10 --- vpc (router: ip rule from 10.0.<1+i>.0/24 -> table 10<1+i>)
                                 |  10.0.<11+i>.1
                              nat<i> priv0 10.0.<11+i>.10 | pub0 203.0.113.<11+i>  (setup-nat: ip_forward, masquerade)
                                 |
                              inet br0 203.0.113.10  (the fake internet; moto server on :5000)

Every namespace is named ``nat-ha-lab-<pid>-<random>-<role>``; namespaces of a dead
owner pid are removed at start. No address or route is ever added to the root
namespace: this process reaches moto (inside ``inet``) and the agents' metrics
(inside ``vpc``) from worker threads that entered those namespaces with setns(2).

A reconciler process (``python -m agent.lab.netlab reconcile SPEC``, run in ``inet``)
polls moto every ``poll`` seconds and maps its state onto the namespaces: a route
table's 0.0.0.0/0 target becomes ``ip route replace default via <nat ip> table N``
in ``vpc``; a stopped instance has its links down, a started one boots (faults
cleared, ip_forward on, links up, routes back). It prints one JSON line per
change; the lab kills a stopped instance's agent and starts it again when the
instance runs again.

``egress_ip="follow"`` models AWS's internet gateway too: it translates a private address to the
Elastic IP associated with it and drops traffic from an address with none::

    nat<i> pub0 10.0.<100+i>.10 (+ one address per route table, setup-nat) --- igw --- inet br0

Each NAT's public interface holds private addresses only (its primary, and its address for
every route table, 10.0.<100+i>.<21+t>); the ``igw`` namespace translates 1:1 and statelessly
between a private address and its public one, as the internet gateway does: the primary has
the instance's own public address 203.0.113.<11+i>, a table address has the table's Elastic IP
(203.0.113.<101+t>) while moto says that EIP is associated with it, and a packet from an
address with no public one is dropped there. moto's EIPs, ENIs and secondary addresses are
made by the lab, the reconciler maps moto's associations onto igw's maps, and
:mod:`agent.lab.egresswatch` in ``inet`` records the source address of every echo request the
fake internet receives (the private hosts ping with a pattern saying which subnet sent it).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.lab import egresswatch, nspawn
from agent.lab.localgroup import (
    DUMMY_ENV,
    REGION,
    LocalGroup,
    MotoServer,
    Nat,
    egress_address,
    egress_eip,
    member_toml,
    private_subnet,
    stop_process,
    timing_toml,
)

PREFIX = "nat-ha-lab-"
INET_IP = "203.0.113.10"
MOTO_PORT = 5000
PROXY_PORT = 5100  # ec2_proxy: NAT i reaches EC2 through agent.lab.holdproxy on PROXY_PORT + i
FAULT_CHAIN = "LABFAULT"
CLONE_NEWNET = 0x40000000
PING_INTERVAL = 0.1
IGW_IP = "203.0.113.2"  # the internet gateway's side of the fake internet (egress lab)
IGW_TABLE = "igw"

# Defaults of agent/config.py, except what makes restarts and fail-back fit a test run.
LAB_TIMING: dict[str, Any] = {
    "restart_after": 5.0,  # default 30
    "failback_hold_down": 5.0,  # default 10
    "restart_cooldown": 30.0,  # default 300
    "restart_poll_interval": 0.3,  # default 2.0
}
# Under systemd a frozen agent is systemd's to restart (WatchdogSec=10 + RestartSec=100ms), as with the
# default restart_after (30 s). (A peer never stops a NAT that answers probes, however silent its agent.)
SYSTEMD_RESTART_AFTER = 15.0

UNIT = "nat-ha.service"  # the agent's unit in the systemd lab's containers

T = TypeVar("T")


# ------------------------------------------------------------------ helpers
def sh(
    *argv: str, check: bool = True, timeout: float = 10.0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, input=stdin)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def skip_reason() -> str | None:
    """Why the lab cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "the network-namespace lab needs root (ip netns, iptables, raw ICMP)"
    for tool in ("ip", "iptables", "ping", "nft"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, check=False).returncode:
            return f"the lab needs `{tool}` (apt-get install iproute2 iptables iputils-ping nftables)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=5, check=False)
    if probe.returncode != 0:
        return f"`ip netns` unavailable: {probe.stderr.strip()}"
    try:
        import moto  # noqa: F401
    except ImportError:
        return "the lab needs moto[server]"
    return None


def cleanup_stale() -> list[str]:
    """Delete lab namespaces whose owner process is gone (and the processes left inside them)."""
    removed = []
    listing = sh("ip", "netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"^{re.escape(PREFIX)}(\d+)-", name)
        if not m or nspawn.pid_alive(int(m.group(1))):
            continue
        for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", name, check=False)
        removed.append(name)
    return removed


def igw_ruleset(public_of: dict[str, str]) -> str:
    """The internet gateway's nftables table: a stateless 1:1 translation, nothing else.

    Inbound (from the fake internet) a public destination becomes its private address before
    routing; outbound a private source becomes its public address; a packet from a private
    address with no public one is counted and dropped, as AWS's gateway drops it.
    """
    return f"""table ip {IGW_TABLE}
delete table ip {IGW_TABLE}
table ip {IGW_TABLE} {{
\tmap public_of {{ type ipv4_addr : ipv4_addr; }}
\tmap private_of {{ type ipv4_addr : ipv4_addr; }}
\tset mapped {{ type ipv4_addr; }}
\tcounter dropped {{ }}
\tchain inbound {{
\t\ttype filter hook prerouting priority -150; policy accept;
\t\tiifname "inet0" ip daddr set ip daddr map @private_of
\t}}
\tchain forward {{
\t\ttype filter hook forward priority 0; policy accept;
\t\tiifname "inet0" ip daddr 10.0.0.0/8 accept
\t\toifname "inet0" ip saddr @mapped accept
\t\tcounter name "dropped" drop
\t}}
\tchain outbound {{
\t\ttype filter hook postrouting priority 100; policy accept;
\t\toifname "inet0" ip saddr set ip saddr map @public_of
\t}}
}}
""" + igw_update(public_of)


def igw_update(public_of: dict[str, str]) -> str:
    """Replace the translation (one nft transaction: a mapping moves from one address to another atomically)."""
    lines = [f"flush map ip {IGW_TABLE} public_of", f"flush map ip {IGW_TABLE} private_of",
             f"flush set ip {IGW_TABLE} mapped"]  # fmt: skip
    if public_of:
        pairs = sorted(public_of.items())
        lines += [
            f"add element ip {IGW_TABLE} public_of {{ {', '.join(f'{a} : {b}' for a, b in pairs)} }}",
            f"add element ip {IGW_TABLE} private_of {{ {', '.join(f'{b} : {a}' for a, b in pairs)} }}",
            f"add element ip {IGW_TABLE} mapped {{ {', '.join(a for a, _ in pairs)} }}",
        ]
    return "\n".join(lines) + "\n"


def parse_igw_map(nft_json: str) -> dict[str, str]:
    """private -> public from ``nft -j list map ip igw public_of``."""
    out: dict[str, str] = {}
    for item in json.loads(nft_json or "{}").get("nftables", []):
        for pair in item.get("map", {}).get("elem", []) if "map" in item else []:
            out[str(pair[0])] = str(pair[1])
    return out


class NsExecutor:
    """One worker thread that lives in a network namespace: sockets it opens are in that namespace."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._thread_id: int | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"netns-{ns}", initializer=self._enter
        )
        self.call(lambda: None, timeout=10)

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({self.ns}): {os.strerror(err)}")
        finally:
            os.close(fd)
        self._thread_id = threading.get_ident()

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        if threading.get_ident() == self._thread_id:
            return fn()
        return self._pool.submit(fn).result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------- topology
@dataclass
class Topology:
    """The namespaces and links (no control plane). ``build()`` then ``teardown()``."""

    n: int = 3
    prefix: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}-")
    made: list[str] = field(default_factory=list)
    default_route: bool = False
    egress: bool = False  # the internet gateway namespace and private public interfaces (module doc)

    @property
    def inet(self) -> str:
        return self.prefix + "inet"

    @property
    def vpc(self) -> str:
        return self.prefix + "vpc"

    @property
    def igw(self) -> str:
        return self.prefix + "igw"

    def nat_ns(self, i: int) -> str:
        return self.prefix + f"nat{chr(97 + i)}"

    def priv_ns(self, i: int) -> str:
        return self.prefix + f"priv{chr(97 + i)}"

    @staticmethod
    def nat_ip(i: int) -> str:
        return f"10.0.{11 + i}.10"

    @staticmethod
    def nat_gw(i: int) -> str:
        return f"10.0.{11 + i}.1"

    @staticmethod
    def nat_public_ip(i: int) -> str:
        return f"203.0.113.{11 + i}"

    @staticmethod
    def priv_ip(i: int) -> str:
        return f"10.0.{1 + i}.10"

    @staticmethod
    def table(i: int) -> int:
        return 101 + i

    # With egress: the NAT's public interface is private, as an EC2 instance's ENI is.
    @staticmethod
    def pub_ip(i: int) -> str:
        """NAT i's primary private address on its public interface (its instance's PrivateIpAddress)."""
        return f"10.0.{100 + i}.10"

    @staticmethod
    def pub_gw(i: int) -> str:
        return f"10.0.{100 + i}.1"

    # The egress addresses are the loopback group's (agent.lab.localgroup): one world for both.
    egress_address = staticmethod(egress_address)
    eip = staticmethod(egress_eip)
    private_subnet = staticmethod(private_subnet)

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        tmp_a, tmp_b = f"lv{secrets.token_hex(4)}", f"lv{secrets.token_hex(4)}"
        # Created under random names, renamed inside each namespace (names are per namespace).
        sh("ip", "-n", ns_a, "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b, "netns", ns_b)
        sh("ip", "-n", ns_a, "link", "set", tmp_a, "name", name_a)
        sh("ip", "-n", ns_b, "link", "set", tmp_b, "name", name_b)
        sh("ip", "-n", ns_a, "link", "set", name_a, "up")
        sh("ip", "-n", ns_b, "link", "set", name_b, "up")

    def build(self, setup_root: Path, setup_nat: bool = True, default_route: bool = False) -> None:
        """Namespaces and links; ``setup_nat``: run ``nat-ha setup-nat`` in each NAT now (the systemd
        lab leaves it to the containers' nat-ha-setup.service); ``default_route``: each NAT routes
        0.0.0.0/0 to the fake internet, as an EC2 instance routes it to its VPC's gateway (always
        with ``egress``: to the internet gateway)."""
        if not 2 <= self.n <= 5:
            raise ValueError("the lab has 2 to 5 NATs")
        self.default_route = default_route or self.egress
        names = [self.inet, self.vpc] + [f(i) for i in range(self.n) for f in (self.nat_ns, self.priv_ns)]
        names += [self.igw] if self.egress else []
        for ns in names:
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.inet, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.inet, "link", "set", "br0", "up")
        sh("ip", "-n", self.inet, "addr", "add", f"{INET_IP}/24", "dev", "br0")
        sh("ip", "netns", "exec", self.vpc, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "-n", self.vpc, "rule", "add", "to", "10.0.0.0/16", "lookup", "main", "priority", "50")
        if self.egress:
            self._veth(self.inet, "igw", self.igw, "inet0")
            sh("ip", "-n", self.inet, "link", "set", "igw", "master", "br0")
            sh("ip", "-n", self.igw, "addr", "add", f"{IGW_IP}/24", "dev", "inet0")
            sh("ip", "netns", "exec", self.igw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            for public in [self.nat_public_ip(i) for i in range(self.n)] + [self.eip(t) for t in range(self.n)]:
                sh("ip", "-n", self.inet, "route", "add", f"{public}/32", "via", IGW_IP)
            self.set_igw_map({self.pub_ip(i): self.nat_public_ip(i) for i in range(self.n)})
        for i in range(self.n):
            nat, priv = self.nat_ns(i), self.priv_ns(i)
            if self.egress:  # pub0 on its own link to the internet gateway, a private address
                self._veth(self.igw, f"nat{i}", nat, "pub0")
                sh("ip", "-n", self.igw, "addr", "add", f"{self.pub_gw(i)}/24", "dev", f"nat{i}")
                sh("ip", "-n", nat, "addr", "add", f"{self.pub_ip(i)}/24", "dev", "pub0")
            else:
                self._veth(self.inet, f"pub{i}", nat, "pub0")
                sh("ip", "-n", self.inet, "link", "set", f"pub{i}", "master", "br0")
                sh("ip", "-n", nat, "addr", "add", f"{self.nat_public_ip(i)}/24", "dev", "pub0")
            self._veth(self.vpc, f"nat{i}", nat, "priv0")
            sh("ip", "-n", self.vpc, "addr", "add", f"{self.nat_gw(i)}/24", "dev", f"nat{i}")
            sh("ip", "-n", nat, "addr", "add", f"{self.nat_ip(i)}/24", "dev", "priv0")
            sh("ip", "-n", nat, "route", "add", "10.0.0.0/16", "via", self.nat_gw(i))
            if self.default_route:
                sh("ip", "-n", nat, "route", "add", "default", "via", self.default_gw(i), "dev", "pub0")
            self._veth(self.vpc, f"priv{i}", priv, "eth0")
            sh("ip", "-n", self.vpc, "addr", "add", f"10.0.{1 + i}.1/24", "dev", f"priv{i}")
            sh("ip", "-n", priv, "addr", "add", f"{self.priv_ip(i)}/24", "dev", "eth0")
            sh("ip", "-n", priv, "route", "add", "default", "via", f"10.0.{1 + i}.1")
            sh("ip", "-n", self.vpc, "rule", "add", "from", f"10.0.{1 + i}.0/24", "lookup", str(self.table(i)))
            sh("ip", "-n", self.vpc, "route", "add", "default", "via", self.nat_ip(i), "table", str(self.table(i)))
            for hook in ("INPUT", "OUTPUT", "FORWARD"):  # fault injection goes into one chain
                if hook == "INPUT":
                    sh("ip", "netns", "exec", nat, "iptables", "-N", FAULT_CHAIN)
                sh("ip", "netns", "exec", nat, "iptables", "-I", hook, "1", "-j", FAULT_CHAIN)
        if setup_nat:
            self.setup_nat(setup_root)

    def setup_nat(self, setup_root: Path, configs: list[Path] | None = None) -> None:
        """The NAT set-up the product ships: ``nat-ha setup-nat`` inside each NAT namespace (with the
        agent's config when given: egress addresses and SNAT rules)."""
        procs = []
        for i in range(self.n):
            root = setup_root / f"nat{i}"
            (root / "etc").mkdir(parents=True, exist_ok=True)
            cmd = [
                "ip", "netns", "exec", self.nat_ns(i), sys.executable, "-m", "agent.commands.cli", "setup-nat",
                "--public-interface", "pub0", "--root", str(root),
            ]  # fmt: skip
            if configs is not None:
                cmd += ["--config", str(configs[i])]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for i, p in enumerate(procs):
            out, _ = p.communicate(timeout=60)
            if p.returncode != 0:
                raise RuntimeError(f"setup-nat in {self.nat_ns(i)} failed: {out.strip()}")

    def default_gw(self, i: int) -> str:
        return self.pub_gw(i) if self.egress else INET_IP

    def set_igw_map(self, public_of: dict[str, str]) -> None:
        """The internet gateway, with this 1:1 translation (private address -> public address)."""
        sh("ip", "netns", "exec", self.igw, "nft", "-f", "-", stdin=igw_ruleset(public_of))

    def igw_map(self) -> dict[str, str]:
        """The translation the internet gateway has now (private -> public)."""
        out = sh("ip", "netns", "exec", self.igw, "nft", "-j", "list", "map", "ip", IGW_TABLE, "public_of").stdout
        return parse_igw_map(out)

    def igw_dropped(self) -> int:
        """Packets the internet gateway dropped so far (from an address with no public one)."""
        out = sh("ip", "netns", "exec", self.igw, "nft", "-j", "list", "counter", "ip", IGW_TABLE, "dropped").stdout
        for item in json.loads(out).get("nftables", []):
            if "counter" in item:
                return int(item["counter"].get("packets", 0))
        return 0

    def teardown(self) -> None:
        for ns in reversed(self.made):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                with suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
        self.made.clear()

    # ------------------------------------------------------------ faults
    def nat_exec(self, i: int, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.nat_ns(i), *argv, check=check)

    def links(self, i: int, up: bool) -> None:
        for dev in ("pub0", "priv0"):
            sh("ip", "-n", self.nat_ns(i), "link", "set", dev, "up" if up else "down")

    def fault_rule(self, i: int, *rule: str) -> None:
        self.nat_exec(i, "iptables", "-A", FAULT_CHAIN, *rule)

    def boot(self, i: int) -> None:
        """What a start does to a NAT: runtime faults gone, ip_forward on, links and routes back."""
        self.clear_faults(i)
        self.links(i, up=True)
        sh("ip", "-n", self.nat_ns(i), "route", "replace", "10.0.0.0/16", "via", self.nat_gw(i))
        if self.default_route:
            sh("ip", "-n", self.nat_ns(i), "route", "replace", "default", "via", self.default_gw(i), "dev", "pub0")

    def clear_faults(self, i: int) -> None:
        self.nat_exec(i, "iptables", "-F", FAULT_CHAIN)
        self.nat_exec(i, "iptables", "-P", "FORWARD", "ACCEPT")
        self.nat_exec(i, "sysctl", "-qw", "net.ipv4.ip_forward=1")


# ----------------------------------------------------------------- ping
@dataclass
class PingResult:
    sent: int
    received: dict[int, float]  # icmp_seq -> wall-clock receive time
    interval: float

    @property
    def lost(self) -> int:
        return self.sent - len(self.received)

    def lost_seqs(self) -> list[int]:
        return [s for s in range(1, self.sent + 1) if s not in self.received]

    def outage(self, after: float = 0.0) -> tuple[float, float, float]:
        """Largest gap between consecutive replies (minus one interval) whose end is after ``after``.

        Returns (outage seconds, wall time of the last reply before the gap, of the first after).
        """
        times = sorted(self.received.values())
        best = (0.0, 0.0, 0.0)
        for a, b in itertools.pairwise(times):
            gap = b - a - self.interval
            if b > after and gap > best[0]:
                best = (gap, a, b)
        return best


PING_LINE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from [\d.]+: icmp_seq=(\d+) ")


def parse_ping(text: str, count: int, interval: float = PING_INTERVAL) -> PingResult:
    received: dict[int, float] = {}
    for line in text.splitlines():
        m = PING_LINE.match(line)
        if m:
            received.setdefault(int(m.group(2)), float(m.group(1)))
    return PingResult(count, received, interval)


class Ping:
    """``ping -D -O -i 0.1 -W 1 -c N 203.0.113.10`` from a private host, in the background (bounded)."""

    def __init__(
        self, ns: str, seconds: float, interval: float = PING_INTERVAL, target: str = INET_IP, pattern: str = ""
    ) -> None:
        self.count = max(1, round(seconds / interval))
        self.interval = interval
        self.started = time.time()
        fill = ["-p", pattern] if pattern else []  # says which private host sent it (agent.lab.egresswatch)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "timeout", str(int(seconds + 10)), "ping", "-D", "-O", "-n",
             "-i", str(interval), "-W", "1", "-c", str(self.count), *fill, target],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def result(self) -> PingResult:
        out, _ = self.proc.communicate(timeout=self.count * self.interval + 20)
        self.text = out
        return parse_ping(out, self.count, self.interval)

    def finish(self) -> PingResult:
        """Stop now (SIGINT: ping flushes its output); probes after the last reply are not counted."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        self.text = out
        result = parse_ping(out, self.count, self.interval)
        result.sent = max(result.received, default=0)
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=5)


# --------------------------------------------------------------- the lab
class InetMoto(MotoServer):
    """moto server inside the ``inet`` namespace, at http://203.0.113.10:5000 (SIGSTOP-able)."""

    def __init__(self, ns: str, log_path: Path, executor: NsExecutor, nice: int = 0) -> None:
        super().__init__(
            log_path,
            host="0.0.0.0",
            port=MOTO_PORT,
            url=f"http://{INET_IP}:{MOTO_PORT}",
            prefix=("nice", "-n", str(nice), "ip", "netns", "exec", ns),
            ready=lambda: bool(executor.call(lambda: self.answers(30), timeout=40)),
            module="agent.lab.motofix",  # EIP associations bound to the private address asked for, as in AWS
        )


AgentCommand = Callable[["NetLab", int, Nat], list[str]]


@dataclass
class Event:
    t: float  # wall clock
    kind: str
    data: dict[str, Any]


@dataclass
class NetLab(LocalGroup):
    """``with NetLab(workdir) as lab:`` - the topology, moto in ``inet``, the reconciler and real agents.

    A :class:`agent.lab.localgroup.LocalGroup` whose NATs are network namespaces: it reuses the
    world creation (VPC, instances, route tables, table) and the views (``route_targets``,
    ``snapshot``, ``at_home``), which run on a thread inside ``inet``.
    """

    group: str = "lab"
    timing: dict[str, Any] = field(default_factory=lambda: dict(LAB_TIMING))
    agent_command: AgentCommand | None = None  # default: `nat-ha agent --config ...`
    log_level: str = "info"  # the agents' [log] level (debug: bench/failover.py --trace reads the phases)
    poll: float = 0.1  # the reconciler reads route tables this often, instance states every 3rd poll (systemd: every)
    nice: int = -5  # moto and the reconciler play AWS, which does not share the NATs' CPU
    max_seconds: float = 3600.0
    topo: Topology = field(default_factory=Topology)
    events: list[Event] = field(default_factory=list)
    _inet: NsExecutor | None = None
    _vpc: NsExecutor | None = None
    _reconciler: subprocess.Popen[str] | None = None
    _reader: threading.Thread | None = None
    _events_lock: threading.Lock = field(default_factory=threading.Lock)

    DEMO_TIMING: dict[str, Any] = field(default_factory=dict)  # no demo timing: config defaults + `timing`
    # Every NAT a container with a real systemd (agent/lab/nspawn.py): nat-ha installed by the
    # stack's user data, the shipped units, identity and credentials from a lab IMDSv2.
    systemd: bool = False
    containers: list[nspawn.Container] = field(default_factory=list)
    image: nspawn.Image | None = None
    image_baked_ahead: bool = False  # taken from tests/run-all.sh's bake (nspawn.prebaked_image), not baked here
    _imds: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _bake: nspawn.Container | None = None
    # EC2 through agent.lab.holdproxy (one port per NAT): a request can be held and applied later,
    # as AWS may apply a request after the client gave up (bench/failover.py's frozen_write).
    ec2_proxy: bool = False
    _proxy: subprocess.Popen[str] | None = None
    _proxy_events: list[tuple[float, str]] = field(default_factory=list)
    _watch: subprocess.Popen[str] | None = None
    _arrivals: list[egresswatch.Arrival] = field(default_factory=list)
    _arrivals_offset: int = 0
    # conntrack_sync (egress_ip = "follow" only): every NAT also runs `nat-ha ctsync`; setup-nat adds the
    # guard, the firewall and the sysctls. ``sync`` overrides [conntrack_sync] keys.
    conntrack_sync: bool = False
    sync: dict[str, Any] = field(default_factory=dict)
    ctsync: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    # --------------------------------------------------------------- set-up
    def __enter__(self) -> NetLab:
        reason = skip_reason()
        if reason:
            raise RuntimeError(reason)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for key, value in DUMMY_ENV.items():
            os.environ.setdefault(key, value)
        if self.systemd:
            reason = nspawn.skip_reason()
            if reason:
                raise RuntimeError(reason)
            self.timing["restart_after"] = max(self.timing.get("restart_after", 0.0), SYSTEMD_RESTART_AFTER)
        if self.conntrack_sync and self.egress_ip != "follow":
            raise ValueError('conntrack_sync needs egress_ip = "follow"')
        if self.conntrack_sync:
            key_file = self.workdir / "ctsync.key"
            key_file.write_text(secrets.token_hex(32) + "\n")
            key_file.chmod(0o600)
        if self.egress and self.systemd:
            raise ValueError("the systemd lab has no internet gateway: egress_ip = follow runs in the process lab")
        self.topo.n = self.n
        self.topo.egress = self.egress
        try:
            cleanup_stale()
            if self.systemd:
                nspawn.cleanup_stale()
                self._bake_image()
            setup_now = not self.systemd and not self.egress  # egress: setup-nat reads the agents' configs
            self.topo.build(self.workdir / "setup-root", setup_nat=setup_now, default_route=self.systemd)
            self._inet = NsExecutor(self.topo.inet)
            self._vpc = NsExecutor(self.topo.vpc)
            self.moto = InetMoto(self.topo.inet, self.workdir / "moto.log", self._inet, self.nice)
            if self.ec2_proxy:
                self._start_proxy()
            self.inet(self._create_world)
            if self.egress:
                self.topo.setup_nat(self.workdir / "setup-root", [n.config_path for n in self.nats])
                self._start_watch()
            self._start_reconciler()
            if self.systemd:
                self._make_containers()
            for nat in self.nats:
                self._spawn(nat)
        except BaseException:
            self.close()
            raise
        return self

    # ------------------------------------------------------------ systemd
    def _bake_image(self) -> None:
        """Run the stack's user data once, in a namespace shaped like a NAT's (pub0, default route) -
        or take the image tests/run-all.sh baked the same way earlier in this run (:func:`prebake`)."""
        self.image = nspawn.prebaked_image(self.group, self.table, log=self._log)
        if self.image is not None:
            self._log(f"systemd lab: the image baked ahead of the tier ({self.image.layer})")
            self.image_baked_ahead = True
            return
        ns = self.topo.prefix + "bake"
        self.topo.made.append(ns)
        self.image, self._bake = bake_in_namespace(self.workdir / "containers", ns, self.group, self.table, self._log)

    def _make_containers(self) -> None:
        """One container per NAT (not booted yet), its IMDSv2 in its namespace, the lab config on its disk."""
        assert self.image is not None
        for i, nat in enumerate(self.nats):
            ns = self.topo.nat_ns(i)
            sh("ip", "-n", ns, "addr", "add", "169.254.169.254/32", "dev", "lo")
            imds = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "agent.lab.imds", "--instance-id",
                 nat.instance_id, "--region", REGION, "--az", nat.az],
                stdout=subprocess.PIPE, stderr=open(self.workdir / f"imds{i}.log", "ab"),  # noqa: SIM115
            )  # fmt: skip
            self._imds.append(imds)
            assert imds.stdout is not None
            if imds.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"the lab IMDS of {ns} did not start (see {self.workdir}/imds{i}.log)")
            release = [(self.image.bundle.path.parent, nspawn.RELEASE_IN_CONTAINER)]  # the bundle, as in the bake
            ct = nspawn.Container(f"nat{chr(97 + i)}", self.image.lowers, self.workdir / "containers", netns=ns,
                                  binds_ro=release)  # fmt: skip
            ct.write("/etc/nat-ha/config.toml", self._config(nat))
            self.containers.append(ct)

    def container(self, i: int) -> nspawn.Container:
        return self.containers[i]

    def reset_kernel(self, i: int) -> None:
        """What a reboot does to the NAT's kernel state: forwarding off, setup-nat's masquerade table gone."""
        self.topo.nat_exec(i, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        self.topo.nat_exec(i, "nft", "delete", "table", "ip", "nat_ha", check=False)

    def boot(self, i: int) -> float:
        """Boot NAT i's container from a fresh kernel state (seconds until its systemd answers)."""
        ct = self.containers[i]
        if ct.running:
            raise RuntimeError(f"{ct.name} is already running")
        self.reset_kernel(i)
        return ct.boot()

    def reboot(self, i: int) -> tuple[float, float]:
        """``systemctl poweroff`` (the agent drains), a fresh kernel state, boot: (poweroff s, boot s)."""
        ct = self.containers[i]
        down = ct.poweroff()
        return down, self.boot(i)

    def agent_log(self, i: int) -> str:
        """The agent's output so far (its log file; under systemd its journal, every boot)."""
        if self.systemd:
            ct = self.containers[i]
            if not ct.running:
                return ""
            return ct.journal("nat-ha.service", output="cat", boot="")
        return self.nats[i].log_path.read_text(errors="replace")

    def inet(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run ``fn`` on the thread inside the ``inet`` namespace (where moto is)."""
        assert self._inet is not None
        return self._inet.call(fn, timeout)

    def index(self, instance_id: str) -> int:
        return next(i for i, n in enumerate(self.nats) if n.instance_id == instance_id)

    def _sync_toml(self, i: int) -> list[str]:
        """[conntrack_sync] of NAT i (its key file and control socket in the work directory)."""
        if not self.conntrack_sync:
            return []
        keys = {
            "enabled": True,
            "key_file": str(self.workdir / "ctsync.key"),
            "control_socket": str(self.ctsync_socket(i)),
            **self.sync,
        }
        return ["[conntrack_sync]", *(f"{k} = {json.dumps(v)}" for k, v in keys.items()), ""]

    def ctsync_socket(self, i: int) -> Path:
        return self.workdir / f"ctsync-{i}.sock"

    def _config(self, nat: Nat) -> str:
        assert self.moto is not None
        if self._defer_configs:
            return ""  # written once the egress resources exist (_create_world)
        i = self.index(nat.instance_id)
        timing = {**self.timing}
        header = self._header_toml(nat, self.moto.url)
        if self.egress:  # top-level keys, before the first table
            header = header[:3] + self._egress_top_toml() + header[3:]
        lines = [
            *header,
            "[probe]",
            'method = "icmp"',
            'privileged = "true"',
            "",
            "[self_check]",
            "ip_forward = true",
            "masquerade = true",
            'public_interface = "pub0"',
            "forwarding = true",
            "",
            *timing_toml(timing),
            *self._sync_toml(i),
            "[metrics]",
            f'listen = "{self.topo.nat_ip(i)}:9510"' if self.metrics else 'listen = ""',
            "",
            "[log]",
            'format = "json"',
            f'level = "{self.log_level}"',
            "",
        ]
        for j, other in enumerate(self.nats):
            lines += member_toml(other, self.topo.nat_ip(j), eni=self.enis.get(other.instance_id, ""))
        if self.ec2_proxy:
            old, new = f'endpoint_url = "{self.moto.url}"', f'endpoint_url = "http://{INET_IP}:{PROXY_PORT + i}"'
            ec2 = lines.index("[ec2]")
            assert lines[ec2 + 1] == old
            lines[ec2 + 1] = new
        if self.egress:
            lines += self._egress_tables_toml()
        if self.systemd:  # this instance's id and region from the lab IMDSv2, as on EC2
            header = self._header_toml(nat, self.moto.url)
            assert header[1].startswith("instance_id = ") and header[2].startswith("region = ")
            del lines[1:3]
        return "\n".join(lines)

    def _spawn(self, nat: Nat) -> None:
        i = self.index(nat.instance_id)
        if self.conntrack_sync:
            self.start_ctsync(i)
        if self.systemd:
            ct = self.containers[i]
            if not ct.running:
                self.boot(i)
            else:
                ct.systemctl("start", "--no-block", "nat-ha.service")
            nat.starts += 1
            return
        if self.agent_command is not None:
            argv = self.agent_command(self, i, nat)
        else:
            argv = [sys.executable, "-m", "agent.commands.cli", "agent", "--config", str(nat.config_path)]
        env = {**os.environ, **DUMMY_ENV, **self.extra_env}
        with open(nat.log_path, "ab") as log:
            nat.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.topo.nat_ns(i), *argv], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        nat.starts += 1

    def start_ctsync(self, i: int) -> None:
        """NAT i's `nat-ha ctsync` (unless it runs), as nat-ha-ctsync.service runs it."""
        proc = self.ctsync.get(i)
        if proc is not None and proc.poll() is None:
            return
        nat = self.nats[i]
        # With CAP_NET_ADMIN alone (inheritable, ambient and bounding: the nft tool it runs keeps
        # it; "noroot": uid 0 gains nothing at exec), as the unit's AmbientCapabilities= and SecureBits= give it.
        # (The unit's transient user is not modelled: the lab's files live in root's private temporary directory.)
        argv = ["setpriv", "--securebits=+noroot,+noroot_locked", "--inh-caps=-all,+net_admin",
                "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin",
                sys.executable, "-m", "agent.commands.cli", "ctsync", "--config", str(nat.config_path)]  # fmt: skip
        with open(self.workdir / f"ctsync-{i}.log", "ab") as log:
            self.ctsync[i] = subprocess.Popen(["ip", "netns", "exec", self.topo.nat_ns(i), *argv], stdout=log,
                                              stderr=subprocess.STDOUT, env={**os.environ, **DUMMY_ENV})  # fmt: skip

    def stop_ctsync(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.ctsync.get(i)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def ctsync_request(self, i: int, message: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Ask NAT i's sync service (its control socket is in the work directory, reachable from here)."""
        from agent.ctsync import control

        return control.request(str(self.ctsync_socket(i)), message, timeout)

    def _play_ec2(self) -> None:  # the reconciler plays EC2 here (see _on_event)
        return

    # ------------------------------------------------------------ reconciler
    def _start_reconciler(self) -> None:
        assert self.moto is not None
        spec = {
            "url": self.moto.url,
            "poll": self.poll,
            "deadline": time.time() + self.max_seconds,
            "vpc": self.topo.vpc,
            "systemd": self.systemd,
            "tables": {n.route_table: self.topo.table(i) for i, n in enumerate(self.nats)},
            "instances": {
                n.instance_id: {
                    "ns": self.topo.nat_ns(i),
                    "ip": self.topo.nat_ip(i),
                    "gw": self.topo.nat_gw(i),
                    "pubgw": self.topo.default_gw(i),
                    "eni": self.enis.get(n.instance_id, ""),
                }
                for i, n in enumerate(self.nats)
            },
        }
        if self.egress:
            spec["egress"] = {
                "igw": self.topo.igw,
                "allocations": self.allocations,
                "eips": [self.topo.eip(t) for t in range(self.n)],
                "static": {self.topo.pub_ip(i): self.topo.nat_public_ip(i) for i in range(self.n)},
            }
        path = self.workdir / "reconciler.json"
        path.write_text(json.dumps(spec))
        self._reconciler = subprocess.Popen(
            [
                "nice",
                "-n",
                str(self.nice),
                "ip",
                "netns",
                "exec",
                self.topo.inet,
                sys.executable,
                "-m",
                "agent.lab.netlab",
                "reconcile",
                str(path),
            ],
            stdout=subprocess.PIPE,
            stderr=open(self.workdir / "reconciler.log", "ab"),  # noqa: SIM115 - the child owns it
            text=True,
            env={**os.environ, **DUMMY_ENV},
        )
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read_events, args=(ready,), name="lab-events", daemon=True)
        self._reader.start()
        if not ready.wait(30):
            raise RuntimeError(f"the reconciler did not start (see {self.workdir / 'reconciler.log'})")

    def _read_events(self, ready: threading.Event) -> None:
        assert self._reconciler is not None and self._reconciler.stdout is not None
        with open(self.workdir / "events.jsonl", "a") as keep:
            for line in self._reconciler.stdout:
                keep.write(line)
                keep.flush()
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                ev = Event(float(data.pop("t")), str(data.pop("ev")), data)
                with self._events_lock:
                    self.events.append(ev)
                if ev.kind == "ready":
                    ready.set()
                self._on_event(ev)

    def _on_event(self, ev: Event) -> None:
        if ev.kind == "stopped" and self.systemd:
            nat = self.nat(ev.data["instance"])
            nat.expect_running = False
            self.containers[self.index(nat.instance_id)].kill()
            self._log(f"EC2: {nat.instance_id} stopped: links down, container off")
        elif ev.kind == "stopped":
            nat = self.nat(ev.data["instance"])
            nat.expect_running = False
            if self.conntrack_sync:
                self.stop_ctsync(self.index(nat.instance_id))
            self.signal(nat.instance_id, signal.SIGCONT)
            self.signal(nat.instance_id, signal.SIGKILL)
            self._log(f"EC2: {nat.instance_id} stopped: links down, agent killed")
        elif ev.kind == "running":
            nat = self.nat(ev.data["instance"])
            if not nat.expect_running and not self._stop.is_set():
                nat.expect_running = True
                if nat.proc is not None and nat.proc.poll() is None:
                    nat.proc.wait(5)
                self._spawn(nat)
                self._log(f"EC2: {nat.instance_id} running: booted, agent starts")

    def wait_event(self, since: float, kind: str, timeout: float, **match: str) -> float | None:
        """Wall time of the first reconciler event of ``kind`` since ``since`` matching ``match`` (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events_since(since, kind):
                if all(e.data.get(k) == v for k, v in match.items()):
                    return e.t
            time.sleep(0.05)
        return None

    def moved(self, t: int, since: float, timeout: float, home: bool) -> float | None:
        """When route table t and its Elastic IP had both moved (away from home, or back home) after ``since``.

        The later of the reconciler's two events (route and ``eip``), or None after ``timeout`` s.
        """
        nat, home_addr = self.nats[t], self.topo.egress_address(t, t)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            routes = [e for e in self.events_since(since, "route") if e.data["rtb"] == nat.route_table]
            eips = [e for e in self.events_since(since, "eip") if e.data["allocation"] == self.allocations[t]]
            r = next((e.t for e in routes if (e.data["target"] == nat.instance_id) == home), None)
            x = next((e.t for e in eips if (e.data["private"] == home_addr) == home and e.data["private"]), None)
            if r is not None and x is not None:
                return max(r, x)
            time.sleep(0.05)
        return None

    def events_since(self, t: float, kind: str = "") -> list[Event]:
        with self._events_lock:
            return [e for e in self.events if e.t >= t and (not kind or e.kind == kind)]

    # ------------------------------------------------------------- views
    def route_targets(self) -> dict[str, str]:
        """Route table -> instance (a route to a NAT's ENI counts as a route to its instance, as in AWS)."""
        return self.inet(super().route_targets)

    def snapshot(self) -> Any:
        return self.inet(super().snapshot)

    def at_home(self) -> bool:
        return self.inet(super().at_home)

    def data_plane_at_home(self) -> bool:
        """The vpc router sends every private subnet to its own NAT."""
        for i in range(self.n):
            out = sh("ip", "-n", self.topo.vpc, "route", "show", "table", str(self.topo.table(i)), check=False).stdout
            if f"default via {self.topo.nat_ip(i)} " not in out + " ":
                return False
        return True

    def settled(self) -> bool:
        """At home in DynamoDB, EC2 and the data plane (and every EIP: egress); every member alive and healthy."""
        if not self.at_home() or not self.data_plane_at_home():
            return False
        if self.egress and not self.egress_at_home():
            return False
        snap = self.snapshot()
        return all(
            (m := snap.members.get(n.instance_id)) is not None and m.state == "alive" and m.health.healthy
            for n in self.nats
        )

    def instance_state(self, instance_id: str) -> str:
        def read() -> str:
            data = self.client("ec2").describe_instances(InstanceIds=[instance_id])
            return str(data["Reservations"][0]["Instances"][0]["State"]["Name"])

        return self.inet(read)

    def ec2_restart(self, instance_id: str) -> None:
        """Stop and start an instance in moto (as an operator would); the reconciler boots it."""

        def go() -> None:
            ec2 = self.client("ec2")
            ec2.stop_instances(InstanceIds=[instance_id])
            ec2.start_instances(InstanceIds=[instance_id])

        self.inet(go)

    def scrape(self, i: int, timeout: float = 1.0) -> str | None:
        """The agent's /metrics text (None: no answer), read from inside ``vpc``."""
        assert self._vpc is not None

        def get() -> str | None:
            try:
                with urllib.request.urlopen(f"http://{self.topo.nat_ip(i)}:9510/metrics", timeout=timeout) as r:
                    return str(r.read().decode())
            except OSError:
                return None

        return self._vpc.call(get, timeout + 5)

    def ping(self, i: int, seconds: float, interval: float = PING_INTERVAL) -> Ping:
        """Private host i pings the fake internet (with its pattern: the egress record tells its packets apart)."""
        return Ping(self.topo.priv_ns(i), seconds, interval, pattern=egresswatch.pattern(i))

    # --------------------------------------------------------------- egress
    def _start_watch(self) -> None:
        deadline = time.time() + self.max_seconds
        self._watch = subprocess.Popen(
            ["ip", "netns", "exec", self.topo.inet, sys.executable, "-m", "agent.lab.egresswatch",
             str(self.workdir / "egress.log"), "--deadline", str(deadline)],
            stdout=subprocess.PIPE, stderr=open(self.workdir / "egresswatch.log", "ab"), text=True,  # noqa: SIM115
        )  # fmt: skip
        assert self._watch.stdout is not None
        if self._watch.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the fake internet's recorder did not start (see {self.workdir}/egresswatch.log)")

    def arrivals(self, since: float = 0.0, host: int | None = None) -> list[egresswatch.Arrival]:
        """Echo requests the fake internet received since ``since`` (of private host ``host`` only, if given).

        The recorder is a process of its own: a reply can reach a private host before the recorder
        has written its request down. So a marker echo request goes first, from the fake internet to
        itself; the raw socket queues packets in the order they arrive, so once the marker is in the
        record every request that arrived before it is too (bounded: 3 s).
        """
        self._flush_record()
        return [a for a in self._arrivals if a.t >= since and (host is None or a.host == host)]

    def _flush_record(self, limit: float = 3.0) -> None:
        sent = time.time()
        sh("ip", "netns", "exec", self.topo.inet, "ping", "-c", "1", "-W", "1", "-q", "-p", egresswatch.MARKER,
           INET_IP, check=False)  # fmt: skip
        deadline = time.monotonic() + limit
        while True:
            new, self._arrivals_offset = egresswatch.read(self.workdir / "egress.log", self._arrivals_offset)
            self._arrivals += [a for a in new if a.host != egresswatch.MARKER_HOST]
            if any(a.host == egresswatch.MARKER_HOST and a.t >= sent for a in new) or time.monotonic() > deadline:
                return
            time.sleep(0.02)

    def eip(self, t: int) -> str:
        """Route table t's Elastic IP (the address its subnet's traffic must leave with)."""
        return self.topo.eip(t)

    def eip_holders(self) -> dict[str, str]:
        """Route table -> the private address moto has its EIP associated with ("" if none)."""

        def read() -> dict[str, str]:
            data = self.client("ec2").describe_addresses(AllocationIds=self.allocations)["Addresses"]
            by_alloc = {a["AllocationId"]: a.get("PrivateIpAddress", "") for a in data}
            return {n.route_table: by_alloc.get(self.allocations[t], "") for t, n in enumerate(self.nats)}

        return self.inet(read)

    def egress_at_home(self) -> bool:
        """Every table's EIP on its home NAT's address for it, in moto and in the internet gateway."""
        igw = self.topo.igw_map()
        holders = self.eip_holders()
        return all(
            holders.get(n.route_table) == self.topo.egress_address(t, t)
            and igw.get(self.topo.egress_address(t, t)) == self.topo.eip(t)
            for t, n in enumerate(self.nats)
        )

    # --------------------------------------------------------------- faults
    def crash(self, i: int) -> None:
        """The instance dies: its links go down and its agent is killed (moto still says running).

        Under systemd the whole container goes (systemd would restart a killed agent).
        """
        self.topo.links(i, up=False)
        if self.systemd:
            self.containers[i].kill()
        else:
            self.signal(self.nats[i].instance_id, signal.SIGKILL)
        if self.conntrack_sync:
            self.stop_ctsync(i)

    # Under systemd the agent is the unit nat-ha.service of the NAT's container.
    def signal(self, instance_id: str, sig: int) -> None:
        if not self.systemd:
            super().signal(instance_id, sig)
            return
        ct = self.containers[self.index(instance_id)]
        if ct.running:
            ct.run("systemctl", "kill", "--kill-who=main", f"--signal={int(sig)}", "nat-ha.service", check=False)

    def alive(self, instance_id: str) -> bool:
        if not self.systemd:
            return super().alive(instance_id)
        ct = self.containers[self.index(instance_id)]
        return ct.running and ct.is_active("nat-ha.service") == "active"

    def restart_agent(self, instance_id: str) -> None:
        if not self.systemd:
            super().restart_agent(instance_id)
        elif not self.alive(instance_id):
            self._spawn(self.nat(instance_id))

    # Restarts of the agent alone (systemd): the NAT forwards all along, so nothing should move.
    def restart_unit(self, i: int, how: str, timeout: float = 60.0) -> float:
        """End NAT i's agent and wait until a new process runs; returns the wall time it was ended.

        ``how``: ``kill`` (SIGKILL to the main process; ``Restart=always`` starts it again) or
        ``restart`` (``systemctl restart``: the unit's RestartKillSignal, then a start).
        """
        ct = self.containers[i]
        old = ct.main_pid(UNIT)
        t = time.time()
        if how == "kill":
            ct.run("systemctl", "kill", "--kill-who=main", "--signal=SIGKILL", UNIT)
        elif how == "restart":
            ct.systemctl("restart", UNIT, timeout=timeout)
        else:
            raise ValueError(how)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = ct.main_pid(UNIT)
            if pid and pid != old and ct.is_active(UNIT) == "active":
                return t
            time.sleep(0.1)
        raise RuntimeError(f"{ct.name}: {UNIT} did not run again within {timeout:.0f} s after {how}")

    def takeover_line(self, i: int, since: float) -> tuple[float, str] | None:
        """The agent's journal line saying it took its previous process's session over (wall time, text)."""
        for e in self.containers[i].journal_entries(UNIT):
            t = int(e["__REALTIME_TIMESTAMP"]) / 1e6
            if t >= since and "took over session" in e["MESSAGE"]:
                return t, e["MESSAGE"]
        return None

    def install_wheel(self, i: int, wheel: Path) -> str:
        """``pip install`` a wheel into NAT i's /opt/nat-ha (dependencies as they are); returns pip's output."""
        ct = self.containers[i]
        ct.mount()
        dest = ct.root / "var" / "tmp" / wheel.name
        shutil.copyfile(wheel, dest)
        try:
            proc = ct.run("/opt/nat-ha/bin/pip", "install", "--no-index", "--no-deps", "--quiet",
                          f"/var/tmp/{wheel.name}", timeout=180)  # fmt: skip
        finally:
            dest.unlink(missing_ok=True)
        return proc.stdout + proc.stderr

    def hang(self, i: int) -> None:
        """The instance hangs: every packet in, out and through it is dropped; its agent runs on."""
        self.topo.fault_rule(i, "-j", "DROP")

    def break_forwarding(self, i: int, how: str) -> None:
        if how == "ip_forward":
            self.topo.nat_exec(i, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        elif how == "forward_drop":
            self.topo.nat_exec(i, "iptables", "-P", "FORWARD", "DROP")
        else:
            raise ValueError(how)

    def partition(self, on: bool) -> None:
        """Drop ICMP between the NATs' private addresses (in every NAT namespace)."""
        for i in range(self.n):
            if not on:
                self.topo.nat_exec(i, "iptables", "-F", FAULT_CHAIN)
                continue
            for j in range(self.n):
                if j != i:
                    peer = self.topo.nat_ip(j)
                    self.topo.fault_rule(i, "-p", "icmp", "-s", peer, "-j", "DROP")
                    self.topo.fault_rule(i, "-p", "icmp", "-d", peer, "-j", "DROP")

    def netem_peers(self, i: int, probability: float) -> None:
        """Random loss of packets NAT i sends to the other NATs (egress, as netem on its link would).

        This kernel has no sch_netem, so it is ``iptables -m statistic --mode random`` DROP.
        """
        for j in range(self.n):
            if j != i:
                self.topo.fault_rule(
                    i, "-d", self.topo.nat_ip(j), "-m", "statistic", "--mode", "random",
                    "--probability", str(probability), "-j", "DROP",
                )  # fmt: skip

    def agent_running(self, i: int) -> bool:
        return self.alive(self.nats[i].instance_id)

    def start_agent(self, i: int) -> None:
        self.restart_agent(self.nats[i].instance_id)

    # ---------------------------------------------------------- EC2 proxy
    def _start_proxy(self) -> None:
        argv = ["ip", "netns", "exec", self.topo.inet, sys.executable, "-m", "agent.lab.holdproxy",
                INET_IP, str(PROXY_PORT), str(self.n), INET_IP, str(MOTO_PORT)]  # fmt: skip
        self._proxy = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proxy.stdout is not None
        if self._proxy.stdout.readline().strip() != "ready":
            raise RuntimeError("the EC2 hold proxy did not start")

        def read() -> None:
            assert self._proxy is not None and self._proxy.stdout is not None
            for line in self._proxy.stdout:
                self._proxy_events.append((time.time(), line.strip()))

        threading.Thread(target=read, name="holdproxy-events", daemon=True).start()

    def _proxy_command(self, line: str) -> None:
        assert self._proxy is not None and self._proxy.stdin is not None, "NetLab(ec2_proxy=True) only"
        self._proxy.stdin.write(line + "\n")
        self._proxy.stdin.flush()

    def hold_ec2(self, i: int, action: str) -> None:
        """Keep NAT i's next ``action`` request (and what follows on its connection) until released."""
        self._proxy_command(f"hold {i} {action}")

    def release_ec2(self, i: int) -> None:
        """Send NAT i's held request on to EC2 (moto applies it, whether or not the client still waits)."""
        self._proxy_command(f"release {i}")

    def ec2_held_at(self, i: int, since: float) -> float | None:
        """When the proxy started holding a request of NAT i (after ``since``), if it has."""
        return next((t for t, line in list(self._proxy_events) if t >= since and line.startswith(f"held {i} ")), None)

    # -------------------------------------------------------------- cleanup
    def close(self) -> None:
        self._stop.set()
        if self._proxy is not None and self._proxy.poll() is None:
            with suppress(OSError, ValueError):
                assert self._proxy.stdin is not None
                self._proxy.stdin.close()  # its command loop ends
            stop_process(self._proxy)
        for ct in [*self.containers, *([self._bake] if self._bake else [])]:
            try:
                ct.close()
            except Exception as exc:  # keep cleaning up the rest
                self._log(f"closing container {ct.name}: {exc}")
        helpers: list[subprocess.Popen[Any]] = [*self._imds, *([self._watch] if self._watch else [])]
        for proc in helpers:
            stop_process(proc, kill=True)
        if self._reconciler is not None:
            stop_process(self._reconciler)
        self._stop_agents()
        for i in list(self.ctsync):
            self.stop_ctsync(i)
        if self.moto is not None:
            with suppress(Exception):
                self.moto.stop()
        for ex in (self._inet, self._vpc):
            if ex is not None:
                ex.close()
        self.topo.teardown()


@contextmanager
def lab(workdir: Path, **kwargs: Any) -> Iterator[NetLab]:
    with NetLab(workdir, **kwargs) as lab_:
        yield lab_


# ------------------------------------------------------------- reconciler
def reconcile(spec_path: str) -> int:
    """The reconciler process (run inside ``inet``): moto's state -> the namespaces. Bounded by the deadline."""
    import botocore.config
    import botocore.session

    spec = json.loads(Path(spec_path).read_text())
    parent = os.getppid()
    ec2: Any = botocore.session.get_session().create_client(
        "ec2",
        region_name=REGION,
        endpoint_url=spec["url"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore.config.Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}),
    )
    tables: dict[str, int] = spec["tables"]
    instances: dict[str, dict[str, str]] = spec["instances"]
    by_eni = {v["eni"]: iid for iid, v in instances.items() if v.get("eni")}
    applied: dict[str, str] = {}  # what the vpc router has
    seen: dict[str, str] = {}  # what moto said last
    running = dict.fromkeys(instances, True)
    egress: dict[str, Any] = spec.get("egress") or {}
    public_of: dict[str, str] = dict(egress.get("static", {}))  # what the internet gateway has
    holders: dict[str, str] = {}  # allocation id -> private address moto says (egress)

    def emit(ev: str, **data: Any) -> None:
        print(json.dumps({"t": time.time(), "ev": ev, **data}), flush=True)

    def run(*argv: str) -> None:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
        if p.returncode != 0:
            emit("cmd_error", cmd=" ".join(argv), err=p.stderr.strip())

    def nsx(inst: str, *argv: str) -> None:
        run("ip", "netns", "exec", instances[inst]["ns"], *argv)

    def map_eips(addresses: list[dict[str, Any]]) -> None:
        """moto's associations -> the internet gateway's 1:1 translation (one transaction per change)."""
        now = {a["AllocationId"]: a.get("PrivateIpAddress") or "" for a in addresses}
        if now == holders:
            return
        wanted = dict(egress.get("static", {}))
        public = dict(zip(egress["allocations"], egress["eips"], strict=True))
        for alloc, private in now.items():
            if private:
                wanted[private] = public[alloc]  # an EIP on an instance's primary replaces its own public IP
        p = subprocess.run(["ip", "netns", "exec", egress["igw"], "nft", "-f", "-"], input=igw_update(wanted),
                           capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
        if p.returncode != 0:
            emit("cmd_error", cmd="nft -f (igw)", err=p.stderr.strip())
            return
        for alloc, private in now.items():
            if holders.get(alloc) != private:
                emit("eip", allocation=alloc, eip=public[alloc], private=private, previous=holders.get(alloc, ""))
        holders.clear()
        holders.update(now)
        public_of.clear()
        public_of.update(wanted)

    emit("ready")
    errors = 0
    while time.time() < spec["deadline"] and os.getppid() == parent:
        t0 = time.monotonic()
        try:
            rts = ec2.describe_route_tables(RouteTableIds=list(tables))["RouteTables"]
            # Every poll: an agent's stop and start of a peer can be 0.4 s apart in moto (EC2 takes tens of
            # seconds), and a stop missed between two looks would leave a hung NAT as it was, never rebooted.
            res = ec2.describe_instances(InstanceIds=list(instances))["Reservations"]
            eips = ec2.describe_addresses(AllocationIds=egress["allocations"])["Addresses"] if egress else []
            errors = 0
        except Exception as exc:
            errors += 1
            if errors == 1:
                emit("moto_error", err=str(exc)[:200])
            time.sleep(spec["poll"])
            continue
        for r in res:
            for inst in r["Instances"]:
                iid, state = inst["InstanceId"], inst["State"]["Name"]
                up = state in ("pending", "running")
                if up == running[iid]:
                    continue
                running[iid] = up
                if not up:
                    for dev in ("pub0", "priv0"):
                        run("ip", "-n", instances[iid]["ns"], "link", "set", dev, "down")
                    emit("stopped", instance=iid, state=state)
                else:  # boot: runtime faults gone, setup-nat's state back, links and routes up
                    nsx(iid, "iptables", "-F", FAULT_CHAIN)
                    nsx(iid, "iptables", "-P", "FORWARD", "ACCEPT")
                    if not spec.get("systemd"):  # under systemd, nat-ha-setup.service does it at boot
                        nsx(iid, "sysctl", "-qw", "net.ipv4.ip_forward=1")
                    for dev in ("pub0", "priv0"):
                        run("ip", "-n", instances[iid]["ns"], "link", "set", dev, "up")
                    run("ip", "-n", instances[iid]["ns"], "route", "replace", "10.0.0.0/16", "via",
                        instances[iid]["gw"])  # fmt: skip
                    if spec.get("systemd") or egress:
                        run("ip", "-n", instances[iid]["ns"], "route", "replace", "default", "via",
                            instances[iid]["pubgw"], "dev", "pub0")  # fmt: skip
                    applied.clear()  # re-apply every table
                    emit("running", instance=iid, state=state)
        for rt in rts:
            rid = rt["RouteTableId"]
            target = next(
                (
                    x.get("InstanceId") or by_eni.get(x.get("NetworkInterfaceId") or "", "")
                    for x in rt.get("Routes", [])
                    if x.get("DestinationCidrBlock") == "0.0.0.0/0"
                ),
                "",
            )
            if target in instances and applied.get(rid) != target:
                run("ip", "-n", spec["vpc"], "route", "replace", "default", "via", instances[target]["ip"],
                    "table", str(tables[rid]))  # fmt: skip
                if seen.get(rid) != target:  # a change in moto (not a re-apply after a boot)
                    emit("route", rtb=rid, target=target, previous=seen.get(rid, ""))
                applied[rid] = seen[rid] = target
        if egress:
            map_eips(eips)
        time.sleep(max(0.0, spec["poll"] - (time.monotonic() - t0)))
    emit("exit")
    return 0


def bake_in_namespace(
    workdir: Path, ns: str, group: str, table: str, log: Callable[[str], None] = print
) -> tuple[nspawn.Image, nspawn.Container]:
    """Make ``ns`` shaped like a NAT's (pub0, a default route), run the stack's user data in a container
    joined to it (nspawn.bake_image), power it off; the image and the closed container. The caller
    deletes ``ns``."""
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "link", "add", "pub0", "type", "veth", "peer", "name", "pub0p")
    for dev in ("pub0", "pub0p"):
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", ns, "addr", "add", "203.0.113.99/24", "dev", "pub0")
    sh("ip", "-n", ns, "route", "add", "default", "via", INET_IP, "dev", "pub0")
    image, bake = nspawn.bake_image(workdir, ns, group=group, table=table, log=log)
    bake.poweroff()
    bake.close()
    if not (image.layer / "opt" / "nat-ha" / "bin" / "nat-ha").exists():
        raise RuntimeError(f"the user data did not install nat-ha: {image.bootstrap_log[-800:]}")
    return image, bake


def prebake(record: Path, group: str = "lab", table: str = "nat-ha") -> int:
    """Bake the systemd lab's image ahead of its tier and write its record (``NAT_HA_PREBAKED_IMAGE``).

    tests/run-all.sh runs it in the background (nice 19) while the earlier tiers run: the bake is a download-free
    install in a container (about a minute), nothing in it is timed, and the systemd tier then starts
    with its containers. Holds the record's lock while baking (the lab waits for it); its namespace
    is deleted at the end, its layer is kept next to the record.
    """
    record.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    ns = f"{PREFIX}{os.getpid()}-prebake"
    with nspawn.file_lock(record.with_name(record.name + ".lock")):
        cleanup_stale()
        nspawn.cleanup_stale()
        try:
            image, _ = bake_in_namespace(record.parent / "containers", ns, group, table)
        finally:
            sh("ip", "netns", "del", ns, check=False)
        image.save(record, group, table)
    print(f"baked: {record}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "reconcile":
        return reconcile(argv[1])
    if len(argv) == 2 and argv[0] == "prebake":
        return prebake(Path(argv[1]))
    print("usage: python -m agent.lab.netlab reconcile SPEC.json | prebake RECORD.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
