"""What the cycle needs from the world, as protocols: the EC2 adapter, the peer prober, the self
checker and the connection-tracking sync. The daemon passes the real adapters; tests, the
simulator and the benchmarks pass their own.
"""

from __future__ import annotations

from typing import Protocol

from agent.aws.fence import Fence
from agent.decide import Ec2Address, Ec2Route, PeerProbe
from coordinator.items import Health


class Ec2Like(Protocol):
    def attach_fence(self, fence: Fence) -> None: ...

    def routes(self, route_tables: list[str]) -> dict[str, Ec2Route]: ...

    def point_route(self, route_table: str, instance: str, *, missing: bool = False) -> str: ...

    def tag_holder(self, route_table: str, holder: str) -> None: ...

    def tag_address_holder(self, route_table: str, holder: str) -> None: ...

    def tag_stop_by(self, instance: str, stopper: str) -> None: ...

    def egress_ips(self, route_tables: list[str]) -> dict[str, Ec2Address]: ...

    def associate_address(self, route_table: str, instance: str) -> str: ...

    def instance_states(self, instances: list[str]) -> dict[str, str]: ...

    def stop(self, instance: str) -> None: ...

    def start(self, instance: str) -> None: ...


class ProbesLike(Protocol):
    def snapshot(self) -> dict[str, PeerProbe]: ...


class HealthLike(Protocol):
    def check(self, now: float, reaches: tuple[str, ...] = ()) -> Health: ...


class FlowSyncLike(Protocol):
    """Connection-tracking state that follows a route table (a separate service does the work).

    Every call returns at once: the cycle never blocks on the sync (heartbeats must go on).
    """

    def handover_wait(self, route_table: str, successor: str, now: float) -> str:
        """Before a planned hand-over's route write: "" when ``successor`` has ``route_table``'s flows
        (or the bounded wait for them is over), else why we wait (the hand-over is retried next cycle).
        The first call for a (table, successor) starts the push."""
        ...

    def taking(self, route_table: str, previous: str) -> None:
        """This NAT takes ``route_table`` from ``previous`` ("" when unowned): load what was synced."""
        ...

    def released(self, route_table: str, successor: str) -> None:
        """This NAT handed ``route_table`` to ``successor``: stream its late changes, then stop."""
        ...


class NoFlowSync:
    """No connection-tracking sync: hand-overs never wait, nothing is loaded."""

    def handover_wait(self, route_table: str, successor: str, now: float) -> str:
        return ""

    def taking(self, route_table: str, previous: str) -> None:
        return None

    def released(self, route_table: str, successor: str) -> None:
        return None
