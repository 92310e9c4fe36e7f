"""Self checks of this NAT: is it able to forward and translate traffic?

They go into the heartbeat. An agent whose checks fail hands its route tables to a
healthy peer and never takes over anyone else's. ip_forward and conntrack are
read from /proc every cycle (one pread(2) each, see ProcFile); firewall rules and
egress probes are read every ``rules_interval`` (they spawn a process or open a
connection).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.config import SelfCheckConfig
from agent.host.nat import (
    CONNTRACK_SYSCTLS,
    masquerade_present,
    nft_firewall_present,
    nft_guarded_addresses,
    persisted_masquerade_present,
    persisted_text,
)
from coordinator.items import Health

FLOW_GUARD_CHECK = "flow_guard"

RunCommand = Callable[[list[str]], "str | None"]  # stdout, or None if it could not run


def forward_blocked(iptables_save_text: str, nft_ruleset_text: str) -> bool:
    """True when the firewall drops every forwarded packet.

    Catches the usual ways forwarding is switched off by hand or by a bad change:
    a FORWARD policy of DROP with no ACCEPT rule, an unconditional ``-A FORWARD -j
    DROP`` (or REJECT) before any ACCEPT, or an nftables forward-hook chain whose
    policy is drop with no accept rule or whose first rule is a bare drop.
    """
    table = ""
    policy_drop = False
    for line in iptables_save_text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
        elif table == "filter" and line.startswith(":FORWARD "):
            policy_drop = line.split()[1] == "DROP"
        elif table == "filter" and line.startswith("-A FORWARD "):
            rest = line[len("-A FORWARD ") :].split()
            if rest in (["-j", "DROP"], ["-j", "REJECT"]):
                return True
            if rest[-2:] == ["-j", "ACCEPT"]:
                policy_drop = False
                break
    if policy_drop:
        return True
    chain_lines: list[str] = []
    in_forward = False
    for line in nft_ruleset_text.splitlines():
        text = line.strip()
        if text.startswith("chain "):
            chain_lines, in_forward = [], False
        elif "hook forward" in text:
            in_forward = True
            if "policy drop" in text:
                chain_lines.append("policy drop")
        elif in_forward and text == "}":
            rules = [r for r in chain_lines if r != "policy drop"]
            if rules and rules[0] == "drop":
                return True
            if "policy drop" in chain_lines and not any("accept" in r for r in rules):
                return True
            in_forward = False
        elif in_forward and text:
            chain_lines.append(text)
    return False


def run_command(argv: list[str]) -> str | None:
    """Run a read-only command with a short timeout; None when unavailable or denied."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=2.0, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


class ProcFile:
    """A small /proc file read every cycle: one pread(2) at offset 0 on a descriptor kept open.

    A /proc/sys file computes its value at every read from offset 0, so a kept-open
    descriptor sees every change (checked: a kept-open ip_forward shows ``sysctl -w``
    at once, nf_conntrack_count follows new connections). That is one system call
    instead of open, fstat, ioctl, read and close plus Python's io objects (~2 us
    instead of ~45 us per file with ``Path.read_text``). After an error (e.g. the
    conntrack module unloaded, which makes reads of its files fail) the file is
    opened again; a missing file is looked for again at every read. ``reopen()``
    drops the descriptor so that a file *replaced* by another one (not a thing
    /proc/sys does; a test directory may) is seen at the next read.
    """

    SIZE = 64  # the values read here are one number; a longer file is cut here

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def read(self) -> str | None:
        """The file's stripped text, or None if it cannot be opened or read."""
        if self.fd >= 0:
            try:
                return os.pread(self.fd, self.SIZE, 0).decode(errors="replace").strip()
            except OSError:
                self.reopen()
        try:
            self.fd = os.open(self.path, os.O_RDONLY)  # not inherited by the commands run here (PEP 446)
            return os.pread(self.fd, self.SIZE, 0).decode(errors="replace").strip()
        except OSError:
            self.reopen()
            return None

    def reopen(self) -> None:
        """Close the descriptor; the next read opens the file again."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):  # a failed close must not fail the health check
                os.close(fd)

    def __del__(self) -> None:
        self.reopen()


def tcp_reachable(target: str, timeout: float) -> bool:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class FlowGuardCheck:
    """What conntrack_sync needs from this host (setup-nat puts it there): check ``flow_guard``.

    The guard rule covers ``addresses`` (this host's address for each route table), the firewall is
    on ``interface`` when ``firewall``, and the conntrack sysctls are set. Without them a table
    taken over keeps its flows' entries but the server's first packets could draw resets.
    """

    addresses: tuple[str, ...]
    interface: str = ""
    firewall: bool = True


def flow_guard_problems(nft_text: str, want: FlowGuardCheck, sysctls: dict[str, str | None]) -> list[str]:
    """What is missing for ``want`` in the table ``ip nat_ha`` text and the sysctl values read (one item each)."""
    out = []
    missing = sorted(set(want.addresses) - nft_guarded_addresses(nft_text))
    if missing:
        out.append(f"no guard rule for {', '.join(missing)}")
    if want.firewall and want.interface and not nft_firewall_present(nft_text, want.interface):
        out.append(f"no firewall on {want.interface}")
    for key, value in CONNTRACK_SYSCTLS.items():
        if sysctls.get(key) != value:
            out.append(f"{key} is {sysctls.get(key) or 'unreadable'}")
    return out


@dataclass
class SelfChecker:
    config: SelfCheckConfig
    run: RunCommand = run_command
    reach: Callable[[str, float], bool] = tcp_reachable
    persist_root: str = "/"  # where setup-nat's persisted rules are (tests point it elsewhere)
    flow_guard: FlowGuardCheck | None = None  # with conntrack_sync: check flow_guard
    _rules_at: float = field(default=-1e18, init=False)
    _rules_unreadable: bool = field(default=False, init=False)
    _slow: dict[str, bool] = field(default_factory=dict, init=False)
    _slow_detail: list[str] = field(default_factory=list, init=False)
    _files: dict[str, ProcFile] = field(default_factory=dict, init=False)

    def _read(self, rel: str) -> str | None:
        f = self._files.get(rel)
        if f is None:
            f = self._files[rel] = ProcFile(os.path.join(self.config.procfs, rel))
        return f.read()

    def close(self) -> None:
        """Close the /proc descriptors (they are opened again when needed)."""
        for f in self._files.values():
            f.reopen()

    def _fast(self) -> tuple[dict[str, bool], list[str]]:
        checks: dict[str, bool] = {}
        detail: list[str] = []
        if self.config.ip_forward:
            value = self._read("sys/net/ipv4/ip_forward")
            checks["ip_forward"] = value == "1"
            if value != "1":
                detail.append(f"ip_forward is {value or 'unreadable'}")
        count, maximum = (
            self._read("sys/net/netfilter/nf_conntrack_count"),
            self._read("sys/net/netfilter/nf_conntrack_max"),
        )
        if count is not None and maximum is not None and count.isdigit() and maximum.isdigit() and int(maximum):
            ratio = int(count) / int(maximum)
            checks["conntrack"] = ratio <= self.config.conntrack_max_ratio
            if not checks["conntrack"]:
                detail.append(f"conntrack table {ratio:.0%} full")
        else:
            checks["conntrack"] = True  # no conntrack module loaded: no table to fill
        return checks, detail

    def _rules(self) -> tuple[dict[str, bool], list[str]]:
        checks: dict[str, bool] = {}
        detail: list[str] = []
        if self.config.masquerade or self.config.forwarding:
            ipt = None if self._rules_unreadable else self.run(["iptables-save"])
            nft = None if self._rules_unreadable else self.run(["nft", "list", "ruleset"])
            if ipt is None and nft is None:
                # The systemd unit grants CAP_NET_RAW only, so the live rules cannot be read;
                # fall back to what setup-nat persisted, and stop spawning commands that fail.
                self._rules_unreadable = True
                if self.config.masquerade:
                    checks["masquerade"] = persisted_masquerade_present(self.persist_root, self.config.public_interface)
                    if not checks["masquerade"]:
                        detail.append("no masquerade rule persisted by setup-nat (live rules unreadable)")
            else:
                if self.config.masquerade:
                    checks["masquerade"] = masquerade_present(ipt or "", nft or "", self.config.public_interface)
                    if not checks["masquerade"]:
                        detail.append("no masquerade rule")
                if self.config.forwarding:
                    blocked = forward_blocked(ipt or "", nft or "")
                    checks["forwarding"] = not blocked
                    if blocked:
                        detail.append("forwarded packets are dropped by the firewall")
        if self.flow_guard is not None:
            nft = None if self._rules_unreadable else self.run(["nft", "list", "table", "ip", "nat_ha"])
            sysctls = {k: self._read("sys/" + k.replace(".", "/")) for k in CONNTRACK_SYSCTLS}
            # Without CAP_NET_ADMIN the live rules cannot be listed: what setup-nat persisted stands in.
            problems = flow_guard_problems(nft if nft is not None else persisted_text(self.persist_root),
                                           self.flow_guard, sysctls)  # fmt: skip
            checks[FLOW_GUARD_CHECK] = not problems
            detail.extend(f"{p} (conntrack_sync: run nat-ha setup-nat)" for p in problems)
        if self.config.egress_targets:
            ok = [t for t in self.config.egress_targets if self.reach(t, self.config.egress_timeout)]
            checks["egress"] = bool(ok)
            if not ok:
                detail.append(f"no egress target answered ({', '.join(self.config.egress_targets)})")
        return checks, detail

    def check(self, now: float, reaches: tuple[str, ...] = ()) -> Health:
        if now - self._rules_at >= self.config.rules_interval:
            self._slow, self._slow_detail = self._rules()
            self._rules_at = now
            self.close()  # now and then a fresh open: a replaced file is not read forever
        checks, detail = self._fast()
        checks.update(self._slow)
        detail.extend(self._slow_detail)
        return Health(all(checks.values()), checks, reaches, "; ".join(detail))
