"""A member whose DynamoDB round trips are slow but answer keeps its lease and its tables
(issue 17, finding 9), on the cycle's FakeClock harness.

Each store call of the slow member takes its round trip on the shared clock; the client gives
up at the call's budget (``MemoryStore.call_timeout()``, as the simulator's client does): past
it a read fails and a write's outcome is unknown (applied, the reply lost).
"""

from __future__ import annotations

import pytest

from agent.config import Timing
from agent.runtime import store_budget
from coordinator.clock import FakeClock
from coordinator.leases import StoreBudget
from coordinator.memory import MemoryStore
from coordinator.store import OutcomeUnknown, Unavailable
from tests.unit.test_cycle import GROUP, HOMES, Group, dead, group, settled


class SlowPath:
    """The delay hook: round trips of ``rtt`` for the member whose cycle runs (``caller``)."""

    def __init__(self, clock: FakeClock, store: MemoryStore, timing: Timing) -> None:
        self.clock = clock
        self.store = store
        self.timing = timing
        self.caller = ""
        self.slow: dict[str, float] = {}
        self.gave_up = 0

    def __call__(self, op: str, group: str, item: str, phase: str) -> None:
        rtt = self.slow.get(self.caller, 0.0)
        if not rtt:
            return
        given = self.store.call_timeout()
        timeout = given if given is not None else self.timing.store_timeout
        if phase == "request":
            self.clock.advance(min(rtt / 2, timeout))
            return
        if rtt > timeout:
            self.clock.advance(max(0.0, timeout - rtt / 2))
            self.gave_up += 1
            why = "no answer by the deadline"
            raise OutcomeUnknown(why) if op == "put" else Unavailable(why)
        self.clock.advance(rtt / 2)


def slow_member(rtt: float, seconds: float, *, budget: bool) -> tuple[Group, SlowPath, set[str]]:
    """i-a's round trips take ``rtt`` for ``seconds``; returns the group, the path, and the owner/term
    of rtb-a and i-a's sessions seen meanwhile."""
    g = group()
    t = g.agents["i-a"].timings
    path = SlowPath(g.clock, g.store, t)
    g.store.delay_hook = path
    for a in g.agents.values():
        a.coordinator.budget = store_budget(a.timings) if budget else None  # production: runtime.coordinator_for
    for _ in range(40):
        for who in ("i-a", "i-b"):
            path.caller = who
            g.cycle(who)
    assert all(g.store.raw_get(GROUP, "route#" + rt)["owner"] == home for rt, home in HOMES.items())
    path.slow["i-a"] = rtt
    terms = {f"session {g.store.raw_get(GROUP, 'member#i-a')['session']}"}
    t0 = g.clock.monotonic()
    while g.clock.monotonic() - t0 < seconds:
        for who in ("i-a", "i-b"):
            path.caller = who
            g.cycle(who)
        r = g.store.raw_get(GROUP, "route#rtb-a")
        terms.add(f"{r['owner']}/{r['term']}")
        terms.add(f"session {g.store.raw_get(GROUP, 'member#i-a')['session']}")
    return g, path, terms


@pytest.mark.parametrize("rtt", [0.14, 0.2, 0.3])
def test_a_member_with_slow_dynamodb_round_trips_keeps_its_lease_and_its_table(rtt: float) -> None:
    g, path, terms = slow_member(rtt, 60.0, budget=True)
    # Never moved, never re-claimed in a new term, one session all along (no renewal lost).
    assert len(terms) == 2 and "i-a/1" in terms, terms
    assert g.world.targets["rtb-a"] == "i-a"
    assert path.gave_up == 0


def test_a_fixed_store_timeout_below_the_round_trip_moves_the_healthy_table() -> None:
    # The fix undone (every call gets store_timeout, 0.15 s): the slow member's renewals time out,
    # it goes silent, and its healthy table moves to the peer.
    _, path, terms = slow_member(0.2, 20.0, budget=False)
    assert path.gave_up > 0
    assert any(x.startswith("i-b/") for x in terms), terms


def test_the_store_budget_fits_the_lease() -> None:
    b = store_budget(Timing())
    assert b == StoreBudget(0.15, 0.4)
    assert b.renewal() == 0.4  # the call that keeps the lease gets the most
    assert b.call(0.0) == b.call(-1.0) == 0.4  # no lease held: nothing to protect
    assert b.call(0.9) == 0.4  # bounded
    assert b.call(0.45) == pytest.approx(0.3)  # what is left of the lease minus a renewal's share
    assert b.call(0.2) == 0.15  # never below the least


class Recorded(SlowPath):
    """The slow path, recording each store call's operation and item as it is answered, in order with
    the EC2 writes (into ``log``)."""

    def __init__(self, clock: FakeClock, store: MemoryStore, timing: Timing, log: list[str]) -> None:
        super().__init__(clock, store, timing)
        self.log = log

    def __call__(self, op: str, group: str, item: str, phase: str) -> None:
        super().__call__(op, group, item, phase)
        if phase != "request" and self.caller == "i-a":
            self.log.append(f"{op} {item}")


def slow_takeover(rtt: float) -> tuple[Group, list[str], str]:
    """i-b (three tables) dies while i-a's DynamoDB round trips take ``rtt``; one i-a cycle runs.
    Returns the group, i-a's store calls and EC2 writes in order, and the cycle's decision line."""
    g = settled()
    log: list[str] = []
    path = Recorded(g.clock, g.store, g.agents["i-a"].timings, log)
    g.store.delay_hook = path
    for a in g.agents.values():
        a.coordinator.budget = store_budget(a.timings)  # production: runtime.coordinator_for
    path.caller = "i-a"
    path.slow["i-a"] = rtt
    ec2 = g.agents["i-a"].ec2
    point = ec2.point_route

    def logged(route_table: str, instance: str, *, missing: bool = False) -> str:
        log.append(f"ReplaceRoute {route_table}")
        return point(route_table, instance, missing=missing)

    ec2.point_route = logged  # type: ignore[method-assign]
    with dead(g, "i-b"):
        log.clear()
        line = g.cycle("i-a")[0]
    return g, log, line


def test_a_slow_member_claims_every_table_of_a_dead_peer_before_writing_any() -> None:
    # One renewal then confirms the writes of all three (a move's write needs a renewal DynamoDB accepted
    # within store_timeout_max): at 250 ms round trips, claimed one by one, each table cost a claim and a
    # renewal and the third waited for the next cycle (cycle budget spent). Undo: drop claim_ahead from
    # Agent.run_cycle (agent/cycle/agent.py): the claims interleave with the writes and rtb-b3 stays on i-b.
    g, log, line = slow_takeover(0.25)
    claims = [i for i, x in enumerate(log) if x.startswith("put route#")]
    writes = [i for i, x in enumerate(log) if x.startswith("ReplaceRoute")]
    assert len(claims) == 3 and len(writes) == 3, log
    assert max(claims) < min(writes), log
    renewals = [x for x in log[max(claims) : min(writes)] if x == "put member#i-a"]
    assert len(renewals) == 1, log  # one renewal confirms them all
    assert all(g.world.targets[rt] == "i-a" for rt in ("rtb-b1", "rtb-b2", "rtb-b3")), line
    assert "cycle budget spent" not in line
