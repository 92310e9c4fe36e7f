"""``nat-ha setup-nat``: make this host a NAT, idempotently (replaces the seed article's hand-typed steps).

Items, each checked first and changed only when missing:

1. runtime sysctls (:data:`agent.host.nat.SYSCTLS`): ip_forward on, ICMP redirects off;
2. a masquerade rule on the public interface (default: the default route's), with
   nftables (table ``ip nat_ha``) or iptables (``POSTROUTING -o IF -m comment --comment nat-ha``);
3. with ``egress_ip = "follow"`` in the agent's config (``--config``): for this instance and every
   route table, its address for that table on the public interface (``ip addr add ADDR/32``,
   unless already there) and an SNAT rule per subnet of the table to that address, ahead of
   the masquerade rule (:class:`agent.host.nat.Snat`); nat-ha SNAT rules no longer wanted go;
4. persistence: ``/etc/sysctl.d/90-nat-ha.conf`` and the rule file under ``/etc/nat-ha``
   (plus an ``include`` in the distribution's nftables.conf when it exists); ``--root``
   redirects these files (tests). At boot ``nat-ha-setup.service`` runs this command again
   (addresses are runtime state: that run puts them back).

``--check`` prints one line per item and exits 1 if any is missing; ``--dry-run`` prints
what would change. Bad arguments exit 2 with one line; failures to apply exit 1.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent import config as agentconfig
from agent.commands.cli import UsageError
from agent.host import nat as hostnat

_CMD_TIMEOUT_S = 10.0


class ApplyError(Exception):
    """A change could not be made (one line)."""


@dataclass
class Item:
    name: str
    present: Callable[[], bool]
    apply: Callable[[], None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--public-interface",
        default="",
        metavar="IF",
        help="interface to masquerade on (default: the interface of the IPv4 default route)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "iptables", "nftables"),
        default="auto",
        help="firewall tool; auto: nftables if `nft` is installed, else iptables (default: auto)",
    )
    parser.add_argument(
        "--root", default="/", metavar="DIR", help="write persisted files under DIR instead of / (tests)"
    )
    parser.add_argument(
        "--config",
        default="",
        metavar="FILE",
        help=f"the agent's config, read for egress_ip and [[egress.tables]] (default: {agentconfig.DEFAULT_PATH} "
        "if it exists; without one there is nothing to SNAT)",
    )
    parser.add_argument(
        "--instance-id",
        default="",
        metavar="ID",
        help="which member this host is (default: the config's instance_id, else the member whose address "
        "is on this host)",
    )
    parser.add_argument("--procfs", default="/proc", help=argparse.SUPPRESS)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report what is missing, change nothing; exit 1 if any")
    mode.add_argument("--dry-run", action="store_true", help="print what would be changed, change nothing")


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise ApplyError(f"{cmd[0]}: not installed") from None
    except subprocess.TimeoutExpired:
        raise ApplyError(f"{' '.join(cmd)}: no answer within {_CMD_TIMEOUT_S:.0f} s") from None


def _listing(cmd: list[str]) -> str:
    """Output of a read-only listing command, or "" when it is not installed or fails."""
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        proc = _run(cmd)
    except ApplyError:
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else "no output"


def _pick_backend(choice: str) -> str:
    if choice == "nftables":
        if shutil.which("nft") is None:
            raise UsageError("--backend nftables: `nft` is not installed (apt-get/dnf install nftables)")
        return choice
    if choice == "iptables":
        if shutil.which("iptables") is None:
            raise UsageError("--backend iptables: `iptables` is not installed (apt-get/dnf install iptables)")
        return choice
    if shutil.which("nft"):
        return "nftables"
    if shutil.which("iptables"):
        return "iptables"
    raise UsageError("neither nft nor iptables is installed (install nftables)")


def _interface(requested: str, procfs: str) -> str:
    if requested:
        if not hostnat.valid_interface_name(requested):
            raise UsageError(f"--public-interface: {requested!r} is not an interface name")
        iface = requested
    else:
        try:
            route = (Path(procfs) / "net" / "route").read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {procfs}/net/route to find the default route: {exc.strerror}") from None
        found = hostnat.default_route_interface(route)
        if not found:
            raise UsageError("no IPv4 default route: pass --public-interface IF")
        iface = found
    try:
        socket.if_nametoindex(iface)
    except OSError:
        raise UsageError(f"--public-interface: no interface named {iface!r} on this host") from None
    return iface


def _write_file(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)
    except OSError as exc:
        raise ApplyError(f"cannot write {path}: {exc.strerror}") from None


def _file_is(path: Path, text: str) -> bool:
    try:
        return path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        return False


def _sysctl_items(sysctls: dict[str, str], procfs: str, why: str = "") -> list[Item]:
    items = []
    for key, value in sysctls.items():
        path = hostnat.sysctl_path(key, procfs)

        def present(path: Path = path, value: str = value) -> bool:
            try:
                return path.read_text(encoding="utf-8").strip() == value
            except OSError:
                return False

        def apply(path: Path = path, value: str = value, key: str = key) -> None:
            try:
                path.write_text(value + "\n", encoding="utf-8")
            except OSError as exc:
                raise ApplyError(f"cannot set {key}: {exc.strerror} (run as root)") from None

        items.append(Item(f"sysctl {key} = {value}{why}", present, apply))
    return items


def build_items(
    iface: str,
    backend: str,
    root: Path,
    procfs: str,
    egress: list[EgressAddress] | None,
    sync: agentconfig.ConntrackSyncConfig | None = None,
) -> list[Item]:
    """Every item setup-nat checks and, when missing, applies (in order).

    ``egress``: this host's table addresses ([]: none); None: unknown (the config could not be used),
    so nat-ha's SNAT rules and the persisted rule file are left as they are. ``sync``: the config's
    [conntrack_sync]; when enabled (with egress), the guard rule, the firewall and the conntrack
    sysctls (:class:`agent.host.nat.FlowGuard`).
    """
    items: list[Item] = []
    known = egress is not None
    egress = list(egress or [])
    snats = [hostnat.Snat(subnet, e.address) for e in egress for subnet in e.subnets]
    guard = None
    if known and sync is not None and sync.enabled and egress:
        if backend != "nftables":
            raise UsageError("conntrack_sync needs the nftables backend (install nftables, or --backend nftables)")
        guard = hostnat.FlowGuard(
            tuple((e.address, e.route_table) for e in egress), sync.firewall, tuple(sync.trusted_networks)
        )

    items += _sysctl_items(hostnat.SYSCTLS, procfs)

    def rules_text() -> tuple[str, str]:
        return _listing(["iptables-save", "-t", "nat"]), _listing(["nft", "list", "ruleset"])

    def masq_present() -> bool:
        ipt, nft = rules_text()
        return hostnat.masquerade_present(ipt, nft, iface)

    if backend == "nftables":

        def masq_apply() -> None:  # the whole table ip nat_ha: masquerade and every SNAT rule
            proc = _run(["nft", "-f", "-"], stdin=hostnat.nft_ruleset(iface, snats, guard))
            if proc.returncode != 0:
                raise ApplyError(f"nft -f: {_first_line(proc.stderr)}")

        rule_file, rule_text = root / hostnat.NFT_FILE, hostnat.nft_ruleset(iface, snats, guard)
    else:

        def masq_apply() -> None:
            cmd = ["iptables", "-t", "nat", "-A", "POSTROUTING", *hostnat.iptables_rule_args(iface)]
            proc = _run(cmd)
            if proc.returncode != 0:
                raise ApplyError(f"iptables: {_first_line(proc.stderr)}")

        rule_file, rule_text = root / hostnat.IPTABLES_FILE, hostnat.iptables_rules(iface, snats)

    items.append(Item(f"masquerade on {iface} ({backend})", masq_present, masq_apply))
    if known:
        items += _egress_items(iface, backend, egress, snats, masq_apply)
    if backend == "nftables" and known:
        items += _guard_items(iface, guard, masq_apply, procfs)

    sysctl_file, sysctl_text = root / hostnat.SYSCTL_FILE, hostnat.sysctl_conf_text(conntrack=guard is not None)
    items.append(
        Item(
            f"persisted sysctls in {sysctl_file}",
            lambda: _file_is(sysctl_file, sysctl_text),
            lambda: _write_file(sysctl_file, sysctl_text),
        )
    )
    if known:
        items.append(
            Item(
                f"persisted masquerade {'and snat rules' if snats else 'rule'} in {rule_file}",
                lambda: _file_is(rule_file, rule_text),
                lambda: _write_file(rule_file, rule_text),
            )
        )

    if backend == "nftables":
        conf = next((root / c for c in hostnat.NFTABLES_CONFS if (root / c).is_file()), None)
        if conf is not None:
            line = hostnat.nft_include_line()

            def include_present(conf: Path = conf) -> bool:
                try:
                    return line in (ln.strip() for ln in conf.read_text(encoding="utf-8").splitlines())
                except (OSError, UnicodeDecodeError):
                    return False

            def include_apply(conf: Path = conf) -> None:
                try:
                    text = conf.read_text(encoding="utf-8")
                    sep = "" if text.endswith("\n") or not text else "\n"
                    _write_file(conf, f"{text}{sep}# added by nat-ha setup-nat\n{line}\n")
                except (OSError, UnicodeDecodeError) as exc:
                    raise ApplyError(f"cannot update {conf}: {exc}") from None

            items.append(Item(f"include of /{hostnat.NFT_FILE} in {conf}", include_present, include_apply))
    return items


@dataclass(frozen=True)
class EgressAddress:
    """This host's address for one route table, and the subnets that use the table."""

    route_table: str
    address: str
    subnets: tuple[str, ...]


def _snats_listed(backend: str, iface: str) -> list[hostnat.Snat]:
    if backend == "nftables":
        return hostnat.nft_snats(_listing(["nft", "list", "table", hostnat.NFT_FAMILY, hostnat.NFT_TABLE]), iface)
    return hostnat.iptables_snats(_listing(["iptables-save", "-t", "nat"]), iface)


def _egress_items(
    iface: str, backend: str, egress: list[EgressAddress], snats: list[hostnat.Snat], load_table: Callable[[], None]
) -> list[Item]:
    """Addresses, SNAT rules and the removal of stale nat-ha SNAT rules (only if there is something to do)."""
    items: list[Item] = []

    def addresses() -> list[str]:
        return hostnat.interface_addresses(_listing(["ip", "-j", "-4", "addr", "show", "dev", iface]), iface)

    for e in egress:

        def addr_apply(address: str = e.address) -> None:
            proc = _run(["ip", "addr", "add", f"{address}/32", "dev", iface])
            if proc.returncode != 0 and "File exists" not in proc.stderr:
                raise ApplyError(f"ip addr add: {_first_line(proc.stderr)}")

        items.append(
            Item(
                f"address {e.address} on {iface} (egress of {e.route_table})",
                lambda address=e.address: address in addresses(),  # type: ignore[misc]
                addr_apply,
            )
        )
    for e in egress:
        for subnet in e.subnets:
            snat = hostnat.Snat(subnet, e.address)
            if backend == "nftables":
                apply = load_table  # one transaction: the table with every rule
            else:

                def apply(snat: hostnat.Snat = snat) -> None:
                    cmd = ["iptables", "-t", "nat", "-I", "POSTROUTING", "1", *hostnat.iptables_snat_args(iface, snat)]
                    proc = _run(cmd)
                    if proc.returncode != 0:
                        raise ApplyError(f"iptables: {_first_line(proc.stderr)}")

            items.append(
                Item(
                    f"snat {subnet} -> {e.address} on {iface} ({backend}, egress of {e.route_table})",
                    lambda snat=snat: snat in _snats_listed(backend, iface),  # type: ignore[misc]
                    apply,
                )
            )

    def stale() -> list[hostnat.Snat]:
        return [s for s in _snats_listed(backend, iface) if s not in snats]

    def stale_apply() -> None:
        if backend == "nftables":
            load_table()  # the table is replaced whole: only the wanted rules stay
            return
        for line in _listing(["iptables-save", "-t", "nat"]).splitlines():
            found = hostnat.iptables_snats(f"*nat\n{line}\nCOMMIT\n", iface)
            if found and found[0] not in snats:
                proc = _run(["iptables", "-t", "nat", "-D", *shlex.split(line)[1:]])
                if proc.returncode != 0:
                    raise ApplyError(f"iptables -D: {_first_line(proc.stderr)}")

    if egress or stale():
        items.append(Item(f"no other nat-ha snat rules on {iface} ({backend})", lambda: not stale(), stale_apply))
    return items


def _guard_items(
    iface: str, guard: hostnat.FlowGuard | None, load_table: Callable[[], None], procfs: str
) -> list[Item]:
    """conntrack_sync's guard rule, firewall and sysctls; or, when it is off, none of its chains left behind.

    The sysctls come after the rules: the netfilter keys exist once nf_conntrack is loaded.
    """

    def live() -> str:
        return _listing(["nft", "list", "table", hostnat.NFT_FAMILY, hostnat.NFT_TABLE])

    if guard is None:  # only when a guard is left over from an earlier run (the table is loaded whole)
        if "chain guard {" not in live():
            return []
        return [Item("no nat-ha guard or firewall chains (conntrack_sync off)", lambda: "chain guard {" not in live(),
                     load_table)]  # fmt: skip
    wanted = {addr for addr, _ in guard.addresses}
    addrs = ", ".join(sorted(wanted))
    items = [
        Item(
            f"guard: unknown packets to {addrs} dropped, not answered (conntrack_sync)",
            lambda: wanted <= hostnat.nft_guarded_addresses(live()),
            load_table,
        )
    ]
    if guard.firewall:
        items.append(
            Item(
                f"firewall on {iface}: only known connections from outside {', '.join(guard.trusted)} (conntrack_sync)",
                lambda: hostnat.nft_firewall_present(live(), iface),
                load_table,
            )
        )
    return items + _sysctl_items(hostnat.CONNTRACK_SYSCTLS, procfs, " (conntrack_sync)")


def local_addresses() -> set[str]:
    """This host's IPv4 addresses (``ip -j -4 addr show``)."""
    return set(hostnat.interface_addresses(_listing(["ip", "-j", "-4", "addr", "show"])))


class EgressError(Exception):
    """The egress settings cannot be used (one line); the rest of setup-nat still runs."""


def egress_plan(config_path: str, instance_id: str) -> list[EgressAddress]:
    """This host's table addresses under ``egress_ip = "follow"`` ([] when off or without a config).

    Raises :class:`UsageError` for a ``--config`` that does not exist, :class:`EgressError` when the
    config cannot be used (its first problem) or this host's member or addresses cannot be told.
    """
    return plan(config_path, instance_id)[0]


def plan(config_path: str, instance_id: str) -> tuple[list[EgressAddress], agentconfig.ConntrackSyncConfig]:
    """:func:`egress_plan` and the config's [conntrack_sync] (its defaults: off, without a config)."""
    path = config_path or agentconfig.DEFAULT_PATH
    if not Path(path).exists():
        if config_path:
            raise UsageError(f"--config: {path}: no such file")
        return [], agentconfig.ConntrackSyncConfig()
    try:
        cfg = agentconfig.load(path)
    except agentconfig.ConfigFileError as exc:
        raise EgressError(exc.problems[0]) from None
    except agentconfig.ConfigError as exc:
        more = f" (and {len(exc.problems) - 1} more: nat-ha check-config)" if len(exc.problems) > 1 else ""
        raise EgressError(f"{path}: {exc.problems[0]}{more}") from None
    if not cfg.egress_follow:
        return [], cfg.conntrack_sync
    tables = cfg.egress_tables
    me = instance_id or cfg.instance_id
    if not me:
        mine = cfg.members_at(local_addresses())
        if len(mine) != 1:
            found = f" (addresses of {', '.join(sorted(mine))} are all here)" if mine else ""
            raise EgressError(
                f"egress_ip = follow: cannot tell which member this host is{found}: "
                "set instance_id in the config or pass --instance-id"
            )
        (me,) = mine
    out = []
    for t in tables:
        if not t.address(me):
            raise EgressError(f"{path}: egress.tables ({t.route_table}): no address for this instance ({me})")
        out.append(EgressAddress(t.route_table, t.address(me), t.subnets))
    return out, cfg.conntrack_sync


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"--root: {args.root!r} is not a directory")
    if not (Path(args.procfs) / "sys").is_dir():
        raise UsageError(f"--procfs: {args.procfs!r} has no sys/ directory")
    iface = _interface(args.public_interface, args.procfs)
    backend = _pick_backend(args.backend)
    egress_failed = False
    sync: agentconfig.ConntrackSyncConfig | None = None
    try:
        egress: list[EgressAddress] | None
        egress, sync = plan(args.config, args.instance_id)
    except EgressError as exc:  # the host is still made a NAT; nat-ha's SNAT rules are left as they are
        print(f"nat-ha setup-nat: failed: egress: {exc}", file=sys.stderr)
        egress, egress_failed = None, True
    items = build_items(iface, backend, root, args.procfs, egress, sync)

    if args.check:
        missing = 0
        for item in items:
            ok = item.present()
            missing += not ok
            print(f"{'ok' if ok else 'missing'}: {item.name}")
        return 1 if missing or egress_failed else 0

    failed = int(egress_failed)
    for item in items:
        if item.present():
            print(f"ok: {item.name}")
            continue
        if args.dry_run:
            print(f"would apply: {item.name}")
            continue
        try:
            item.apply()
        except ApplyError as exc:
            print(f"nat-ha setup-nat: failed: {item.name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if item.present():
            print(f"applied: {item.name}")
        else:
            print(f"nat-ha setup-nat: failed: {item.name}: still missing after applying it", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m agent.commands.setup_nat``), same behaviour as ``nat-ha setup-nat``.

    Used by nat-ha-setup.service's fallback and by tests, and independent of the other subcommands.
    """
    from agent.commands.cli import _Parser

    parser = _Parser(prog="nat-ha setup-nat", description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"nat-ha setup-nat: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nat-ha setup-nat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
