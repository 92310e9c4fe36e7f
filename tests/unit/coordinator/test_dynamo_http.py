"""The fast DynamoDB path (coordinator/dynamo_http.py): signature, transport, errors, deadline, when it is used.

The signature is compared with botocore's ``SigV4Auth`` and checked by a moto
server that verifies signatures; transport failures come from a scripted HTTP server on 127.0.0.1
(tests/scripted_http.py); results and errors are compared with the botocore
path on a moto server and on dynalite.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    ChecksumError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    NoCredentialsError,
    ReadTimeoutError,
)
from moto import mock_aws

from coordinator.awshttp import Sender
from coordinator.dynamo import DynamoSettings, DynamoStore, init_table
from coordinator.dynamo_http import OFF_ENV, CallDeadline, DynamoHttp, FastClient, SigV4
from coordinator.store import ConditionFailed, Expect, OutcomeUnknown, Unavailable
from tests import servers
from tests.scripted_http import RESET, THEN_CLOSE, Drip, Reply, ScriptedServer, http_response, scripted_servers

GROUP = "g-1"
QUERY = {
    "TableName": "nat-ha",
    "KeyConditionExpression": "#g = :g",
    "ExpressionAttributeNames": {"#g": "group"},
    "ExpressionAttributeValues": {":g": {"S": GROUP}},
    "ConsistentRead": True,
}
TIMEOUT = 0.5  # each call's whole budget
SLACK = 0.2  # how far past its deadline a call may end (thread wake-ups on a loaded machine)


def client(url: str, credentials: Any = None, *, timeout: float = TIMEOUT, **kwargs: Any) -> DynamoHttp:
    creds = Credentials("AKID", "SECRET") if credentials is None else credentials
    return DynamoHttp(Sender(url, timeout=timeout), "us-east-1", creds or None, **kwargs)


# ------------------------------------------------------------------ signature
@pytest.mark.parametrize(
    ("url", "token"),
    [
        ("https://dynamodb.eu-west-1.amazonaws.com/", None),
        ("https://dynamodb.eu-west-1.amazonaws.com/", "session-token/with+odd=chars"),
        ("http://127.0.0.1:8000/", None),
    ],
)
def test_signature_is_botocores(monkeypatch: pytest.MonkeyPatch, url: str, token: str | None) -> None:
    fixed = datetime.datetime(2026, 11, 27, 6, 30, 5)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: fixed)
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = json.dumps(QUERY).encode()
    host = url.split("/")[2]
    base = {"Host": host, "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.Query"}
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(base))
    SigV4Auth(creds.get_frozen_credentials(), "dynamodb", "eu-west-1").add_auth(request)
    ours = dict(base)
    SigV4("eu-west-1").sign(ours, body, creds.get_frozen_credentials(), "20261127T063005Z")
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["X-Amz-Date"] == request.headers["X-Amz-Date"]
    assert ours.get("X-Amz-Security-Token") == request.headers.get("X-Amz-Security-Token")


def test_signing_key_follows_the_secret_and_the_date() -> None:
    signer = SigV4("us-east-1")
    one = signer._signing_key("s1", "20261127")
    assert signer._signing_key("s1", "20261127") == one
    assert signer._signing_key("s2", "20261127") != one  # rotated credentials
    assert signer._signing_key("s1", "20261128") != one  # a new day


@pytest.fixture(scope="module")
def verifying_moto() -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server that checks signatures, an IAM user allowed everything and its key."""
    with servers.moto_server_process(unauthenticated_calls=4) as server:
        iam = boto3.client("iam", endpoint_url=server.url, region_name="us-east-1")
        iam.create_user(UserName="nat-ha")
        key = iam.create_access_key(UserName="nat-ha")["AccessKey"]
        allow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="nat-ha", PolicyName="all", PolicyDocument=json.dumps(allow))
        boto3.client(
            "dynamodb",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        ).create_table(
            TableName="nat-ha",
            KeySchema=[{"AttributeName": "group", "KeyType": "HASH"}, {"AttributeName": "item", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "group", "AttributeType": "S"},
                {"AttributeName": "item", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        yield server.url, {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}


def test_a_server_that_checks_signatures_accepts_ours(verifying_moto: tuple[str, dict[str, str]]) -> None:
    url, key = verifying_moto
    good = client(url, Credentials(key["AccessKeyId"], key["SecretAccessKey"]))
    item = {"group": {"S": GROUP}, "item": {"S": "member#i-a"}, "version": {"N": "1"}}
    good.call("PutItem", {"TableName": "nat-ha", "Item": item})
    assert good.call("Query", QUERY)["Items"] == [item]
    assert (
        good.call("GetItem", {"TableName": "nat-ha", "Key": {"group": item["group"], "item": item["item"]}})["Item"]
        == item
    )
    bad = client(url, Credentials(key["AccessKeyId"], "not-the-secret"))
    with pytest.raises(ClientError) as caught:
        bad.call("Query", QUERY)
    assert "SignatureDoesNotMatch" in caught.value.response["Error"]["Message"]


def test_no_credentials_is_botocores_error() -> None:
    with pytest.raises(NoCredentialsError):
        client("http://127.0.0.1:9", credentials=False).call("Query", QUERY)


# ------------------------------------------------------- a scripted HTTP server
@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    with scripted_servers() as make:
        yield make


def ok(body: dict[str, Any], **headers: str) -> Reply:
    return lambda _request: http_response(200, json.dumps(body).encode(), headers)


def test_calls_share_one_keep_alive_connection(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([ok({"Items": [], "Count": 0})] * 3)
    http = client(server.url, user_agent="nat-ha/test")
    for _ in range(3):
        assert http.call("Query", QUERY)["Items"] == []
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n\r\n")[0].decode()
    assert head.startswith("POST / HTTP/1.1\r\n")
    assert f"Host: {server.url.split('//')[1]}" in head
    assert "X-Amz-Target: DynamoDB_20120810.Query" in head and "User-Agent: nat-ha/test" in head
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-target," in head  # User-Agent is not signed
    assert head.count("Host: ") == 1
    assert json.loads(server.requests[0].split(b"\r\n\r\n", 1)[1]) == QUERY


def test_a_closed_connection_is_replaced(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([ok({"Items": []}, Connection="close"), ok({"Items": []})])
    http = client(server.url)
    http.call("Query", QUERY)
    http.call("Query", QUERY)
    assert server.connections == 2


def test_chunked_and_http_1_0_bodies(scripted: Callable[..., ScriptedServer]) -> None:
    body = json.dumps({"Items": [{"item": {"S": "x"}}]}).encode()
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{5:x}\r\n".encode() + body[:5] + b"\r\n"
        + f"{len(body) - 5:x};ext=1\r\n".encode() + body[5:] + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    until_close = b"HTTP/1.0 200 OK\r\n\r\n" + body
    server = scripted([lambda _r: chunked, lambda _r: until_close])
    http = client(server.url)
    assert http.call("Query", QUERY)["Items"] == [{"item": {"S": "x"}}]
    assert http.call("Query", QUERY)["Items"] == [{"item": {"S": "x"}}]


def test_dynamodb_errors_are_client_errors_as_botocore_reads_them(
    scripted: Callable[..., ScriptedServer],
) -> None:
    conditional = {"__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException", "message": "no"}
    server = scripted(
        [
            lambda _r: http_response(400, json.dumps(conditional).encode()),
            lambda _r: http_response(500, b"<html>busy</html>"),
            lambda _r: http_response(
                400, json.dumps({"__type": "ThrottlingException:extra", "Message": "slow"}).encode()
            ),
        ]
    )
    http = client(server.url)
    codes = []
    for _ in range(3):
        with pytest.raises(ClientError) as caught:
            http.call("PutItem", {"TableName": "nat-ha", "Item": {}})
        codes.append((caught.value.response["Error"]["Code"], caught.value.response["Error"]["Message"]))
    assert codes == [
        ("ConditionalCheckFailedException", "no"),
        ("500", "<html>busy</html>"),
        ("ThrottlingException", "slow"),
    ]
    assert server.connections == 1  # an error answer keeps the connection


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (lambda _r: None, ReadTimeoutError),  # accepted, never answered
        (lambda _r: Drip(http_response(200, b"{}"), every=0.1), ReadTimeoutError),  # each byte in time, too slow
        (lambda _r: b"", ConnectionClosedError),  # closed without an answer
        (lambda _r: RESET, ConnectionClosedError),
        (lambda _r: b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"Items"' + THEN_CLOSE, ConnectionClosedError),
        (lambda _r: b"SSH-2.0-OpenSSH\r\n\r\n", ConnectionClosedError),  # not HTTP
        (lambda _r: http_response(200, b"not json"), ConnectionClosedError),
        (lambda _r: http_response(200, b"{}", {"x-amz-crc32": "1"}, crc=False), ChecksumError),
    ],
)
def test_transport_failures_are_botocores_exceptions(
    scripted: Callable[..., ScriptedServer], reply: Reply, error: type[Exception]
) -> None:
    server = scripted([reply, ok({"Items": []})])
    http = client(server.url)
    with pytest.raises(error):
        http.call("Query", QUERY)
    assert http.call("Query", QUERY)["Items"] == []  # the next call works, on a new connection
    assert server.connections == 2


# ------------------------------------------------------------- through the store
def store_on(url: str, **settings: Any) -> DynamoStore:
    return DynamoStore(
        DynamoSettings(
            table="nat-ha", endpoint_url=url, **{"connect_timeout_s": 0.5, "read_timeout_s": 0.3, **settings}
        )
    )


def uses_fast_path(store: DynamoStore) -> bool:
    return isinstance(store.model._get_connection().connection._client, FastClient)


def operations(server: ScriptedServer) -> list[str]:
    """The DynamoDB operations a scripted server was asked for, in order."""
    return [
        line.split(b".")[-1].decode()
        for request in server.requests
        for line in request.split(b"\r\n")
        if line.startswith(b"X-Amz-Target:")
    ]


def test_pynamodbs_extra_headers_are_sent(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([ok({"Items": []})])
    store = store_on(server.url)
    store.model._get_connection().connection._extra_headers = {"X-Nat-Ha-Test": "yes"}
    assert store.query_group(GROUP) == []
    assert uses_fast_path(store) and b"\r\nX-Nat-Ha-Test: yes\r\n" in server.requests[0]


def test_the_store_classifies_fast_path_failures_as_before(scripted: Callable[..., ScriptedServer]) -> None:
    conditional = {"__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException", "message": "no"}
    server = scripted(
        [
            lambda _r: None,  # read timeout on a read: unavailable
            lambda _r: None,  # read timeout on a write: it may have been applied
            lambda _r: http_response(400, json.dumps(conditional).encode()),
            lambda _r: http_response(500, b"{}"),
        ]
    )
    store = store_on(server.url)
    assert uses_fast_path(store)
    with pytest.raises(Unavailable, match="ReadTimeoutError"):
        store.query_group(GROUP)
    attrs = {"item": "member#i-a", "kind": "member", "version": 2}
    with pytest.raises(OutcomeUnknown, match="ReadTimeoutError"):
        store.put_item(GROUP, attrs, Expect.matches(version=1))
    with pytest.raises(ConditionFailed):
        store.put_item(GROUP, attrs, Expect.matches(version=1))
    with pytest.raises(OutcomeUnknown, match="500"):
        store.put_item(GROUP, attrs, Expect.matches(version=1))
    assert operations(server) == ["Query", "PutItem", "PutItem", "PutItem"]


@pytest.mark.parametrize("path", ["fast", "botocore"])
def test_every_store_call_ends_by_its_deadline(
    scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A server dripping its answers (each byte well inside the timeout) cannot hold a call past the store's timeout."""
    if path == "botocore":
        monkeypatch.setenv(OFF_ENV, "1")
    drip = Drip(http_response(200, b'{"Items": []}'), every=0.05, limit=5)
    server = scripted([lambda _r: drip, lambda _r: drip])
    store = store_on(server.url, connect_timeout_s=0.3, read_timeout_s=0.3)
    assert uses_fast_path(store) == (path == "fast")
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="ReadTimeoutError"):
        store.get_item(GROUP, "member#i-a")
    assert time.monotonic() - t0 <= 0.3 + SLACK
    t0 = time.monotonic()
    with pytest.raises(OutcomeUnknown, match="ReadTimeoutError"):
        store.put_item(GROUP, {"item": "member#i-a", "kind": "member", "version": 2}, Expect.matches(version=1))
    assert time.monotonic() - t0 <= 0.3 + SLACK
    assert operations(server) == ["GetItem", "PutItem"]


@pytest.mark.parametrize("path", ["fast", "botocore"])
def test_a_calls_own_budget_replaces_the_stores_timeout(
    scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Issue 17, finding 9: the coordinator gives each call a budget fitted to its lease, up to the
    store's own timeout (the agent's store_timeout_max). A 0.25-s answer fails a budget of 0.15 s
    and arrives within one of 0.5 s; a budget cuts a dripping answer short; on both paths."""
    if path == "botocore":
        monkeypatch.setenv(OFF_ENV, "1")

    def slow(_request: bytes) -> bytes:
        time.sleep(0.25)
        return http_response(200, b'{"Items": []}')

    drip = Drip(http_response(200, b'{"Items": []}'), every=0.05, limit=5)
    server = scripted([slow, slow, lambda _r: drip])
    store = store_on(server.url, connect_timeout_s=0.15, read_timeout_s=0.5)
    assert uses_fast_path(store) == (path == "fast")
    with pytest.raises(Unavailable, match="ReadTimeoutError"):
        store.query_group(GROUP, timeout=0.15)
    assert store.query_group(GROUP, timeout=0.5) == []
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="ReadTimeoutError"):
        store.get_item(GROUP, "member#i-a", timeout=0.3)
    assert 0.3 - 0.01 <= time.monotonic() - t0 <= 0.3 + SLACK


def test_with_retries_every_attempt_ends_by_the_calls_deadline() -> None:
    deadline = CallDeadline(0.2)
    request = Sender("http://127.0.0.1:9", timeout=0.1)
    prepared = AWSRequest(method="POST", url=request.endpoint_url + "/", data=b"{}").prepare()
    deadline.start()
    granted = deadline.authorize(prepared)
    assert 0.1 < granted - time.monotonic() <= 0.2  # the call's budget, not a fresh one per attempt
    time.sleep(0.25)
    with pytest.raises(ConnectTimeoutError):
        deadline.authorize(prepared)  # spent: the attempt is refused before anything is written


def test_when_the_fast_path_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        init_table(DynamoSettings(table="nat-ha"))
        default = DynamoStore(DynamoSettings(table="nat-ha"))
        assert uses_fast_path(default)  # moto's mock_aws answers it through before-send
        default.put_item(GROUP, {"item": "member#i-a", "kind": "member", "version": 1}, Expect.item_absent())
        assert [r["version"] for r in default.query_group(GROUP)] == [1]
        assert not uses_fast_path(DynamoStore(DynamoSettings(table="nat-ha", max_attempts=3)))  # botocore retries
        monkeypatch.setenv(OFF_ENV, "1")
        assert not uses_fast_path(DynamoStore(DynamoSettings(table="nat-ha")))
        monkeypatch.delenv(OFF_ENV)
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
        assert not uses_fast_path(DynamoStore(DynamoSettings(table="nat-ha")))  # proxies are botocore's job


def test_pynamodb_replacing_its_client_keeps_the_fast_path() -> None:
    with mock_aws():
        init_table(DynamoSettings(table="nat-ha"))
        store = DynamoStore(DynamoSettings(table="nat-ha"))
        connection = store.model._get_connection().connection
        connection._client = None  # what pynamodb does when its client has no credentials
        assert store.query_group(GROUP) == []
        assert uses_fast_path(store)


# ------------------------------------------------------- same answers as botocore
def _same_story(store: DynamoStore) -> list[object]:
    """A sequence of store calls; what each returned or raised."""
    out: list[object] = []

    def attempt(call: Callable[[], object]) -> None:
        try:
            out.append(call())
        except Exception as exc:
            out.append(type(exc).__name__)

    a = {"item": "member#i-a", "kind": "member", "session": "s1", "version": 1, "lease_ms": 1000, "draining": False}
    attempt(lambda: store.put_item(GROUP, a, Expect.item_absent()))
    attempt(lambda: store.put_item(GROUP, a, Expect.item_absent()))  # condition fails
    attempt(lambda: store.put_item(GROUP, {**a, "version": 2}, Expect.matches(version=1, session="s1")))
    attempt(lambda: store.put_item(GROUP, {**a, "version": 3}, Expect.matches(version=1)))  # stale
    r = {"item": "route#rtb-1", "kind": "route", "owner": "i-a", "term": 7, "version": 1, "home": "i-a"}
    attempt(lambda: store.put_item(GROUP, r, Expect.item_absent(), gc_after_s=3600))
    attempt(
        lambda: [{k: v for k, v in row.items() if k not in ("updated_at", "gc_at")} for row in store.query_group(GROUP)]
    )
    attempt(
        lambda: {
            k: v for k, v in (store.get_item(GROUP, "route#rtb-1") or {}).items() if k not in ("updated_at", "gc_at")
        }
    )
    attempt(lambda: store.get_item(GROUP, "route#none"))
    return out


@pytest.mark.parametrize("server", ["moto", "dynalite"])
def test_fast_and_botocore_paths_give_the_same_answers(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if server == "dynalite" and not servers.node_available():
        pytest.skip("dynalite needs node (>= 20) on PATH; apt-get install nodejs npm")
    start = servers.moto_server if server == "moto" else servers.dynalite_server
    stories = {}
    for fast in (True, False):
        with start() as url:
            init_table(DynamoSettings(table="nat-ha", endpoint_url=url))
            if fast:
                monkeypatch.delenv(OFF_ENV, raising=False)
            else:
                monkeypatch.setenv(OFF_ENV, "1")
            store = store_on(url, connect_timeout_s=5, read_timeout_s=5)
            assert uses_fast_path(store) == fast
            stories[fast] = _same_story(store)
    assert stories[True] == stories[False]
    assert stories[True][:4] == [None, "ConditionFailed", None, "ConditionFailed"]
    assert stories[True][7] is None
