"""Pure helpers about a NAT host's kernel state, shared by ``setup-nat`` and the self check.

Nothing here runs a command or needs a capability: callers pass in the text they
read (``iptables-save``, ``nft list ruleset``, ``/proc/net/route``, a persisted
file) and get an answer. ``nat-ha setup-nat`` creates exactly the rules that
:func:`masquerade_present` recognises, and persists them where
:func:`persisted_masquerade_interfaces` finds them, so the agent's self check can
also trust the persisted state when it runs without ``CAP_NET_ADMIN`` (it cannot
list rules then; ``/proc/sys`` stays readable).

Layout of what ``setup-nat`` writes (relative to ``root``, ``/`` on a real host):

* ``etc/sysctl.d/90-nat-ha.conf`` - :data:`SYSCTLS`, applied by systemd-sysctl at boot.
* nftables backend: ``etc/nat-ha/nat-ha.nft`` - table ``ip nat_ha`` (:func:`nft_ruleset`),
  loadable any number of times with ``nft -f``; an ``include`` of it is appended to
  ``etc/nftables.conf`` or ``etc/sysconfig/nftables.conf`` when that file exists.
* iptables backend: ``etc/nat-ha/iptables-nat.rules`` - the rule in ``iptables-save``
  syntax (:func:`iptables_rules`); ``nat-ha-setup.service`` re-applies it at boot.

With ``egress_ip = "follow"`` each route table's subnets are also SNATed to this host's address
for that table (:class:`Snat`), ahead of the masquerade rule: in nftables a chain of their own
at priority ``srcnat - 10`` (so they win over any masquerade at ``srcnat``, ours or another
table's), in iptables rules inserted at the head of ``POSTROUTING``. A packet of a table whose
address holds no Elastic IP is then dropped by the internet gateway rather than sent out with
this host's own public address.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: The kernel settings a NAT instance needs (key -> value), as in AWS's NAT AMI.
SYSCTLS: dict[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
}

#: With conntrack_sync: a flow picked up mid-stream (a client's packet after a move) is tracked, and a
#: loaded or stale entry without TCP window data does not mark packets INVALID (INVALID packets skip
#: NAT and would leave with a private source address).
CONNTRACK_SYSCTLS: dict[str, str] = {
    "net.netfilter.nf_conntrack_tcp_loose": "1",
    "net.netfilter.nf_conntrack_tcp_be_liberal": "1",
}

COMMENT = "nat-ha"
GUARD_COMMENT = "nat-ha guard"
FIREWALL_COMMENT = "nat-ha firewall"
NFT_FAMILY = "ip"
NFT_TABLE = "nat_ha"
SYSCTL_FILE = "etc/sysctl.d/90-nat-ha.conf"
NFT_FILE = "etc/nat-ha/nat-ha.nft"
IPTABLES_FILE = "etc/nat-ha/iptables-nat.rules"
#: nftables main config files (Debian, then RHEL/Amazon Linux); an include is added to the first that exists.
NFTABLES_CONFS = ("etc/nftables.conf", "etc/sysconfig/nftables.conf")

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


def valid_interface_name(name: str) -> bool:
    """True if ``name`` can be a Linux interface name (1-15 safe characters, no '/' or spaces)."""
    return bool(_IFNAME_RE.match(name)) and name not in (".", "..")


def sysctl_path(key: str, procfs: str = "/proc") -> Path:
    """``net.ipv4.ip_forward`` -> ``/proc/sys/net/ipv4/ip_forward``."""
    return Path(procfs) / "sys" / key.replace(".", "/")


def sysctl_conf_text(conntrack: bool = False) -> str:
    """Content of the persisted sysctl.d file (with ``conntrack``: also :data:`CONNTRACK_SYSCTLS`).

    The netfilter keys exist only once nf_conntrack is loaded, which at boot is after
    systemd-sysctl: they are written with a ``-`` prefix (a missing key is no error) and
    nat-ha-setup.service sets them again after loading the rules.
    """
    lines = ["# Written by nat-ha setup-nat: this host forwards and masquerades for its VPC."]
    lines += [f"{k} = {v}" for k, v in SYSCTLS.items()]
    if conntrack:
        lines += ["# conntrack_sync (set again by nat-ha-setup.service once nf_conntrack is loaded)"]
        lines += [f"-{k} = {v}" for k, v in CONNTRACK_SYSCTLS.items()]
    return "\n".join(lines) + "\n"


def default_route_interface(proc_net_route: str) -> str | None:
    """The interface of the IPv4 default route, from the text of ``/proc/net/route``.

    With several default routes the one with the lowest metric wins; ``None`` when there is none.
    """
    best: tuple[int, str] | None = None
    for line in proc_net_route.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, dest, mask = fields[0], fields[1], fields[7]
        try:
            flags, metric = int(fields[3], 16), int(fields[6])
        except ValueError:
            continue
        is_default = dest == "00000000" and mask == "00000000" and flags & 0x1  # RTF_UP
        if is_default and (best is None or metric < best[0]):
            best = (metric, iface)
    return best[1] if best else None


def _nat_rules(iptables_save_text: str, chain: str = "") -> Iterator[list[str]]:
    """The words of each ``-A`` rule of the ``*nat`` table in ``iptables-save`` text (of ``chain`` if given)."""
    table = ""
    prefix = f"-A {chain} " if chain else "-A "
    for line in iptables_save_text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            continue
        if table != "nat" or not line.startswith(prefix):
            continue
        try:
            yield shlex.split(line)
        except ValueError:
            continue  # not shell words: not a rule we wrote


def iptables_masquerade_interfaces(iptables_save_text: str) -> list[str]:
    """Output interfaces of the MASQUERADE rules in the ``*nat`` table of ``iptables-save`` text.

    A rule without ``-o`` is returned as ``""`` (it masquerades on every interface); rules with a
    negated ``! -o`` are ignored.
    """
    out: list[str] = []
    for words in _nat_rules(iptables_save_text):
        if "-j" not in words or words[words.index("-j") + 1 :][:1] != ["MASQUERADE"]:
            continue
        iface, negated = "", False
        for i, w in enumerate(words):
            if w in ("-o", "--out-interface") and i + 1 < len(words):
                negated = negated or (i > 0 and words[i - 1] == "!")
                iface = words[i + 1]
        if not negated:
            out.append(iface)
    return out


_NFT_OIF_RE = re.compile(r'\boif(?:name)?\s+(!=\s*)?"?([^"\s]+)"?')


def nft_masquerade_interfaces(nft_ruleset_text: str) -> list[str]:
    """Output interfaces of masquerade rules in ``nft list ruleset`` text (ip and inet tables).

    Rules made by iptables-nft appear here too (``... masquerade`` or ``xt target "MASQUERADE"``).
    A rule without an ``oifname``/``oif`` match is returned as ``""``; negated matches are ignored.
    """
    out: list[str] = []
    family = ""
    for raw in nft_ruleset_text.splitlines():
        line = raw.strip()
        m = re.match(r"table\s+(\w+)\s+\S+", line)
        if m:
            family = m.group(1)
            continue
        if family not in ("ip", "inet"):
            continue
        code = line.split("#", 1)[0]
        if not re.search(r'\bmasquerade\b|xt target "?MASQUERADE"?', code, re.IGNORECASE):
            continue
        oif = _NFT_OIF_RE.search(code)
        if oif is None:
            out.append("")
        elif not oif.group(1):
            out.append(oif.group(2))
    return out


def _matches(found: list[str], interface: str) -> bool:
    if not interface:
        return bool(found)
    return any(f in ("", interface) or (f.endswith("+") and interface.startswith(f[:-1])) for f in found)


def masquerade_present(iptables_save_text: str, nft_ruleset_text: str, interface: str = "") -> bool:
    """True if either rule listing has a masquerade rule covering ``interface`` (empty: any interface).

    Give ``""`` for a listing you could not read. iptables wildcards (``eth+``) are understood.
    """
    found = iptables_masquerade_interfaces(iptables_save_text) + nft_masquerade_interfaces(nft_ruleset_text)
    return _matches(found, interface)


def masquerade_count(iptables_save_text: str, nft_ruleset_text: str, interface: str) -> int:
    """How many listed masquerade rules name exactly ``interface`` (to prove setup-nat adds no duplicates).

    Note: with iptables-nft a rule shows in both listings; pass one of them.
    """
    found = iptables_masquerade_interfaces(iptables_save_text) + nft_masquerade_interfaces(nft_ruleset_text)
    return sum(1 for f in found if f == interface)


@dataclass(frozen=True)
class Snat:
    """Traffic from ``subnet`` leaving on the public interface gets source ``address`` (egress follow)."""

    subnet: str
    address: str


@dataclass(frozen=True)
class FlowGuard:
    """What conntrack_sync adds to table ``ip nat_ha`` (chains ``guard``, ``input`` and ``forward``).

    ``addresses``: this host's address for each route table (address, route table). A packet to one
    of them that belongs to no known connection is dropped (``guard``), not answered: a server's
    packet of a flow whose entry has not arrived yet would otherwise draw a reset that kills the
    flow; dropped, it is sent again. Each address also has a counter, which the sync service
    reads to tell when a handed-over table's inbound traffic has stopped reaching this NAT.

    ``firewall``: on the public interface, a packet from outside ``trusted`` reaches this host or
    the private subnets only as part of a known connection (``input``, ``forward``): the security
    group lets the world reach the NATs' high ports so that a moved flow's server packets get in.
    """

    addresses: tuple[tuple[str, str], ...]
    firewall: bool = True
    trusted: tuple[str, ...] = ()


def nft_guard_chains(interface: str, guard: FlowGuard) -> str:
    """The chains of :class:`FlowGuard`, as they sit inside table ``ip nat_ha``."""
    counters = "".join(f'\t\tip daddr {addr} counter comment "{rt}"\n' for addr, rt in guard.addresses)
    addrs = ", ".join(addr for addr, _ in guard.addresses)
    drop = f'\t\tip daddr {{ {addrs} }} ct state {{ new, invalid }} drop comment "{GUARD_COMMENT}"\n' if addrs else ""
    text = (
        "\tchain guard {\n\t\ttype filter hook prerouting priority -150; policy accept;\n" + counters + drop + "\t}\n"
    )
    if not guard.firewall:
        return text
    trusted = ", ".join(guard.trusted)
    allow = f'\t\tiifname "{interface}" ip saddr {{ {trusted} }} accept\n' if trusted else ""
    for hook in ("input", "forward"):
        text += (
            f"\tchain {hook} {{\n\t\ttype filter hook {hook} priority filter; policy accept;\n"
            f'\t\tiifname "{interface}" ct state {{ established, related }} accept\n'
            + allow
            + f'\t\tiifname "{interface}" counter drop comment "{FIREWALL_COMMENT}"\n\t}}\n'
        )
    return text


def nft_ruleset(interface: str, snats: tuple[Snat, ...] | list[Snat] = (), guard: FlowGuard | None = None) -> str:
    """The nftables file setup-nat loads and persists: replaces table ``ip nat_ha`` atomically.

    The leading ``table``/``delete table`` pair makes it idempotent (``nft -f`` runs it as one
    transaction; works on nft 0.9+ which lacks ``destroy``). ``snats`` go in chain ``egress``,
    which runs before every masquerade (priority ``srcnat - 10``); ``guard`` adds conntrack_sync's
    chains (:class:`FlowGuard`).
    """
    egress = nft_guard_chains(interface, guard) if guard is not None else ""
    if snats:
        rules = "".join(
            f'\t\tip saddr {s.subnet} oifname "{interface}" snat to {s.address} comment "{COMMENT}"\n' for s in snats
        )
        head = "\tchain egress {\n\t\ttype nat hook postrouting priority srcnat - 10; policy accept;\n"
        egress += head + rules + "\t}\n"
    return (
        "# Written by nat-ha setup-nat. Load with: nft -f this-file (idempotent).\n"
        f"table {NFT_FAMILY} {NFT_TABLE}\n"
        f"delete table {NFT_FAMILY} {NFT_TABLE}\n"
        f"table {NFT_FAMILY} {NFT_TABLE} {{\n" + egress + "\tchain postrouting {\n"
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f'\t\toifname "{interface}" masquerade comment "{COMMENT}"\n'
        "\t}\n"
        "}\n"
    )


def iptables_rule_args(interface: str) -> list[str]:
    """The rule specification (after ``-t nat -A POSTROUTING``) setup-nat adds with iptables."""
    return ["-o", interface, "-m", "comment", "--comment", COMMENT, "-j", "MASQUERADE"]


def iptables_snat_args(interface: str, snat: Snat) -> list[str]:
    """The rule specification (after ``-t nat -I POSTROUTING 1``) of one egress SNAT rule."""
    return ["-s", snat.subnet, "-o", interface, "-m", "comment", "--comment", COMMENT, "-j", "SNAT",
            "--to-source", snat.address]  # fmt: skip


def iptables_rules(interface: str, snats: tuple[Snat, ...] | list[Snat] = ()) -> str:
    """The persisted iptables rules, in ``iptables-save`` syntax (for inspection and the self check)."""
    lines = [f"-A POSTROUTING {' '.join(iptables_snat_args(interface, s))}\n" for s in snats]
    return (
        "# Written by nat-ha setup-nat; nat-ha-setup.service re-applies it at boot (`nat-ha setup-nat`,\n"
        "# which adds it only when missing). Do not `iptables-restore` this without --noflush.\n"
        "*nat\n" + "".join(lines) + f"-A POSTROUTING {' '.join(iptables_rule_args(interface))}\n"
        "COMMIT\n"
    )


def _cidr(text: str) -> str:
    """``10.0.1.0/24`` as written; a bare address as ``/32`` (iptables-save writes ``-s A/32``)."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return text


def iptables_snats(iptables_save_text: str, interface: str = "") -> list[Snat]:
    """The nat-ha SNAT rules (commented ``nat-ha``) in the ``*nat`` table of ``iptables-save`` text.

    Only rules naming ``interface`` with ``-o`` when one is given; in chain order.
    """
    out: list[Snat] = []
    for words in _nat_rules(iptables_save_text, chain="POSTROUTING"):
        opts = dict(itertools.pairwise(words))
        if opts.get("-j") != "SNAT" or opts.get("--comment") != COMMENT or "-s" not in opts:
            continue
        if interface and opts.get("-o") != interface:
            continue
        out.append(Snat(_cidr(opts["-s"]), opts.get("--to-source", "")))
    return out


_NFT_SNAT_RE = re.compile(r'\bip saddr (\S+) oifname "?([^"\s]+)"? snat (?:ip )?to (\S+)')


def nft_snats(nft_ruleset_text: str, interface: str = "") -> list[Snat]:
    """The SNAT rules of table ``ip nat_ha`` in ``nft list ruleset`` text (only ``interface``'s if given)."""
    out: list[Snat] = []
    inside = False
    for raw in nft_ruleset_text.splitlines():
        line = raw.strip()
        if line.startswith("table "):
            inside = line.split()[1:3] == [NFT_FAMILY, NFT_TABLE]
            continue
        m = _NFT_SNAT_RE.search(line.split("#", 1)[0]) if inside else None
        if m and (not interface or m.group(2) == interface):
            out.append(Snat(_cidr(m.group(1)), m.group(3)))
    return out


def interface_addresses(ip_json_text: str, interface: str = "") -> list[str]:
    """IPv4 addresses in ``ip -j -4 addr show`` output (of ``interface`` only, if given)."""
    try:
        links = json.loads(ip_json_text or "[]")
    except ValueError:
        return []
    out = []
    for link in links if isinstance(links, list) else []:
        if interface and link.get("ifname") != interface:
            continue
        for info in link.get("addr_info", []):
            if info.get("family") == "inet" and info.get("local"):
                out.append(str(info["local"]))
    return out


def nft_include_line(root_relative_file: str = NFT_FILE) -> str:
    """The line appended to the distribution's nftables.conf."""
    return f'include "/{root_relative_file}"'


def persisted_masquerade_interfaces(root: str | Path = "/") -> list[str]:
    """Interfaces named by the masquerade rules setup-nat persisted under ``root`` (no capability needed)."""
    base = Path(root)
    found: list[str] = []
    for rel, parse in ((NFT_FILE, nft_masquerade_interfaces), (IPTABLES_FILE, iptables_masquerade_interfaces)):
        try:
            found += parse((base / rel).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
    return found


def persisted_masquerade_present(root: str | Path = "/", interface: str = "") -> bool:
    """True if setup-nat persisted a masquerade rule covering ``interface`` (empty: any) under ``root``."""
    return _matches(persisted_masquerade_interfaces(root), interface)


_GUARD_RE = re.compile(r'ip daddr \{ ([^}]*) \} ct state \{ (\w+), (\w+) \} drop comment "' + GUARD_COMMENT + '"')


def nft_guarded_addresses(nft_text: str) -> set[str]:
    """Addresses covered by the guard rule of table ``ip nat_ha`` in ``nft list`` text or the persisted file."""
    inside = False
    out: set[str] = set()
    for raw in nft_text.splitlines():
        line = raw.strip()
        if line.startswith("table "):
            inside = line.split()[1:3] == [NFT_FAMILY, NFT_TABLE]
            continue
        m = _GUARD_RE.search(line) if inside else None
        if m and {m.group(2), m.group(3)} == {"new", "invalid"}:  # nft lists the states in its own order
            out |= {a.strip() for a in m.group(1).split(",") if a.strip()}
    return out


def nft_firewall_present(nft_text: str, interface: str) -> bool:
    """True if table ``ip nat_ha`` has the firewall's drop rule on ``interface`` in both the input and forward hooks."""
    hooks: set[str] = set()
    inside, hook = False, ""
    for raw in nft_text.splitlines():
        line = raw.strip()
        if line.startswith("table "):
            inside = line.split()[1:3] == [NFT_FAMILY, NFT_TABLE]
        elif inside and line.startswith("type filter hook "):
            hook = line.split()[3]
        elif inside and line.startswith("chain "):
            hook = ""
        elif inside and hook and f'iifname "{interface}"' in line and f'drop comment "{FIREWALL_COMMENT}"' in line:
            hooks.add(hook)
    return {"input", "forward"} <= hooks


def nft_inbound_counters(nft_json: str) -> dict[str, int]:
    """Route table -> packets counted to this host's address for it, from ``nft -j list chain ip nat_ha guard``."""
    try:
        data = json.loads(nft_json or "{}")
    except ValueError:
        return {}
    out: dict[str, int] = {}
    for item in data.get("nftables", []) if isinstance(data, dict) else []:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict) or not rule.get("comment") or rule.get("comment") == GUARD_COMMENT:
            continue
        for expr in rule.get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                out[str(rule["comment"])] = int(counter.get("packets", 0))
    return out


def persisted_text(root: str | Path = "/") -> str:
    """The nftables rule file setup-nat persisted under ``root`` ("" if none or unreadable)."""
    try:
        return (Path(root) / NFT_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
