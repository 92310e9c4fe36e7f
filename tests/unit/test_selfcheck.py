"""Self checks against a fake /proc and canned firewall listings."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import SelfCheckConfig
from agent.selfcheck import SelfChecker, forward_blocked

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
