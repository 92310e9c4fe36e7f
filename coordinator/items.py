"""The items of a group, as typed values, and their (de)serialisation.

One table holds every group. Partition key ``group``, sort key ``item``:

* ``member#<instance>`` - a member's heartbeat and session: its self-reported
  health, renewed every heartbeat interval. The session is the lease behind every
  route table the member holds.
* ``route#<route-table>`` - which member serves a route table, in which term,
  under which of its sessions.
* ``restart#<instance>`` - the restart lease on a peer instance (stop/start).
* ``drain#<instance>`` - an operator asked this member to hand its route tables
  over and take none (``nat-ha drain``); ``owner`` "on", empty once undone.
* ``pin#<route-table>`` - an operator asked that this route table be served by a
  given member while it is healthy (``nat-ha switchover``); empty ``owner`` = none.
* ``pause#group`` / ``pause#<route-table>`` - an operator paused the group or one route table
  (``nat-ha pause``): the agents keep their sessions, leases and probes but send no EC2 write
  for it; ``owner`` "on" while paused, empty once resumed.
* ``stray#<route-table>`` - an agent found that one of its EC2 writes to this route table
  left after its deadline (it was frozen between the lease check and the send): the
  write may land outside its lease, so the current holder writes the route again.

Operator requests (drain, pin, pause) also say who asked, why and since when (``by``, ``why``,
``since``: the operator's wall clock, shown to humans and exported for alerts on a request that
was forgotten; never used to decide). The group's history lives in a partition of its own
(:mod:`coordinator.history`), so the Query of every cycle never reads it.

Parsing never raises on odd content: an item that cannot be used becomes a
:class:`BadItemReport`, so one hand-edited item cannot crash an agent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MEMBER_PREFIX = "member#"
ROUTE_PREFIX = "route#"
RESTART_PREFIX = "restart#"
DRAIN_PREFIX = "drain#"
PIN_PREFIX = "pin#"
PAUSE_PREFIX = "pause#"
STRAY_PREFIX = "stray#"
REQUEST_PREFIXES = (DRAIN_PREFIX, PIN_PREFIX, PAUSE_PREFIX)
GROUP_PAUSE = PAUSE_PREFIX + "group"  # the whole group; pause#<route-table> for one table

MEMBER_ALIVE = "alive"
MEMBER_EXPIRED = "expired"
MEMBER_LEFT = "left"
MEMBER_STATES = (MEMBER_ALIVE, MEMBER_EXPIRED, MEMBER_LEFT)

RESTART_IDLE = "idle"
RESTART_STOPPING = "stopping"
RESTART_STARTING = "starting"
RESTART_COOLDOWN = "cooldown"
RESTART_PHASES = (RESTART_IDLE, RESTART_STOPPING, RESTART_STARTING, RESTART_COOLDOWN)

Attrs = dict[str, Any]


@dataclass(frozen=True)
class Health:
    """What a member says about itself in its heartbeat.

    ``ec2_answered``: seconds since EC2 last answered a call of this member, as of the
    heartbeat (None: not known). Peers read it to tell their own broken path to EC2 from an
    outage that hits everyone (agent.cycle.standing).
    ``store_rtt``: the slowest of this member's last few renewals' round trips to DynamoDB, in
    seconds (None: not known). A member whose path is slow claims a failed peer's tables after
    the members whose path is fast (agent.decide): its takeover's calls take longer.
    ``store_rtt_age``: seconds from the end of the newest of those renewals to this heartbeat's
    sending (None: not said - an agent before this field, or a session keeper repeating an older
    heartbeat). It dates the figure: a peer that judges its own path lossy trusts a fast figure only
    if it was measured after its own renewals turned slow (a DynamoDB slowdown for everyone made
    every member's renewals slow, and a figure from before it said nothing of the path now).
    """

    healthy: bool
    checks: dict[str, bool] = field(default_factory=dict)
    reaches: tuple[str, ...] = ()
    detail: str = ""
    ec2_answered: float | None = None
    store_rtt: float | None = None
    store_rtt_age: float | None = None

    def to_json(self) -> str:
        raw: dict[str, object] = {
            "healthy": self.healthy,
            "checks": self.checks,
            "reaches": list(self.reaches),
            "detail": self.detail,
        }
        if self.ec2_answered is not None:
            raw["ec2_answered_s"] = round(self.ec2_answered, 2)
        if self.store_rtt is not None:
            raw["store_rtt_s"] = round(self.store_rtt, 3)
        if self.store_rtt_age is not None:
            raw["store_rtt_age_s"] = round(self.store_rtt_age, 3)
        return json.dumps(raw, sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> Health:
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("healthy"), bool):
            raise ValueError("health must be an object with a boolean 'healthy'")
        checks = raw.get("checks", {})
        reaches = raw.get("reaches", [])
        if not isinstance(checks, dict) or not all(isinstance(v, bool) for v in checks.values()):
            raise ValueError("health.checks must map names to booleans")
        if not isinstance(reaches, list) or not all(isinstance(v, str) for v in reaches):
            raise ValueError("health.reaches must be a list of instance ids")
        # Only a hint for peers: a value that is not a number of seconds is ignored, never an error
        # that would make the whole heartbeat unreadable.
        return Health(
            raw["healthy"],
            {str(k): v for k, v in checks.items()},
            tuple(reaches),
            str(raw.get("detail", "")),
            _hint_seconds(raw.get("ec2_answered_s")),
            _hint_seconds(raw.get("store_rtt_s")),
            _hint_seconds(raw.get("store_rtt_age_s")),
        )


def _hint_seconds(value: object) -> float | None:
    """A hint in seconds, or None when it is not a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e9:
        return float(value)
    return None


@dataclass(frozen=True)
class MemberItem:
    """A member's heartbeat; its ``session`` is the lease behind its route tables."""

    instance: str
    session: str
    state: str
    version: int
    token: str
    lease_ms: int
    health: Health
    agent_version: str = ""
    az: str = ""
    address: str = ""
    draining: bool = False
    expired_by: str = ""
    updated_at: float = 0.0  # wall clock of the writer: shown to humans, never used to judge expiry
    paused: bool = False  # the agent sees a pause of its group or of one of its tables (acknowledges it)
    # Set by the last renewal of a process exiting for a restart: while the NAT answers probes, peers
    # tolerate this much heartbeat silence (from when they saw this renewal) before judging it dead.
    restart_grace_ms: int = 0

    @property
    def key(self) -> str:
        return MEMBER_PREFIX + self.instance


@dataclass(frozen=True)
class RouteItem:
    """Who serves a route table. ``term`` is the fencing token: +1 on every owner change."""

    route_table: str
    owner: str
    owner_session: str
    term: int
    version: int
    token: str
    home: str = ""

    @property
    def key(self) -> str:
        return ROUTE_PREFIX + self.route_table


@dataclass(frozen=True)
class RestartItem:
    """The restart lease on ``target``: who may stop/start it, and the cap's count."""

    target: str
    owner: str
    owner_session: str
    term: int
    version: int
    token: str
    phase: str
    attempts: int
    cooldown_ms: int

    @property
    def key(self) -> str:
        return RESTART_PREFIX + self.target


@dataclass(frozen=True)
class RequestItem:
    """An operator's standing request: a drain of a member, a pin or a pause of a route table (or the group)."""

    key: str
    target: str  # drained instance, pinned or paused route table, "group" for a pause of the group
    value: str  # "" (off / no pin), "on" for a drain or a pause, the instance for a pin
    version: int
    token: str
    by: str = ""  # who asked (the operator's name and host)
    why: str = ""  # their reason, if they gave one
    since: float = 0.0  # when (the operator's wall clock, unix s; 0: not recorded)

    @property
    def kind(self) -> str:
        """drain, pin or pause."""
        return self.key.split("#", 1)[0]


@dataclass(frozen=True)
class StrayItem:
    """A possibly late EC2 write to a route table, reported by its writer (last report wins)."""

    route_table: str
    writer: str
    term: int  # the term the writer held when it checked its lease
    target: str  # where the late write points the route
    token: str

    @property
    def key(self) -> str:
        return STRAY_PREFIX + self.route_table


@dataclass(frozen=True)
class BadItemReport:
    key: str
    problem: str


@dataclass(frozen=True)
class GroupSnapshot:
    """Everything one consistent Query of a group returned."""

    group: str
    members: dict[str, MemberItem]
    routes: dict[str, RouteItem]
    restarts: dict[str, RestartItem]
    bad_items: tuple[BadItemReport, ...] = ()
    requests: dict[str, RequestItem] = field(default_factory=dict)  # by key
    strays: dict[str, StrayItem] = field(default_factory=dict)  # by route table

    def draining(self, instance: str) -> bool:
        r = self.requests.get(DRAIN_PREFIX + instance)
        return r is not None and r.value == "on"

    def pins(self) -> dict[str, str]:
        """Route table -> member an operator pinned it to."""
        return {r.target: r.value for k, r in self.requests.items() if k.startswith(PIN_PREFIX) and r.value}

    def pause_of(self, route_table: str) -> RequestItem | None:
        """The pause that holds ``route_table`` (the group's first, then the table's own), if any."""
        for key in (GROUP_PAUSE, PAUSE_PREFIX + route_table):
            r = self.requests.get(key)
            if r is not None and r.value == "on":
                return r
        return None

    def pauses(self) -> list[RequestItem]:
        """Every pause in force (the group's and single tables')."""
        return [r for k, r in sorted(self.requests.items()) if k.startswith(PAUSE_PREFIX) and r.value == "on"]

    def active_requests(self) -> list[RequestItem]:
        """Every drain, pin and pause in force, by key."""
        return [r for _k, r in sorted(self.requests.items()) if r.value]


def _str(attrs: Attrs, name: str, *, required: bool = True) -> str:
    value = attrs.get(name)
    if value is None:
        if required:
            raise ValueError(f"missing attribute {name!r}")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"attribute {name!r} must be a string, got {type(value).__name__}")
    return value


def _int(attrs: Attrs, name: str, *, minimum: int = 0) -> int:
    value = attrs.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"attribute {name!r} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"attribute {name!r} must be >= {minimum}, got {value!r}")
    return int(value)


def parse_member(attrs: Attrs) -> MemberItem:
    state = _str(attrs, "state")
    if state not in MEMBER_STATES:
        raise ValueError(f"state must be one of {', '.join(MEMBER_STATES)}, got {state!r}")
    return MemberItem(
        instance=_str(attrs, "item")[len(MEMBER_PREFIX) :],
        session=_str(attrs, "session"),
        state=state,
        version=_int(attrs, "version", minimum=1),
        token=_str(attrs, "token"),
        lease_ms=_int(attrs, "lease_ms", minimum=1),
        health=Health.from_json(_str(attrs, "health")),
        agent_version=_str(attrs, "agent_version", required=False),
        az=_str(attrs, "az", required=False),
        address=_str(attrs, "address", required=False),
        draining=bool(attrs.get("draining", False)),
        expired_by=_str(attrs, "expired_by", required=False),
        updated_at=_seconds(attrs, "updated_at"),
        paused=attrs.get("paused") is True,
        restart_grace_ms=_int(attrs, "restart_grace_ms") if "restart_grace_ms" in attrs else 0,
    )


def parse_route(attrs: Attrs) -> RouteItem:
    owner = _str(attrs, "owner", required=False)
    session = _str(attrs, "owner_session", required=False)
    if bool(owner) != bool(session):
        raise ValueError("owner and owner_session must both be set or both be empty")
    return RouteItem(
        route_table=_str(attrs, "item")[len(ROUTE_PREFIX) :],
        owner=owner,
        owner_session=session,
        term=_int(attrs, "term"),
        version=_int(attrs, "version", minimum=1),
        token=_str(attrs, "token"),
        home=_str(attrs, "home", required=False),
    )


def parse_restart(attrs: Attrs) -> RestartItem:
    phase = _str(attrs, "phase")
    if phase not in RESTART_PHASES:
        raise ValueError(f"phase must be one of {', '.join(RESTART_PHASES)}, got {phase!r}")
    return RestartItem(
        target=_str(attrs, "item")[len(RESTART_PREFIX) :],
        owner=_str(attrs, "owner", required=False),
        owner_session=_str(attrs, "owner_session", required=False),
        term=_int(attrs, "term"),
        version=_int(attrs, "version", minimum=1),
        token=_str(attrs, "token"),
        phase=phase,
        attempts=_int(attrs, "attempts"),
        cooldown_ms=_int(attrs, "cooldown_ms"),
    )


def _seconds(attrs: Attrs, name: str) -> float:
    """A wall-clock time for humans: 0 when absent or not a number (never a reason to reject an item)."""
    value = attrs.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def parse_request(attrs: Attrs) -> RequestItem:
    key = _str(attrs, "item")
    prefix = next(p for p in REQUEST_PREFIXES if key.startswith(p))
    value = _str(attrs, "owner", required=False)
    if prefix in (DRAIN_PREFIX, PAUSE_PREFIX) and value not in ("", "on"):
        raise ValueError(f"a {prefix[:-1]} request's owner must be 'on' or empty, got {value!r}")
    return RequestItem(
        key,
        key[len(prefix) :],
        value,
        _int(attrs, "version", minimum=1),
        _str(attrs, "token"),
        by=_str(attrs, "by", required=False),
        why=_str(attrs, "why", required=False),
        since=_seconds(attrs, "since"),
    )


def parse_stray(attrs: Attrs) -> StrayItem:
    return StrayItem(
        route_table=_str(attrs, "item")[len(STRAY_PREFIX) :],
        writer=_str(attrs, "owner"),
        term=_int(attrs, "term"),
        target=_str(attrs, "target", required=False),
        token=_str(attrs, "token"),
    )


def encode_stray(s: StrayItem) -> Attrs:
    return {
        "item": s.key,
        "kind": "stray",
        "owner": s.writer,
        "term": s.term,
        "target": s.target,
        "version": 1,
        "token": s.token,
    }


def encode_request(r: RequestItem) -> Attrs:
    return {
        "item": r.key,
        "kind": "request",
        "owner": r.value,
        "version": r.version,
        "token": r.token,
        "by": r.by,
        "why": r.why,
        "since": r.since,
    }


def encode_member(m: MemberItem) -> Attrs:
    return {
        "item": m.key,
        "kind": "member",
        "session": m.session,
        "state": m.state,
        "version": m.version,
        "token": m.token,
        "lease_ms": m.lease_ms,
        "health": m.health.to_json(),
        "agent_version": m.agent_version,
        "az": m.az,
        "address": m.address,
        "draining": m.draining,
        "expired_by": m.expired_by,
        "paused": m.paused,
        **({"restart_grace_ms": m.restart_grace_ms} if m.restart_grace_ms else {}),
    }


def encode_route(r: RouteItem) -> Attrs:
    return {
        "item": r.key,
        "kind": "route",
        "owner": r.owner,
        "owner_session": r.owner_session,
        "term": r.term,
        "version": r.version,
        "token": r.token,
        "home": r.home,
    }


def encode_restart(r: RestartItem) -> Attrs:
    return {
        "item": r.key,
        "kind": "restart",
        "owner": r.owner,
        "owner_session": r.owner_session,
        "term": r.term,
        "version": r.version,
        "token": r.token,
        "phase": r.phase,
        "attempts": r.attempts,
        "cooldown_ms": r.cooldown_ms,
    }


def parse_group(group: str, rows: list[Attrs]) -> GroupSnapshot:
    """Turn a Query's rows into a snapshot; bad rows are reported, not raised."""
    members: dict[str, MemberItem] = {}
    routes: dict[str, RouteItem] = {}
    restarts: dict[str, RestartItem] = {}
    requests: dict[str, RequestItem] = {}
    strays: dict[str, StrayItem] = {}
    bad: list[BadItemReport] = []
    for attrs in rows:
        key = str(attrs.get("item", "?"))
        try:
            if key.startswith(MEMBER_PREFIX) and len(key) > len(MEMBER_PREFIX):
                m = parse_member(attrs)
                members[m.instance] = m
            elif key.startswith(ROUTE_PREFIX) and len(key) > len(ROUTE_PREFIX):
                r = parse_route(attrs)
                routes[r.route_table] = r
            elif key.startswith(RESTART_PREFIX) and len(key) > len(RESTART_PREFIX):
                x = parse_restart(attrs)
                restarts[x.target] = x
            elif key.startswith(REQUEST_PREFIXES) and len(key.split("#", 1)[1]) > 0:
                q = parse_request(attrs)
                requests[q.key] = q
            elif key.startswith(STRAY_PREFIX) and len(key) > len(STRAY_PREFIX):
                s = parse_stray(attrs)
                strays[s.route_table] = s
            else:
                expected = "member#, route#, restart#, drain#, pin#, pause#, stray#"
                bad.append(BadItemReport(key, f"unknown item kind (expected {expected})"))
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            bad.append(BadItemReport(key, str(exc)))
    return GroupSnapshot(group, members, routes, restarts, tuple(bad), requests, strays)


def parse_one(attrs: Attrs) -> MemberItem | RouteItem | RestartItem:
    """Parse a single item read by key; raises ``ValueError`` on a bad shape."""
    key = str(attrs.get("item", ""))
    if key.startswith(MEMBER_PREFIX):
        return parse_member(attrs)
    if key.startswith(ROUTE_PREFIX):
        return parse_route(attrs)
    if key.startswith(RESTART_PREFIX):
        return parse_restart(attrs)
    raise ValueError(f"unknown item kind {key!r}")
