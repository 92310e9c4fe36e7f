"""Seeded fault schedules against the real agent: no invariant may ever break.

``test_seeds`` runs 600 seeds (``--sim-seeds`` to change) on two processes and
reports every failing seed with its replay command; ``pytest tests/sim --sim-seed N``
replays exactly one seed and prints its trace.

Every seed also draws the world issue 17 added (tests/sim/scenario.py ``realistic``:
clock-stopping VM pauses, the kernel send queue, IAM tag lag, drained token buckets, one
member's slow DynamoDB, EC2 outages, a member whose own AWS path is an Elastic IP, per-member
timings, long DynamoDB isolation). ``test_seeds`` requires every seed that draws none of it to
pass, and ``test_seeds_of_the_issue_17_world`` requires the others to pass too. It was a strict
xfail while five of the 2,000 seeds (283, 756, 1588, 1614, 1738) missed (b)'s 3-s bound by 0.05 s:
a member whose DynamoDB round trips take 140-300 ms made a takeover's calls one after another (read,
expire, claim, a confirmation read before every EC2 write). The writes that move a table are now
confirmed by the answers DynamoDB already gave, a slow member claims after fast peers, and a less
preferred candidate claims when its wait ends (tests/sim/README.md, "Bugs it found").
"""

from __future__ import annotations

import multiprocessing
import os

import pytest

from tests.sim.scenario import new_world
from tests.sim.world import run_seed

# seed -> (ok, report, what of issue 17's world it draws); shared by the two seed tests of one session.
_RESULTS: dict[int, tuple[bool, str, tuple[str, ...]]] = {}


def _one(seed: int) -> tuple[int, bool, str, tuple[str, ...]]:
    r = run_seed(seed, first_violation=True)  # a failing seed stops at its first violation: cheaper
    return seed, r.ok, "" if r.ok else r.report(), tuple(new_world(r.scenario))


def _results(count: int) -> dict[int, tuple[bool, str, tuple[str, ...]]]:
    missing = [s for s in range(count) if s not in _RESULTS]
    workers = 2 if (os.cpu_count() or 1) >= 2 else 1
    if workers > 1 and len(missing) > 16:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            done = list(pool.imap_unordered(_one, missing, chunksize=16))
    else:
        done = [_one(s) for s in missing]
    for seed, ok, report, world in done:
        _RESULTS[seed] = (ok, report, world)
    return {s: _RESULTS[s] for s in range(count)}


def _failing(results: dict[int, tuple[bool, str, tuple[str, ...]]], new: bool) -> list[tuple[int, str]]:
    return sorted((s, report) for s, (ok, report, world) in results.items() if not ok and bool(world) == new)


def test_replay_seed(sim_seed: int | None) -> None:
    if sim_seed is None:
        pytest.skip("replays one seed: pytest tests/sim --sim-seed N")
    r = run_seed(sim_seed)
    print(r.report())
    assert r.ok, f"seed {sim_seed} violates an invariant (trace above)"


@pytest.mark.timeout(900)
def test_seeds(sim_seeds: int) -> None:
    results = _results(sim_seeds)
    assert len(results) == sim_seeds
    failing = _failing(results, new=False)
    detail = "\n\n".join(report for _, report in failing[:3])
    assert not failing, f"{len(failing)} failing seeds: {[s for s, _ in failing]}\n{detail}"


@pytest.mark.timeout(900)
def test_seeds_of_the_issue_17_world(sim_seeds: int) -> None:
    results = _results(sim_seeds)
    failing = _failing(results, new=True)
    drawn = sum(1 for _, _, world in results.values() if world)
    detail = "\n\n".join(report for _, report in failing[:3])
    assert not failing, f"{len(failing)} of {drawn} failing seeds: {[s for s, _ in failing]}\n{detail}"


def test_a_seed_replays_exactly() -> None:
    """Same seed, same run: the whole trace (decisions, writes, faults, timestamps) is identical."""
    for seed in (110, 2189, 7):
        first, second = run_seed(seed), run_seed(seed)
        assert first.trace == second.trace
        assert first.violations == second.violations
