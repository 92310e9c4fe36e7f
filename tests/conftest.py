"""Shared pytest fixtures. Keep this small and generic; servers live in tests/servers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers

# Dummy credentials and region before anything creates a boto client: no test
# can reach real AWS.
servers.set_test_aws_env()
# IMDS lookups (nat-ha's own, botocore's credential chain) stay on loopback and fail fast.
os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

# moto's stub joins botocore's built-in handlers when moto is imported, and a botocore session made
# before that never gets it. agent.aws.models caches one session per process, so when an integration
# test made it before any moto-using test module was imported, a later moto-mocked EC2 call went for
# the real endpoint (seen in CI: refused, as there is no network). Imported here, before any session
# exists, moto's stub is in every session; it passes every call through unless a mock is active.
import moto  # noqa: E402,F401


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    """URL of a fresh ``python -m moto.server`` process on 127.0.0.1."""
    with servers.moto_server() as url:
        yield url


@pytest.fixture
def dynalite_endpoint() -> Iterator[str]:
    """URL of a fresh dynalite process on 127.0.0.1 (installed on first use)."""
    if not servers.node_available():
        pytest.skip("dynalite needs node (>= 20) on PATH; apt-get install nodejs npm")
    with servers.dynalite_server() as url:
        yield url


# ----------------------------------------------------------------- IAM call recording
# Every AWS call any test makes (in this process or in agents it starts) is appended to one
# file; tests/unit/aws/test_iam_policy.py (marked iam_last, moved to the end) checks all of them
# against deploy/iam/nat-ha-policy.json.
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "iam_last: run after every other test (reads the session's AWS call record)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("iam_last") is not None)  # stable: others keep order


@pytest.fixture(scope="session", autouse=True)
def aws_call_record(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Path of the JSON-lines record of AWS calls (env NAT_HA_RECORD_AWS_CALLS, inherited by subprocesses)."""
    from coordinator.instrument import RECORD_ENV

    previous = os.environ.get(RECORD_ENV)
    path = Path(previous) if previous else tmp_path_factory.getbasetemp() / "aws-calls.jsonl"
    os.environ[RECORD_ENV] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(RECORD_ENV, None)
