"""A new view of the group's members, taken between two cycles (members_from_tags, agent.memberwatch).

Nothing here moves a route table: the view changes who is probed, who is preferred for which
table and who is a table's home; a table still changes hands only by the lease protocol. What the
agent remembers about a peer or a table that left the group is forgotten, so that a NAT that
comes back later (or a new one with an old address) starts from nothing - its hold-down included.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import Config
from agent.cycle.context import Context


@dataclass(frozen=True)
class Departed:
    """Who left the group with this view (their metrics series go too)."""

    peers: tuple[str, ...]
    route_tables: tuple[str, ...]


def take_view(ctx: Context, config: Config) -> Departed:
    """Use ``config``'s members and route tables from the next cycle on; forget the departed."""
    old_members, old_tables = set(ctx.members), set(ctx.homes)
    ctx.use(config)
    peers = tuple(sorted(old_members - set(ctx.members) - {ctx.me}))
    tables = tuple(sorted(old_tables - set(ctx.homes)))
    mem = ctx.memory
    for peer in peers:
        for by_peer in (mem.healthy_since, mem.suspect_since, mem.dead_since, mem.stale_deadlines,
                        mem.instance_states, mem.restarts, mem.probes_up, mem.revived):  # fmt: skip
            by_peer.pop(peer, None)
    for rt in tables:
        for by_table in (mem.claimable_since, mem.ec2, mem.egress, mem.egress_read, mem.held, mem.relinquished,
                         mem.handover_doubt, mem.pins_since, mem.former_owners):  # fmt: skip
            by_table.pop(rt, None)
    return Departed(peers, tables)
