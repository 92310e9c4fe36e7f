"""What the daemon does between two cycles for a group found by tags: new members, and termination.

Two background watches, both only with ``members_from_tags`` (the stacks' way):

* the members (agent.memberwatch): a changed view is handed to the agent (agent.cycle.membership),
  the prober and the EC2 adapter between two cycles, and the departed's metrics series go;
* the Auto Scaling lifecycle (agent.aws.lifecycle), when this instance is in an Auto Scaling group:
  on Terminating:Wait this NAT asks for its own drain - the same request ``nat-ha drain`` writes,
  kept in the table, so an agent restarted meanwhile stays drained - and once it holds no route
  table (or after the drain limit) the watch completes the hook's action.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from agent.aws.ec2 import Ec2
from agent.aws.lifecycle import LifecycleWatch, drain_due, plain_client
from agent.config import Config, EgressTable
from agent.cycle import Agent, build_info
from agent.host.probes import Prober, Target
from agent.members import Membership, Tracker
from agent.memberwatch import MemberWatch, strangers
from agent.metrics import Metrics
from agent.runtime import with_membership
from coordinator.errors import CoordinatorError
from coordinator.items import DRAIN_PREFIX, MEMBER_ALIVE

log = logging.getLogger("nat_ha.agent")


def probe_targets(config: Config) -> list[Target]:
    return [
        Target(m.instance_id, m.address, m.probe_port or config.probe.tcp_port)
        for m in config.members
        if m.instance_id != config.instance_id
    ]


class Watches:
    def __init__(
        self,
        config: Config,
        base_tables: tuple[EgressTable, ...],
        ec2: Ec2,
        metrics: Metrics | None,
        *,
        lifecycle: bool = True,
        members: Callable[[], Membership] | None = None,
    ) -> None:
        self.ec2 = ec2  # the agent's own adapter: its members and egress follow the view
        self.metrics = metrics
        self.base_tables = base_tables  # [[egress.tables]] as configured (addresses derived again each time)
        self.me = config.instance_id
        observe = metrics.observe_aws_call if metrics is not None else None
        if members is None:
            own = Ec2(config.region, config.ec2.endpoint_url, timeout=5.0, on_call=observe)  # not the cycle's
            group, with_eni = config.group, config.egress_follow

            def members() -> Membership:
                return own.discover(group, with_eni=with_eni)

        tracker = Tracker(self.me, Membership(config.members, config.homeless))
        self.members = MemberWatch(members, tracker, config.timing.discover_interval)
        self.poked: set[str] = set()
        self.problems: set[str] = set()
        me = config.member(self.me)
        self.lifecycle: LifecycleWatch | None = None
        if lifecycle and me is not None and me.asg:
            region = config.region
            self.lifecycle = LifecycleWatch(self.me, me.asg, lambda: plain_client("autoscaling", region, observe))
        self.drain_started: float | None = None
        self.completing = False

    def start(self) -> None:
        self.members.start()
        if self.lifecycle is not None:
            self.lifecycle.start()

    def stop(self) -> None:
        self.members.stop()
        if self.lifecycle is not None:
            self.lifecycle.stop()

    # ------------------------------------------------------------ between cycles
    def between_cycles(self, agent: Agent, prober: Prober, now: float) -> None:
        self._members(agent, prober)
        self._lifecycle(agent, now)

    def _members(self, agent: Agent, prober: Prober) -> None:
        snap = agent.last_snapshot
        if snap is not None:
            alive = [m.instance for m in snap.members.values() if m.state == MEMBER_ALIVE]
            new = [i for i in strangers(agent.members, alive) if i not in self.poked]
            if new:
                self.poked.update(new)  # once per stranger; the regular discoveries go on anyway
                self.members.poke()
        news = self.members.take()
        if news is None:
            return
        view, lines = news
        for line in lines:
            log.info("members: %s", line)
        base = dataclasses.replace(agent.config, egress_tables=self.base_tables)
        config, problems = with_membership(base, view)
        for problem in problems:
            if problem not in self.problems:
                log.warning("egress_ip = follow with the new members: %s", problem)
        self.problems = set(problems)
        departed = agent.set_membership(config)
        self.ec2.members = {m.instance_id: m for m in config.members}
        self.ec2.egress = config.egress()
        prober.set_targets(probe_targets(config))
        if self.metrics is not None:
            self.metrics.forget(list(departed.peers), list(departed.route_tables))
            build_info(self.metrics, config, again=True)
        self.poked &= {m.instance for m in (snap.members.values() if snap is not None else [])}

    def _lifecycle(self, agent: Agent, now: float) -> None:
        hook = self.lifecycle
        if hook is None or not hook.terminating.is_set() or self.completing:
            return
        if self.drain_started is None:
            try:
                agent.coordinator.set_request(DRAIN_PREFIX + self.me, "on")
            except CoordinatorError as exc:
                log.warning("cannot ask for this NAT's drain (%s); will retry", exc)
                return
            self.drain_started = now
            return
        if drain_due(self.drain_started, agent.drained(), now):
            held = "" if agent.drained() else " (drain limit reached with route tables still held)"
            log.info("drained for Auto Scaling's termination%s: completing the lifecycle action", held)
            self.completing = True
            hook.complete()


def make(config: Config, base_tables: tuple[EgressTable, ...], ec2: Any, metrics: Metrics | None) -> Watches | None:
    """The watches for this config (None without members_from_tags)."""
    if not config.members_from_tags:
        return None
    return Watches(config, base_tables, ec2, metrics)
