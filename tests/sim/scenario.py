"""Seeded scenarios: the group's shape, timing, clock rates and the fault schedule.

Everything a run depends on is drawn here from ``random.Random(seed)``, so a seed
names one run exactly; ``describe()`` prints it as the first lines of a trace.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from agent.config import Timing

# Clock rate skew every agent may have (|rate - 1| <= SKEW) and the longest clock
# stall (the clock stands still while the process runs, then goes on without
# catching up). A holder believes in its session until its own clock has run
# ``lease`` from the renewal's send time; a peer expires it no earlier than its
# own clock has run ``lease + margin`` from a later sighting. Holder and peer
# intervals cannot overlap while
#     lease / (1 - SKEW) + STALL  <=  (lease + margin) / (1 + SKEW)
# With lease 1.0 s: margin 0.15 s tolerates SKEW 5 % and a 20 ms stall
# (1.0726 <= 1.0952); the default margin 0.1 s tolerates 4.7 % without stalls,
# 3.8 % with 20 ms stalls. The simulator runs margin 0.15 s with SKEW 5 %, and
# test_can_fail shows a rate skew beyond the bound is caught.
SKEW = 0.05
STALL = 0.02

TIMING = Timing(
    cycle_interval=0.35,
    heartbeat_interval=0.7,
    lease=1.0,
    margin=0.15,
    store_timeout=0.15,
    store_attempts=2,
    ec2_timeout=0.6,
    ec2_reconcile_interval=2.0,
    claim_stagger=0.35,
    failback_hold_down=3.0,
    restart_after=4.0,
    restart_cooldown=8.0,
    restart_max_attempts=3,
    restart_timeout=20.0,
    restart_poll_interval=0.5,
)

# EC2 instance transitions (virtual seconds) and the boot time until the agent runs.
STOP_DELAY = 1.5
START_DELAY = 2.0
BOOT_DELAY = 1.0
EC2_STALE_MAX = 1.5  # DescribeRouteTables may show the previous target this long after a write (stale fault)

FAULT_KINDS = (
    "crash",  # agent process dies; restarted (new Agent, new session) at the end
    "hang",  # agent process frozen longer than its lease, then resumes
    "nat_down",  # instance hung: data plane and agent dead, EC2 says running; peers may stop/start it
    "dataplane_down",  # forwarding broken: probes fail, self check unhealthy, agent runs
    "partition",  # probes between two members fail both ways
    "partition_oneway",  # one member's probes of another fail
    "store_down",  # DynamoDB unavailable for every agent
    "store_isolated",  # DynamoDB unreachable from one agent only
    "store_slow",  # calls take up to the retry budget (store_attempts x store_timeout)
    "store_throttled",  # a fraction of calls throttled
    "store_ambiguous",  # writes applied but reported as timeouts / as retried-and-failed
    "ec2_errors",  # 5xx on a fraction of EC2 calls
    "ec2_throttled",  # RequestLimitExceeded on a fraction of EC2 calls
    "ec2_stale",  # DescribeRouteTables returns the previous target for a while after a write
    "ec2_slow",  # EC2 calls take up to ec2_timeout
    "clock_stall",  # an agent's monotonic clock stands still (<= STALL s) while it runs
)

# Faults of the shared services: they hit every agent (store_isolated hits its target only).
GLOBAL_KINDS = frozenset(
    {"store_down", "store_slow", "store_throttled", "store_ambiguous"}
    | {"ec2_errors", "ec2_throttled", "ec2_stale", "ec2_slow"}
)


@dataclass(frozen=True)
class Fault:
    kind: str
    start: float
    duration: float
    target: str = ""  # instance
    other: str = ""  # second instance (partitions)
    rate: float = 0.0  # fraction of calls affected

    @property
    def end(self) -> float:
        return self.start + self.duration

    def describe(self) -> str:
        who = self.target + (f"->{self.other}" if self.other else "")
        if self.kind in GLOBAL_KINDS:
            who = "(everyone)"  # the drawn target is not used
        rate = f" rate={self.rate:.2f}" if self.rate else ""
        return f"{self.kind:<17} {who:<12} t={self.start:7.3f}..{self.end:7.3f}{rate}"


@dataclass(frozen=True)
class Scenario:
    seed: int
    members: tuple[str, ...]
    route_tables: dict[str, tuple[str, ...]]  # instance -> its home route tables
    rates: dict[str, float]  # instance -> clock rate
    faults: tuple[Fault, ...]
    timing: Timing = TIMING
    jitter: float = 0.1  # cycle interval jitter (fraction)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def heal_time(self) -> float:
        return max((f.end for f in self.faults), default=0.0)

    def liveness_bound(self) -> float:
        """Seconds after the last fault ends by which every route table must be served by its home.

        A peer stopped just before the heal may wait ``restart_after`` for a new
        restart holder, then stop + start + boot; the home then needs a session
        and its peers must see it live (lease + margin, twice for a lapsed
        session), healthy for the hold-down; the holder then hands over (EC2
        verify up to an EC2 staleness, reconcile interval) - plus a few cycles of
        slack for jitter and claim staggering.
        """
        t = self.timing
        return (
            t.restart_after
            + STOP_DELAY
            + START_DELAY
            + BOOT_DELAY
            + 2 * (t.lease + t.margin)
            + t.failback_hold_down
            + t.ec2_reconcile_interval
            + EC2_STALE_MAX
            + 8 * t.cycle_interval
        )

    def describe(self) -> list[str]:
        lines = [
            f"seed {self.seed}: members {', '.join(self.members)}",
            "  route tables: " + "; ".join(f"{m}: {', '.join(r)}" for m, r in self.route_tables.items()),
            "  clock rates: " + ", ".join(f"{m}={r:.4f}" for m, r in self.rates.items()),
            f"  faults ({len(self.faults)}):" + ("" if self.faults else " none"),
        ]
        lines += [f"    {f.describe()}" for f in self.faults]
        return lines


def draw(seed: int) -> Scenario:
    rng = random.Random(seed)
    n = rng.randint(2, 5)
    members = tuple(f"i-{chr(ord('a') + i)}" for i in range(n))
    tables: dict[str, tuple[str, ...]] = {}
    k = 0
    for m in members:
        count = rng.randint(1, 3)
        tables[m] = tuple(f"rtb-{k + j}" for j in range(count))
        k += count
    skewed = rng.random() < 0.5
    rates = {m: (1.0 + rng.uniform(-SKEW, SKEW)) if skewed else 1.0 for m in members}
    nfaults = rng.choice((0, 1, 1, 2, 2, 3, 3, 4, 5))
    faults = []
    for _ in range(nfaults):
        kind = rng.choice(FAULT_KINDS)
        start = rng.uniform(2.0, 14.0)
        target = rng.choice(members)
        other = rng.choice([m for m in members if m != target])
        if kind == "hang":
            duration = rng.uniform(TIMING.lease + TIMING.margin, 6.0)
        elif kind == "clock_stall":
            duration = rng.uniform(0.001, STALL)
        elif kind.startswith("store") and kind != "store_isolated":
            duration = rng.uniform(0.2, 4.0)
        else:
            duration = rng.uniform(0.3, 8.0)
        rated = kind in ("store_throttled", "store_ambiguous", "ec2_errors", "ec2_throttled")
        rate = rng.uniform(0.1, 0.9) if rated else 0.0
        pair = other if kind.startswith("partition") else ""
        faults.append(Fault(kind, round(start, 3), round(duration, 3), target, pair, rate))
    faults.sort(key=lambda f: (f.start, f.kind, f.target))
    return Scenario(seed, members, tables, rates, tuple(faults))
