"""Who is in the group, from EC2's tags, and how a new view replaces the old one safely.

With ``members_from_tags`` a group is the instances tagged ``nat-ha:group=<group>`` and the route
tables tagged so too. A route table's ``nat-ha:home`` names its home NAT either by instance id or
by a **slot**: the value of the ``nat-ha:slot`` tag that every instance of one Auto Scaling group
carries (the stacks name them ``nat-1``, ``nat-2``, ...). A slot survives a replacement: the new
instance of the slot becomes the table's home without anyone re-tagging the table. When a slot has
two instances (a replacement launched before the old one is gone), the one running longest keeps
it - the old NAT stays home while it drains, the new one becomes home once the old one is gone - so
a home never flips back and forth. A table whose home names no current member is *homeless*: it
stays in the group, served by whoever holds it, and goes home when its slot has a member again.

The agent discovers at start and again at run time (agent.memberwatch). A new view is merged
into the one in use (:class:`Tracker`) so that a membership change can never move a healthy NAT's
table nor put two writers on one:

* nothing here writes or decides: a route table still moves only by the lease protocol (a
  conditional write that bumps its term), whoever the members are; a view only changes who is
  *preferred* and who is probed;
* a member or a table is dropped only when two discoveries in a row have not seen it (one
  DescribeInstances that misses an instance changes nothing), and this agent is never dropped;
* a failed discovery changes nothing;
* every agent orders members the same way (availability zone, then instance id), so agents that
  see the same instances agree on every table's preference order.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field

from agent.config import EgressTable, Member

SLOT_TAG = "nat-ha:slot"
HOME_TAG = "nat-ha:home"
ASG_TAG = "aws:autoscaling:groupName"
DROP_AFTER = 2  # consecutive discoveries without a member (or table) before it is dropped
_LIVE_STATES = ("pending", "running")


@dataclass(frozen=True)
class Instance:
    """What DescribeInstances says of one instance tagged with the group."""

    instance_id: str
    az: str = ""
    address: str = ""
    eni: str = ""
    secondaries: tuple[str, ...] = ()  # secondary private addresses of its primary interface, ascending
    slot: str = ""
    asg: str = ""
    state: str = "running"
    launched: str = ""  # LaunchTime, ISO 8601 (sorts as time)


@dataclass(frozen=True)
class Membership:
    """The members (configuration order) and the group's route tables whose home is none of them."""

    members: tuple[Member, ...]
    homeless: tuple[str, ...] = ()

    def homes(self) -> dict[str, str]:
        """Route table -> its home instance ("" for a homeless table)."""
        out = {rt: m.instance_id for m in self.members for rt in m.route_tables}
        out.update({rt: "" for rt in self.homeless})
        return out

    def ids(self) -> tuple[str, ...]:
        return tuple(m.instance_id for m in self.members)


def slot_holders(instances: list[Instance]) -> dict[str, str]:
    """Slot -> the instance that holds it: a pending or running one first, then the longest running."""
    out: dict[str, Instance] = {}
    for i in instances:
        if not i.slot:
            continue
        best = out.get(i.slot)
        if best is None or _slot_rank(i) < _slot_rank(best):
            out[i.slot] = i
    return {slot: i.instance_id for slot, i in out.items()}


def _slot_rank(i: Instance) -> tuple[int, str, str]:
    return (0 if i.state in _LIVE_STATES else 1, i.launched or "~", i.instance_id)


def assemble(instances: list[Instance], tables: dict[str, str]) -> Membership:
    """The membership one discovery shows: ``tables`` maps each group route table to its nat-ha:home value."""
    ids = {i.instance_id for i in instances}
    holders = slot_holders(instances)
    homes: dict[str, list[str]] = {}
    homeless = []
    for rt, home in sorted(tables.items()):
        who = home if home in ids else holders.get(home, "")
        if who:
            homes.setdefault(who, []).append(rt)
        else:
            homeless.append(rt)
    members = tuple(
        Member(
            instance_id=i.instance_id,
            address=i.address,
            route_tables=tuple(homes.get(i.instance_id, [])),
            eni=i.eni,
            az=i.az,
            slot=i.slot,
            asg=i.asg,
            secondaries=i.secondaries,
        )
        for i in sorted(instances, key=lambda i: (i.az, i.instance_id))
    )
    return Membership(members, tuple(homeless))


def sorted_addresses(addresses: list[str]) -> tuple[str, ...]:
    return tuple(sorted(set(addresses), key=ipaddress.ip_address))


def derive_egress(tables: tuple[EgressTable, ...], members: tuple[Member, ...]) -> tuple[EgressTable, ...]:
    """[[egress.tables]] with every member's address filled in where the config gives none.

    The stacks' rule: a member's k-th secondary private address (ascending) carries the k-th
    table's traffic. Addresses the config gives win (a NAT's bootstrap writes its own).
    """
    out = []
    for k, e in enumerate(tables):
        given = dict(e.addresses)
        for m in members:
            if m.instance_id not in given and len(m.secondaries) > k:
                given[m.instance_id] = m.secondaries[k]
        out.append(dataclasses.replace(e, addresses=tuple(given.items())))
    return tuple(out)


@dataclass
class Tracker:
    """The membership in use, updated by discoveries without dropping anything on one miss."""

    me: str
    current: Membership
    missed: dict[str, int] = field(default_factory=dict)  # instance or route table -> discoveries in a row

    def update(self, found: Membership) -> list[str]:
        """Merge a successful discovery into :attr:`current`; returns one line per change (empty: none)."""
        old = self.current
        seen_members = set(found.ids())
        seen_tables = set(found.homes())
        kept: list[Member] = []
        for m in old.members:
            if m.instance_id in seen_members:
                self.missed.pop(m.instance_id, None)
                continue
            n = self.missed.get(m.instance_id, 0) + 1
            self.missed[m.instance_id] = n
            if m.instance_id == self.me or n < DROP_AFTER:
                kept.append(m)
        claimed = {rt for m in found.members for rt in m.route_tables}
        # A kept member keeps only the tables nobody in the new view is home of.
        kept = [dataclasses.replace(m, route_tables=tuple(rt for rt in m.route_tables if rt not in claimed))
                for m in kept]  # fmt: skip
        members = [*found.members, *kept]
        homed = {rt for m in members for rt in m.route_tables}
        homeless = set(found.homeless) - homed
        old_homes = old.homes()
        for rt in old_homes:
            if rt in seen_tables:
                self.missed.pop(rt, None)
                continue
            n = self.missed.get(rt, 0) + 1
            self.missed[rt] = n
            if n >= DROP_AFTER or rt in homed:
                continue
            # Missed once: kept as it was, with its home if that is still a member.
            at = next((j for j, m in enumerate(members) if m.instance_id == old_homes[rt]), None)
            if at is None:
                homeless.add(rt)
            else:
                m = members[at]
                members[at] = dataclasses.replace(m, route_tables=tuple(sorted((*m.route_tables, rt))))
        ordered = tuple(sorted(members, key=lambda m: (m.az, m.instance_id)))
        self.current = Membership(ordered, tuple(sorted(homeless)))
        return changes(old, self.current)


def changes(old: Membership, new: Membership) -> list[str]:
    """What differs between two views, one line each (for the log)."""
    out = []
    old_ids, new_ids = set(old.ids()), set(new.ids())
    for m in new.members:
        if m.instance_id not in old_ids:
            where = ", ".join(x for x in (m.az, f"slot {m.slot}" if m.slot else "") if x)
            out.append(f"member {m.instance_id} joined" + (f" ({where})" if where else ""))
    out += [f"member {i} left (not seen by {DROP_AFTER} discoveries in a row)" for i in sorted(old_ids - new_ids)]
    old_homes, new_homes = old.homes(), new.homes()
    for rt in sorted(set(old_homes) | set(new_homes)):
        before, after = old_homes.get(rt), new_homes.get(rt)
        if before == after:
            continue
        if after is None:
            out.append(f"route table {rt} left the group")
        elif before is None:
            out.append(f"route table {rt} joined the group (home {after or 'none yet'})")
        else:
            out.append(f"route table {rt}: home {before or 'none'} -> {after or 'none'}")
    return out
