"""Which group an operator command acts on: the agent's config file, or flags and environment variables.

On a NAT the commands read the agent's config (``/etc/nat-ha/config.toml``). From anywhere else
(a workstation, a bastion, CI) ``--group``, ``--table`` and ``--region`` - or ``NAT_HA_GROUP``,
``NAT_HA_TABLE``, ``NAT_HA_REGION`` - name the group, with the usual AWS credentials; the members
and their route tables are then read from the group's own items in DynamoDB (every member's
heartbeat names it, its address and AZ; every route table's lease names its home). A flag wins
over the environment, which wins over the config file; ``NAT_HA_CONFIG`` names another file.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from agent.commands.cli import UsageError
from agent.config import DEFAULT_PATH, GROUP_RE, TABLE_RE, Config, Member, load, region_problem
from coordinator.items import GroupSnapshot

ENV_CONFIG, ENV_GROUP, ENV_TABLE, ENV_REGION = "NAT_HA_CONFIG", "NAT_HA_GROUP", "NAT_HA_TABLE", "NAT_HA_REGION"
ENV_OPERATOR = "NAT_HA_OPERATOR"  # who an operator is in the history and on requests (default user@host)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --group, --table, --region (every operator command)."""
    p.add_argument(
        "--config",
        "-c",
        default=None,
        help=f"the agent's config file (default ${ENV_CONFIG}, else {DEFAULT_PATH} if it exists)",
    )
    p.add_argument("--group", help=f"the group (default ${ENV_GROUP}, else the config's group)")
    p.add_argument("--table", help=f"the DynamoDB table (default ${ENV_TABLE}, else the config's, else nat-ha)")
    p.add_argument("--region", help=f"the AWS region (default ${ENV_REGION}, else the config's, else $AWS_REGION)")


@dataclass(frozen=True)
class Target:
    """The group to act on. ``from_store``: members and route tables come from its items in DynamoDB."""

    config: Config
    from_store: bool
    source: str  # what named the group: the config file's path, or "--group"/"NAT_HA_GROUP"


def target(args: argparse.Namespace) -> Target:
    """The config an operator command works with (see the module's docstring); UsageError when none."""
    group = getattr(args, "group", None) or os.environ.get(ENV_GROUP) or ""
    table = getattr(args, "table", None) or os.environ.get(ENV_TABLE) or ""
    region = getattr(args, "region", None) or os.environ.get(ENV_REGION) or ""
    for value, flag, pattern in ((group, "--group", GROUP_RE), (table, "--table", TABLE_RE)):
        if value and not pattern.match(value):
            raise UsageError(f"{flag}: {value!r} is not a valid name")
    if region and (problem := region_problem(region)):
        raise UsageError("--" + problem)
    path = getattr(args, "config", None) or os.environ.get(ENV_CONFIG) or ""
    if not path and Path(DEFAULT_PATH).exists():
        path = DEFAULT_PATH
    if path:
        config = load(path)
        from_store = bool(group) and group != config.group
        source = path
    elif group:
        config, from_store = Config(group=group), True
        source = "--group" if getattr(args, "group", None) else ENV_GROUP
    else:
        raise UsageError(
            f"no config file ({DEFAULT_PATH} does not exist): pass --config FILE, or name the group with "
            f"--group G --region R [--table T] (or {ENV_GROUP}, {ENV_REGION}, {ENV_TABLE})"
        )
    if from_store:
        config = dataclasses.replace(config, group=group, members=(), members_from_tags=False, instance_id="")
    if table:
        config = dataclasses.replace(config, store=dataclasses.replace(config.store, table=table))
    if region:
        config = dataclasses.replace(config, region=region)
    return Target(config, from_store, source)


def members_from_store(config: Config, snapshot: GroupSnapshot) -> Config:
    """``config`` with the members and home route tables the group's items name.

    A member's heartbeat gives its id, address and AZ; a route table's lease names its home
    (a table no agent has claimed yet is not in the table, and so not listed here).
    """
    homes: dict[str, list[str]] = {}
    for rt, r in sorted(snapshot.routes.items()):
        homes.setdefault(r.home or r.owner, []).append(rt)
    ids = sorted(set(snapshot.members) | {h for h in homes if h})
    members = tuple(
        Member(
            instance_id=i,
            address=snapshot.members[i].address if i in snapshot.members else "",
            az=snapshot.members[i].az if i in snapshot.members else "",
            route_tables=tuple(homes.get(i, ())),
        )
        for i in ids
    )
    return dataclasses.replace(config, members=members)


def operator_name() -> str:
    """Who runs this command, for the history and the request items: $NAT_HA_OPERATOR, else user@host."""
    name = os.environ.get(ENV_OPERATOR, "").strip()
    if name:
        return name[:80]
    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"[:80]
