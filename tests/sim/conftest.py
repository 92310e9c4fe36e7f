"""Options of the simulation tests: ``pytest tests/sim --sim-seed N`` replays one seed.

Only names of our own here (``--sim-seed``, ``--sim-seeds``): tests/conftest.py owns
the shared fixtures and the iam_last ordering.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nat-ha simulation")
    group.addoption("--sim-seed", type=int, default=None, help="replay one simulation seed (prints its trace)")
    group.addoption("--sim-seeds", type=int, default=None, help="how many seeds test_seeds runs (default 600)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --sim-seed, run only the replay test (exactly one seed)."""
    if config.getoption("--sim-seed", default=None) is None:
        return
    keep = [i for i in items if i.name == "test_replay_seed"]
    drop = [i for i in items if i.name != "test_replay_seed" and "tests/sim" in str(i.path).replace("\\", "/")]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = [i for i in items if i not in drop] if keep else items


@pytest.fixture
def sim_seed(request: pytest.FixtureRequest) -> int | None:
    value = request.config.getoption("--sim-seed", default=None)
    return int(value) if value is not None else None


@pytest.fixture
def sim_seeds(request: pytest.FixtureRequest) -> int:
    value = request.config.getoption("--sim-seeds", default=None)
    return int(value) if value is not None else 600
