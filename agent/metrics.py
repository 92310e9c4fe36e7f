"""Prometheus metrics of one agent (base units, ``_total`` counters, pre-created labels).

Every series a dashboard panel or alert uses is created at start-up for every peer,
route table and AWS call, so a panel never shows "no data" because nothing happened
yet, and ``increase()`` sees the first event (a counter born at 1 has no increase).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import socketserver
import threading
from typing import Any, Generic, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    platform_collector,
    process_collector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

FAILOVER_KINDS = ("takeover", "failback", "switchover", "drain", "last_resort")
# How a table's Elastic IP moved (egress_ip = follow): with the table, or repaired by its holder.
EGRESS_MOVE_KINDS = ("takeover", "failback", "switchover", "drain", "repair")
FAILOVER_REASONS = ("peer_dead", "self_unhealthy", "home_healthy", "operator", "shutdown", "orphaned", "no_nat")
RESTART_RESULTS = ("stopped", "started", "failed", "gave_up")
RENEWAL_RESULTS = ("success", "conflict", "error")
SELF_CHECKS = ("ip_forward", "masquerade", "conntrack", "egress", "ec2_writes")
# Whose an EC2 failure was (agent.cycle.standing): ours make a holder hand its tables over, AWS's never do.
EC2_FAILURE_CAUSES = (
    ("ours", "refused"), ("ours", "unreachable"),
    ("aws", "throttled"), ("aws", "unreachable"), ("aws", "tag_propagation"), ("aws", "error"),
)  # fmt: skip
EC2_PENALTY_CAUSES = ("refused", "unreachable")
DECISIONS = (
    "holding", "standby", "took_over", "failed_back", "handed_over", "waiting", "restarting_peer",
    "draining", "no_session", "store_unavailable", "unhealthy",
)  # fmt: skip

# Every AWS call the agent makes (agent/aws/calls.py AGENT_CALLS; a test keeps the two equal: this
# module sits below agent/aws and cannot import it) and the classes of error it can see from them.
AWS_OPERATIONS = (
    ("dynamodb", "DescribeTable"), ("dynamodb", "GetItem"), ("dynamodb", "PutItem"), ("dynamodb", "Query"),
    ("ec2", "AssociateAddress"), ("ec2", "CreateRoute"), ("ec2", "CreateTags"), ("ec2", "DescribeAddresses"),
    ("ec2", "DescribeInstances"), ("ec2", "DescribeRouteTables"), ("ec2", "ReplaceRoute"), ("ec2", "StartInstances"),
    ("ec2", "StopInstances"),
)  # fmt: skip
AWS_ERROR_CODES = {
    "timeout": ("ReadTimeoutError", "ConnectTimeoutError", "TimeoutError", "RequestTimeout", "RequestTimeoutException"),
    "connection": (
        "EndpointConnectionError", "ConnectionClosedError", "ConnectionError", "ProxyConnectionError", "SSLError",
        "HTTPClientError", "ConnectionRefusedError", "ConnectionResetError", "BrokenPipeError", "IncompleteRead",
    ),
    "throttled": (
        "ThrottlingException", "Throttling", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
        "RequestThrottled", "RequestThrottledException", "TooManyRequestsException", "LimitExceededException",
        "ThrottledException", "RequestLimitExceededException", "SlowDown", "429",
    ),
    "denied": (
        "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnrecognizedClientException",
        "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException", "AuthFailure", "NoCredentialsError",
        "SignatureDoesNotMatch", "InvalidSignatureException", "RequestExpired", "MissingAuthenticationToken",
        "403",
    ),
    # A conditional write that lost (another agent wrote first): the protocol's normal answer under contention.
    "conflict": ("ConditionalCheckFailedException", "TransactionConflictException", "RouteAlreadyExists"),
    "server": (
        "InternalServerError", "InternalError", "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException",
        "Unavailable",
    ),
}  # fmt: skip
AWS_ERROR_CLASSES = (*AWS_ERROR_CODES, "other")
_ERROR_CLASS_OF = {code: cls for cls, codes in AWS_ERROR_CODES.items() for code in codes}


def aws_error_class(code: str) -> str:
    """The class of an AWS error code, botocore exception name or HTTP status (``other`` if unknown)."""
    cls = _ERROR_CLASS_OF.get(code)
    if cls is not None:
        return cls
    return "server" if code.isdigit() and code.startswith("5") else "other"


RTT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
FAILOVER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
RECOVERY_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
AWS_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CYCLE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

M = TypeVar("M", Gauge, Counter, Histogram)


class Children(dict[str, M], Generic[M]):
    """One single-label metric's children by label value, each resolved by ``labels()`` once.

    ``labels()`` validates, builds a tuple and takes the metric's lock on every call;
    the HA cycle sets ~40 series every 0.35 s and the prober counts 5 probes a second
    per peer, so they look the child up here instead (a plain dict hit). A value not
    seen before is resolved on first use, exactly when ``labels()`` would have created
    its series, so the exported series are the same.
    """

    def __init__(self, metric: M) -> None:
        super().__init__()
        self.metric: M = metric

    def __missing__(self, value: str) -> M:
        child: M = self.metric.labels(value)
        self[value] = child
        return child


class Children2(dict[tuple[str, str], M], Generic[M]):
    """Like :class:`Children`, for a metric with two labels (keyed by the pair)."""

    def __init__(self, metric: M) -> None:
        super().__init__()
        self.metric: M = metric

    def __missing__(self, values: tuple[str, str]) -> M:
        child: M = self.metric.labels(*values)
        self[values] = child
        return child


class Children3(dict[tuple[str, str, str], M], Generic[M]):
    """Like :class:`Children`, for a metric with three labels (keyed by the triple)."""

    def __init__(self, metric: M) -> None:
        super().__init__()
        self.metric: M = metric

    def __missing__(self, values: tuple[str, str, str]) -> M:
        child: M = self.metric.labels(*values)
        self[values] = child
        return child


class Metrics:
    """All of an agent's metrics in one registry (a fresh one per agent or test)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        r = self.registry = registry or CollectorRegistry()
        if process:
            process_collector.ProcessCollector(registry=r)
            platform_collector.PlatformCollector(registry=r)
            gc_collector.GCCollector(registry=r)
        ns = "nat_ha"
        # "instance_id", not "instance": Prometheus owns the "instance" target label and would
        # rename a scraped one to "exported_instance".
        self.build_info = Gauge(
            f"{ns}_build_info", "Agent build: 1 per running agent", ["version", "group", "instance_id"], registry=r
        )
        self.up = Gauge(f"{ns}_agent_up", "1 while the agent's HA cycle runs", registry=r)
        self.healthy = Gauge(f"{ns}_healthy", "1 when every self check of this NAT passes", registry=r)
        self.self_check = Gauge(
            f"{ns}_self_check_ok", "1 when the self check passes (egress: 1 if none set)", ["check"], registry=r
        )
        self.probes_sent = Counter(f"{ns}_probes_sent", "Probes sent to a peer", ["peer"], registry=r)
        self.probes_lost = Counter(f"{ns}_probes_lost", "Probes to a peer without a reply", ["peer"], registry=r)
        self.probe_rtt = Histogram(
            f"{ns}_probe_rtt_seconds", "Round-trip time of answered probes", ["peer"], buckets=RTT_BUCKETS, registry=r
        )
        self.peer_up = Gauge(f"{ns}_peer_up", "1 when the peer answers probes (K-of-N window)", ["peer"], registry=r)
        self.peer_alive = Gauge(
            f"{ns}_peer_session_alive", "1 when the peer's heartbeat is fresh", ["peer"], registry=r
        )
        self.peer_heartbeat_age = Gauge(
            f"{ns}_peer_heartbeat_age_seconds",
            "Seconds the peer's heartbeat has not changed, on this agent's clock",
            ["peer"],
            registry=r,
        )
        self.peer_healthy = Gauge(f"{ns}_peer_healthy", "1 when the peer reports itself healthy", ["peer"], registry=r)
        self.session_valid = Gauge(
            f"{ns}_session_valid", "1 while this agent's own session (lease) is valid", registry=r
        )
        self.session_remaining = Gauge(
            f"{ns}_session_remaining_seconds", "Seconds left on this agent's session", registry=r
        )
        self.route_tables_owned = Gauge(f"{ns}_route_tables_owned", "Route tables this agent holds", registry=r)
        self.route_owned = Gauge(
            f"{ns}_route_table_owned", "1 when this agent holds the route table's lease", ["route_table"], registry=r
        )
        self.route_term = Gauge(
            f"{ns}_route_table_term", "Term of the route table's lease as last read", ["route_table"], registry=r
        )
        self.route_owner = Gauge(
            f"{ns}_route_table_owner_info",
            "1 for the decided owner of the route table",
            ["route_table", "owner"],
            registry=r,
        )
        self.route_has_owner = Gauge(
            f"{ns}_route_table_has_live_owner",
            "1 when the route table's owner has a live session",
            ["route_table"],
            registry=r,
        )
        self.route_ec2_matches = Gauge(
            f"{ns}_route_table_ec2_matches",
            "1 when EC2 routes 0.0.0.0/0 to the decided owner (exported by the holder)",
            ["route_table"],
            registry=r,
        )
        self.route_ec2_target = Gauge(
            f"{ns}_route_table_ec2_target_info",
            "1 for the target EC2 reports for the route table (exported by the holder)",
            ["route_table", "target"],
            registry=r,
        )
        self.egress_ok = Gauge(
            f"{ns}_route_table_egress_ok",
            "1 when the route table's Elastic IP is associated with its holder's address for it, as last read "
            "(exported by the holder; egress_ip = follow)",
            ["route_table"],
            registry=r,
        )
        self.egress_ip = Gauge(
            f"{ns}_route_table_egress_ip_info",
            "1 for where the route table's Elastic IP sits as last read: the member whose address holds it, "
            "none or other (egress_ip = follow)",
            ["route_table", "public_ip", "holder"],
            registry=r,
        )
        self.egress_moves = Counter(
            f"{ns}_egress_ip_moves",
            "Elastic IP associations by this agent that moved a route table's Elastic IP",
            ["route_table", "kind"],
            registry=r,
        )
        self.egress_move_duration = Histogram(
            f"{ns}_egress_ip_move_duration_seconds",
            "From detection (or request) to the association EC2 confirmed",
            ["kind"],
            buckets=FAILOVER_BUCKETS,
            registry=r,
        )
        self.failovers = Counter(
            f"{ns}_failovers", "Route table moves made by this agent", ["route_table", "kind", "reason"], registry=r
        )
        self.failover_duration = Histogram(
            f"{ns}_failover_duration_seconds",
            "From detection (or request) to the route write EC2 confirmed",
            ["kind"],
            buckets=FAILOVER_BUCKETS,
            registry=r,
        )
        self.recovery_duration = Histogram(
            f"{ns}_recovery_duration_seconds",
            "From a peer judged dead to that peer healthy again",
            buckets=RECOVERY_BUCKETS,
            registry=r,
        )
        self.peer_restarts = Counter(
            f"{ns}_peer_restarts", "Peer stop/start steps by result", ["peer", "result"], registry=r
        )
        self.renewals = Counter(
            f"{ns}_lease_renewals", "Session renewals (heartbeats) by result", ["result"], registry=r
        )
        self.aws_duration = Histogram(
            f"{ns}_aws_request_duration_seconds",
            "AWS API call duration",
            ["service", "operation"],
            buckets=AWS_BUCKETS,
            registry=r,
        )
        self.aws_errors = Counter(
            f"{ns}_aws_errors",
            "AWS API calls that failed, by class of error",
            ["service", "operation", "error"],
            registry=r,
        )
        self.decision = Gauge(f"{ns}_decision", "1 for the kind of the current decision", ["decision"], registry=r)
        self.decision_changes = Counter(f"{ns}_decision_changes", "Times the decision line changed", registry=r)
        self.ec2_late_writes = Counter(
            f"{ns}_ec2_late_writes",
            "EC2 writes whose bytes left after their deadline (the process was paused): reported as strays",
            registry=r,
        )
        self.ec2_failures = Counter(
            f"{ns}_ec2_failures",
            "Failed EC2 calls by whose failure it was: ours (refused: our role or credentials; unreachable: our "
            "path, while peers reach EC2) or AWS's (throttled, unreachable for everyone, tag propagation, error)",
            ["whose", "cause"],
            registry=r,
        )
        self.ec2_penalties = Counter(
            f"{ns}_ec2_penalties",
            "Times this agent put itself out (ec2_writes failing: its tables go to a peer) for EC2 failures of its own",
            ["cause"],
            registry=r,
        )
        self.ec2_backoff = Gauge(
            f"{ns}_ec2_backoff_seconds",
            "Seconds this agent still waits before calling the EC2 action again after AWS throttled it",
            ["operation"],
            registry=r,
        )
        self.cycle_duration = Histogram(
            f"{ns}_cycle_duration_seconds", "Duration of one HA cycle", buckets=CYCLE_BUCKETS, registry=r
        )
        self.last_cycle = Gauge(
            f"{ns}_last_cycle_timestamp_seconds", "Unix time of the last finished cycle", registry=r
        )
        self.bad_items = Gauge(f"{ns}_bad_items", "Items in the group the agent cannot use", registry=r)
        # The children the hot paths set, by label value (see Children).
        self.self_check_of = Children(self.self_check)
        self.probes_sent_of = Children(self.probes_sent)
        self.probes_lost_of = Children(self.probes_lost)
        self.probe_rtt_of = Children(self.probe_rtt)
        self.peer_up_of = Children(self.peer_up)
        self.peer_alive_of = Children(self.peer_alive)
        self.peer_heartbeat_age_of = Children(self.peer_heartbeat_age)
        self.peer_healthy_of = Children(self.peer_healthy)
        self.route_owned_of = Children(self.route_owned)
        self.route_term_of = Children(self.route_term)
        self.route_owner_of = Children2(self.route_owner)
        self.route_has_owner_of = Children(self.route_has_owner)
        self.route_ec2_matches_of = Children(self.route_ec2_matches)
        self.route_ec2_target_of = Children2(self.route_ec2_target)
        self.egress_ok_of = Children(self.egress_ok)
        self.egress_ip_of = Children3(self.egress_ip)
        self.decision_of = Children(self.decision)
        self.aws_duration_of = Children2(self.aws_duration)
        self.aws_errors_of = Children3(self.aws_errors)
        self.ec2_failures_of = Children2(self.ec2_failures)
        self.ec2_penalties_of = Children(self.ec2_penalties)
        self.ec2_backoff_of = Children(self.ec2_backoff)
        self._decided: str | None = None  # the decision kind whose gauge is 1, if any
        self._last: dict[Gauge, float] = {}  # what put() last set each gauge to

    def prepare(
        self,
        version: str,
        group: str,
        me: str,
        peers: list[str],
        route_tables: list[str],
        egress_tables: list[str] | None = None,
        *,
        again: bool = False,
    ) -> None:
        """Create every labelled series up front (no missing metrics); the egress ones for ``egress_tables``.

        ``again``: the members changed while running: add the new peers' and tables' series, and
        leave the decision gauges as the last cycle set them.
        """
        self.build_info.labels(version, group, me).set(1)
        # Indexing a Children dict creates the series (and keeps the child for the hot paths).
        for check in SELF_CHECKS:
            self.self_check_of[check]
        for peer in peers:
            self.probes_sent_of[peer]
            self.probes_lost_of[peer]
            self.probe_rtt_of[peer]
            self.peer_up_of[peer]
            self.peer_alive_of[peer]
            self.peer_heartbeat_age_of[peer]
            self.peer_healthy_of[peer]
            for result in RESTART_RESULTS:
                self.peer_restarts.labels(peer, result)
        for rt in route_tables:
            self.route_owned_of[rt]
            self.route_term_of[rt]
            self.route_has_owner_of[rt]
            self.route_ec2_matches_of[rt]
            for kind in FAILOVER_KINDS:
                self.failovers.labels(
                    rt,
                    kind,
                    "peer_dead"
                    if kind == "takeover"
                    else {
                        "failback": "home_healthy",
                        "switchover": "operator",
                        "drain": "shutdown",
                        "last_resort": "no_nat",
                    }[kind],
                )
        for kind in FAILOVER_KINDS:
            self.failover_duration.labels(kind)
        for rt in egress_tables or ():
            self.egress_ok_of[rt]
            for kind in EGRESS_MOVE_KINDS:
                self.egress_moves.labels(rt, kind)
        if egress_tables:
            for kind in EGRESS_MOVE_KINDS:
                self.egress_move_duration.labels(kind)
        for result in RENEWAL_RESULTS:
            self.renewals.labels(result)
        for service, operation in AWS_OPERATIONS:
            for error in AWS_ERROR_CLASSES:
                self.aws_errors_of[service, operation, error]
        if again:
            return
        for pair in EC2_FAILURE_CAUSES:
            self.ec2_failures_of[pair]
        for cause in EC2_PENALTY_CAUSES:
            self.ec2_penalties_of[cause]
        for service, operation in AWS_OPERATIONS:
            if service == "ec2":
                self.ec2_backoff_of[operation].set(0)
        for d in DECISIONS:
            self.decision_of[d].set(0)
        self._decided = None

    def forget(self, peers: list[str], route_tables: list[str]) -> int:
        """Drop every series of peers and route tables that left the group; returns how many.

        A replaced NAT has a new instance id: the old one's series would otherwise stay at their
        last values for ever (a peer "down" that no longer exists keeps an alert firing).
        """
        gone_peers, gone_tables = set(peers), set(route_tables)
        dropped = 0
        for collector in list(self.registry._collector_to_names):  # every metric of this agent's registry
            names = getattr(collector, "_labelnames", ())
            children = getattr(collector, "_metrics", None)
            if not names or children is None or not isinstance(collector, (Gauge, Counter, Histogram)):
                continue
            for values in list(children):
                labels = dict(zip(names, values, strict=True))
                instances = {labels.get(k) for k in ("peer", "owner", "target")}
                if labels.get("route_table") in gone_tables or gone_peers.intersection(instances):
                    collector.remove(*values)
                    dropped += 1
        gone = gone_peers | gone_tables
        for cache in vars(self).values():  # the hot paths' child caches (Children*): resolve again if needed
            if isinstance(cache, (Children, Children2, Children3)):
                stale: list[Any] = [k for k in cache if gone.intersection(k if isinstance(k, tuple) else (k,))]
                for key in stale:
                    cache.pop(key)
        return dropped

    def put(self, gauge: Gauge, value: float) -> None:
        """Set ``gauge`` to ``value`` unless put() already did: a dict hit instead of a lock.

        Most state gauges keep their value from one cycle to the next. Only for gauges
        nothing but put() sets (a set() elsewhere would not be seen here).
        """
        if self._last.get(gauge) != value:
            gauge.set(value)
            self._last[gauge] = value

    def set_decision(self, kind: str) -> None:
        """1 for ``kind``'s series, 0 for the others; sets only the two that change."""
        if kind == self._decided:
            return
        if self._decided is None:
            for d in DECISIONS:
                self.decision_of[d].set(1 if d == kind else 0)
        else:
            self.decision_of[self._decided].set(0)
            if kind in DECISIONS:
                self.decision_of[kind].set(1)
        self._decided = kind if kind in DECISIONS else None  # an unknown kind has no series: all are 0

    def observe_probe(self, peer: str, ok: bool, rtt: float) -> None:
        """Count one probe of ``peer`` (the prober's observer; runs on the probe thread)."""
        self.probes_sent_of[peer].inc()
        if ok:
            self.probe_rtt_of[peer].observe(rtt)
        else:
            self.probes_lost_of[peer].inc()

    def observe_aws_call(self, service: str, operation: str, seconds: float, error: str | None) -> None:
        """Time one AWS call and count it if it failed (the AWS clients' call observer)."""
        self.aws_duration_of[service, operation].observe(seconds)
        if error:
            self.aws_errors_of[service, operation, aws_error_class(error)].inc()

    def serve(self, listen: str) -> object | None:
        """Start the HTTP endpoint on ``host:port`` (returns the server, or None if disabled)."""
        if not listen:
            return None
        host, _, port = listen.rpartition(":")
        return _serve(host.strip("[]"), int(port), self.registry)


PUSH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
PUSH_RESULTS = ("acked", "failed", "timeout")
SYNC_ERROR_KINDS = ("connect", "auth", "load", "events", "dump", "queue")


class SyncMetrics:
    """The connection-sync service's figures (conntrack_sync), exported by the agent.

    The agent asks the service for its counters every second over the control socket
    (:class:`agent.ctsync.agentside.FlowSync`) and this collector turns the last answer into
    series; when the service does not answer, only ``nat_ha_conntrack_sync_up 0`` is left. The
    agent times the hand-over pushes itself (it is the one that waits for them).
    """

    def __init__(self, registry: CollectorRegistry, peers: list[str], route_tables: list[str]) -> None:
        ns = "nat_ha_conntrack_sync"
        self.peers, self.route_tables = peers, route_tables
        self.push_duration = Histogram(
            f"{ns}_push_duration_seconds",
            "From asking the sync service to push a table's flows before a planned hand-over to the taker's answer",
            buckets=PUSH_BUCKETS,
            registry=registry,
        )
        self.pushes = Counter(
            f"{ns}_pushes", "Hand-over pushes by result (acked, failed, timeout: the route moved anyway)", ["result"],
            registry=registry,
        )  # fmt: skip
        for result in PUSH_RESULTS:
            self.pushes.labels(result)
        self.stats: dict[str, Any] | None = None  # the service's last answer (None: it did not answer)
        registry.register(self)

    def describe(self) -> list[Metric]:
        return []  # the series depend on what the service answers

    def collect(self) -> list[Metric]:
        ns = "nat_ha_conntrack_sync"
        s = self.stats
        up = GaugeMetricFamily(f"{ns}_up", "1 while the connection-sync service answers the agent")
        up.add_metric([], 1 if s is not None else 0)
        if s is None:
            return [up]
        peers = s.get("peers", {})
        connected = GaugeMetricFamily(
            f"{ns}_peer_connected", "1 while the link that streams this NAT's tables to the peer is up", labels=["peer"]
        )
        lag = GaugeMetricFamily(
            f"{ns}_lag_seconds", "From sending the last batch of flow changes to the peer to its having loaded them",
            labels=["peer"],
        )  # fmt: skip
        for peer in self.peers:
            connected.add_metric([peer], 1 if peers.get(peer, {}).get("connected") else 0)
            if peer in s.get("lag", {}):
                lag.add_metric([peer], float(s["lag"][peer]))
        out: list[Metric] = [up, connected, lag]
        for name, key, doc in (
            ("entries_sent", "entries_sent", "Connection-tracking entries sent to peers (changes, resyncs, pushes)"),
            ("entries_loaded", "entries_loaded", "Peers' entries loaded into this NAT's table"),
            ("bytes_sent", "bytes_sent", "Bytes sent to peers"),
            ("resyncs", "resyncs", "Full resyncs of a held table to its peers"),
        ):
            c = CounterMetricFamily(f"{ns}_{name}", doc)
            c.add_metric([], float(s.get(key, 0)))
            out.append(c)
        errors = CounterMetricFamily(f"{ns}_errors", "Sync errors by kind", labels=["kind"])
        for kind in SYNC_ERROR_KINDS:
            errors.add_metric([kind], float(s.get("errors", {}).get(kind, 0)))
        taken = GaugeMetricFamily(
            f"{ns}_takeover_entries",
            "Entries of the route table this NAT had loaded when it last took the table over",
            labels=["route_table"],
        )
        for rt, n in sorted(s.get("takeover_entries", {}).items()):
            taken.add_metric([rt], float(n))
        events = GaugeMetricFamily(f"{ns}_events_up", "1 while the service reads the kernel's connection events")
        events.add_metric([], 1 if s.get("events") else 0)
        return [*out, errors, taken, events]


IDLE_POLL_SECONDS = 3600.0


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


def _serve(host: str, port: int, registry: CollectorRegistry) -> ThreadingWSGIServer:
    """prometheus_client's WSGI server without wsgiref's reverse DNS lookup of the listen address.

    ``HTTPServer.server_bind`` calls ``socket.getfqdn(host)``: with no resolver answering (a lab
    namespace, a VPC resolver down) that took 10 s and held READY=1 back (tests/systemd).
    """

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def server_bind(self) -> None:
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])
            self.setup_environ()

        def shutdown(self) -> None:
            """serve_forever sees the request only when its select returns: connect to wake it (bounded)."""
            stopping = threading.Thread(target=socketserver.BaseServer.shutdown, args=(self,), daemon=True)
            stopping.start()
            for _ in range(50):
                with contextlib.suppress(OSError):
                    socket.create_connection((self.server_name, self.server_port), timeout=0.2).close()
                stopping.join(0.1)
                if not stopping.is_alive():
                    return

    server = make_server(host or "0.0.0.0", port, make_wsgi_app(registry), Server, handler_class=_Quiet)
    # socketserver's default polls twice a second to look for a shutdown request: two wake-ups a
    # second for nothing (0.03 % of a core here, bench/README.md); the agent never stops it.
    serve = functools.partial(server.serve_forever, poll_interval=IDLE_POLL_SECONDS)
    threading.Thread(target=serve, name="metrics-http", daemon=True).start()
    return server
