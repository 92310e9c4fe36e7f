"""`nat-ha setup-nat` for real, inside network namespaces this test creates.

Topology (all addresses inside the test's namespaces; nothing in the root namespace):

    priv (10.77.0.2, 10.77.1.2) --veth-- nat (10.77.0.1, 10.77.1.1 | pub0 203.0.113.2) --veth-- inet (203.0.113.10)

`inet` has no route back to 10.77.0.0/16, so a reply from 203.0.113.10 reaches `priv` only if
`nat` translated the request: the ping proves the rule setup-nat made works. With
``egress_ip = "follow"`` (test_setup_nat_egress_follow) `inet` counts echo requests by source
address (iptables counters in its INPUT chain), which shows which address each subnet left with.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.host import nat as hostnat

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=5, check=False)
    if probe.returncode != 0:
        return f"`ip netns` unavailable: {probe.stderr.strip()}"
    return None


def _sh(*cmd: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc


class Lab:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.nat, self.priv, self.inet = (f"nat-ha-test-{tag}-{n}" for n in ("nat", "priv", "inet"))
        self.made: list[str] = []

    def build(self) -> None:
        for ns in (self.nat, self.priv, self.inet):
            _sh("ip", "netns", "add", ns)
            self.made.append(ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "link", "add", "pub0", "netns", self.nat, "type", "veth", "peer", "name", "eth0", "netns", self.inet)
        _sh("ip", "link", "add", "priv0", "netns", self.nat, "type", "veth", "peer", "name", "eth0", "netns", self.priv)
        for ns, dev, addr in (
            (self.nat, "pub0", "203.0.113.2/24"),
            (self.inet, "eth0", "203.0.113.10/24"),
            (self.nat, "priv0", "10.77.0.1/24"),
            (self.priv, "eth0", "10.77.0.2/24"),
        ):
            _sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
        _sh("ip", "-n", self.nat, "addr", "add", "10.77.1.1/24", "dev", "priv0")  # a second private subnet
        _sh("ip", "-n", self.priv, "addr", "add", "10.77.1.2/24", "dev", "eth0")
        _sh("ip", "-n", self.nat, "route", "add", "default", "via", "203.0.113.10")  # setup-nat finds pub0
        _sh("ip", "-n", self.priv, "route", "add", "default", "via", "10.77.0.1")

    def teardown(self) -> None:
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)

    def count_sources(self, *sources: str) -> None:
        """Count echo requests reaching `inet` from each of ``sources`` (and from anything else)."""
        for src in sources:
            _sh("ip", "netns", "exec", self.inet, "iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type",
                "echo-request", "-s", src)  # fmt: skip
        _sh("ip", "netns", "exec", self.inet, "iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request")

    def counted(self) -> dict[str, int]:
        """Echo requests per source counted so far ("*": every one)."""
        out = _sh("ip", "netns", "exec", self.inet, "iptables-save", "-c", "-t", "filter").stdout
        found: dict[str, int] = {}
        for line in out.splitlines():
            m = re.match(r"^\[(\d+):\d+\] -A INPUT (?:-s (\S+?)(?:/32)? )?-p icmp", line)
            if m:
                found[m.group(2) or "*"] = int(m.group(1))
        return found

    def ping_from(self, source: str, count: int) -> bool:
        cmd = ["ip", "netns", "exec", self.priv, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-I",
               source, "203.0.113.10"]  # fmt: skip
        return _sh(*cmd, check=False, timeout=count + 5).returncode == 0

    def setup_nat(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["ip", "netns", "exec", self.nat, sys.executable, "-m", "agent.commands.setup_nat", *args]
        # No sbin directory on PATH, like an ordinary user's shell on Debian: setup-nat must find
        # nft, iptables and ip in /usr/sbin by itself (it said "neither nft nor iptables is installed").
        path = ":".join(p for p in os.environ.get("PATH", "").split(":") if p and not p.endswith("/sbin"))
        env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": path or "/usr/bin:/bin"}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False, env=env, cwd=REPO)

    def ping_out(self, count: int) -> bool:
        cmd = ["ip", "netns", "exec", self.priv, "ping", "-n", "-q", "-c", str(count), "-W", "1", "203.0.113.10"]
        return _sh(*cmd, check=False, timeout=count + 5).returncode == 0

    def listings(self) -> tuple[str, str]:
        ipt = _sh("ip", "netns", "exec", self.nat, "iptables-save", "-t", "nat", check=False).stdout
        nft = _sh("ip", "netns", "exec", self.nat, "nft", "list", "ruleset", check=False).stdout
        return ipt, nft


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()
        left = _sh("ip", "netns", "list", check=False).stdout
        assert lab.nat not in left and lab.priv not in left and lab.inet not in left


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_setup_nat_in_namespace(lab: Lab, backend: str, tmp_path: Path) -> None:
    tool = "nft" if backend == "nftables" else "iptables"
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    if backend == "nftables":
        (root / "etc" / "nftables.conf").write_text("#!/usr/sbin/nft -f\nflush ruleset\n")
    args = ("--root", str(root), "--backend", backend)

    before = lab.setup_nat(*args, "--check")
    assert before.returncode == 1, before
    assert "missing: sysctl net.ipv4.ip_forward = 1" in before.stdout
    assert "missing: masquerade on pub0" in before.stdout
    assert not lab.ping_out(1), "packets got out before setup-nat: the test proves nothing"

    dry = lab.setup_nat(*args, "--dry-run")
    assert dry.returncode == 0 and "would apply: masquerade on pub0" in dry.stdout
    assert lab.setup_nat(*args, "--check").returncode == 1, "--dry-run changed something"

    applied = lab.setup_nat(*args)
    assert applied.returncode == 0, applied.stderr
    assert "applied: masquerade on pub0" in applied.stdout
    after = lab.setup_nat(*args, "--check")
    assert after.returncode == 0, after.stdout
    assert "missing" not in after.stdout

    again = lab.setup_nat(*args)
    assert again.returncode == 0 and "applied" not in again.stdout, again.stdout
    ipt, nft = lab.listings()
    # iptables-nft rules show in both listings: count in the one the backend writes to.
    listed = ("", nft) if backend == "nftables" else (ipt, "")
    count = hostnat.masquerade_count(*listed, "pub0")
    assert count == 1, (ipt, nft)
    assert hostnat.masquerade_present(ipt, nft, "pub0")

    # Persisted under --root only, and recognised by the capability-free helper.
    assert (root / hostnat.SYSCTL_FILE).read_text() == hostnat.sysctl_conf_text()
    assert hostnat.persisted_masquerade_present(root, "pub0")
    assert not hostnat.persisted_masquerade_present(root, "eth9")
    if backend == "nftables":
        conf = (root / "etc" / "nftables.conf").read_text()
        assert conf.count(hostnat.nft_include_line()) == 1
        # The persisted file itself loads cleanly on top of the live rule (boot path), still one rule.
        _sh("ip", "netns", "exec", lab.nat, "nft", "-f", str(root / hostnat.NFT_FILE))
        assert hostnat.masquerade_count("", lab.listings()[1], "pub0") == 1

    assert lab.ping_out(3), "ping from the private namespace was not masqueraded through setup-nat's rule"


def test_setup_nat_bad_arguments(lab: Lab, tmp_path: Path) -> None:
    for args, message in (
        (("--public-interface", "nosuch0", "--check"), "no interface named 'nosuch0'"),
        (("--public-interface", "bad name", "--check"), "is not an interface name"),
        (("--root", str(tmp_path / "absent"), "--check"), "is not a directory"),
        (("--backend", "pf"), "invalid choice"),
    ):
        proc = lab.setup_nat(*args)
        assert proc.returncode == 2, (args, proc)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # No default route and no --public-interface: one clear line.
    _sh("ip", "-n", lab.nat, "route", "del", "default")
    proc = lab.setup_nat("--check", "--root", str(tmp_path))
    assert proc.returncode == 2 and "no IPv4 default route" in proc.stderr


EGRESS_CONFIG = """
group = "lab"
region = "us-east-1"
egress_ip = "follow"

[store]
endpoint_url = "http://127.0.0.1:1"

[ec2]
endpoint_url = "http://127.0.0.1:1"
account_id = "123456789012"

[[members]]
instance_id = "i-aaaa"
address = "10.77.0.1"
eni = "eni-aaaa"
route_tables = ["rtb-aaaa"]

[[members]]
instance_id = "i-bbbb"
address = "10.88.0.1"
eni = "eni-bbbb"
route_tables = ["rtb-bbbb"]

[[egress.tables]]
route_table = "rtb-aaaa"
allocation_id = "eipalloc-aaaa"
subnets = ["10.77.0.0/24"]
addresses = { "i-aaaa" = "203.0.113.21", "i-bbbb" = "10.66.0.21" }

[[egress.tables]]
route_table = "rtb-bbbb"
allocation_id = "eipalloc-bbbb"
subnets = ["10.88.0.0/24"]
addresses = { "i-aaaa" = "203.0.113.22", "i-bbbb" = "10.66.0.22" }
"""


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_setup_nat_egress_follow(lab: Lab, backend: str, tmp_path: Path) -> None:
    """Each table's address on pub0 and its subnets SNATed to it, ahead of the masquerade; idempotent.

    The host is i-aaaa because its member address (10.77.0.1) is one of this host's addresses.
    Subnet 10.77.0.0/24 (table rtb-aaaa) must leave as 203.0.113.21; 10.77.1.0/24 is in no
    table and leaves masqueraded (203.0.113.2); nothing of rtb-bbbb's subnet passes here.
    """
    tool = "nft" if backend == "nftables" else "iptables"
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    config = tmp_path / "config.toml"
    config.write_text(EGRESS_CONFIG)
    args = ("--root", str(root), "--backend", backend, "--config", str(config))
    lab.count_sources("203.0.113.21", "203.0.113.2")

    before = lab.setup_nat(*args, "--check")
    assert before.returncode == 1, before
    for line in (
        "missing: address 203.0.113.21 on pub0 (egress of rtb-aaaa)",
        "missing: address 203.0.113.22 on pub0 (egress of rtb-bbbb)",
        f"missing: snat 10.77.0.0/24 -> 203.0.113.21 on pub0 ({backend}, egress of rtb-aaaa)",
        f"missing: snat 10.88.0.0/24 -> 203.0.113.22 on pub0 ({backend}, egress of rtb-bbbb)",
    ):
        assert line in before.stdout, before.stdout
    dry = lab.setup_nat(*args, "--dry-run")
    assert "would apply: address 203.0.113.21 on pub0 (egress of rtb-aaaa)" in dry.stdout, dry.stdout
    assert lab.setup_nat(*args, "--check").returncode == 1, "--dry-run changed something"

    applied = lab.setup_nat(*args)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    # nftables: the SNAT rules come with the masquerade, in one transaction (the whole table ip nat_ha).
    verb = "ok" if backend == "nftables" else "applied"
    assert f"{verb}: snat 10.77.0.0/24 -> 203.0.113.21 on pub0 ({backend}, egress of rtb-aaaa)" in applied.stdout
    assert "applied: address 203.0.113.21 on pub0 (egress of rtb-aaaa)" in applied.stdout
    again = lab.setup_nat(*args)
    assert again.returncode == 0 and "applied" not in again.stdout, again.stdout
    assert lab.setup_nat(*args, "--check").returncode == 0

    ipt, nft = lab.listings()
    listed = hostnat.nft_snats(nft, "pub0") if backend == "nftables" else hostnat.iptables_snats(ipt, "pub0")
    assert sorted(listed, key=lambda s: s.subnet) == [
        hostnat.Snat("10.77.0.0/24", "203.0.113.21"),
        hostnat.Snat("10.88.0.0/24", "203.0.113.22"),
    ], listed
    addrs = hostnat.interface_addresses(_sh("ip", "-n", lab.nat, "-j", "-4", "addr", "show", "dev", "pub0").stdout)
    assert sorted(addrs) == ["203.0.113.2", "203.0.113.21", "203.0.113.22"]
    if backend == "iptables":  # ahead of the masquerade rule in the same chain
        rules = [ln for ln in ipt.splitlines() if ln.startswith("-A POSTROUTING")]
        assert [("SNAT" in r, "MASQUERADE" in r) for r in rules] == [(True, False), (True, False), (False, True)]
    persisted = (root / (hostnat.NFT_FILE if backend == "nftables" else hostnat.IPTABLES_FILE)).read_text()
    assert "203.0.113.21" in persisted and hostnat.persisted_masquerade_present(root, "pub0")

    assert lab.ping_from("10.77.0.2", 3), "the table's subnet got no answer through its SNAT address"
    assert lab.ping_from("10.77.1.2", 3), "a subnet in no table got no answer (masquerade)"
    counted = lab.counted()
    assert counted == {"203.0.113.21": 3, "203.0.113.2": 3, "*": 6}, counted

    # The table's address changes in the config: the old address's rule goes, the new one comes.
    config.write_text(EGRESS_CONFIG.replace('"i-aaaa" = "203.0.113.21"', '"i-aaaa" = "203.0.113.23"'))
    moved = lab.setup_nat(*args)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert f"applied: no other nat-ha snat rules on pub0 ({backend})" in moved.stdout or backend == "nftables"
    ipt, nft = lab.listings()
    listed = hostnat.nft_snats(nft, "pub0") if backend == "nftables" else hostnat.iptables_snats(ipt, "pub0")
    assert sorted(listed, key=lambda s: s.subnet) == [
        hostnat.Snat("10.77.0.0/24", "203.0.113.23"),
        hostnat.Snat("10.88.0.0/24", "203.0.113.22"),
    ], listed
    assert lab.setup_nat(*args, "--check").returncode == 0

    # egress_ip off again: the nat-ha SNAT rules go, the masquerade stays.
    config.write_text(EGRESS_CONFIG.replace('egress_ip = "follow"', 'egress_ip = "off"'))
    off = lab.setup_nat(*args)
    assert off.returncode == 0, off.stdout + off.stderr
    ipt, nft = lab.listings()
    assert hostnat.nft_snats(nft) == [] and hostnat.iptables_snats(ipt) == []
    assert hostnat.masquerade_present(ipt, nft, "pub0")


def test_setup_nat_egress_bad_config(lab: Lab, tmp_path: Path) -> None:
    """Egress settings setup-nat cannot use: one line on stderr, exit 1, and the host still made a NAT.

    nat-ha's SNAT rules and persisted rule file are left as they were (the config says nothing
    trustworthy about them); a --config that does not exist is a usage error (exit 2).
    """
    config = tmp_path / "config.toml"
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    cases = [
        (EGRESS_CONFIG.replace('address = "10.77.0.1"', 'address = "10.99.0.1"'), "cannot tell which member"),
        (
            EGRESS_CONFIG.replace('egress_ip = "follow"', 'egress_ip = "always"'),
            "egress_ip: must be one of off, follow",
        ),
        (EGRESS_CONFIG.replace('"i-aaaa" = "203.0.113.21", ', ""), "no address for member i-aaaa"),
        (EGRESS_CONFIG + "\n[[", "not valid TOML"),
    ]
    for text, message in cases:
        config.write_text(text)
        proc = lab.setup_nat("--config", str(config), "--root", str(root), "--public-interface", "pub0")
        assert proc.returncode == 1, (message, proc)
        assert message in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
        assert "masquerade on pub0" in proc.stdout and "snat" not in proc.stdout, proc.stdout
    ipt, nft = lab.listings()
    assert hostnat.masquerade_present(ipt, nft, "pub0")
    missing = lab.setup_nat("--check", "--config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    config.write_text(EGRESS_CONFIG.replace('address = "10.77.0.1"', 'address = "10.99.0.1"'))
    named = lab.setup_nat("--check", "--config", str(config), "--root", str(root), "--instance-id", "i-bbbb")
    assert "missing: address 10.66.0.21 on pub0 (egress of rtb-aaaa)" in named.stdout, named
