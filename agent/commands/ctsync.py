"""``nat-ha ctsync``: the connection-sync service (nat-ha-ctsync.service), or ``--show`` what it is doing.

It needs ``CAP_NET_ADMIN`` (the kernel's connection-tracking table) and nothing else: its unit
runs it as the same transient user as the agent, which talks to it on the control socket.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from agent.commands.cli import UsageError
from agent.config import DEFAULT_PATH, Config

log = logging.getLogger("nat_ha.ctsync")
CREDENTIAL = "ctsync.key"  # LoadCredential= name in nat-ha-ctsync.service


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    p.add_argument(
        "--instance-id",
        default="",
        metavar="ID",
        help="which member this host is (default: the config's instance_id, else the member whose address is here)",
    )
    p.add_argument("--show", action="store_true", help="print what the running service is doing (JSON) and exit")


def key_path(config: Config) -> Path:
    """The group key: systemd's credential copy when there is one, else ``conntrack_sync.key_file``."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if creds and (Path(creds) / CREDENTIAL).is_file():
        return Path(creds) / CREDENTIAL
    return Path(config.conntrack_sync.key_file)


def read_key(config: Config) -> bytes:
    from agent.ctsync import wire

    path = key_path(config)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file: write the group's sync key there (openssl rand -hex 32)") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the sync key: {exc.strerror}") from None
    try:
        return wire.load_key(raw)
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None


def identify(config: Config, instance_id: str) -> str:
    """This host's member id: --instance-id, the config's, or the member with an address on this host ("" with
    members_from_tags: the agent tells the service)."""
    me = instance_id or config.instance_id
    if me:
        if config.members and config.member(me) is None:
            raise UsageError(f"{me} is not a member of the group in the config")
        return me
    from agent.commands.setup_nat import local_addresses

    mine = config.members_at(local_addresses())
    if len(mine) != 1 and config.members_from_tags:
        return ""  # the agent names this NAT (and the group, the tables' addresses) once it has discovered them
    if len(mine) != 1:
        found = f" (addresses of {', '.join(sorted(mine))} are all here)" if mine else ""
        raise UsageError(f"cannot tell which member this host is{found}: set instance_id or pass --instance-id")
    return mine.pop()


def run(args: argparse.Namespace) -> int:
    from agent import config as cfg
    from agent import logsetup
    from agent.ctsync import control, plan
    from agent.ctsync.service import SyncService
    from agent.host import conntrack

    config = cfg.load(args.config)
    sync = config.conntrack_sync
    if args.show:
        try:
            stats = control.request(sync.control_socket, {"op": "stats"}, 5.0)
        except control.ControlError as exc:
            print(f"nat-ha ctsync: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0 if stats.get("ok") else 1
    if not sync.enabled:
        raise UsageError("conntrack_sync.enabled is false in the config: nothing to do")
    reason = conntrack.available()
    if reason:
        print(f"nat-ha ctsync: {reason}", file=sys.stderr)
        return 1
    me = identify(config, args.instance_id)
    key = read_key(config)
    logsetup.setup(config.log_format, config.log_level, {"group": config.group, "instance": me, "unit": "ctsync"})
    members = {m.instance_id: m.address for m in config.members}
    service = SyncService(sync, me, members, plan.tables_of(config), key)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        service.start()
        Path(sync.control_socket).parent.mkdir(parents=True, exist_ok=True)
        service.serve_control(sync.control_socket)
    except OSError as exc:
        service.close()
        print(f"nat-ha ctsync: cannot listen: {exc}", file=sys.stderr)
        return 1
    if me:
        log.info("nat-ha ctsync %s: %d route tables, peers %s, port %d", me, len(service.tables),
                 ", ".join(p for p in members if p != me) or "(from the agent)", sync.port)  # fmt: skip
    else:
        log.info("nat-ha ctsync: waits for the agent to name this NAT, its peers and tables (members_from_tags)")
    from agent.host.sdnotify import Notifier

    notifier = Notifier()
    notifier.ready("syncing")
    while not stop.wait(2.0):
        if service.alive():
            notifier.watchdog("syncing")
    service.close()
    return 0
