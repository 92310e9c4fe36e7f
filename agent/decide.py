"""The HA decision: a pure function of observations, local memory and the clock.

Like Patroni's ``run_cycle``, it returns the actions to take and one line that
says why, and tests assert on that line. No I/O here: AWS, sockets and time are
passed in. The rules:

* Only the holder of a route table's lease (owner + *this* session, still valid)
  moves its route; ownership changes only through the coordinator's conditional
  writes, which bump the term.
* A route table is taken from a peer only on two independent signals: its
  probes fail *and* its heartbeat has not changed for its declared lease plus a
  margin on our clock. A peer that reports itself unhealthy hands its route
  tables over itself. An unhealthy agent never takes anything. Two cases need no
  probe: an owner silent for ``silent_owner_after`` (it cannot reach AWS, so it
  most likely cannot forward either, and its lease has long run out), and an
  owner that is not a member of the group (nobody probes it) once its lease ran out.
* A holder writes its route blindly when it takes a table, again once
  ``ec2_apply_horizon`` later (a late write of the previous holder cannot stay),
  and again when a writer reports a write that left after its deadline.
* A second process for the same instance starts a session only after the
  existing one has been silent for its lease plus the margin, as a peer would
  judge it: it never supersedes a live agent.
* Among healthy candidates, a route table goes to its home NAT first, then to
  the members after the home in configuration order, rotated by the table's place
  among its home's tables: a dead NAT's tables go to different members first, each
  writing its share while the others write theirs, and every agent agrees on the
  order. A candidate of rank r waits r x ``claim_stagger`` after first seeing the
  table claimable.
* Fail back only after the home NAT has been healthy for ``failback_hold_down``.
* The last resort (``ec2.last_resort_nat_gateway``): a holder that cannot serve its table
  (unhealthy or draining) and knows no healthy peer routes it to the NAT gateway before it
  would hold it on a broken NAT or release it, and keeps the lease; a peer that becomes
  healthy gets it by a hand-over, the holder routes it back as soon as it can serve.
* With ``egress_ip = "follow"`` a holder keeps its table's Elastic IP on its own address
  for the table like it keeps the route: written when taken, again after the horizon and
  after a stray report, and repaired when a read shows it elsewhere.
* A pause (``nat-ha pause``, of the group or of one table): no EC2 write for a paused table.
  Leases still move - a dead holder's table is claimed, a hand-over hands the lease - but the
  route stays where it is (an operator may have pointed it at a NAT gateway by hand) until the
  pause ends and the holder writes it. A pause of the group also holds every restart (stop/start
  is an EC2 write too). The fence refuses any EC2 write for a paused table all the same.
* Restarting a peer (stop/start) needs much stronger evidence: heartbeat silent
  for ``restart_after`` *and* no probe answered for ``restart_after`` (data-plane
  evidence: a NAT that answers probes is never stopped, whatever its heartbeat
  says - a wedged agent is systemd's watchdog's job, and a NAT that forwards but
  cannot reach DynamoDB may lose its tables but keeps running), EC2 saying it is
  running or stopped; it happens under a restart lease, after a cooldown, at
  most ``restart_max_attempts`` times without the peer becoming healthy, and
  never to a peer that is heartbeating or that left on purpose. The evidence is
  checked again, fresh, right before the stop is sent (agent/cycle/restarts.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from agent.config import Timing
from coordinator.items import (
    MEMBER_ALIVE,
    MEMBER_EXPIRED,
    RESTART_COOLDOWN,
    RESTART_IDLE,
    RESTART_STARTING,
    RESTART_STOPPING,
    GroupSnapshot,
    Health,
    MemberItem,
    RestartItem,
    RouteItem,
)

INSTANCE_RESTARTABLE = ("running", "stopped")
# A member whose renewals took this long (the slowest of its last few, said in its heartbeat) claims a
# failed peer's table after the members whose DynamoDB path is fast: a takeover is several round trips
# one after another (expire, claim, renew), and DynamoDB answers a healthy path in milliseconds.
SLOW_STORE_S = 0.1
EC2_WRITES_CHECK = "ec2_writes"  # the self check that fails while our EC2 writes keep failing
# A planned move (fail-back, operator pin) waits until every AWS call of ours (DynamoDB, EC2) has been
# answered in time for this long: a lossy path stalls a move between its writes (_plan_handover).
PLANNED_MOVE_CLEAN = 5.0
# A lossy holder hands a table it has not moved at all to a fast peer only while its AWS calls go unanswered
# now (one within this long, _plan_half_moved): DynamoDB slow for everyone a moment ago is no reason (every
# member's calls went unanswered then, and the table would go to and fro between them).
LOSSY_NOW = 1.0


@dataclass(frozen=True)
class PeerProbe:
    """What our probes say about one peer."""

    up: bool
    lost: int = 0
    window: int = 0
    silent_for: float = 0.0  # seconds since the last answered probe
    result_age: float = 0.0  # seconds since the newest probe result (answered or lost): how fresh this is


@dataclass(frozen=True)
class Ec2Route:
    """Where EC2 says a route table's 0.0.0.0/0 goes (as last read)."""

    target: str  # instance id of a member, "" when missing/unknown, or "other:<id>"
    state: str = "active"  # active | blackhole | missing | unknown


@dataclass(frozen=True)
class Ec2Address:
    """Where EC2 says a route table's Elastic IP is associated (as last read)."""

    holder: str  # the member whose address for the table holds it, "" when unassociated, or "other:<eni>/<ip>"
    public_ip: str = ""
    problem: str = ""  # why it cannot be associated at all: released (not in the account), another group's


@dataclass(frozen=True)
class Observation:
    """Everything one cycle observed; the decision reads nothing else."""

    now: float
    me: str
    members: tuple[str, ...]  # configuration order
    homes: dict[str, str]  # route table -> home instance
    snapshot: GroupSnapshot
    heartbeat_age: dict[str, float]  # instance -> seconds its member item has not changed (our clock)
    restart_age: dict[str, float]  # target -> seconds its restart item has not changed
    probes: dict[str, PeerProbe]
    health: Health
    session: str  # our session id, "" when we hold none
    session_remaining: float  # <= 0: the session lapsed on our clock; renew before acting
    ec2: dict[str, Ec2Route]
    instance_states: dict[str, str] = field(default_factory=dict)
    draining: bool = False
    healthy_since: dict[str, float] = field(default_factory=dict)  # peer -> first seen healthy (continuous)
    claimable_since: dict[str, float] = field(default_factory=dict)  # route table -> first seen claimable
    self_healthy_since: float | None = None
    self_unhealthy_since: float | None = None
    pins: dict[str, str] = field(default_factory=dict)  # route table -> member an operator chose
    pins_since: dict[str, float] = field(default_factory=dict)  # route table -> when we first saw its pin
    reassert: dict[str, str] = field(default_factory=dict)  # held route table -> why to write its route again
    relinquished: dict[str, int] = field(default_factory=dict)  # route table -> term we sent a hand-over in
    egress_tables: frozenset[str] = frozenset()  # route tables whose Elastic IP follows them (egress_ip = follow)
    egress: dict[str, Ec2Address] = field(default_factory=dict)  # route table -> where its Elastic IP sits
    reassert_address: dict[str, str] = field(default_factory=dict)  # held table -> why to associate its EIP again
    handovers_in_doubt: frozenset[str] = frozenset()  # held tables whose write to a successor failed lately
    unrouted: frozenset[str] = frozenset()  # held tables we claimed, moved nothing of, EC2 shows at home
    last_resort: str = ""  # the NAT gateway to route a table nobody in the group can serve to ("": none)
    paused: dict[str, str] = field(default_factory=dict)  # route table -> who paused it (group or table)
    group_paused: str = ""  # who paused the whole group ("": not paused): no restarts either
    aws_answered_for: float = float("inf")  # seconds every AWS call of ours has been answered in time
    store_rtt: float = 0.0  # the slowest of our last few renewals' round trips (what our next heartbeat says)
    store_slow_since: float | None = None  # since when that figure says slow (None: fast, or not known)
    # Peer -> the earliest (our clock) its heartbeat's round-trip figure can have been measured (its newest
    # renewal's end: Health.store_rtt_age, bounded by the read before the heartbeat); absent: not dated.
    store_measured_after: dict[str, float] = field(default_factory=dict)
    handed_unread: frozenset[str] = frozenset()  # held tables handed to us, EC2 not read since (views predate it)
    # No route read of ours answered since our session started: ``ec2`` may predate the last writes of an
    # earlier session of ours (a process waited out or killed with a write in flight; _resume).
    routes_unread: bool = False

    def preferred_homes(self) -> dict[str, str]:
        """Homes, with operator pins taking precedence."""
        return {rt: self.pins.get(rt) or home for rt, home in self.homes.items()}


# ------------------------------------------------------------------- actions
class _Explained:
    """An action whose log line is the ``why`` the decision wrote for it."""

    why: str

    def describe(self) -> str:
        return self.why


@dataclass(frozen=True)
class StartSession:
    def describe(self) -> str:
        return "starting a session"


@dataclass(frozen=True)
class TakeOver(_Explained):
    """Claim a route table (expiring its dead owner's session first if needed) and route it here."""

    route_table: str
    route: RouteItem | None
    expire: MemberItem | None
    reason: str  # metrics reason: peer_dead | orphaned
    why: str
    write_route: bool = True  # False: the table is paused, only its lease is taken

    def taken_from(self, me: str) -> str:
        """The peer instance the table is taken from: "" for a table nobody owns or one our own instance held."""
        owner = self.route.owner if self.route is not None else ""
        return owner if owner != me else ""


@dataclass(frozen=True)
class EnsureRoute(_Explained):
    """We hold the route table; EC2 does not (provably) route it to us, or a late write may have landed."""

    route_table: str
    route: RouteItem
    why: str
    again: bool = False  # EC2 shows it here already: written again (after the horizon, a stray report)


@dataclass(frozen=True)
class EnsureAddress(_Explained):
    """We hold the route table; its Elastic IP is not (provably) on our address for it, or a late write may land."""

    route_table: str
    route: RouteItem
    why: str
    again: bool = False  # EC2 shows it on our address already: associated again


@dataclass(frozen=True)
class RouteToGateway(_Explained):
    """Nobody in the group can serve a table we hold: route it to the last-resort NAT gateway, keep the lease."""

    route_table: str
    route: RouteItem
    gateway: str
    why: str


@dataclass(frozen=True)
class HandOver(_Explained):
    """Point the route at a live successor, verify, then hand the lease over (make before break)."""

    route_table: str
    route: RouteItem
    successor: MemberItem
    kind: str  # failback | drain | switchover
    reason: str  # home_healthy | self_unhealthy | shutdown | operator
    why: str
    write_route: bool = True  # False: our EC2 writes fail, or the route was written before an unknown outcome


@dataclass(frozen=True)
class Release(_Explained):
    """Give up a held table without naming a successor (we are unhealthy and know no healthy peer)."""

    route_table: str
    route: RouteItem
    why: str


@dataclass(frozen=True)
class ClaimRestart(_Explained):
    target: str
    item: RestartItem | None
    why: str


@dataclass(frozen=True)
class ContinueRestart(_Explained):
    item: RestartItem
    why: str


@dataclass(frozen=True)
class ResetOwnRestart:
    item: RestartItem

    def describe(self) -> str:
        return f"healthy again: clearing my restart count ({self.item.attempts})"


Action = (
    StartSession
    | TakeOver
    | EnsureRoute
    | EnsureAddress
    | RouteToGateway
    | HandOver
    | Release
    | ClaimRestart
    | ContinueRestart
    | ResetOwnRestart
)


@dataclass(frozen=True)
class Decision:
    kind: str  # one of agent.metrics.DECISIONS
    summary: str
    actions: tuple[Action, ...] = ()


# ------------------------------------------------------------------- helpers
def preference(route_table: str, homes: dict[str, str], members: tuple[str, ...]) -> list[str]:
    """Who should serve a route table, best first: its home, then the members after it, starting at the
    table's place among its home's tables (sorted): the k-th table of a home goes to the k-th member after
    it, wrapping. A takeover writes table after table (a tag, a route, an Elastic IP each); with every table
    of a dead NAT first to the same member, the last waited for all of them while the other members, whose
    waits had ended, did nothing (sim seeds 3894 and 9403: 3.05 s)."""
    home = homes.get(route_table, "")
    if home not in members:
        return list(members)
    i = members.index(home)
    after = members[i + 1 :] + members[:i]
    siblings = sorted(t for t, h in homes.items() if h == home)
    k = siblings.index(route_table) % len(after) if after else 0
    return [home, *after[k:], *after[:k]]


def _fmt(seconds: float) -> str:
    return f"{seconds:.1f} s"


class _View:
    """Derived judgements over one observation (kept out of the decision's flow)."""

    def __init__(self, obs: Observation, t: Timing) -> None:
        self.obs = obs
        self.t = t

    def member(self, instance: str) -> MemberItem | None:
        return self.obs.snapshot.members.get(instance)

    def stale(self, m: MemberItem) -> bool:
        age = self.obs.heartbeat_age.get(m.instance, 0.0)
        return age >= m.lease_ms / 1000.0 + self.t.margin

    def probe_down(self, instance: str) -> bool:
        p = self.obs.probes.get(instance)
        return p is not None and not p.up

    def live(self, m: MemberItem | None) -> bool:
        """Has a session that nobody has declared dead and that is still renewing."""
        return m is not None and m.state == MEMBER_ALIVE and not self.stale(m)

    def eligible(self, instance: str) -> bool:
        """Could serve route tables now: live, healthy by its own report, not draining, answers us."""
        if instance == self.obs.me:
            return bool(self.obs.session) and self.obs.health.healthy and not self.obs.draining
        m = self.member(instance)
        if not self.live(m) or m is None or not m.health.healthy or m.draining:
            return False
        if self.obs.snapshot.draining(instance):  # an operator's drain, before its heartbeat says so
            return False
        p = self.obs.probes.get(instance)
        return p is None or p.up

    def healthy_for(self, instance: str) -> float:
        since = self.obs.healthy_since.get(instance)
        return 0.0 if since is None else self.obs.now - since

    def holds(self, r: RouteItem | None) -> bool:
        return (
            r is not None
            and r.owner == self.obs.me
            and bool(self.obs.session)
            and (r.owner_session == self.obs.session)
        )

    def owner_state(self, r: RouteItem | None) -> tuple[str, str, MemberItem | None]:
        """(state, why, member to expire): state is live | silent | dead | orphaned | free."""
        if r is None or not r.owner:
            return "free", "no owner", None
        m = self.member(r.owner)
        if m is None:
            return "orphaned", f"owner {r.owner} has no heartbeat item", None
        if m.session != r.owner_session:
            return "orphaned", f"owner {r.owner} started a new session", None
        if m.state != MEMBER_ALIVE:
            return "orphaned", f"owner {r.owner}'s session is {m.state}", None
        if not self.stale(m):
            return "live", "", None
        silent = self.obs.heartbeat_age.get(m.instance, 0.0)
        if m.instance not in self.obs.members:
            return "dead", f"owner {m.instance} is not a member of this group and its heartbeat is silent", m
        if self.probe_down(m.instance):
            p = self.obs.probes[m.instance]
            why = f"no probe replies for {_fmt(p.silent_for)}, heartbeat silent {_fmt(silent)}"
            return "dead", why, m
        if silent >= silence_tolerated(m, self.t):
            why = f"heartbeat silent {_fmt(silent)} (it answers probes, but a NAT that cannot reach AWS cannot forward)"
            if m.restart_grace_ms:
                why = f"heartbeat silent {_fmt(silent)} since it announced an agent restart (it answers probes)"
            return "dead", why, m
        if m.restart_grace_ms:
            why = f"agent of {m.instance} restarting: heartbeat silent {_fmt(silent)}, it answers probes"
            return "silent", why, None
        return "silent", f"heartbeat of {m.instance} silent {_fmt(silent)} but it answers probes", None

    def slow_store(self, instance: str) -> bool:
        """Its heartbeat says its renewals are slow (agent.cycle.session measures them): it claims last."""
        m = self.member(instance)
        rtt = m.health.store_rtt if m is not None else None
        return rtt is not None and rtt >= SLOW_STORE_S

    def fast_while_we_are_slow(self, instance: str) -> bool:
        """Its heartbeat says its renewals are fast, measured after ours turned slow: its path is better than
        ours, not only before a slowdown that hit every member (sim seed 6403: during a DynamoDB slowdown for
        everyone a member judged its own path lossy and handed a table to a peer whose fast figure predated
        the slowdown, and that peer's path was the lossy one). A figure not dated (an agent before
        Health.store_rtt_age) is taken as the previous version took it: by its value alone."""
        m = self.member(instance)
        if m is None or self.slow_store(instance):
            return False
        since = self.obs.store_slow_since
        if since is None or m.health.store_rtt is None or m.health.store_rtt_age is None:
            return True
        measured = self.obs.store_measured_after.get(instance)
        return measured is not None and measured > since

    def other_process(self) -> str:
        """Why we must not start a session: another process runs as this instance and renews ("": none)."""
        m = self.member(self.obs.me)
        if m is None or m.state != MEMBER_ALIVE or self.stale(m):
            return ""
        age = self.obs.heartbeat_age.get(m.instance, 0.0)
        return (
            f"not starting a session: another agent of {m.instance} (session {m.session[:8]}) renewed "
            f"{_fmt(age)} ago; waiting until it has been silent {_fmt(m.lease_ms / 1000 + self.t.margin)}"
        )


def _claim_order(v: _View, candidates: list[str], home: str, r: RouteItem | None) -> list[str]:
    """The claim order: a stable sort that every member computes alike from the snapshot. The first stays
    first where it is the table's home or its owner back with a new session (their claim moves no route).
    The others go members whose DynamoDB path is fast first (a slow path's takeover calls take longer),
    then, of a failed owner's table, those that take back fewer of the same owner's tables as their home.
    A taker writes its tables one after another, four EC2 calls each with holder tags and Elastic IPs
    (tag, route, tag, association): a member that is home to three of the dead NAT's tables is busy for
    most of a second with its own, and a table whose home is the dead NAT itself waited behind them while
    another member had one table to take (sim seed 5589: a forward_hang's fifth table routed 3.3 s after
    the fault)."""
    owner = r.owner if r is not None else ""
    keep = candidates[:1] if candidates and candidates[0] in (home, owner) else []
    rest = candidates[len(keep) :]
    busy = {c: 0 for c in rest}
    if r is not None and owner:
        homes = v.obs.preferred_homes()
        for rt, other in v.obs.snapshot.routes.items():
            h = homes.get(rt, "")
            if other.owner == owner and other.owner_session == r.owner_session and h in busy and rt != r.route_table:
                busy[h] += 1
    slow = {c: v.slow_store(c) for c in rest}
    return keep + sorted(rest, key=lambda c: (slow[c], busy[c]))


# ------------------------------------------------------------------ decision
def decide(obs: Observation, t: Timing) -> Decision:
    """Decide this cycle's actions; returns them with a one-line explanation."""
    v = _View(obs, t)
    if not obs.session:
        other = v.other_process()
        if other:
            return Decision("no_session", other)
        return Decision("no_session", "no session: starting one before acting", (StartSession(),))
    if obs.session_remaining <= 0:
        return Decision("no_session", "session lapsed (no renewal in time): not acting until a renewal succeeds")

    actions: list[Action] = []
    notes: list[str] = []
    held: list[str] = []
    me_ok = obs.health.healthy and not obs.draining

    homes = obs.preferred_homes()
    for rt in sorted(homes):
        r = obs.snapshot.routes.get(rt)
        home = homes[rt]
        if v.holds(r) and r is not None and obs.relinquished.get(rt) == r.term:
            # We sent a hand-over whose outcome is unknown: it may still land, so this session
            # never writes the table again in this term. Send the hand-over again (route
            # already written), or take the table back in a new term.
            successor = _successor(v, rt)
            if successor is not None:
                why = f"handing {rt} to {successor.instance} again (the last hand-over's outcome is unknown)"
                actions.append(HandOver(rt, r, successor, "drain", "retry", why, write_route=False))
            elif me_ok:
                why = f"took back {rt} (term {r.term + 1}): my hand-over's outcome is unknown and no peer can take it"
                actions.append(TakeOver(rt, r, None, "orphaned", why))
            continue
        if v.holds(r):
            assert r is not None
            handover = _plan_handover(v, t, rt, r, home)
            if isinstance(handover, str):
                notes.append(handover)
            elif handover is not None:
                actions.append(handover)
                continue
            last = _plan_last_resort(v, t, rt, r)
            if last is not None:
                if isinstance(last, str):
                    notes.append(last)
                else:
                    actions.append(last)
                if not isinstance(last, Release):
                    held.append(f"{rt} (term {r.term}, on {obs.last_resort})")
                continue  # the lease is kept: a healthy peer takes the table over by a hand-over
            release = _plan_release(v, t, rt, r)
            if release is not None:
                actions.append(release)
                continue
            done = _plan_failback_done(v, rt, r, home)
            if done is not None:
                actions.append(done)
                continue
            lossy = _plan_half_moved(v, rt, r)
            if lossy is not None:
                actions.append(lossy)
                continue
            held.append(f"{rt} (term {r.term})")
            ec2 = obs.ec2.get(rt)
            if ec2 is None or ec2.target != obs.me or ec2.state != "active":
                seen = "unknown" if ec2 is None else (ec2.target or ec2.state)
                actions.append(EnsureRoute(rt, r, f"routing {rt} to me (EC2 shows {seen})"))
            elif rt in obs.reassert:
                actions.append(EnsureRoute(rt, r, f"writing {rt}'s route again: {obs.reassert[rt]}", again=True))
            address = _plan_address(obs, rt, r)
            if isinstance(address, str):
                notes.append(address)
            elif address is not None:
                actions.append(address)
            continue
        if r is not None and r.owner == obs.me and me_ok:
            actions.append(_resume(v, rt, r, home))
            continue
        state, why, expire = v.owner_state(r)
        if state == "live":
            continue
        if state == "silent":
            notes.append(f"not moving {rt}: {why}")
            continue
        if not me_ok:
            continue
        if state == "orphaned" and r is not None and _owner_back(v, r):
            # Its owner is back with a new session, heartbeating and healthy by its own report:
            # it resumes the table itself, even where our probes of it fail (a partition).
            notes.append(f"not claiming {rt}: its owner {r.owner} is back with a new session")
            continue
        order = preference(rt, homes, obs.members)
        if r is not None and r.owner in order:
            order.remove(r.owner)
            if state == "orphaned":
                order.insert(0, r.owner)  # its owner, back with a new session, keeps it: no route move
        candidates = _claim_order(v, [c for c in order if v.eligible(c)], home, r)
        if obs.me not in candidates:
            continue
        rank = candidates.index(obs.me)
        waited = obs.now - obs.claimable_since.get(rt, obs.now)
        if r is None and home != obs.me and waited < t.failback_hold_down:
            # A homeless table (its home's slot has no NAT now, members_from_tags) waits the same, for any NAT.
            notes.append(f"{rt} has never been claimed; waiting for its home {home or 'to have a NAT'}")
            continue  # start-up: give the home NAT time to start before anyone else takes its table
        if rank > 0 and waited < rank * t.claim_stagger:
            notes.append(f"{rt} claimable ({why}); {candidates[0]} is preferred")
            continue
        owner = f" from {r.owner}" if r is not None and r.owner else ""
        verb = "took over" if state == "dead" else "claimed"
        term = (r.term + 1) if r is not None else 1
        reason = "peer_dead" if state == "dead" else "orphaned"
        actions.append(TakeOver(rt, r, expire, reason, f"{verb} {rt}{owner} (term {term}): {why}"))

    actions.extend(_plan_restarts(v, t))
    held_back: list[str] = []
    actions = _hold_for_pause(obs, actions, held_back)
    actions.sort(key=lambda a: _priority(a, obs))

    if actions:
        kind = _kind_of(actions)
        return Decision(kind, "; ".join([*(a.describe() for a in actions), *held_back]), tuple(actions))
    return _steady(v, held, notes + held_back)


def _hold_for_pause(obs: Observation, actions: list[Action], notes: list[str]) -> list[Action]:
    """What of ``actions`` a pause lets through: lease moves without their route writes, no other EC2 write.

    The fence refuses those writes anyway (agent.aws.fence); deciding them away keeps the decision
    line true ("paused: not writing ...") and the lease moves lease-only, on purpose.
    """
    if not obs.paused and not obs.group_paused:
        return actions
    out: list[Action] = []
    for a in actions:
        if isinstance(a, (ClaimRestart, ContinueRestart)):
            if obs.group_paused:
                target = a.target if isinstance(a, ClaimRestart) else a.item.target
                notes.append(f"not restarting {target}: the group is paused")
                continue
            out.append(a)
            continue
        rt = getattr(a, "route_table", "")
        if rt not in obs.paused:
            out.append(a)
        elif isinstance(a, (EnsureRoute, EnsureAddress, RouteToGateway)):
            notes.append(f"{rt} paused: not {a.why[0].lower()}{a.why[1:]}")
        elif isinstance(a, (HandOver, TakeOver)) and a.write_route:
            out.append(dataclasses.replace(a, write_route=False, why=f"{a.why} (paused: the lease only)"))
        else:
            out.append(a)
    return out


def _priority(action: Action, obs: Observation) -> int:
    """The order of a cycle's writes: AWS's write buckets are shared (and a cycle's time is bounded),
    so what ends an outage goes first - a table's route to a NAT that serves it, then its Elastic
    IP - then planned moves, then writes that only re-assert what EC2 already shows, then restarts.
    A table resumed from our previous session that EC2 shows served here whole moves nothing: it
    waits behind the moves (sim seed 2878: a restarted agent on a lossy path resumed two such tables
    first, and a table whose Elastic IP was still elsewhere waited 3 s)."""
    if isinstance(action, TakeOver) and action.route is not None and action.route.owner == obs.me:
        return 2 if _served_here(obs, action.route_table) else 0
    if isinstance(action, (TakeOver, RouteToGateway)) or (isinstance(action, EnsureRoute) and not action.again):
        return 0
    if isinstance(action, EnsureAddress) and not action.again:
        return 1
    if isinstance(action, (HandOver, Release)):
        return 2
    if isinstance(action, (EnsureRoute, EnsureAddress)):
        return 3
    return 4


def _successor(v: _View, rt: str, *, fast: bool = False) -> MemberItem | None:
    """The best live, healthy peer to hand ``rt`` to (preference order), if any (``fast``: of those whose
    DynamoDB path is fast while ours is slow, as their heartbeats say: _View.fast_while_we_are_slow)."""
    name = next(iter(_peers(v, rt, fast=fast)), None)
    return v.member(name) if name is not None else None


def _peers(v: _View, rt: str, *, fast: bool = False) -> list[str]:
    """The live, healthy peers ``rt`` could be handed to, in preference order (``fast``: see _successor)."""
    order = preference(rt, v.obs.preferred_homes(), v.obs.members)
    return [c for c in order if c != v.obs.me and v.eligible(c) and (not fast or v.fast_while_we_are_slow(c))]


def _lossy_path(v: _View) -> bool:
    """Our own path to AWS loses packets: an AWS call of ours went unanswered lately (PLANNED_MOVE_CLEAN) and
    our DynamoDB renewals are slow (SLOW_STORE_S, as our heartbeat says)."""
    obs = v.obs
    slow = obs.store_rtt >= SLOW_STORE_S or v.slow_store(obs.me)
    return obs.aws_answered_for < PLANNED_MOVE_CLEAN and slow


def _plan_address(obs: Observation, rt: str, r: RouteItem) -> EnsureAddress | str | None:
    """A held table's Elastic IP: on our address for it, or moved there (egress_ip = follow).

    An Elastic IP that cannot be associated at all (released, or another group's) is a note, not
    an association that fails every cycle.
    """
    if rt not in obs.egress_tables:
        return None
    seen = obs.egress.get(rt)
    if seen is not None and seen.problem:
        return f"{rt}'s Elastic IP cannot be associated: {seen.problem}"
    if seen is None or seen.holder != obs.me:
        where = "unknown" if seen is None else (f"with {seen.holder}" if seen.holder else "unassociated")
        ip = f" {seen.public_ip}" if seen is not None and seen.public_ip else ""
        return EnsureAddress(rt, r, f"moving {rt}'s Elastic IP{ip} to me (it is {where})")
    if rt in obs.reassert_address:
        return EnsureAddress(rt, r, f"associating {rt}'s Elastic IP again: {obs.reassert_address[rt]}", again=True)
    return None


def _plan_failback_done(v: _View, rt: str, r: RouteItem, home: str) -> HandOver | None:
    """EC2 routes a table we hold where a fail-back would put it, or we never moved it: hand the lease over.

    Our hand-over's write reached EC2 though its reply did not (or a write landed late): the
    table is where a fail-back would put it, and moving it back to us would be one move too
    many. Its Elastic IP goes with the lease unless it is with the home already.

    Or we claimed the table and no write of ours to it (route, Elastic IP) has reached EC2 since (EC2 was out, or
    throttled or refused every one): we never moved it, and its home can serve it again. Moving
    it to us now would move a healthy NAT's table (sim seed 379: an EC2 outage held a takeover
    back 10 s while the home came back). Only where EC2 shows it at its home, or we have not read
    EC2 since we claimed it (agent.cycle.observe), and its Elastic IP (egress_ip = follow) is with
    the home: the lease alone goes back, and the home routes it where it is not there already.
    No hold-down: we moved nothing, nothing flaps. An Elastic IP we have no read of at all counts as
    with the home, as the route we have not read since the claim does (sim seed 5910: a taker restarted
    during the outage resumed the claim and never got a DescribeAddresses through; it kept the table
    and moved it away from its healthy home when EC2 answered). A read showing it elsewhere still
    keeps the table here (five seeds of 10,000 failed where the rule fired on such a read).
    """
    obs = v.obs
    if home == obs.me or not v.eligible(home):
        return None
    m = v.member(home)
    assert m is not None
    lease_only = _address_with(obs, rt, home)
    if rt in obs.unrouted and (lease_only or rt not in obs.egress):
        why = f"{rt}'s home {home} can serve it again and no write of mine reached EC2: handing it back"
        return HandOver(rt, r, m, "failback", "home_healthy", why, write_route=False)
    ec2 = obs.ec2.get(rt)
    if rt not in obs.handovers_in_doubt or ec2 is None or ec2.state != "active" or ec2.target != home:
        return None  # only after a write of ours that may have landed: an older view says nothing
    why = f"EC2 already routes {rt} to its home {home}: handing the lease over" + (
        "" if lease_only else " with its Elastic IP"
    )
    return HandOver(rt, r, m, "failback", "home_healthy", why, write_route=not lease_only)


def _plan_half_moved(v: _View, rt: str, r: RouteItem) -> HandOver | None:
    """A held table half moved (EC2 routes it here and its Elastic IP is elsewhere, or the reverse), or not
    moved at all (its route on a NAT that cannot serve it, nothing of it here), while our own path to AWS
    loses packets: an AWS call of ours went unanswered lately (PLANNED_MOVE_CLEAN) and our DynamoDB
    renewals are slow (SLOW_STORE_S, as our heartbeat says). Its traffic has no public address until both
    are on one NAT, or no route at all until we move it; over our path each missing write takes seconds,
    and while we renew no peer may finish it (sim seeds 2878, 5879, 9879: 3 s and more; 6403 in one timing:
    tables claimed from a dead NAT just before our path began to lose packets, on the dead NAT 12.7 s). An
    unmoved table goes only on a route read that names where it is (a read showing no route may miss one that
    exists, on our own NAT), and only while a call of ours went unanswered just now (LOSSY_NOW): right after
    DynamoDB was slow for everyone, every member's calls had gone unanswered, and the table went to and
    fro. The lease alone goes to a healthy peer whose path is fast - the one that holds the other half
    already (one write finishes it), else the first in the table's preference order - and it writes what
    is missing (agent.cycle.observe reads EC2 when a table is handed to it). The hand-over moves nothing
    in EC2; a table served here whole stays, as does one served elsewhere (a NAT that can serve it, the
    last-resort gateway), and so does a table handed to us that we have not read EC2 for since
    (``handed_unread``): a hand-over comes make before break, and a view older than the giver's writes
    would look half moved and send it on.
    """
    obs = v.obs
    if not _lossy_path(v):
        return None
    if rt in obs.handed_unread:
        return None
    route = obs.ec2.get(rt)
    if route is None:
        return None
    egress = rt in obs.egress_tables
    address = obs.egress.get(rt) if egress else None
    if egress and (address is None or address.problem):
        return None
    route_here = route.state == "active" and route.target == obs.me
    address_here = address is not None and address.holder == obs.me
    if egress and route.state == "active" and route_here != address_here:
        assert address is not None
        other = address.holder if route_here else route.target
        half = "its Elastic IP" if route_here else "its route"
        what = f"half-moved {rt}"
    elif not route_here and not address_here and obs.aws_answered_for < LOSSY_NOW and _unserved(v, route):
        other, half, what = "", f"its route is on {route.target or route.state}", f"unmoved {rt}"
    else:
        return None
    fast = _peers(v, rt, fast=True)
    if not fast:
        return None
    to = other if other in fast else fast[0]
    m = v.member(to)
    assert m is not None
    if other:
        half += " is not here"
    why = (
        f"handing {what} to {to} ({half}; my AWS calls go unanswered, "
        f"the last {_fmt(max(0.0, obs.aws_answered_for))} ago): it finishes the move"
    )
    return HandOver(rt, r, m, "drain", "self_unhealthy", why, write_route=False)


def _unserved(v: _View, route: Ec2Route) -> bool:
    """EC2 routes the table nowhere that forwards: a blackhole, or a member that cannot serve it (not the
    last-resort gateway, which forwards). Not a read showing no route: DescribeRouteTables can miss a route
    that exists, on our own NAT, say (sim seed 186: a healthy home handed its own table away on one)."""
    if route.state == "blackhole":
        return True
    if route.state != "active" or route.target.startswith("other:"):
        return False
    return not route.target or not v.eligible(route.target)


def _resume(v: _View, rt: str, r: RouteItem, home: str) -> TakeOver:
    """Take back a table an earlier session of ours held (a restarted agent, a new session).

    Where its home is a peer that can serve it and EC2 routes it there (or we have no read of its
    route since our session started, ``routes_unread``: a new process whose first read failed, or one whose
    read predates the last writes of the process it waited out - sim seed 7802: a fail-back's write landed
    after it) with its Elastic IP (egress_ip = follow), that session may never have moved it (it claimed
    the table and died before its write, sim seed 2878):
    the lease alone comes back, and the hand-back of a table we never moved (Observer.unrouted,
    _plan_failback_done) returns it to the home next cycle. Writing the route here would move a
    healthy NAT's table; the home defers to us meanwhile (_owner_back), so the lease must come back
    to someone first. A table EC2 routes here is resumed as it is (fail-back after the hold-down).
    """
    obs = v.obs
    why = f"resumed {rt} from my previous session"
    ec2 = None if obs.routes_unread else obs.ec2.get(rt)
    at_home = ec2 is None or (ec2.state == "active" and ec2.target == home)
    if home != obs.me and at_home and v.eligible(home) and _address_with(obs, rt, home):
        seen = "has no read of its route since my session started" if ec2 is None else "routes it to its home"
        why += f" (the lease only: EC2 {seen}, and {home} can serve it)"
        return TakeOver(rt, r, None, "orphaned", why, write_route=False)
    return TakeOver(rt, r, None, "orphaned", why)


def _owner_back(v: _View, r: RouteItem) -> bool:
    """The table's owner runs a new session, live, healthy and not draining: it will resume the table."""
    m = v.member(r.owner)
    return m is not None and m.session != r.owner_session and v.live(m) and m.health.healthy and not m.draining


def _address_with(obs: Observation, rt: str, instance: str) -> bool:
    """``rt``'s Elastic IP is on ``instance``'s address for it, or does not follow the table at all."""
    seen = obs.egress.get(rt)
    return rt not in obs.egress_tables or (seen is not None and seen.holder == instance)


def _served_here(obs: Observation, rt: str) -> bool:
    """EC2 routes ``rt`` to us and, with egress_ip = follow, its Elastic IP is on our address for it."""
    ec2 = obs.ec2.get(rt)
    return ec2 is not None and ec2.target == obs.me and _address_with(obs, rt, obs.me)


def _plan_handover(v: _View, t: Timing, rt: str, r: RouteItem, home: str) -> HandOver | str | None:
    """A hand-over of a held table: forced (draining, unhealthy) or planned (fail-back, operator pin).

    A planned move waits (a note) while an AWS call of ours went unanswered lately (PLANNED_MOVE_CLEAN):
    it is two EC2 writes and a lease write, each confirmed in DynamoDB, and over a lossy path the second
    write lags the first by seconds - the route on one NAT, the Elastic IP on the other (sim seeds 2340,
    3739, 7621). The table is served where it is meanwhile; a forced hand-over never waits, nor does a move
    already begun (its Elastic IP or route with the home, a write to it in doubt): waiting would undo it,
    moving the home's Elastic IP back (seed 635).
    """
    obs = v.obs
    failing = {k for k, ok in obs.health.checks.items() if not ok}
    if not obs.draining and failing == {EC2_WRITES_CHECK} and _served_here(obs, rt):
        return None  # our writes fail, but EC2 routes this table here already: it is served, keep it
    if obs.draining or not obs.health.healthy:
        m = _successor(v, rt)
        if m is None:
            return None
        successor = m.instance
        if obs.draining:
            return HandOver(rt, r, m, "drain", "shutdown", f"draining: handing {rt} to {successor}")
        failed = ", ".join(k for k, ok in sorted(obs.health.checks.items()) if not ok) or "self check"
        # When our own EC2 writes fail, make-before-break is impossible: the lease goes first
        # and the successor writes the route.
        writes_ok = obs.health.checks.get(EC2_WRITES_CHECK, True)
        lossy = _lossy_path(v)
        if lossy:
            fast = _successor(v, rt, fast=True)
            if fast is not None:
                m, successor = fast, fast.instance
        lease_first = not writes_ok or lossy
        why = f"unhealthy ({failed}): handing {rt} to {successor}" + (" (it writes the route)" if lease_first else "")
        return HandOver(rt, r, m, "drain", "self_unhealthy", why, write_route=not lease_first)
    if home and home != obs.me and v.eligible(home):
        planned = _plan_move_home(v, t, rt, r, home)
        started = not _served_here(obs, rt) or rt in obs.handovers_in_doubt  # half done: finish it, never undo it
        if planned is not None and obs.aws_answered_for < PLANNED_MOVE_CLEAN and not started:
            what = "switching" if planned.kind == "switchover" else "failing back"
            return (
                f"not {what} {rt} to {home} yet: an AWS call of mine went unanswered "
                f"{_fmt(obs.aws_answered_for)} ago (a move must not stall half done)"
            )
        return planned
    return None


def _plan_move_home(v: _View, t: Timing, rt: str, r: RouteItem, home: str) -> HandOver | None:
    """The planned move of a held table to its (eligible) home or pinned member, if it is due."""
    obs = v.obs
    m = v.member(home)
    assert m is not None
    if obs.pins.get(rt) == home:
        # An operator's new pin moves at once; a pinned NAT that failed and came back must
        # be healthy for the hold-down first, or a flapping NAT would flap the route.
        wait = min(t.failback_hold_down, obs.now - obs.pins_since.get(rt, obs.now))
        if v.healthy_for(home) >= wait:
            return HandOver(rt, r, m, "switchover", "operator", f"switching {rt} over to {home} (operator pin)")
        return None
    held_for = v.healthy_for(home)
    if held_for >= t.failback_hold_down:
        why = f"failing back {rt} to its home {home}: healthy for {_fmt(held_for)}"
        return HandOver(rt, r, m, "failback", "home_healthy", why)
    return None


def _plan_last_resort(v: _View, t: Timing, rt: str, r: RouteItem) -> RouteToGateway | Release | str | None:
    """The last resort for a held table: route it to the NAT gateway, keep it there (a note), or None.

    To the gateway when we cannot serve it (unhealthy, draining) and no peer can: _plan_handover
    found no successor, and no peer even reports itself live and healthy (one we cannot probe
    may be cut off from us only: then the table is held or released as without a gateway). Not
    when only our EC2 writes fail (no write can help). The lease is kept: a peer that becomes
    healthy gets the table by a hand-over, or by a release when we cannot probe it, and we route
    it back ourselves as soon as we can serve it (EnsureRoute). No hold-down: the gateway serves
    meanwhile, and only a self check flapping while no peer is healthy flaps it.
    """
    obs = v.obs
    gateway = obs.last_resort
    if not gateway or (obs.health.healthy and not obs.draining):
        return None  # off, or we can serve it: EnsureRoute brings it back from the gateway
    reported = [
        p
        for p in obs.members
        if p != obs.me
        and (m := v.member(p)) is not None
        and v.live(m)
        and m.health.healthy
        and not m.draining
        and not obs.snapshot.draining(p)
    ]
    ec2 = obs.ec2.get(rt)
    if ec2 is not None and ec2.target == f"other:{gateway}":
        if reported:
            why = f"{', '.join(reported)} reports healthy but does not answer my probes"
            return Release(rt, r, f"{rt} is on the last-resort NAT gateway {gateway}; {why}: releasing it")
        return f"{rt} on the last-resort NAT gateway {gateway}: no NAT can serve it"
    failing = {k for k, ok in obs.health.checks.items() if not ok}
    if failing == {EC2_WRITES_CHECK} or reported:
        return None
    why = "draining" if obs.draining else f"unhealthy ({', '.join(sorted(failing)) or 'self check'})"
    to = f"routing {rt} to the last-resort NAT gateway {gateway}"
    return RouteToGateway(rt, r, gateway, f"{why} and no healthy peer: {to}")


def _plan_release(v: _View, t: Timing, rt: str, r: RouteItem) -> Release | None:
    """Unhealthy for a while and no healthy peer in our config: let whoever can serve it claim it.

    Members may disagree on the member list for a while (a config being rolled out): a peer
    we do not know may be healthy and have this table in its config. Releasing moves nothing
    in EC2; the table is claimed by a healthy member, or by us again once healthy.
    """
    obs = v.obs
    if obs.draining or obs.health.healthy or obs.self_unhealthy_since is None:
        return None
    failing = {k for k, ok in obs.health.checks.items() if not ok}
    ec2 = obs.ec2.get(rt)
    if failing == {EC2_WRITES_CHECK} and ec2 is not None and ec2.target == obs.me:
        return None  # routed here: releasing would move nothing, and nobody else could do better
    unhealthy_for = obs.now - obs.self_unhealthy_since
    if unhealthy_for < t.silent_owner_after or _successor(v, rt) is not None:
        return None
    why = f"unhealthy ({', '.join(sorted(failing)) or 'self check'}) for {_fmt(unhealthy_for)} and no healthy peer"
    return Release(rt, r, f"{why}: releasing {rt} to any member that can serve it")


def _plan_restarts(v: _View, t: Timing) -> list[Action]:
    obs = v.obs
    out: list[Action] = []
    mine = obs.snapshot.restarts.get(obs.me)
    if (
        mine is not None
        and mine.attempts > 0
        and mine.phase == RESTART_COOLDOWN
        and obs.health.healthy
        and obs.self_healthy_since is not None
        and obs.now - obs.self_healthy_since >= t.failback_hold_down
    ):
        out.append(ResetOwnRestart(mine))
    if t.restart_max_attempts <= 0:
        return out
    for peer in obs.members:
        if peer == obs.me:
            continue
        item = obs.snapshot.restarts.get(peer)
        evidence = _restart_evidence(v, t, peer)
        if item is not None and item.owner == obs.me and item.owner_session == obs.session:
            # Once stopped, finish the restart; before the stop, the evidence must still hold.
            if item.phase in (RESTART_STOPPING, RESTART_STARTING) or (item.phase == RESTART_IDLE and evidence):
                out.append(ContinueRestart(item, f"restarting {peer}: {item.phase}"))
            continue
        if not obs.health.healthy or obs.draining:
            continue
        if evidence is None:
            continue
        if item is not None:
            holder = v.member(item.owner)
            in_progress = item.phase in (RESTART_IDLE, RESTART_STOPPING, RESTART_STARTING)
            if in_progress and holder is not None and holder.session == item.owner_session and v.live(holder):
                continue  # a live peer is restarting it
            if item.attempts >= t.restart_max_attempts:
                continue
            if item.phase == RESTART_COOLDOWN and obs.restart_age.get(peer, 0.0) < item.cooldown_ms / 1000 + t.margin:
                continue
        candidates = [c for c in _after(peer, obs.members) if v.eligible(c)]
        if not candidates or candidates[0] != obs.me:
            continue
        attempt = (item.attempts if item is not None else 0) + 1
        out.append(
            ClaimRestart(peer, item, f"restarting {peer} (attempt {attempt}/{t.restart_max_attempts}): {evidence}")
        )
    return out


def _after(peer: str, members: tuple[str, ...]) -> list[str]:
    i = members.index(peer)
    return list(members[i + 1 :] + members[:i])


def _restart_evidence(v: _View, t: Timing, peer: str) -> str | None:
    """Why ``peer`` should be stopped and started, or None if the evidence is not strong enough."""
    obs = v.obs
    m = v.member(peer)
    if m is None or m.state not in (MEMBER_ALIVE, MEMBER_EXPIRED):
        return None  # never seen, or it left on purpose (drained)
    silent = obs.heartbeat_age.get(peer, 0.0)
    if silent < t.restart_after:
        return None
    why = probe_silence(obs.probes.get(peer), t.restart_after)
    if why:
        return None  # it answers probes (or we cannot tell): never stopped, whatever its heartbeat says
    state = obs.instance_states.get(peer, "")
    if state not in INSTANCE_RESTARTABLE:
        return None
    p = obs.probes[peer]
    return f"heartbeat silent {_fmt(silent)}, no probe replies for {_fmt(p.silent_for)}, EC2 state {state}"


def probe_silence(p: PeerProbe | None, needed: float, fresh_within: float | None = None) -> str:
    """ "" when our probes show a peer that does not forward: down, unanswered for ``needed`` seconds (and,
    with ``fresh_within``, the newest result no older than that); else why the evidence is not there."""
    if p is None:
        return "we do not probe it"
    if p.up:
        return "it answers probes"
    if p.silent_for < needed:
        return f"it answered a probe {_fmt(p.silent_for)} ago"
    if fresh_within is not None and p.result_age > fresh_within:
        return f"the newest probe result is {p.result_age:.2f} s old"
    return ""


def _kind_of(actions: list[Action]) -> str:
    if any(isinstance(a, HandOver) and a.kind in ("failback", "switchover") for a in actions):
        return "failed_back"
    if any(isinstance(a, HandOver) and a.reason == "shutdown" for a in actions):
        return "draining"
    if any(isinstance(a, (HandOver, Release, RouteToGateway)) for a in actions):
        return "handed_over"
    if any(isinstance(a, TakeOver) for a in actions):
        return "took_over"
    if any(isinstance(a, (ClaimRestart, ContinueRestart)) for a in actions):
        return "restarting_peer"
    return "holding"


def _steady(v: _View, held: list[str], notes: list[str]) -> Decision:
    obs = v.obs
    peers = [p for p in obs.members if p != obs.me]
    healthy = [p for p in peers if v.eligible(p)]
    unwell = [p for p in peers if p not in healthy]
    peer_part = (
        f"peers {', '.join(healthy)} healthy"
        if not unwell
        else f"peers healthy: {', '.join(healthy) or 'none'}; not healthy: {', '.join(unwell)}"
    )
    if len(peers) == 1 and not unwell:
        peer_part = f"peer {peers[0]} healthy"
    if not obs.health.healthy:
        failed = ", ".join(k for k, ok in sorted(obs.health.checks.items()) if not ok) or "self check"
        head = f"unhealthy ({failed})" + (f", still holding {', '.join(held)}: no healthy peer" if held else "")
        kind = "unhealthy"
    elif obs.draining:
        head = "drained" + (f", still holding {', '.join(held)}: no healthy peer" if held else "")
        kind = "draining"
    elif held:
        head, kind = f"holding {', '.join(held)}", "holding"
    else:
        head, kind = "standby (holding no route table)", "standby"
    parts = [head, peer_part, *notes]
    if notes and kind in ("holding", "standby"):
        kind = "waiting"
    if obs.group_paused or any(rt in obs.paused for rt in obs.homes if v.holds(obs.snapshot.routes.get(rt))):
        # Said first, and the kind the dashboard and alerts see: nothing is written to EC2.
        who = obs.group_paused or next(obs.paused[rt] for rt in sorted(obs.paused) if rt in obs.homes)
        what = "the group" if obs.group_paused else ", ".join(sorted(rt for rt in obs.paused if rt in obs.homes))
        parts.insert(0, f"paused ({what}, {who}): no EC2 write")
        kind = "paused" if kind in ("holding", "standby", "waiting") else kind
    return Decision(kind, "; ".join(parts))


def claimable_routes(obs: Observation, t: Timing) -> set[str]:
    """Route tables with no live owner, as this observation shows them (for the stagger timer)."""
    v = _View(obs, t)
    out = set()
    for rt in obs.homes:
        r = obs.snapshot.routes.get(rt)
        if not v.holds(r) and v.owner_state(r)[0] in ("free", "orphaned", "dead"):
            out.add(rt)
    return out


def judged_healthy(obs: Observation, t: Timing, instance: str) -> bool:
    """Live, healthy by its own report, not draining, answering our probes."""
    return _View(obs, t).eligible(instance)


def silence_tolerated(m: MemberItem, t: Timing) -> float:
    """Heartbeat silence after which a member that answers probes is judged dead: longer after
    its agent announced a restart (the NAT forwards meanwhile; only the control plane is away).
    The grace is the one the member declared, at most our own ``agent_restart_grace``."""
    declared = min(m.restart_grace_ms / 1000, t.agent_restart_grace)
    return max(t.silent_owner_after, declared)


def judged_dead(obs: Observation, t: Timing, instance: str) -> bool:
    """Both signals: probes failing and heartbeat unchanged past its lease (or declared expired)."""
    v = _View(obs, t)
    m = v.member(instance)
    if m is None or not v.probe_down(instance):
        return False
    return m.state == MEMBER_EXPIRED or (m.state == MEMBER_ALIVE and v.stale(m))
