"""The lab IMDSv2 answers as EC2's does for both of its clients: nat-ha's identity lookup and botocore."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from agent.aws import imds as client
from agent.lab import imds


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), imds.make_handler("i-0abc", "eu-west-1", "eu-west-1b"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", url)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


def test_identity_for_the_agent(endpoint: str) -> None:
    assert client.identity() == ("i-0abc", "eu-west-1", "eu-west-1b")


def test_role_credentials_for_botocore(endpoint: str) -> None:
    import botocore.session

    creds = botocore.session.get_session().get_credentials()
    assert creds is not None and creds.method == "iam-role"
    frozen = creds.get_frozen_credentials()
    assert (frozen.access_key, frozen.token) == ("testing", "testing")


def test_no_token_no_answer(endpoint: str) -> None:
    """IMDSv2 only (HttpTokens: required, as the stacks set it)."""
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{endpoint}/latest/meta-data/instance-id", timeout=2)
    assert err.value.code == 401
