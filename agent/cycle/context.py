"""What every part of the cycle shares: the config, the adapters, the clock, the metrics, the
agent's memory, and logging an AWS or store error once until it clears.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.aws.fence import Fence
from agent.config import Config, Timing
from agent.cycle.memory import Memory
from agent.cycle.ports import Ec2Like, FlowSyncLike
from agent.metrics import Metrics
from coordinator.clock import Clock
from coordinator.items import GroupSnapshot
from coordinator.leases import Coordinator

log = logging.getLogger("nat_ha.agent")

EventSink = Callable[[str, dict[str, object]], None]


@dataclass
class Context:
    config: Config
    coordinator: Coordinator
    ec2: Ec2Like
    clock: Clock
    metrics: Metrics | None
    on_event: EventSink
    flows: FlowSyncLike
    holder: str = ""  # our ARN for the route tables' holder tag ("": do not tag)
    memory: Memory = field(default_factory=Memory)
    last_snapshot: GroupSnapshot | None = None
    fence: Fence | None = None  # set by the Agent once built: frames our writes (confirm, stray note)

    def __post_init__(self) -> None:
        self.me = self.config.instance_id
        self.timings: Timing = self.config.timing
        self.use(self.config)

    def use(self, config: Config) -> None:
        """The members and route tables of ``config`` from now on (discovered again: agent.cycle.membership)."""
        self.config = config
        self.members = tuple(m.instance_id for m in config.members)
        self.homes = {rt: config.home_of(rt) for rt in config.route_tables()}  # a homeless table: ""
        self.egress_tables = frozenset(rt for rt in config.egress() if rt in self.homes)

    def error_once(self, key: str, message: str) -> None:
        """Log an AWS/store error once (until it clears), saying what the agent does about it."""
        if key not in self.memory.reported_errors:
            self.memory.reported_errors.add(key)
            log.warning(message)

    def error_cleared(self, prefix: str) -> None:
        gone = {k for k in self.memory.reported_errors if k.startswith(prefix)}
        for k in gone:
            self.memory.reported_errors.discard(k)
            log.info("recovered: %s", k)

    def mine(self, route_table: str, snapshot: GroupSnapshot | None = None) -> bool:
        """The table's item names this session as its owner (as of ``snapshot``, else the last read)."""
        s = snapshot if snapshot is not None else self.last_snapshot
        session = self.coordinator.session
        r = s.routes.get(route_table) if s is not None else None
        return r is not None and session is not None and r.owner == self.me and r.owner_session == session.session
