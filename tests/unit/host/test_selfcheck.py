"""Self checks against a fake /proc and canned firewall listings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from agent.config import SelfCheckConfig
from agent.host.selfcheck import ProcFile, SelfChecker, forward_blocked

IPT_OK = """*nat
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o eth0 -m comment --comment nat-ha -j MASQUERADE
COMMIT
*filter
:FORWARD ACCEPT [0:0]
COMMIT
"""


def procfs(tmp_path: Path, ip_forward: str = "1", count: int | None = 10, maximum: int = 1000) -> str:
    (tmp_path / "sys/net/ipv4").mkdir(parents=True, exist_ok=True)
    (tmp_path / "sys/net/ipv4/ip_forward").write_text(ip_forward + "\n")
    if count is not None:
        (tmp_path / "sys/net/netfilter").mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys/net/netfilter/nf_conntrack_count").write_text(f"{count}\n")
        (tmp_path / "sys/net/netfilter/nf_conntrack_max").write_text(f"{maximum}\n")
    return str(tmp_path)


def checker(tmp_path: Path, ipt: str | None = IPT_OK, nft: str | None = None, **cfg: object) -> SelfChecker:
    outputs = {"iptables-save": ipt, "nft": nft}
    calls: list[str] = []

    def run(argv: list[str]) -> str | None:
        calls.append(argv[0])
        return outputs[argv[0]]

    root = cfg.pop("procfs") if "procfs" in cfg else procfs(tmp_path)
    config = SelfCheckConfig(procfs=str(root), **cfg)  # type: ignore[arg-type]
    c = SelfChecker(
        config, run=run, reach=lambda target, timeout: target.endswith(":443"), persist_root=str(tmp_path / "root")
    )
    c.calls = calls  # type: ignore[attr-defined]
    return c


def test_all_good(tmp_path: Path) -> None:
    h = checker(tmp_path, public_interface="eth0").check(0.0, ("i-b",))
    assert h.healthy and h.reaches == ("i-b",)
    assert h.checks == {"ip_forward": True, "conntrack": True, "masquerade": True, "forwarding": True}


def test_ip_forward_off(tmp_path: Path) -> None:
    h = checker(tmp_path, procfs=procfs(tmp_path, ip_forward="0")).check(0.0)
    assert not h.healthy and h.checks["ip_forward"] is False and "ip_forward is 0" in h.detail


def test_conntrack_nearly_full(tmp_path: Path) -> None:
    h = checker(tmp_path, procfs=procfs(tmp_path, count=950, maximum=1000)).check(0.0)
    assert not h.healthy and "conntrack table 95% full" in h.detail


def test_no_conntrack_module_is_not_a_failure(tmp_path: Path) -> None:
    assert checker(tmp_path, procfs=procfs(tmp_path, count=None)).check(0.0).checks["conntrack"] is True


def test_masquerade_missing_or_on_another_interface(tmp_path: Path) -> None:
    h = checker(tmp_path, public_interface="ens5").check(0.0)
    assert not h.healthy and "no masquerade rule" in h.detail
    nft = (
        "table ip nat_ha {\n chain post {\n  type nat hook postrouting priority srcnat;\n"
        '  oifname "ens5" masquerade\n }\n}\n'
    )
    assert checker(tmp_path, ipt=None, nft=nft, public_interface="ens5").check(0.0).checks["masquerade"] is True


@pytest.mark.parametrize(
    ("ipt", "nft", "blocked"),
    [
        ("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n", "", True),
        ("*filter\n:FORWARD DROP [0:0]\n-A FORWARD -i eth1 -j ACCEPT\nCOMMIT\n", "", False),
        ("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j DROP\nCOMMIT\n", "", True),
        ("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -s 10.0.0.0/8 -j DROP\nCOMMIT\n", "", False),
        ("", "table inet f {\n chain fwd {\n  type filter hook forward priority 0; policy drop;\n }\n}\n", True),
        (
            "",
            "table inet f {\n chain fwd {\n  type filter hook forward priority 0; policy drop;\n"
            "  ct state established accept\n }\n}\n",
            False,
        ),
        (
            "",
            "table inet f {\n chain fwd {\n  type filter hook forward priority 0; policy accept;\n  drop\n }\n}\n",
            True,
        ),
        (IPT_OK, "", False),
    ],
)
def test_forward_blocked(ipt: str, nft: str, blocked: bool) -> None:
    assert forward_blocked(ipt, nft) is blocked


def test_egress_targets(tmp_path: Path) -> None:
    assert checker(tmp_path, egress_targets=("203.0.113.10:443",)).check(0.0).checks["egress"] is True
    h = checker(tmp_path, egress_targets=("203.0.113.10:80",)).check(0.0)
    assert not h.healthy and "no egress target answered" in h.detail


def test_rules_read_at_their_own_interval(tmp_path: Path) -> None:
    c = checker(tmp_path, rules_interval=2.0)
    c.check(0.0)
    c.check(1.0)
    assert c.calls == ["iptables-save", "nft"]  # type: ignore[attr-defined]
    c.check(2.5)
    assert c.calls == ["iptables-save", "nft"] * 2  # type: ignore[attr-defined]


def test_unreadable_rules_fall_back_to_persisted_setup(tmp_path: Path) -> None:
    c = checker(tmp_path, ipt=None, nft=None, rules_interval=0.1)
    h = c.check(0.0)
    assert not h.healthy and "no masquerade rule persisted by setup-nat" in h.detail
    assert "forwarding" not in h.checks  # cannot be judged without the live rules
    persisted = tmp_path / "root" / "etc" / "nat-ha"
    persisted.mkdir(parents=True)
    (persisted / "nat-ha.nft").write_text(
        "table ip nat_ha\ndelete table ip nat_ha\ntable ip nat_ha {\n chain postrouting {\n"
        '  type nat hook postrouting priority srcnat; policy accept;\n  oifname "eth0" masquerade\n }\n}\n'
    )
    assert c.check(1.0).checks["masquerade"] is True
    assert c.calls == ["iptables-save", "nft"], "commands that cannot work were spawned again"  # type: ignore[attr-defined]


# ------------------------------------------------------------- /proc reads on kept descriptors
def test_proc_file_keeps_its_descriptor_and_sees_changes(tmp_path: Path) -> None:
    path = tmp_path / "ip_forward"
    path.write_text("1\n")
    f = ProcFile(str(path))
    assert f.read() == "1"
    fd = f.fd
    path.write_text("0\n")  # rewritten in place, as a sysctl changes
    assert f.read() == "0" and f.fd == fd
    f.reopen()
    assert f.fd == -1 and f.read() == "0" and f.fd >= 0
    f.reopen()


def test_proc_file_reopens_after_a_read_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "nf_conntrack_count"
    path.write_text("5\n")
    f = ProcFile(str(path))
    assert f.read() == "5"
    real_pread = os.pread
    failures = iter([True])

    def pread(fd: int, n: int, offset: int) -> bytes:
        if next(failures, False):
            raise OSError(2, "No such file or directory")  # what a read of an unloaded module's sysctl gives
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    path.unlink()
    path.write_text("7\n")  # a new file: only a fresh open sees it
    assert f.read() == "7"
    f.reopen()


def test_proc_file_missing_or_unreadable(tmp_path: Path) -> None:
    missing = ProcFile(str(tmp_path / "nope"))
    assert missing.read() is None and missing.fd == -1
    (tmp_path / "nope").write_text("3\n")
    assert missing.read() == "3"  # a file that appears is found at the next read
    missing.reopen()
    directory = ProcFile(str(tmp_path))  # opens, but read() fails: EISDIR
    assert directory.read() is None and directory.fd == -1


def test_conntrack_files_appear_and_disappear(tmp_path: Path) -> None:
    root = procfs(tmp_path, count=None)
    c = checker(tmp_path, procfs=root, rules_interval=2.0)
    assert c.check(0.0).checks["conntrack"] is True  # module not loaded
    procfs(tmp_path, count=950, maximum=1000)  # loaded, and nearly full
    h = c.check(0.35)
    assert h.checks["conntrack"] is False and "conntrack table 95% full" in h.detail
    for name in ("nf_conntrack_count", "nf_conntrack_max"):
        (tmp_path / "sys/net/netfilter" / name).unlink()
    # A /proc/sys file of an unloaded module fails to read at once; a deleted regular file
    # stays readable on its descriptor, so here it is seen at the next reopen (rules_interval).
    assert c.check(2.5).checks["conntrack"] is True
    c.close()


def test_unreadable_values(tmp_path: Path) -> None:
    h = checker(tmp_path, procfs=procfs(tmp_path, ip_forward="")).check(0.0)
    assert not h.healthy and "ip_forward is unreadable" in h.detail
    (tmp_path / "sys/net/ipv4/ip_forward").unlink()
    (tmp_path / "sys/net/ipv4/ip_forward").mkdir()
    h = checker(tmp_path, procfs=str(tmp_path)).check(0.0)
    assert not h.healthy and "ip_forward is unreadable" in h.detail
    (tmp_path / "sys/net/netfilter/nf_conntrack_count").write_text("lots\n")
    assert checker(tmp_path, procfs=str(tmp_path)).check(0.0).checks["conntrack"] is True
    (tmp_path / "sys/net/netfilter/nf_conntrack_count").write_text("5\n")
    (tmp_path / "sys/net/netfilter/nf_conntrack_max").write_text("0\n")
    assert checker(tmp_path, procfs=str(tmp_path)).check(0.0).checks["conntrack"] is True


def test_ip_forward_changes_are_seen_without_reopening(tmp_path: Path) -> None:
    c = checker(tmp_path, rules_interval=1e9)
    assert c.check(0.0).checks["ip_forward"] is True
    (tmp_path / "sys/net/ipv4/ip_forward").write_text("0\n")
    h = c.check(0.35)
    assert h.checks["ip_forward"] is False and "ip_forward is 0" in h.detail
    c.close()


NETNS_SCRIPT = textwrap.dedent(
    """
    import subprocess
    from agent.config import SelfCheckConfig
    from agent.host.selfcheck import SelfChecker

    c = SelfChecker(SelfCheckConfig(masquerade=False, forwarding=False, rules_interval=1e9))
    seen = [c.check(0.0).checks["ip_forward"]]
    fd = c._files["sys/net/ipv4/ip_forward"].fd
    for value in ("1", "0", "1"):
        subprocess.run(["sysctl", "-qw", f"net.ipv4.ip_forward={value}"], check=True)
        seen.append(c.check(0.0).checks["ip_forward"])
    assert c._files["sys/net/ipv4/ip_forward"].fd == fd, "the descriptor was reopened"
    print(seen)
    """
)


@pytest.mark.lab
def test_kept_open_proc_sys_descriptor_sees_sysctl_changes_in_a_netns() -> None:
    """On this kernel: a kept-open /proc/sys/net/ipv4/ip_forward shows each ``sysctl -w`` (own namespace)."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("sysctl") is None:
        pytest.skip("needs root, iproute2 and sysctl (a network namespace of its own)")
    ns = f"natha-sc-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, timeout=10, check=False)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` failed: {made.stderr.strip()}")
    try:
        run = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", NETNS_SCRIPT],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=Path(__file__).resolve().parents[3],
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "[False, True, False, True]"  # a new namespace starts with ip_forward 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)


# ------------------------------------------------------------- conntrack_sync's flow_guard
def test_flow_guard_needs_the_guard_firewall_and_sysctls(tmp_path: Path) -> None:
    from agent.host import nat as hostnat
    from agent.host.selfcheck import FlowGuardCheck

    root = procfs(tmp_path)
    guard = hostnat.FlowGuard((("10.0.100.21", "rtb-a"), ("10.0.100.22", "rtb-b")), True, ("10.0.0.0/8",))
    persisted = tmp_path / "root" / "etc" / "nat-ha"
    persisted.mkdir(parents=True)
    (persisted / "nat-ha.nft").write_text(hostnat.nft_ruleset("eth0", [], guard))
    want = FlowGuardCheck(("10.0.100.21", "10.0.100.22"), "eth0", True)
    c = SelfChecker(SelfCheckConfig(procfs=root, rules_interval=0.1), run=lambda argv: None,
                    persist_root=str(tmp_path / "root"), flow_guard=want)  # fmt: skip
    h = c.check(0.0)  # live rules unreadable (no CAP_NET_ADMIN): the persisted file stands in
    assert h.checks["flow_guard"] is False
    assert "nf_conntrack_tcp_loose is unreadable" in h.detail and "run nat-ha setup-nat" in h.detail
    for key in hostnat.CONNTRACK_SYSCTLS:
        Path(root, "sys", *key.split(".")).write_text("1\n")
    assert c.check(1.0).checks["flow_guard"] is True
    (persisted / "nat-ha.nft").write_text(hostnat.nft_ruleset("eth0", [], hostnat.FlowGuard(guard.addresses[:1])))
    h = c.check(2.0)
    assert h.checks["flow_guard"] is False and "no guard rule for 10.0.100.22" in h.detail
    assert "no firewall on eth0" not in h.detail  # FlowGuard's default: firewall on
    (persisted / "nat-ha.nft").write_text(hostnat.nft_ruleset("eth0", [], hostnat.FlowGuard(guard.addresses, False)))
    assert "no firewall on eth0" in c.check(3.0).detail
    assert "flow_guard" not in checker(tmp_path).check(0.0).checks  # conntrack_sync off: no such check
