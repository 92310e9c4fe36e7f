"""The agent's TOML configuration: schema, defaults, documentation and validation.

One table (``SCHEMA``) says, for every key, its type, default and meaning; the
loader, ``nat-ha check-config`` and the README's reference are all made from it.
Every problem is reported as ``key: problem`` (all of them, not only the first),
and timing rules are checked at start-up as client-go and Patroni do (rule 7).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PATH = "/etc/nat-ha/config.toml"

INSTANCE_RE = re.compile(r"^i-[0-9a-zA-Z]{1,32}$")
RTB_RE = re.compile(r"^rtb-[0-9a-zA-Z]{1,32}$")
ENI_RE = re.compile(r"^eni-[0-9a-zA-Z]{1,32}$")
EIPALLOC_RE = re.compile(r"^eipalloc-[0-9a-zA-Z]{1,32}$")
NATGW_RE = re.compile(r"^nat-[0-9a-zA-Z]{1,32}$")
GROUP_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
TABLE_RE = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ConfigFileError(ConfigError):
    """The file itself cannot be used (missing, unreadable, not TOML); each line already names the file."""


SHOWN_CHARS = 60  # a value echoed in an error line is cut to this many characters


def shown(value: Any) -> str:
    """``repr(value)``, cut to SHOWN_CHARS with its length said: an error line stays one readable line."""
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return text[: SHOWN_CHARS - 3] + "..." + size


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default and what it means."""

    kind: type | tuple[type, ...]
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None


SCHEMA: dict[str, dict[str, Key]] = {
    "": {
        "group": Key(str, None, "Name of the NAT group (the NAT instances that back each other up). Required."),
        "instance_id": Key(str, "", "This instance's id; read from IMDSv2 when empty."),
        "region": Key(str, "", "AWS region; from IMDSv2 (or AWS_DEFAULT_REGION) when empty."),
        "members_from_tags": Key(
            bool,
            False,
            "Discover members and their home route tables from EC2 tags instead of [[members]], at start and "
            "again while running (new and gone instances are learned without a restart): instances tagged "
            "nat-ha:group=<group>, route tables tagged nat-ha:group=<group> and nat-ha:home=<instance id, or "
            "the nat-ha:slot tag of the instances of one Auto Scaling group>.",
        ),
        "egress_ip": Key(
            str,
            "off",
            "follow: each route table's Elastic IP follows the table - its holder keeps it associated with its own "
            "address for that table ([[egress.tables]]), so the table's traffic leaves with the same public IP "
            "after a failover, a drain or a fail-back; off: the agent never touches Elastic IPs, a table's public "
            "address changes when it moves, and no established connection can survive a move (conntrack_sync "
            "needs follow).",
            choices=("off", "follow"),
        ),
        "egress_order": Key(
            str,
            "route-first",
            "With egress_ip = follow, what a NAT moving a table (a takeover, a fail-back, a drain) writes first: "
            "route-first (the route, then the Elastic IP) or address-first (the Elastic IP, then the route). Either "
            "way no packet leaves with another table's address; a failed association never holds the route back.",
            choices=("route-first", "address-first"),
        ),
    },
    "members": {
        "instance_id": Key(str, None, "The member's instance id. Required."),
        "address": Key(str, "", "Address its peers probe (its private IP). Required unless discovered from tags."),
        "route_tables": Key(list, [], "Route tables whose home is this member (served by it when healthy)."),
        "eni": Key(
            str,
            "",
            "Point routes at this network interface instead of the instance id (optional); required with "
            "egress_ip = follow: the Elastic IPs are associated with addresses of this interface.",
        ),
        "az": Key(str, "", "Availability zone (informational)."),
        "probe_port": Key(
            int, 0, "TCP probe port of this member, overriding probe.tcp_port (0: use probe.tcp_port).", minimum=0
        ),
    },
    # One [[egress.tables]] entry per route table (egress_ip = follow); parsed by _egress_tables.
    "egress": {
        "route_table": Key(str, None, "The route table whose Elastic IP this is. Required."),
        "allocation_id": Key(str, None, "The table's Elastic IP (eipalloc-...). Required."),
        "subnets": Key(
            list, [], "The private subnets (CIDRs) that use the table: setup-nat SNATs them to this table's address."
        ),
        "addresses": Key(
            dict,
            {},
            'Per member, { "i-..." = "10.0.1.21", ... }: the private address on that member\'s ENI that carries this '
            "table's traffic and, while that member serves the table, its Elastic IP. A secondary address, never the "
            "member's primary one (its own AWS calls leave from that: they would lose their way out when the "
            "Elastic IP moves). Every member needs one: with [[members]] give them all; with members_from_tags a "
            "member without one here gets its k-th secondary private address (ascending) for the k-th table, as "
            "the stacks assign them.",
        ),
    },
    "store": {
        "table": Key(str, "nat-ha", "DynamoDB table name."),
        "endpoint_url": Key(
            str, "", "DynamoDB endpoint; empty: AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL, or AWS itself."
        ),
        "billing": Key(
            str, "PAY_PER_REQUEST", "Capacity mode used by init-table.", choices=("PAY_PER_REQUEST", "PROVISIONED")
        ),
    },
    "ec2": {
        "endpoint_url": Key(str, "", "EC2 endpoint; empty: AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL, or AWS itself."),
        "holder_tag": Key(
            bool,
            True,
            "Tag each route table with its holder's instance ARN (nat-ha:holder) before writing its route; the "
            "shipped IAM policy lets an instance write a route table's routes only while the tag names it, so a "
            "stale holder's late request is refused by AWS itself. Needs ec2:CreateTags (deploy/iam).",
        ),
        "account_id": Key(
            str, "", "AWS account id, for the holder tag's instance ARN; from IMDSv2 when empty (needed if holder_tag)."
        ),
        "last_resort_nat_gateway": Key(
            str,
            "",
            "A NAT Gateway (nat-..., zonal or regional) for when no NAT of the group can serve a table: its holder, "
            "unhealthy or draining with no healthy peer, routes the table there (a fenced write, the lease kept) and "
            "a NAT takes it back as soon as one is healthy. Traffic then leaves with the gateway's address. "
            "Empty: off.",
        ),
    },
    "probe": {
        "method": Key(
            str,
            "icmp",
            "How peers are probed: icmp (icmplib), tcp (connect to tcp_port) or tcp-echo (connect, send a line, "
            "expect it back: the demo, where each agent answers for its NAT).",
            choices=("icmp", "tcp", "tcp-echo"),
        ),
        "answer_port": Key(
            int, 0, "Serve a tcp-echo responder on this port of our own address (0: off; the demo).", minimum=0
        ),
        "tcp_port": Key(int, 22, "Port for tcp probes.", minimum=1),
        "privileged": Key(
            str,
            "auto",
            "ICMP socket kind: auto (raw if allowed, else datagram), true or false.",
            choices=("auto", "true", "false"),
        ),
        "interval": Key(float, 0.2, "Seconds between probe rounds.", minimum=0.01),
        "timeout": Key(float, 0.15, "Seconds to wait for one probe reply (must be < interval).", minimum=0.001),
        "window": Key(int, 5, "Rolling window of probe results per peer.", minimum=1),
        "down_after": Key(int, 3, "A peer is down when this many of the last `window` probes were lost.", minimum=1),
    },
    "self_check": {
        "ip_forward": Key(bool, True, "Require net.ipv4.ip_forward = 1."),
        "masquerade": Key(bool, True, "Require an iptables or nftables masquerade rule."),
        "public_interface": Key(str, "", "Interface the masquerade rule must name (empty: any)."),
        "conntrack_max_ratio": Key(float, 0.9, "Unhealthy when conntrack count / max exceeds this.", minimum=0.0),
        "egress_targets": Key(list, [], "Optional host:port targets that must answer a TCP connect via this NAT."),
        "egress_timeout": Key(float, 1.0, "Seconds per egress probe.", minimum=0.01),
        "forwarding": Key(
            bool,
            True,
            "Require that the firewall does not drop forwarded packets (FORWARD policy or an unconditional DROP rule).",
        ),
        "rules_interval": Key(
            float,
            2.0,
            "Seconds between reads of the firewall rules and egress probes "
            "(ip_forward and conntrack are read every cycle).",
            minimum=0.1,
        ),
        "procfs": Key(str, "/proc", "Where /proc is (tests)."),
    },
    "timing": {
        "cycle_interval": Key(
            float, 0.35, "Seconds between HA cycles (one consistent read of the group each).", minimum=0.01
        ),
        "heartbeat_interval": Key(float, 0.7, "Seconds between heartbeats (session renewals).", minimum=0.01),
        "lease": Key(
            float, 1.0, "Session length this agent declares; peers take over after it plus margin.", minimum=0.05
        ),
        "margin": Key(float, 0.1, "Extra seconds an observer waits beyond a declared lease.", minimum=0.0),
        "store_timeout": Key(
            float,
            0.15,
            "The least time one DynamoDB call is given (whole: connect, send, answer). A call gets what is left of "
            "the lease minus this (the next renewal's share), between store_timeout and store_timeout_max; a "
            "renewal, or a call while the agent holds no valid lease, gets store_timeout_max.",
            minimum=0.01,
        ),
        "store_timeout_max": Key(
            float,
            0.4,
            "The most time one DynamoDB call is given: a NAT whose round trips to DynamoDB are slow but answer "
            "(up to about this) keeps its lease and its route tables.",
            minimum=0.01,
        ),
        "store_attempts": Key(
            int,
            1,
            "Attempts per DynamoDB call (1: no retry inside a call; the agent retries next cycle, because botocore "
            "sleeps up to 1 s before a retry, longer than a lease).",
            minimum=1,
        ),
        "ec2_timeout": Key(
            float,
            0.6,
            "Hard deadline of one EC2 call, whole (connect, send, answer): the call is aborted then, never retried.",
            minimum=0.01,
        ),
        "ec2_apply_horizon": Key(
            float,
            1.0,
            "How long after a call's deadline AWS may still apply a write it received (an assumption: AWS publishes "
            "no figure). A new holder writes the route at once and writes it again this long after taking the table, "
            "so a late write of the previous holder cannot stay.",
            minimum=0.0,
        ),
        "ec2_tag_propagation": Key(
            float,
            2.0,
            "How long after our own holder-tag write IAM may still decide on the table's previous tag (an "
            "assumption: AWS publishes no figure). A write refused within it is retried next cycle and not counted "
            "as a failure of ours (at most for twice this long per term, so a role that may not write is still "
            "found out).",
            minimum=0.0,
        ),
        "ec2_consistency_window": Key(
            float,
            2.0,
            "DescribeRouteTables may lag a write this long: a read that contradicts our own confirmed write within "
            "it is not acted on.",
            minimum=0.0,
        ),
        "ec2_reconcile_interval": Key(
            float, 5.0, "Seconds between checks that EC2 routes match the leases.", minimum=0.1
        ),
        "silent_owner_after": Key(
            float,
            2.0,
            "Seconds of heartbeat silence after which a route table's owner is judged dead even though it answers "
            "probes: a NAT that cannot reach AWS most likely cannot forward either (>= lease + margin).",
            minimum=0.0,
        ),
        "agent_restart_grace": Key(
            float,
            10.0,
            "Seconds of heartbeat silence peers tolerate from a NAT whose agent announced a restart (SIGUSR2: "
            "systemctl restart, an upgrade) while the NAT answers their probes, instead of silent_owner_after: the "
            "new process takes the session over without moving a route even when its start is slow (a loaded "
            "host, cold caches after an upgrade). A NAT that stops answering probes is failed over after lease + "
            "margin as ever (>= silent_owner_after).",
            minimum=0.0,
        ),
        "claim_stagger": Key(
            float, 0.35, "Extra wait per preference rank before a less preferred NAT claims.", minimum=0.0
        ),
        "failback_hold_down": Key(
            float, 10.0, "Seconds the home NAT must be healthy before its routes fail back.", minimum=0.0
        ),
        "restart_after": Key(
            float,
            30.0,
            "Seconds of heartbeat silence and of unanswered probes before a peer is stopped and started "
            "(a NAT that answers probes is never stopped).",
            minimum=0.0,
        ),
        "restart_cooldown": Key(
            float, 300.0, "Seconds after a restart before the same peer may be restarted again.", minimum=0.0
        ),
        "restart_max_attempts": Key(
            int, 3, "Restarts of one peer without it becoming healthy, then give up (0 disables restarts).", minimum=0
        ),
        "restart_timeout": Key(float, 600.0, "Seconds to wait for a stop or start to finish.", minimum=1.0),
        "restart_poll_interval": Key(
            float, 2.0, "Seconds between instance-state polls during a restart.", minimum=0.05
        ),
        "discover_interval": Key(
            float,
            30.0,
            "With members_from_tags: seconds between discoveries of the group's instances and route tables while "
            "running (sooner when an unknown instance heartbeats in the table).",
            minimum=1.0,
        ),
    },
    "conntrack_sync": {
        "enabled": Key(
            bool,
            False,
            "Keep established connections through failovers and planned hand-overs: nat-ha-ctsync.service streams "
            "the connection-tracking entries of each route table this NAT holds to its peers, and a NAT taking a "
            "table loads them (its own address for the table put in), so a flow keeps its public address and port. "
            'Needs egress_ip = "follow" (otherwise the public address changes at a failover and no flow can '
            "survive), a group key in key_file, and `nat-ha setup-nat` run with it (guard rule, sysctls, firewall).",
        ),
        "port": Key(
            int, 9511, "TCP port the sync service listens on (peers only: security group and firewall).", minimum=1
        ),
        "key_file": Key(
            str,
            "/etc/nat-ha/ctsync.key",
            "File holding the group's sync key (at least 32 characters, the same on every NAT; mode 0600): every "
            "message between NATs is authenticated with it (HMAC-SHA256).",
        ),
        "control_socket": Key(
            str,
            "/run/nat-ha-ctsync/control.sock",
            "Unix socket where the agent tells the sync service which tables it holds and asks for hand-over pushes.",
        ),
        "batch_interval": Key(
            float, 0.1, "Seconds between batches of flow changes sent to the peers (the sync lag).", minimum=0.01
        ),
        "resync_interval": Key(
            float,
            60.0,
            "Seconds between full resyncs of each held table to every peer (and at once after lost events or a "
            "reconnect): a peer's copy is made exactly equal to the holder's table.",
            minimum=1.0,
        ),
        "push_timeout": Key(
            float,
            2.0,
            "How long a planned hand-over (drain, fail-back, switchover, SIGTERM) waits for the taker to confirm it "
            "loaded the table's flows before the route moves anyway; a crash takeover never waits.",
            minimum=0.0,
        ),
        "quiet_after": Key(
            float,
            1.0,
            "After a planned hand-over the giver keeps streaming the table's changes to the taker until no packet "
            "of the table has reached it for this many seconds (the Elastic IP has moved), then sends the last ones.",
            minimum=0.05,
        ),
        "stream_max": Key(
            float, 30.0, "Longest the giver streams a handed-over table's changes to the taker.", minimum=0.1
        ),
        "firewall": Key(
            bool,
            True,
            "setup-nat installs a host firewall on the public interface: packets from outside trusted_networks "
            "reach the NAT itself or the private subnets only as part of a known connection (the security group "
            "lets the world reach the NATs' high ports so that a moved flow's server packets get in).",
        ),
        "trusted_networks": Key(
            list,
            ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"],
            "Sources the host firewall lets open connections to this NAT (the VPC, its peers, IMDS); everything "
            "else on the public interface must belong to a connection this NAT knows.",
        ),
    },
    "metrics": {
        "listen": Key(
            str,
            "127.0.0.1:9510",
            "host:port of the Prometheus endpoint; empty disables it. "
            "Use the private IP (e.g. 10.0.1.10:9510) to let Prometheus scrape it.",
        ),
    },
    "log": {
        "format": Key(str, "plain", "plain (journald-friendly lines) or json.", choices=("plain", "json")),
        "level": Key(str, "info", "debug, info, warning or error.", choices=("debug", "info", "warning", "error")),
    },
}


@dataclass(frozen=True)
class Member:
    instance_id: str
    address: str = ""
    route_tables: tuple[str, ...] = ()
    eni: str = ""
    az: str = ""
    probe_port: int = 0
    # Discovered from EC2 only (members_from_tags), never read from [[members]]:
    slot: str = ""  # its nat-ha:slot tag (one per Auto Scaling group in the stacks)
    asg: str = ""  # its Auto Scaling group, when it has one
    secondaries: tuple[str, ...] = ()  # secondary private addresses of its primary interface, ascending


DISCOVERED_ONLY = ("slot", "asg", "secondaries")


@dataclass(frozen=True)
class EgressTable:
    """One route table's Elastic IP and, per member, the private address that carries the table's traffic."""

    route_table: str
    allocation_id: str
    subnets: tuple[str, ...] = ()
    addresses: tuple[tuple[str, str], ...] = ()  # (instance id, private address), in config order

    def address(self, instance: str) -> str:
        """The private address of ``instance`` for this table ("" if the config gives none)."""
        return next((a for i, a in self.addresses if i == instance), "")


@dataclass(frozen=True)
class StoreConfig:
    table: str = "nat-ha"
    endpoint_url: str = ""
    billing: str = "PAY_PER_REQUEST"


@dataclass(frozen=True)
class Ec2Config:
    endpoint_url: str = ""
    holder_tag: bool = True
    account_id: str = ""
    last_resort_nat_gateway: str = ""


@dataclass(frozen=True)
class ProbeConfig:
    method: str = "icmp"
    answer_port: int = 0
    tcp_port: int = 22
    privileged: str = "auto"
    interval: float = 0.2
    timeout: float = 0.15
    window: int = 5
    down_after: int = 3


@dataclass(frozen=True)
class SelfCheckConfig:
    ip_forward: bool = True
    masquerade: bool = True
    public_interface: str = ""
    conntrack_max_ratio: float = 0.9
    egress_targets: tuple[str, ...] = ()
    egress_timeout: float = 1.0
    forwarding: bool = True
    rules_interval: float = 2.0
    procfs: str = "/proc"


@dataclass(frozen=True)
class ConntrackSyncConfig:
    """[conntrack_sync]: connection-tracking state follows the route table (nat-ha-ctsync.service)."""

    enabled: bool = False
    port: int = 9511
    key_file: str = "/etc/nat-ha/ctsync.key"
    control_socket: str = "/run/nat-ha-ctsync/control.sock"
    batch_interval: float = 0.1
    resync_interval: float = 60.0
    push_timeout: float = 2.0
    quiet_after: float = 1.0
    stream_max: float = 30.0
    firewall: bool = True
    trusted_networks: tuple[str, ...] = (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    )  # fmt: skip


@dataclass(frozen=True)
class Timing:
    cycle_interval: float = 0.35
    heartbeat_interval: float = 0.7
    lease: float = 1.0
    margin: float = 0.1
    store_timeout: float = 0.15
    store_timeout_max: float = 0.4
    store_attempts: int = 1
    ec2_timeout: float = 0.6
    ec2_apply_horizon: float = 1.0
    ec2_tag_propagation: float = 2.0
    ec2_consistency_window: float = 2.0
    ec2_reconcile_interval: float = 5.0
    silent_owner_after: float = 2.0
    agent_restart_grace: float = 10.0
    claim_stagger: float = 0.35
    failback_hold_down: float = 10.0
    restart_after: float = 30.0
    restart_cooldown: float = 300.0
    restart_max_attempts: int = 3
    restart_timeout: float = 600.0
    restart_poll_interval: float = 2.0
    discover_interval: float = 30.0

    def problems(self, probe: ProbeConfig) -> list[str]:
        """The timing rules (rule 7); each broken rule is one line naming its keys."""
        out = []
        if probe.timeout >= probe.interval:
            out.append(
                f"probe.timeout: {probe.timeout} s must be below probe.interval ({probe.interval} s): "
                "the probe budget must fit one probe round"
            )
        if probe.down_after > probe.window:
            out.append(f"probe.down_after: {probe.down_after} cannot exceed probe.window ({probe.window})")
        if self.heartbeat_interval + 2 * self.store_timeout > self.lease + 1e-9:
            out.append(
                f"timing.lease: {self.lease} s must be >= heartbeat_interval + 2 x store_timeout "
                f"({self.heartbeat_interval} + 2 x {self.store_timeout}): one late renewal must not lose the lease"
            )
        if self.store_attempts * self.store_timeout > self.lease - self.heartbeat_interval + 1e-9:
            out.append(
                f"timing.store_attempts: {self.store_attempts} x store_timeout ({self.store_timeout} s) must fit "
                f"lease - heartbeat_interval ({self.lease - self.heartbeat_interval:.3f} s)"
            )
        if self.store_timeout > self.store_timeout_max + 1e-9:
            out.append(
                f"timing.store_timeout_max: {self.store_timeout_max} s must be >= store_timeout "
                f"({self.store_timeout} s)"
            )
        if self.heartbeat_interval + self.store_timeout_max > self.lease + self.margin + 1e-9:
            out.append(
                f"timing.store_timeout_max: {self.store_timeout_max} s must be <= lease + margin - heartbeat_interval "
                f"({self.lease + self.margin - self.heartbeat_interval:.3f} s): a renewal sent on time and given all "
                "of it must still land before peers may judge the session stale"
            )
        if self.cycle_interval > self.heartbeat_interval + 1e-9:
            out.append(
                f"timing.cycle_interval: {self.cycle_interval} s must be <= heartbeat_interval "
                f"({self.heartbeat_interval} s)"
            )
        if self.ec2_timeout >= self.lease - 2 * self.store_timeout:
            out.append(
                f"timing.ec2_timeout: {self.ec2_timeout} s must be below lease - 2 x store_timeout "
                f"({self.lease - 2 * self.store_timeout:.3f} s): an EC2 call must finish inside a fresh lease"
            )
        if self.silent_owner_after < self.lease + self.margin:
            out.append(
                f"timing.silent_owner_after: {self.silent_owner_after} s must be >= lease + margin "
                f"({self.lease + self.margin:.2f} s): a silent owner's lease must have run out"
            )
        if self.agent_restart_grace < self.silent_owner_after:
            out.append(
                f"timing.agent_restart_grace: {self.agent_restart_grace} s must be >= silent_owner_after "
                f"({self.silent_owner_after} s): an announced restart must not shorten the silence peers tolerate"
            )
        if self.failback_hold_down < self.lease:
            out.append(f"timing.failback_hold_down: {self.failback_hold_down} s must be >= lease ({self.lease} s)")
        if self.restart_max_attempts > 0 and self.restart_after < 3 * (self.lease + self.margin):
            out.append(
                f"timing.restart_after: {self.restart_after} s must be >= 3 x (lease + margin) "
                f"({3 * (self.lease + self.margin):.2f} s): restarts need stronger evidence than route moves"
            )
        return out


@dataclass(frozen=True)
class Config:
    group: str
    instance_id: str = ""
    region: str = ""
    members_from_tags: bool = False
    members: tuple[Member, ...] = ()
    homeless: tuple[str, ...] = ()  # discovered route tables whose home is no current member
    store: StoreConfig = field(default_factory=StoreConfig)
    ec2: Ec2Config = field(default_factory=Ec2Config)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    self_check: SelfCheckConfig = field(default_factory=SelfCheckConfig)
    timing: Timing = field(default_factory=Timing)
    metrics_listen: str = "127.0.0.1:9510"
    log_format: str = "plain"
    log_level: str = "info"
    egress_ip: str = "off"
    egress_order: str = "route-first"
    egress_tables: tuple[EgressTable, ...] = ()
    conntrack_sync: ConntrackSyncConfig = field(default_factory=ConntrackSyncConfig)

    @property
    def egress_follow(self) -> bool:
        return self.egress_ip == "follow"

    def egress(self) -> dict[str, EgressTable]:
        """Route table -> its [[egress.tables]] entry, when egress_ip = follow (else empty)."""
        return {e.route_table: e for e in self.egress_tables} if self.egress_follow else {}

    def member(self, instance_id: str) -> Member | None:
        return next((m for m in self.members if m.instance_id == instance_id), None)

    def home_of(self, route_table: str) -> str:
        return next((m.instance_id for m in self.members if route_table in m.route_tables), "")

    def route_tables(self) -> list[str]:
        """Every route table of the group: the members' homes, then the homeless ones."""
        return [rt for m in self.members for rt in m.route_tables] + list(self.homeless)

    def members_at(self, local: set[str]) -> set[str]:
        """The members one of whose addresses (``[[members]].address`` or an egress address) is in ``local``."""
        found = {m.instance_id for m in self.members if m.address in local}
        return found | {iid for t in self.egress_tables for iid, addr in t.addresses if addr in local}


# ------------------------------------------------------------------ parsing
def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        list: "a list",
        dict: "a table",
    }
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _check_value(path: str, key: Key, value: Any, problems: list[str]) -> Any:
    kind = key.kind
    original = value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (kind is int and isinstance(value, bool)) or (kind is float and isinstance(value, bool)):
        problems.append(f"{path}: must be {_type_name(kind)}, got {shown(value)}")
        return key.default
    if not isinstance(value, kind):
        problems.append(f"{path}: must be {_type_name(kind)}, got {type(value).__name__} {shown(value)}")
        return key.default
    if key.choices and value not in key.choices:
        problems.append(f"{path}: must be one of {', '.join(key.choices)}, got {shown(value)}")
        return key.default
    if key.minimum is not None and isinstance(value, (int, float)) and value < key.minimum:
        problems.append(f"{path}: must be >= {key.minimum}, got {shown(original)}")
        return key.default
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        problems.append(f"{path}: must be a list of strings")
        return key.default
    if isinstance(value, dict) and not all(isinstance(v, str) for v in value.values()):
        problems.append(f"{path}: every value must be a string")
        return key.default
    return value


def _section(path: str, raw: Any, schema: dict[str, Key], problems: list[str]) -> dict[str, Any]:
    """Validate one table of keys; unknown keys are problems (with a suggestion)."""
    if not isinstance(raw, dict):
        problems.append(f"{path or 'config'}: must be a table, got {type(raw).__name__}")
        raw = {}
    out: dict[str, Any] = {}
    for name, value in raw.items():
        full = f"{path}.{name}" if path else name
        if name not in schema:
            if not path and name in SCHEMA:
                continue  # a section, handled by the caller
            close = difflib.get_close_matches(name, list(schema) + ([*SCHEMA] if not path else []), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            name = full if len(full) <= SHOWN_CHARS else full[: SHOWN_CHARS - 3] + "..."
            problems.append(f"{name}: unknown key{hint}")
            continue
        out[name] = _check_value(full, schema[name], value, problems)
    for name, key in schema.items():
        if name not in out:
            if key.default is None:
                full = f"{path}.{name}" if path else name
                if name not in raw:
                    problems.append(f"{full}: required")
                out[name] = ""
            else:
                out[name] = key.default
    return out


def _member(index: int, raw: Any, problems: list[str], from_tags: bool) -> Member:
    path = f"members[{index}]"
    values = _section(path, raw, SCHEMA["members"], problems)
    iid = values["instance_id"]
    if iid and not INSTANCE_RE.match(iid):
        problems.append(f"{path}.instance_id: {shown(iid)} is not an instance id (i-...)")
    addr = values["address"]
    if addr:
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            problems.append(f"{path}.address: {shown(addr)} is not an IP address")
    elif not from_tags:
        problems.append(f"{path}.address: required")
    listed: set[str] = set()
    for rt in values["route_tables"]:
        if not RTB_RE.match(rt):
            problems.append(f"{path}.route_tables: {shown(rt)} is not a route table id (rtb-...)")
        elif rt in listed:
            problems.append(f"{path}.route_tables: {rt} is listed twice")
        listed.add(rt)
    if values["eni"] and not ENI_RE.match(values["eni"]):
        problems.append(f"{path}.eni: {shown(values['eni'])} is not a network interface id (eni-...)")
    return Member(
        instance_id=iid,
        address=addr,
        route_tables=tuple(values["route_tables"]),
        eni=values["eni"],
        az=values["az"],
        probe_port=values["probe_port"],
    )


def _two_homes(members: tuple[Member, ...]) -> list[str]:
    """A route table has one home: one line for each route table a later member lists again."""
    first: dict[str, int] = {}
    out = []
    for i, m in enumerate(members):
        for rt in dict.fromkeys(m.route_tables):  # twice in one member is _member's line
            if rt in first and members[first[rt]].instance_id != m.instance_id:
                j = first[rt]
                out.append(
                    f"members[{i}].route_tables: {rt} is already the home of members[{j}] "
                    f"({members[j].instance_id}); a route table has one home"
                )
            first.setdefault(rt, i)
    return out


def _egress_tables(raw: Any, problems: list[str]) -> tuple[EgressTable, ...]:
    """The [[egress.tables]] entries, each checked on its own (cross checks: :func:`egress_problems`)."""
    if not isinstance(raw, dict):
        problems.append(f"egress: must be a table of [[egress.tables]] entries, got {type(raw).__name__}")
        return ()
    for name in raw:
        if name != "tables":
            hint = " (did you mean 'tables'?)" if difflib.get_close_matches(name, ["tables"], n=1) else ""
            problems.append(f"egress.{name}: unknown key{hint}")
    entries = raw.get("tables", [])
    if not isinstance(entries, list):
        problems.append("egress.tables: must be an array of tables ([[egress.tables]])")
        return ()
    out = []
    for i, entry in enumerate(entries):
        path = f"egress.tables[{i}]"
        values = _section(path, entry, SCHEMA["egress"], problems)
        rt, alloc = values["route_table"], values["allocation_id"]
        if rt and not RTB_RE.match(rt):
            problems.append(f"{path}.route_table: {shown(rt)} is not a route table id (rtb-...)")
        if alloc and not EIPALLOC_RE.match(alloc):
            problems.append(f"{path}.allocation_id: {shown(alloc)} is not an Elastic IP allocation id (eipalloc-...)")
        subnets = []
        for net in values["subnets"]:
            try:
                subnets.append(str(ipaddress.ip_network(net, strict=True)))
            except ValueError as exc:
                problems.append(f"{path}.subnets: {shown(net)} is not a subnet (CIDR): {exc}")
        addresses = []
        for iid, addr in (values["addresses"] or {}).items():
            if not INSTANCE_RE.match(iid):
                problems.append(f"{path}.addresses: {shown(iid)} is not an instance id (i-...)")
                continue
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                problems.append(f"{path}.addresses: {iid} = {shown(addr)} is not an IP address")
                continue
            addresses.append((iid, addr))
        out.append(EgressTable(rt, alloc, tuple(subnets), tuple(addresses)))
    return tuple(out)


def egress_problems(config: Config) -> list[str]:
    """What keeps ``egress_ip = "follow"`` from working with these members and [[egress.tables]] (one line each).

    Checked at load time with [[members]], and after discovery with ``members_from_tags``.
    """
    if not config.egress_follow:
        return []
    out: list[str] = []
    tables = config.egress_tables
    members = config.members
    homes = {rt: m.instance_id for m in members for rt in m.route_tables}
    homes.update({rt: "" for rt in config.homeless})  # discovered, their home gone for now
    ids = [m.instance_id for m in members]
    seen: dict[str, int] = {}
    allocs: dict[str, int] = {}
    for i, e in enumerate(tables):
        path = f"egress.tables[{i}]"
        if e.route_table in seen:
            first = seen[e.route_table]
            out.append(f"{path}.route_table: {e.route_table} is listed twice (also egress.tables[{first}])")
        elif e.route_table and members and e.route_table not in homes:
            out.append(f"{path}.route_table: {e.route_table} is not a route table of any member")
        seen.setdefault(e.route_table, i)
        if e.allocation_id in allocs:
            first = allocs[e.allocation_id]
            out.append(
                f"{path}.allocation_id: {e.allocation_id} is also the Elastic IP of egress.tables[{first}]: "
                "each table needs its own"
            )
        allocs.setdefault(e.allocation_id, i)
        if not e.subnets:
            out.append(f'{path}.subnets: required with egress_ip = "follow" (the private subnets that use the table)')
    for rt, home in homes.items():
        if rt not in seen:
            whose = f"home of {home}" if home else "its home is no member now"
            out.append(f'egress.tables: no entry for {rt} ({whose}); egress_ip = "follow" needs one per route table')
    for j, m in enumerate(members):
        if not m.eni:
            where = f"members[{j}]" if not config.members_from_tags else f"members ({m.instance_id})"
            out.append(f'{where}.eni: required with egress_ip = "follow" (its Elastic IPs sit on this interface)')
    nets = [(i, e.route_table, ipaddress.ip_network(n)) for i, e in enumerate(tables) for n in e.subnets]
    for a in range(len(nets)):
        for b in range(a + 1, len(nets)):
            (i, rt_i, n_i), (j, _, n_j) = nets[a], nets[b]
            if n_i.overlaps(n_j):
                out.append(
                    f"egress.tables[{j}].subnets: {n_j} overlaps {n_i} of {rt_i or f'egress.tables[{i}]'}: "
                    "a packet would match two tables' SNAT rules"
                )
    mine: dict[tuple[str, str], str] = {}  # (member, address) -> the route table it serves
    owner = {m.address: m.instance_id for m in members if m.address}  # address -> the member whose ENI has it
    primary = {m.instance_id: m.address for m in members if m.address}  # what its peers probe, its own way out
    for i, e in enumerate(tables):
        path = f"egress.tables[{i}].addresses"
        given = dict(e.addresses)
        for iid in ids:
            if iid not in given:
                out.append(f"{path}: no address for member {iid}")
        for iid, addr in e.addresses:
            if members and iid not in ids:
                out.append(f"{path}: {iid} is not a member")
            if members and addr == primary.get(iid):
                out.append(
                    f"{path}: {iid}'s address {addr} is its primary address (the one its own AWS calls leave from): "
                    f"when {e.route_table}'s Elastic IP moves away, {iid} loses its way to AWS and goes silent; "
                    "give it a secondary address for the table"
                )
                continue
            holder = owner.setdefault(addr, iid)
            if holder != iid:
                out.append(f"{path}: {iid}'s address {addr} belongs to {holder}: a private address is on one ENI")
                continue
            other = mine.setdefault((iid, addr), e.route_table)
            if other != e.route_table:
                out.append(
                    f"{path}: {iid}'s address {addr} is also its address for {other}: each table needs its own "
                    "address on every member"
                )
            ip = ipaddress.ip_address(addr)
            inside = next(((rt, n) for _k, rt, n in nets if ip.version == n.version and ip in n), None)
            if inside is not None:
                out.append(f"{path}: {iid}'s address {addr} lies inside {inside[0]}'s private subnet {inside[1]}")
    return out


def _listen_problem(value: str) -> str | None:
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"metrics.listen: {shown(value)} must be host:port, e.g. 127.0.0.1:9510"
    return None


def parse(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config` from parsed TOML; raises :class:`ConfigError` with every problem."""
    problems: list[str] = []
    top = _section("", raw, SCHEMA[""], problems)
    if top["group"] and not GROUP_RE.match(top["group"]):
        problems.append("group: use 1-64 letters, digits and _.:- only")
    instance_id_ok = bool(top["instance_id"]) and bool(INSTANCE_RE.match(top["instance_id"]))
    if top["instance_id"] and not instance_id_ok:
        problems.append(f"instance_id: {shown(top['instance_id'])} is not an instance id (i-...)")
    sections = {
        name: _section(name, raw.get(name, {}), SCHEMA[name], problems)
        for name in SCHEMA
        if name not in ("", "members", "egress")
    }
    gateway = sections["ec2"]["last_resort_nat_gateway"]
    if gateway and not NATGW_RE.match(gateway):
        problems.append(f"ec2.last_resort_nat_gateway: {shown(gateway)} is not a NAT gateway id (nat-...)")
    account = sections["ec2"]["account_id"]
    if account and not re.fullmatch(r"\d{12}", account):
        problems.append(f"ec2.account_id: {account!r} is not an AWS account id (12 digits)")
    if not TABLE_RE.match(sections["store"]["table"]):
        problems.append(
            f"store.table: {shown(sections['store']['table'])} is not a DynamoDB table name (3-255 of A-Za-z0-9_.-)"
        )
    raw_members = raw.get("members", [])
    if not isinstance(raw_members, list):
        problems.append("members: must be an array of tables ([[members]])")
        raw_members = []
    members = tuple(_member(i, m, problems, top["members_from_tags"]) for i, m in enumerate(raw_members))
    if top["members_from_tags"] and members:
        problems.append("members: give [[members]] or members_from_tags = true, not both")
    if not top["members_from_tags"]:
        if len(members) < 2:
            problems.append("members: a group needs at least two members (or members_from_tags = true)")
        ids = [m.instance_id for m in members]
        for iid in sorted({i for i in ids if ids.count(i) > 1 and INSTANCE_RE.match(i)}):
            problems.append(f"members: instance {iid} is listed twice")
        problems.extend(_two_homes(members))
        if instance_id_ok and members and top["instance_id"] not in ids:
            problems.append(f"instance_id: {top['instance_id']} is not one of the members")
    probe = ProbeConfig(**sections["probe"])
    sc = dict(sections["self_check"])
    sc["egress_targets"] = tuple(sc["egress_targets"])
    for target in sc["egress_targets"]:
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            problems.append(f"self_check.egress_targets: {shown(target)} must be host:port")
    timing = Timing(**sections["timing"])
    problems.extend(timing.problems(probe))
    listen_problem = _listen_problem(sections["metrics"]["listen"])
    if listen_problem:
        problems.append(listen_problem)
    egress_tables = _egress_tables(raw.get("egress", {}), problems)
    ct = dict(sections["conntrack_sync"])
    ct["trusted_networks"] = tuple(ct["trusted_networks"])
    problems.extend(_conntrack_sync_problems(ct, top["egress_ip"], sections["metrics"]["listen"]))
    if not problems and top["egress_ip"] == "follow":
        # With members_from_tags the member checks wait for discovery (agent.runtime.resolve).
        shape = Config(group="", members=members, members_from_tags=top["members_from_tags"], egress_ip="follow")
        problems.extend(egress_problems(dataclasses.replace(shape, egress_tables=egress_tables)))
    if problems:
        raise ConfigError(problems)
    return Config(
        group=top["group"],
        instance_id=top["instance_id"],
        region=top["region"],
        members_from_tags=top["members_from_tags"],
        members=members,
        store=StoreConfig(**sections["store"]),
        ec2=Ec2Config(**sections["ec2"]),
        probe=probe,
        self_check=SelfCheckConfig(**sc),
        timing=timing,
        metrics_listen=sections["metrics"]["listen"],
        log_format=sections["log"]["format"],
        log_level=sections["log"]["level"],
        egress_ip=top["egress_ip"],
        egress_order=top["egress_order"],
        egress_tables=egress_tables,
        conntrack_sync=ConntrackSyncConfig(**ct),
    )


def _conntrack_sync_problems(ct: dict[str, Any], egress_ip: str, metrics_listen: str) -> list[str]:
    """[conntrack_sync]'s own rules (one line each)."""
    out = []
    for net in ct["trusted_networks"]:
        try:
            if ipaddress.ip_network(net, strict=True).version != 4:
                out.append(f"conntrack_sync.trusted_networks: {shown(net)} is not an IPv4 subnet")
        except ValueError as exc:
            out.append(f"conntrack_sync.trusted_networks: {shown(net)} is not a subnet (CIDR): {exc}")
    for key in ("key_file", "control_socket"):
        if not ct[key].startswith("/"):
            out.append(f"conntrack_sync.{key}: {shown(ct[key])} must be an absolute path")
    if ct["port"] > 65535:
        out.append(f"conntrack_sync.port: {ct['port']} is not a port (1-65535)")
    if metrics_listen.rpartition(":")[2] == str(ct["port"]):
        out.append(f"conntrack_sync.port: {ct['port']} is also metrics.listen's port")
    if ct["enabled"] and egress_ip != "follow":
        out.append(
            'conntrack_sync.enabled: needs egress_ip = "follow": without it a table\'s public address changes '
            "when it moves, so no connection can survive"
        )
    if ct["quiet_after"] > ct["stream_max"]:
        out.append(f"conntrack_sync.quiet_after: {ct['quiet_after']} s must be <= stream_max ({ct['stream_max']} s)")
    return out


def load(path: str | Path) -> Config:
    """Read and validate a config file; every failure is a :class:`ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError([f"{p}: no such file (write one, see `nat-ha check-config --reference`)"]) from None
    except IsADirectoryError:
        raise ConfigFileError([f"{p}: is a directory, expected a TOML file"]) from None
    except PermissionError:
        raise ConfigFileError([f"{p}: permission denied"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError([f"{p}: cannot read: {exc}"]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError([f"{p}: not valid TOML: {exc}"]) from None
    return parse(raw)


def with_discovered(
    config: Config,
    *,
    instance_id: str = "",
    region: str = "",
    members: tuple[Member, ...] | None = None,
    homeless: tuple[str, ...] | None = None,
    egress_tables: tuple[EgressTable, ...] | None = None,
) -> Config:
    """A copy with values filled in from IMDS or EC2 tags."""
    return dataclasses.replace(
        config,
        instance_id=config.instance_id or instance_id,
        region=config.region or region,
        members=members if members is not None else config.members,
        homeless=homeless if homeless is not None else config.homeless,
        egress_tables=egress_tables if egress_tables is not None else config.egress_tables,
    )


# ------------------------------------------------------------------ output
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def effective_toml(config: Config) -> str:
    """The configuration as the agent will use it, defaults included."""
    lines = [
        f"group = {_toml_value(config.group)}",
        f"instance_id = {_toml_value(config.instance_id)}",
        f"region = {_toml_value(config.region)}",
        f"members_from_tags = {_toml_value(config.members_from_tags)}",
        f"egress_ip = {_toml_value(config.egress_ip)}",
        f"egress_order = {_toml_value(config.egress_order)}",
    ]
    sections: list[tuple[str, Any]] = [
        ("store", config.store),
        ("ec2", config.ec2),
        ("probe", config.probe),
        ("self_check", config.self_check),
        ("timing", config.timing),
        ("conntrack_sync", config.conntrack_sync),
    ]
    for name, obj in sections:
        lines.append(f"\n[{name}]")
        for f in dataclasses.fields(obj):
            lines.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
    lines += ["\n[metrics]", f"listen = {_toml_value(config.metrics_listen)}"]
    lines += ["\n[log]", f"format = {_toml_value(config.log_format)}", f"level = {_toml_value(config.log_level)}"]
    for m in config.members:
        lines.append("\n[[members]]")
        for f in dataclasses.fields(m):
            if f.name not in DISCOVERED_ONLY:
                lines.append(f"{f.name} = {_toml_value(getattr(m, f.name))}")
    for e in config.egress_tables:
        lines.append("\n[[egress.tables]]")
        lines.append(f"route_table = {_toml_value(e.route_table)}")
        lines.append(f"allocation_id = {_toml_value(e.allocation_id)}")
        lines.append(f"subnets = {_toml_value(e.subnets)}")
        pairs = ", ".join(f"{_toml_value(i)} = {_toml_value(a)}" for i, a in e.addresses)
        lines.append(f"addresses = {{ {pairs} }}" if pairs else "addresses = {}")
    return "\n".join(lines) + "\n"


def reference_markdown() -> str:
    """The key-by-key reference (the README's configuration section is this text)."""
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section, keys in SCHEMA.items():
        for name, key in keys.items():
            arrays = {"members": "[[members]]", "egress": "[[egress.tables]]"}
            full = name if not section else f"{arrays.get(section, section)}.{name}"
            default = "required" if key.default is None else f"`{_toml_value(key.default)}`"
            kind = _type_name(key.kind)
            if key.kind is dict:
                default = "required" if key.default is None else "`{}`"
            if key.choices:
                kind = " \\| ".join(key.choices)
            out.append(f"| `{full}` | {kind} | {default} | {key.doc} |")
    return "\n".join(out) + "\n"
