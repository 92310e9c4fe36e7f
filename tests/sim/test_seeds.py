"""Seeded fault schedules against the real agent: no invariant may ever break.

``test_seeds`` runs 2,000 seeds (``--sim-seeds`` to change) on two processes and
reports every failing seed with its replay command; ``pytest tests/sim --sim-seed N``
replays exactly one seed and prints its trace.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest

from tests.sim.world import run_seed


def _one(seed: int) -> tuple[int, bool, str]:
    r = run_seed(seed)
    return seed, r.ok, "" if r.ok else r.report()


def test_replay_seed(sim_seed: int | None) -> None:
    if sim_seed is None:
        pytest.skip("replays one seed: pytest tests/sim --sim-seed N")
    r = run_seed(sim_seed)
    print(r.report())
    assert r.ok, f"seed {sim_seed} violates an invariant (trace above)"


@pytest.mark.timeout(600)
def test_seeds(sim_seeds: int) -> None:
    workers = 2 if (os.cpu_count() or 1) >= 2 else 1
    seeds = range(sim_seeds)
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = list(pool.imap_unordered(_one, seeds, chunksize=16))
    else:
        results = [_one(s) for s in seeds]
    failing = sorted((seed, report) for seed, ok, report in results if not ok)
    assert len(results) == sim_seeds
    detail = "\n\n".join(report for _, report in failing[:3])
    assert not failing, f"{len(failing)} failing seeds: {[s for s, _ in failing]}\n{detail}"


def test_a_seed_replays_exactly() -> None:
    """Same seed, same run: the whole trace (decisions, writes, faults, timestamps) is identical."""
    for seed in (110, 2189, 7):
        first, second = run_seed(seed), run_seed(seed)
        assert first.trace == second.trace
        assert first.violations == second.violations
