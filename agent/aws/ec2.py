"""The EC2 adapter: route tables, instance states, stop/start. Thin, bounded, typed errors.

Route writes are idempotent (already right: no call; missing 0.0.0.0/0: CreateRoute)
and verified with DescribeRouteTables, because the EC2 API is eventually
consistent. A route may name the instance or one of its network interfaces (AWS
fills in both, moto only the one given), and may be ``blackhole``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import Member
from agent.decide import Ec2Route
from coordinator.instrument import CallObserver, instrument_client

DEFAULT_ROUTE = "0.0.0.0/0"


class Ec2Error(Exception):
    """An EC2 call failed; ``code`` is AWS's error code or the exception name."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(f"EC2 {operation} failed: {code}: {message}")
        self.operation = operation
        self.code = code


def make_client(service: str, region: str, endpoint_url: str, timeout: float, attempts: int) -> Any:
    """A botocore client with bounded connect/read timeouts and retry budget (rule 3)."""
    from botocore.config import Config

    from agent.aws.models import botocore_session

    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"total_max_attempts": attempts, "mode": "standard"},
        max_pool_connections=4,
    )
    endpoint = (
        endpoint_url or os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL")
    )
    return botocore_session().create_client(service, region_name=region, endpoint_url=endpoint or None, config=config)


@dataclass(frozen=True)
class RouteView:
    """One route table's default route as EC2 reports it."""

    route_table: str
    instance_id: str
    eni: str
    other: str  # a target that is not an instance or ENI (NAT gateway, IGW, ...)
    state: str  # active | blackhole | missing


class Ec2:
    """EC2 calls of one agent. ``members`` maps instance ids to their config (for ENI targets)."""

    def __init__(
        self,
        region: str,
        endpoint_url: str = "",
        *,
        timeout: float = 0.6,
        members: dict[str, Member] | None = None,
        on_call: CallObserver | None = None,
        sleep: Callable[[float], None] = time.sleep,
        client: Any = None,
    ) -> None:
        self.client = client or make_client("ec2", region, endpoint_url, timeout, 1)
        instrument_client(self.client, on_call)
        self.members = members or {}
        self.sleep = sleep

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            result: dict[str, Any] = getattr(self.client, operation)(**params)
            return result
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise Ec2Error(operation, str(err.get("Code", "ClientError")), str(err.get("Message", ""))) from exc
        except BotoCoreError as exc:
            raise Ec2Error(operation, type(exc).__name__, str(exc)) from exc

    # ---------------------------------------------------------------- routes
    def describe(self, route_tables: list[str]) -> dict[str, RouteView]:
        if not route_tables:
            return {}
        data = self._call("describe_route_tables", RouteTableIds=sorted(route_tables))
        out: dict[str, RouteView] = {}
        for rt in data.get("RouteTables", []):
            rid = rt["RouteTableId"]
            route = next((r for r in rt.get("Routes", []) if r.get("DestinationCidrBlock") == DEFAULT_ROUTE), None)
            if route is None:
                out[rid] = RouteView(rid, "", "", "", "missing")
                continue
            other = next(
                (
                    str(route[k])
                    for k in ("NatGatewayId", "GatewayId", "TransitGatewayId", "VpcPeeringConnectionId")
                    if route.get(k)
                ),
                "",
            )
            out[rid] = RouteView(
                rid,
                str(route.get("InstanceId") or ""),
                str(route.get("NetworkInterfaceId") or ""),
                other,
                str(route.get("State") or "active"),
            )
        return out

    def member_of(self, view: RouteView) -> str:
        """The member a route points at ("" if none): matched on instance id or on its ENI."""
        if view.instance_id and view.instance_id in self.members:
            return view.instance_id
        if view.eni:
            for m in self.members.values():
                if m.eni and m.eni == view.eni:
                    return m.instance_id
        return ""

    def as_decision_input(self, view: RouteView) -> Ec2Route:
        if view.state == "missing":
            return Ec2Route("", "missing")
        target = self.member_of(view) or f"other:{view.instance_id or view.eni or view.other or '?'}"
        return Ec2Route(target, view.state)

    def routes(self, route_tables: list[str]) -> dict[str, Ec2Route]:
        return {rt: self.as_decision_input(v) for rt, v in self.describe(route_tables).items()}

    def _target(self, instance: str) -> dict[str, str]:
        m = self.members.get(instance)
        if m is not None and m.eni:
            return {"NetworkInterfaceId": m.eni}
        return {"InstanceId": instance}

    def point_route(
        self,
        route_table: str,
        instance: str,
        current: RouteView | None = None,
        *,
        guard: Callable[[], bool] | None = None,
    ) -> str:
        """Make 0.0.0.0/0 of ``route_table`` go to ``instance``; returns what was done.

        ``guard`` is asked after the read and right before the write: False means
        the caller may no longer write (its lease is too short now), nothing is
        written and "deferred" is returned.
        """
        if current is None:
            current = self.describe([route_table])[route_table]
        if self.member_of(current) == instance and current.state == "active":
            return "already"
        if guard is not None and not guard():
            return "deferred"
        target = self._target(instance)
        if current.state == "missing":
            try:
                self._call("create_route", RouteTableId=route_table, DestinationCidrBlock=DEFAULT_ROUTE, **target)
                return "created"
            except Ec2Error as exc:
                if exc.code != "RouteAlreadyExists":
                    raise
        self._call("replace_route", RouteTableId=route_table, DestinationCidrBlock=DEFAULT_ROUTE, **target)
        return "replaced"

    def verify(self, route_table: str, instance: str, timeout: float = 2.0) -> bool:
        """Poll DescribeRouteTables (bounded, with backoff) until the route shows ``instance``."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                view = self.describe([route_table])[route_table]
                if self.member_of(view) == instance and view.state != "missing":
                    return True
            except Ec2Error:
                pass
            if time.monotonic() + delay > deadline:
                return False
            self.sleep(delay)
            delay = min(delay * 2, 0.4)

    # ------------------------------------------------------------- instances
    def instance_states(self, instances: list[str]) -> dict[str, str]:
        if not instances:
            return {}
        data = self._call("describe_instances", InstanceIds=sorted(instances))
        return {
            i["InstanceId"]: str(i.get("State", {}).get("Name", "unknown"))
            for r in data.get("Reservations", [])
            for i in r.get("Instances", [])
        }

    def stop(self, instance: str) -> None:
        self._call("stop_instances", InstanceIds=[instance])

    def start(self, instance: str) -> None:
        self._call("start_instances", InstanceIds=[instance])

    # ------------------------------------------------------------- discovery
    def discover(self, group: str) -> list[Member]:
        """Members and their home route tables from tags (members_from_tags = true)."""
        data = self._call(
            "describe_instances",
            Filters=[
                {"Name": "tag:nat-ha:group", "Values": [group]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
            ],
        )
        instances = [i for r in data.get("Reservations", []) for i in r.get("Instances", [])]
        tables = self._call("describe_route_tables", Filters=[{"Name": "tag:nat-ha:group", "Values": [group]}])
        homes: dict[str, list[str]] = {}
        for rt in tables.get("RouteTables", []):
            tags = {t["Key"]: t["Value"] for t in rt.get("Tags", [])}
            if tags.get("nat-ha:home"):
                homes.setdefault(tags["nat-ha:home"], []).append(rt["RouteTableId"])
        members = [
            Member(
                instance_id=i["InstanceId"],
                address=str(i.get("PrivateIpAddress", "")),
                route_tables=tuple(sorted(homes.get(i["InstanceId"], []))),
                az=str(i.get("Placement", {}).get("AvailabilityZone", "")),
            )
            for i in sorted(
                instances, key=lambda i: (i.get("Placement", {}).get("AvailabilityZone", ""), i["InstanceId"])
            )
        ]
        return members
