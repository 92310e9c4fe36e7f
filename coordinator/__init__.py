"""nat-ha coordination over DynamoDB: sessions, route-table leases, restart leases."""

from coordinator.clock import Clock, FakeClock, SystemClock
from coordinator.errors import BadItem, Conflict, CoordinatorError, SessionLost, StoreConfigError, StoreUnavailable
from coordinator.items import GroupSnapshot, Health, MemberItem, RestartItem, RouteItem
from coordinator.leases import Coordinator, MemberInfo, SessionState
from coordinator.observe import ChangeObserver

__all__ = [
    "BadItem",
    "ChangeObserver",
    "Clock",
    "Conflict",
    "Coordinator",
    "CoordinatorError",
    "FakeClock",
    "GroupSnapshot",
    "Health",
    "MemberInfo",
    "MemberItem",
    "RestartItem",
    "RouteItem",
    "SessionLost",
    "SessionState",
    "StoreConfigError",
    "StoreUnavailable",
    "SystemClock",
]
