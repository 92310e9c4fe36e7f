"""Shared pytest fixtures. Keep this small and generic; servers live in tests/servers.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import servers

# Dummy credentials and region before anything creates a boto client: no test
# can reach real AWS.
servers.set_test_aws_env()


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
