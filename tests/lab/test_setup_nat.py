"""`nat-ha setup-nat` for real, inside network namespaces this test creates.

Topology (all addresses inside the test's namespaces; nothing in the root namespace):

    priv (10.77.0.2) --veth-- nat (10.77.0.1 | pub0 203.0.113.2) --veth-- inet (203.0.113.10)

`inet` has no route back to 10.77.0.0/24, so a reply from 203.0.113.10 reaches `priv` only if
`nat` masqueraded the request: the ping proves the rule setup-nat made works.
"""

from __future__ import annotations

import os
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
        _sh("ip", "-n", self.nat, "route", "add", "default", "via", "203.0.113.10")  # setup-nat finds pub0
        _sh("ip", "-n", self.priv, "route", "add", "default", "via", "10.77.0.1")

    def teardown(self) -> None:
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)

    def setup_nat(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["ip", "netns", "exec", self.nat, sys.executable, "-m", "agent.commands.setup_nat", *args]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
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
