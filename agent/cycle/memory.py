"""What the agent remembers between cycles (all times on its monotonic clock)."""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field

from agent.decide import Ec2Address, Ec2Route
from coordinator.items import Health, MemberItem
from coordinator.observe import ChangeObserver


@dataclass
class RestartProgress:
    """The holder's local clock for one restart (phases are in the table)."""

    phase_started: float
    last_poll: float = -1e18
    stopped_as: MemberItem | None = None  # the peer's member item when we sent it a stop (expired by then)
    watched: MemberItem | None = None  # the peer's member item the decision to stop it judged silent


@dataclass
class Held:
    """A route table this session holds, in one term (our clock)."""

    term: int
    acquired_at: float
    settle_at: float  # write the route again then: no write of an earlier term can land after it
    tagged: bool = False  # the holder tag names us (written in this term)
    tagged_at: float = -1e18  # our last confirmed holder-tag write (IAM may lag it: tag propagation)
    first_tagged_at: float = -1e18  # the first since our last route write (bounds the propagation excuse)
    propagation_refusals: int = 0  # route writes IAM refused while it may still see the previous tag
    address_propagation_refusals: int = 0  # as propagation_refusals, for the Elastic IP's associations
    address_tagged: bool = False  # the Elastic IP's holder tag names us (egress_ip = follow)
    address_tagged_at: float = -1e18  # as tagged_at, for the Elastic IP's holder tag
    address_first_tagged_at: float = -1e18
    settled: bool = False
    last_write: float = -1e18  # our last confirmed route write
    address_settled: bool = False  # the Elastic IP was associated again after settle_at (egress_ip = follow)
    address_due: str = ""  # why the Elastic IP must be associated again (a stray report), until it is
    last_address_write: float = -1e18  # our last confirmed association
    # A write of ours to the table in this term (its route or its Elastic IP) may have reached EC2: it went
    # through, or was sent and not refused. False only for a table we claimed whose every such write since
    # was never sent, throttled or refused: we have moved nothing of it (agent.decide hands it to its home
    # when that can serve it).
    reached: bool = True
    # The peer instance we took it from in this term, by a claim or by its hand-over ("" for a claim of our own,
    # a table of our own instance's earlier process).
    taken_from: str = ""
    handed: bool = False  # handed to us by a peer (or an earlier process of ours), not claimed by this process

    def mark_tagged(self, now: float, *, address: bool = False) -> None:
        """Our holder-tag write on the table (``address``: its Elastic IP) went through at ``now``."""
        if address:
            self.address_tagged, self.address_tagged_at = True, now
            if self.address_first_tagged_at < -1e17:
                self.address_first_tagged_at = now
        else:
            self.tagged, self.tagged_at = True, now
            if self.first_tagged_at < -1e17:
                self.first_tagged_at = now

    def untag(self, *, address: bool = False) -> None:
        """The holder tag may name someone else now: tag again before the next write."""
        if address:
            self.address_tagged = False
        else:
            self.tagged = False


@dataclass
class Backoff:
    """Throttling of one EC2 action (AWS meters each action in its own token bucket)."""

    until: float = -1e18  # no call of this action until then
    seconds: float = 0.0  # the last back-off (doubles while the action stays throttled)


@dataclass
class Ec2Writes:
    """How our EC2 calls have gone lately (a holder that cannot write must give its tables up)."""

    failures: int = 0  # consecutive write failures of our own (a route write or association)
    failure_cause: str = ""  # refused | unreachable: what the counted failures were
    first_failure: float = 0.0
    out_until: float = -1e18  # the ec2_writes self check fails until then
    penalty: float = 0.0  # the last penalty for refusals (doubles per episode)
    cause: str = ""  # refused | unreachable: why we are (or were last) out
    # The kinds of write (route, AssociateAddress, CreateTags) AWS refused us, counted as ours, with
    # none of that kind let through since: a penalty for refusals ends when this empties.
    refused: set[str] = field(default_factory=set)
    backoffs: dict[str, Backoff] = field(default_factory=dict)  # EC2 action -> its throttling back-off
    answered_at: float = -1e18  # EC2 last answered a call of ours (any answer: our path to it works)
    unreachable_since: float | None = None  # our calls fail to connect since then (until an answer)
    retry_at: float = -1e18  # a write refused during tag propagation is retried then (an early cycle)

    def answered_age(self, now: float) -> float | None:
        """Seconds since EC2 last answered us (None: never), for the heartbeat written at ``now``."""
        return now - self.answered_at if self.answered_at > -1e17 else None

    def stamp(self, health: Health, now: float) -> Health:
        """``health`` with the age of EC2's last answer as of ``now``: a heartbeat sent late in a long
        cycle (calls waiting out their deadlines) must not say EC2 answered us more recently than it did."""
        age = self.answered_age(now)
        return health if age is None else dataclasses.replace(health, ec2_answered=age)


@dataclass
class Memory:
    """What the agent remembers between cycles (all times on its monotonic clock)."""

    observer: ChangeObserver = field(default_factory=ChangeObserver)
    healthy_since: dict[str, float] = field(default_factory=dict)
    claimable_since: dict[str, float] = field(default_factory=dict)
    suspect_since: dict[str, float] = field(default_factory=dict)
    dead_since: dict[str, float] = field(default_factory=dict)
    self_healthy_since: float | None = None
    self_unhealthy_since: float | None = None
    ec2: dict[str, Ec2Route] = field(default_factory=dict)
    egress: dict[str, Ec2Address] = field(default_factory=dict)  # route table -> where its Elastic IP sits
    egress_read: dict[str, Ec2Address] = field(default_factory=dict)  # what the last DescribeAddresses showed
    egress_read_at: float = -1e18
    ec2_read_at: float = -1e18
    routes_read_at: float = -1e18  # when our last DescribeRouteTables that was answered was sent
    session_started_at: float = -1e18  # when this process started its session (its first, or one after a loss)
    # Extra EC2 reads due (monotonic times): after a write to a peer whose outcome is unknown, at
    # once and once it can no longer land (ec2_apply_horizon), so the holder acts on where it is.
    ec2_rechecks: list[float] = field(default_factory=list)
    handover_doubt: dict[str, float] = field(default_factory=dict)  # route table -> when that write failed
    # A former holder's late write (agent.cycle.ec2view): who owned each table before us, whether each
    # peer's probes answered at the last cycle, and since when a peer whose session was expired answers
    # probes again.
    former_owners: dict[str, str] = field(default_factory=dict)
    probes_up: dict[str, bool] = field(default_factory=dict)
    revived: dict[str, float] = field(default_factory=dict)
    instance_states: dict[str, str] = field(default_factory=dict)
    instances_read_at: float = -1e18
    last_heartbeat: float = -1e18
    # Our last renewals' round trips to DynamoDB (said in the heartbeat: a slow path claims last).
    renewal_rtts: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=3))
    renewal_ended_at: float = -1e18  # when the newest of them returned (the heartbeat dates the figure by it)
    # Since when our figure has said slow (the start of the renewal that made it slow; None: it says fast):
    # a peer's fast figure measured before then says nothing of its path now (agent.decide._peers).
    store_slow_since: float | None = None
    last_health: Health | None = None
    last_draining: bool = False
    stale_deadlines: dict[str, float] = field(default_factory=dict)  # peer -> when its session can be expired
    # A second read of the group in this renewal period (agent.cycle.observe.Observer.reread_at), if due.
    reread_at: float | None = None
    restarts: dict[str, RestartProgress] = field(default_factory=dict)
    reported_errors: set[str] = field(default_factory=set)
    held: dict[str, Held] = field(default_factory=dict)
    relinquished: dict[str, int] = field(default_factory=dict)  # route table -> term of a hand-over in doubt
    strays_handled: set[str] = field(default_factory=set)  # stray report tokens acted on
    stray_reports: list[tuple[str, int, str]] = field(default_factory=list)  # (table, term, target) to report
    pins_since: dict[str, tuple[str, float]] = field(default_factory=dict)  # table -> (pinned member, first seen)
    ec2_writes: Ec2Writes = field(default_factory=Ec2Writes)
    # Pauses in force as of the last read of the group (agent.cycle.pause): route table -> who paused
    # it (the group's pause covers every table), and who paused the whole group ("": not paused).
    paused: dict[str, str] = field(default_factory=dict)
    group_paused: str = ""
    last_paused: bool = False  # what our last heartbeat said
    own_stop_tag: str = ""  # the session for which our instance is tagged nat-ha:stop-by=<our ARN>
    # A session taken over from an earlier process of this agent (agent/handoff.py): an EC2 write
    # that process sent may land until then, so its tables settle no earlier.
    predecessor_writes_until: float = -1e18
    # The last AWS call of ours (DynamoDB or EC2) that got no answer in time: a planned move waits for a
    # path that answers (agent.decide.PLANNED_MOVE_CLEAN).
    aws_unanswered_at: float = -1e18

    def unanswered(self, now: float) -> None:
        """An AWS call of ours got no answer in time (a timeout, no connection, the store unavailable)."""
        self.aws_unanswered_at = max(self.aws_unanswered_at, now)
