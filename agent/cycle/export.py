"""The cycle's state as Prometheus gauges (every cycle: kept cheap, children resolved once)."""

from __future__ import annotations

from agent import __version__
from agent.config import Config
from agent.cycle.context import Context
from agent.decide import Decision, PeerProbe
from agent.metrics import SELF_CHECKS, Metrics
from coordinator.items import GroupSnapshot, Health, MemberItem


class Exporter:
    def __init__(self, ctx: Context, metrics: Metrics) -> None:
        self.ctx = ctx
        self.m = metrics

    def export(
        self,
        decision: Decision,
        now: float,
        health: Health,
        probes: dict[str, PeerProbe],
        snapshot: GroupSnapshot | None,
    ) -> None:
        """Set the state gauges as of this cycle (every cycle: keep it cheap, no ``labels()``)."""
        ctx = self.ctx
        m = self.m
        put = m.put
        put(m.up, 1)
        put(m.healthy, 1 if health.healthy else 0)
        checks = health.checks
        self_check = m.self_check_of
        for check in SELF_CHECKS:
            put(self_check[check], 1 if checks.get(check, True) else 0)
        for check, ok in checks.items():
            if check not in SELF_CHECKS:
                put(self_check[check], 1 if ok else 0)
        remaining = max(0.0, ctx.coordinator.remaining())
        put(m.session_valid, 1 if remaining > 0 else 0)
        put(m.session_remaining, remaining)
        m.set_decision(decision.kind)
        m.cycle_duration.observe(max(0.0, ctx.clock.monotonic() - now))
        m.last_cycle.set(ctx.clock.wall())
        standing = ctx.memory.ec2_writes.backoffs
        for action, b in standing.items():
            put(m.ec2_backoff_of[action], max(0.0, b.until - now))
        peer_up = m.peer_up_of
        for peer, p in probes.items():
            put(peer_up[peer], 1 if p.up else 0)
        if snapshot is None:
            return
        put(m.bad_items, len(snapshot.bad_items))
        observer = ctx.memory.observer
        margin = ctx.timings.margin
        members = snapshot.members
        for peer in ctx.members:
            if peer == ctx.me:
                continue
            item: MemberItem | None = members.get(peer)
            age = observer.unchanged_for(item.key, now) if item else 0.0
            put(m.peer_heartbeat_age_of[peer], age)
            fresh = item is not None and item.state == "alive" and age < item.lease_ms / 1000 + margin
            put(m.peer_alive_of[peer], 1 if fresh else 0)
            put(m.peer_healthy_of[peer], 1 if fresh and item is not None and item.health.healthy else 0)
        owned = 0
        for rt in sorted(ctx.homes):
            r = snapshot.routes.get(rt)
            mine = ctx.mine(rt, snapshot)
            owned += int(mine)
            put(m.route_owned_of[rt], 1 if mine else 0)
            put(m.route_term_of[rt], r.term if r else 0)
            owner_item = members.get(r.owner) if r and r.owner else None
            live = (
                r is not None
                and owner_item is not None
                and owner_item.session == r.owner_session
                and owner_item.state == "alive"
                and observer.unchanged_for(owner_item.key, now) < owner_item.lease_ms / 1000 + margin
            )
            put(m.route_has_owner_of[rt], 1 if live else 0)
            owner_of = m.route_owner_of
            for owner in ctx.members:
                put(owner_of[rt, owner], 1 if live and r is not None and r.owner == owner else 0)
            if mine:
                ec2 = ctx.memory.ec2.get(rt)
                put(m.route_ec2_matches_of[rt], 1 if ec2 is not None and ec2.target == ctx.me else 0)
                target_of = m.route_ec2_target_of
                for target in ctx.members:
                    put(target_of[rt, target], 1 if ec2 is not None and ec2.target == target else 0)
                put(target_of[rt, "other"], 1 if ec2 is not None and ec2.target.startswith("other") else 0)
            else:
                put(m.route_ec2_matches_of[rt], 1)
                for key, child in m.route_ec2_target_of.items():  # what it showed as holder is stale now
                    if key[0] == rt:
                        put(child, 0)
        put(m.route_tables_owned, owned)
        if ctx.egress_tables:
            self._export_egress(snapshot)

    def _export_egress(self, snapshot: GroupSnapshot) -> None:
        """Where each table's Elastic IP sits (every agent), and whether it sits with us (the holder)."""
        ctx = self.ctx
        m = self.m
        put = m.put
        for rt in sorted(ctx.egress_tables):
            seen = ctx.memory.egress.get(rt)
            mine = ctx.mine(rt, snapshot)
            put(m.egress_ok_of[rt], (1 if seen is not None and seen.holder == ctx.me else 0) if mine else 1)
            if seen is None or not seen.public_ip:
                continue  # not read yet (our own write does not say which public address it is)
            holder = seen.holder or "none"
            current = (rt, seen.public_ip, "other" if holder.startswith("other:") else holder)
            put(m.egress_ip_of[current], 1)
            for key, child in m.egress_ip_of.items():  # where it sat before
                if key[0] == rt and key != current:
                    put(child, 0)


def build_info(metrics: Metrics, config: Config, *, again: bool = False) -> None:
    """Every series of this config's peers and tables (``again``: the members changed while running)."""
    peers = [p for p in (m.instance_id for m in config.members) if p != config.instance_id]
    homes = config.route_tables()
    egress = [rt for rt in homes if rt in config.egress()]
    metrics.prepare(__version__, config.group, config.instance_id, peers, homes, egress, again=again)
