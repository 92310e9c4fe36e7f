"""A peer's renewal missed by the read of the group's renewal instant is read again within its deadline.

Two agents on a FakeClock and the in-memory store (tests/unit/test_cycle.py's group). In the lab
(bench/failover.py --trace), the read right after our own renewal missed a peer's renewal of the
same instant in about half the crash trials: it was first seen a whole cycle later, and the dead
peer's expiry (lease + margin from that sighting) came that much later.
"""

from __future__ import annotations

import pytest

from agent.cycle.session import Plan
from tests.unit.test_cycle import Group, settled


def _quiet(g: Group) -> None:
    """Only i-a cycles for a renewal period: i-b's last renewal is long seen."""
    g.cycle("i-a", 2)


def test_a_peers_renewal_missing_from_the_renewal_instants_read_is_read_again_within_its_deadline() -> None:
    # Undo: drop the reread_at from Agent.next_deadline (or from run_cycle), and no cycle is due
    # before the next regular one (next_deadline is None): the renewal is seen a cycle later.
    g = settled()
    a = g.agents["i-a"]
    _quiet(g)
    start = g.clock.monotonic()
    a.plan(Plan(start + a.timings.cycle_interval, renewal_slot=True))
    a.run_cycle()
    assert a.next_deadline() == pytest.approx(start + a.timings.store_timeout)

    # i-b's renewal of that instant lands late; the read alone sees it then (not a cycle later), writes
    # nothing, and asks for nothing more.
    g.clock.advance(0.05)
    g.agents["i-b"].run_cycle()
    g.clock.advance(a.timings.store_timeout - 0.05)
    reads, writes, ec2 = g.store.reads, g.store.writes, len(g.world.writes)
    assert a.reread_due(g.clock.monotonic())
    a.reread()
    assert a.memory.observer.unchanged_for("member#i-b", g.clock.monotonic() + 0.01) == pytest.approx(0.01)
    assert (g.store.reads - reads, g.store.writes - writes, len(g.world.writes) - ec2) == (1, 0, 0)
    assert a.next_deadline() is None


def test_no_second_read_when_every_peers_renewal_is_in_the_first() -> None:
    # The steady state costs no extra Query: i-b renewed at the instant, before i-a's read.
    g = settled()
    a, b = g.agents["i-a"], g.agents["i-b"]
    _quiet(g)
    b.run_cycle()  # renews: silent for a period
    a.plan(Plan(g.clock.monotonic() + a.timings.cycle_interval, renewal_slot=True))
    reads = g.store.reads
    a.run_cycle()
    assert a.next_deadline() is None
    assert g.store.reads - reads == 1


def test_no_second_read_off_the_renewal_instants() -> None:
    # Between renewal instants nobody renews: a peer's unchanged heartbeat is no missed renewal.
    g = settled()
    a = g.agents["i-a"]
    _quiet(g)
    a.plan(Plan(g.clock.monotonic() + a.timings.cycle_interval, renewal_slot=False))
    a.run_cycle()
    assert a.next_deadline() is None
