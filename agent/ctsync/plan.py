"""Who streams which table's flows to whom, and whose flows a NAT loads. Pure: views in, decisions out.

The agent tells the sync service which member holds each route table (its view of the group); the
service streams the tables this NAT holds to every peer (any of them may take a table over when
this NAT dies: the survivors' preference order decides which), and loads a peer's flows of a
table only from the member holding it. A table's flows are never loaded from a peer while this
NAT holds the table (its own entries carry the traffic), with one exception: the giver of a
planned hand-over to this NAT, for a bounded time, and then only entries missing here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config import Config

COPY = "copy"  # load the flows as this NAT's copy of a peer's table (create, change, delete)
ADD_ONLY = "add_only"  # the table is ours now: create only the entries missing here


@dataclass(frozen=True)
class Table:
    """One route table as the sync sees it: its subnets and every member's address for it."""

    route_table: str
    subnets: tuple[str, ...]
    addresses: dict[str, str]  # member -> its address for the table (the SNAT source)


def tables_of(config: Config) -> dict[str, Table]:
    """The route tables whose flows can move: those of [[egress.tables]] (egress_ip = "follow")."""
    return {
        e.route_table: Table(e.route_table, e.subnets, dict(e.addresses))
        for e in config.egress_tables
        if config.egress_follow
    }


def tables_wire(tables: dict[str, Table]) -> dict[str, dict[str, object]]:
    """The tables as the agent sends them to the service (JSON)."""
    return {rt: {"subnets": list(t.subnets), "addresses": dict(t.addresses)} for rt, t in tables.items()}


def tables_from(raw: object) -> dict[str, Table]:
    """:func:`tables_wire`'s output read back; ValueError/TypeError on anything else."""
    if not isinstance(raw, dict):
        raise TypeError("must be an object")
    out: dict[str, Table] = {}
    for rt, t in raw.items():
        subnets, addresses = t["subnets"], t["addresses"]
        if not isinstance(subnets, list) or not isinstance(addresses, dict):
            raise TypeError(f"{rt}: subnets must be a list and addresses an object")
        out[str(rt)] = Table(str(rt), tuple(str(s) for s in subnets), {str(k): str(v) for k, v in addresses.items()})
    return out


@dataclass
class View:
    """The group as the agent last described it (or as the config says, before it has)."""

    me: str
    members: dict[str, str]  # member -> the address its sync service listens on (its private address)
    holders: dict[str, str] = field(default_factory=dict)  # route table -> member holding it (absent: unknown)

    def peers(self) -> list[str]:
        return [m for m in self.members if m != self.me]

    def held(self) -> list[str]:
        return [rt for rt, h in self.holders.items() if h == self.me]


def streams(view: View, leaving: dict[str, str]) -> dict[str, list[str]]:
    """Route table -> the peers its changes go to.

    Held tables go to every peer; a table handed over lately (``leaving``: table -> taker) goes on
    to its taker until the giver stops streaming it (:class:`agent.ctsync.service.SyncService`).
    """
    out = {rt: view.peers() for rt in view.held()}
    for rt, taker in leaving.items():
        targets = out.setdefault(rt, [])
        if taker not in targets and taker in view.members:
            targets.append(taker)
    return out


def accept(view: View, table: str, sender: str, handover_from: str) -> str | None:
    """How to treat ``sender``'s flows of ``table``: :data:`COPY`, :data:`ADD_ONLY`, or None (ignore them).

    ``handover_from``: the member that pushed ``table`` to us for a planned hand-over and has not
    said it stopped streaming it ("" if none).
    """
    if sender == view.me or sender not in view.members:
        return None
    holder = view.holders.get(table)
    if holder == view.me:
        return ADD_ONLY if handover_from == sender else None
    if handover_from == sender or holder is None or holder == sender:
        return COPY
    return None
