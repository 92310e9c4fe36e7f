"""``nat-ha setup-nat``: make this host a NAT, idempotently (replaces the seed article's hand-typed steps).

Items, each checked first and changed only when missing:

1. runtime sysctls (:data:`agent.host.nat.SYSCTLS`): ip_forward on, ICMP redirects off;
2. a masquerade rule on the public interface (default: the default route's), with
   nftables (table ``ip nat_ha``) or iptables (``POSTROUTING -o IF -m comment --comment nat-ha``);
3. persistence: ``/etc/sysctl.d/90-nat-ha.conf`` and the rule file under ``/etc/nat-ha``
   (plus an ``include`` in the distribution's nftables.conf when it exists); ``--root``
   redirects these files (tests). At boot ``nat-ha-setup.service`` runs this command again.

``--check`` prints one line per item and exits 1 if any is missing; ``--dry-run`` prints
what would change. Bad arguments exit 2 with one line; failures to apply exit 1.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


def build_items(iface: str, backend: str, root: Path, procfs: str) -> list[Item]:
    """Every item setup-nat checks and, when missing, applies (in order)."""
    items: list[Item] = []

    for key, value in hostnat.SYSCTLS.items():
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

        items.append(Item(f"sysctl {key} = {value}", present, apply))

    def rules_text() -> tuple[str, str]:
        return _listing(["iptables-save", "-t", "nat"]), _listing(["nft", "list", "ruleset"])

    def masq_present() -> bool:
        ipt, nft = rules_text()
        return hostnat.masquerade_present(ipt, nft, iface)

    if backend == "nftables":

        def masq_apply() -> None:
            proc = _run(["nft", "-f", "-"], stdin=hostnat.nft_ruleset(iface))
            if proc.returncode != 0:
                raise ApplyError(f"nft -f: {_first_line(proc.stderr)}")

        rule_file, rule_text = root / hostnat.NFT_FILE, hostnat.nft_ruleset(iface)
    else:

        def masq_apply() -> None:
            cmd = ["iptables", "-t", "nat", "-A", "POSTROUTING", *hostnat.iptables_rule_args(iface)]
            proc = _run(cmd)
            if proc.returncode != 0:
                raise ApplyError(f"iptables: {_first_line(proc.stderr)}")

        rule_file, rule_text = root / hostnat.IPTABLES_FILE, hostnat.iptables_rules(iface)

    items.append(Item(f"masquerade on {iface} ({backend})", masq_present, masq_apply))

    sysctl_file, sysctl_text = root / hostnat.SYSCTL_FILE, hostnat.sysctl_conf_text()
    items.append(
        Item(
            f"persisted sysctls in {sysctl_file}",
            lambda: _file_is(sysctl_file, sysctl_text),
            lambda: _write_file(sysctl_file, sysctl_text),
        )
    )
    items.append(
        Item(
            f"persisted masquerade rule in {rule_file}",
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


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"--root: {args.root!r} is not a directory")
    if not (Path(args.procfs) / "sys").is_dir():
        raise UsageError(f"--procfs: {args.procfs!r} has no sys/ directory")
    iface = _interface(args.public_interface, args.procfs)
    backend = _pick_backend(args.backend)
    items = build_items(iface, backend, root, args.procfs)

    if args.check:
        missing = 0
        for item in items:
            ok = item.present()
            missing += not ok
            print(f"{'ok' if ok else 'missing'}: {item.name}")
        return 1 if missing else 0

    failed = 0
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
