"""coordinator/awshttp.py: one keep-alive connection, a hard deadline on the whole call, ``authorize``.

Every server is a scripted one on 127.0.0.1 (tests/scripted_http.py). Timing
assertions are loose bounds that prove the mechanism ("ended within the
deadline + 0.2 s, not after the server's 3 s drip"), not speed claims.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from botocore.config import Config
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)
from moto import mock_aws

from coordinator import awshttp
from coordinator.awshttp import Sender, SendRecord, install
from tests.scripted_http import (
    RESET,
    THEN_CLOSE,
    Drip,
    ScriptedServer,
    http_response,
    scripted_servers,
    self_signed_tls,
)

SLACK = 0.2  # how far past its deadline a call may end (thread wake-ups on a loaded 2-core machine)
BODY = json.dumps({"Items": [], "Count": 0}).encode()
DRIP_3S = Drip(http_response(200, b"x" * 15), every=0.2)  # ~70 bytes, one every 0.2 s: ~14 s in all
SLOW_BODY = Drip(http_response(200, b"y" * 15), every=0.2, at_once=len(http_response(200, b"")) - 1)


def ok(_request: bytes) -> bytes:
    return http_response(200, BODY)


def request(url: str, body: bytes = b"{}") -> AWSPreparedRequest:
    return AWSRequest(method="POST", url=url + "/", data=body, headers={"X-Amz-Target": "T.Op"}).prepare()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    with scripted_servers() as make:
        yield make


def timed(call: Callable[[], Any]) -> tuple[float, BaseException | None]:
    t0 = time.monotonic()
    try:
        call()
    except Exception as exc:
        return time.monotonic() - t0, exc
    return time.monotonic() - t0, None


# --------------------------------------------------------------- keep-alive
def test_calls_share_one_keep_alive_connection(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([ok] * 3)
    sender = Sender(server.url, timeout=2)
    for _ in range(3):
        response = sender.send(request(server.url), time.monotonic() + 2)
        assert response.status_code == 200 and response.content == BODY
        assert response.headers["x-amz-crc32"]
    assert server.connections == 1
    assert sender._conn is not None and sender._conn.sock is not None
    assert sender._conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # no Nagle delay
    head = server.requests[0].split(b"\r\n\r\n")[0].decode()
    assert head.startswith("POST / HTTP/1.1\r\n")
    assert f"Host: {server.url.split('//')[1]}" in head.split("\r\n")  # what SigV4 signs for this URL
    record = sender.last
    assert record is not None and record.send_started is not None and record.sent_at is not None
    assert record.started <= record.send_started <= record.sent_at <= (record.ended or 0)
    assert not record.sent_late and not record.error


def test_a_keep_alive_connection_the_server_closed_is_replaced(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([lambda _r: http_response(200, BODY) + THEN_CLOSE, ok])
    sender = Sender(server.url, timeout=2)
    sender.send(request(server.url), time.monotonic() + 2)
    assert server.wait_closed(1)  # closed while idle, without "Connection: close"
    assert sender.send(request(server.url), time.monotonic() + 2).content == BODY
    assert server.connections == 2


# ---------------------------------------------------------- a hard deadline
@pytest.mark.parametrize(
    ("reply", "what"),
    [
        (lambda _r: DRIP_3S, "drips the answer from its first byte"),
        (lambda _r: SLOW_BODY, "sends the head, then drips the body"),
        (lambda _r: None, "accepts and never answers"),
    ],
)
def test_the_call_ends_at_its_deadline(scripted: Callable[..., ScriptedServer], reply: Any, what: str) -> None:
    server = scripted([reply, ok])
    sender = Sender(server.url, timeout=5)
    took, error = timed(lambda: sender.send(request(server.url), time.monotonic() + 0.6))
    assert isinstance(error, ReadTimeoutError), what
    assert 0.5 <= took <= 0.6 + SLACK, f"{what}: {took:.2f} s (the drip lasts ~14 s)"
    assert sender.last is not None and sender.last.error == "ReadTimeoutError" and sender.last.sent_at is not None
    # The aborted connection is not reused: the next call makes a new one and works.
    assert sender.send(request(server.url), time.monotonic() + 2).content == BODY
    assert server.connections == 2


def test_botocore_alone_outlasts_its_read_timeout_and_the_sender_does_not(
    scripted: Callable[..., ScriptedServer],
) -> None:
    """The problem this module solves, through a real botocore client: per-read timeouts do not bound a call."""
    drip = Drip(http_response(200, b"{}"), every=0.1, limit=3)  # ~70 bytes, each well inside the read timeout
    server = scripted([lambda _r: drip, lambda _r: drip])
    config = Config(connect_timeout=0.5, read_timeout=0.5, retries={"total_max_attempts": 1})
    plain = botocore.session.get_session().create_client(
        "dynamodb", region_name="us-east-1", endpoint_url=server.url, config=config
    )
    took_plain, _ = timed(plain.list_tables)
    fenced = botocore.session.get_session().create_client(
        "dynamodb", region_name="us-east-1", endpoint_url=server.url, config=config
    )
    install(fenced, Sender(server.url, timeout=0.5))
    took, error = timed(fenced.list_tables)
    assert took_plain > 2 * 0.5, f"botocore alone: {took_plain:.2f} s"
    assert isinstance(error, ReadTimeoutError) and took <= 0.5 + SLACK, f"with the sender: {took:.2f} s"


def test_a_reset_is_a_closed_connection_and_not_reused(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([lambda _r: RESET, ok])
    sender = Sender(server.url, timeout=2)
    took, error = timed(lambda: sender.send(request(server.url), time.monotonic() + 2))
    assert isinstance(error, ConnectionClosedError) and took < 1.0
    assert sender.send(request(server.url), time.monotonic() + 2).content == BODY
    assert server.connections == 2


def test_a_deadline_already_past_sends_nothing(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([ok])
    sender = Sender(server.url, timeout=2)
    with pytest.raises(ConnectTimeoutError):
        sender.send(request(server.url), time.monotonic() - 0.01)
    time.sleep(0.3)  # the server's accept loop looks every 0.2 s
    assert server.connections == 0 and server.requests == []
    assert sender.last is not None and not sender.last.maybe_sent


def test_nothing_listening_is_an_endpoint_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(EndpointConnectionError):
            Sender(url, timeout=1).send(request(url), time.monotonic() + 1)


def test_a_host_name_is_looked_up_within_the_deadline(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([ok])
    url = server.url.replace("127.0.0.1", "localhost")
    sender = Sender(url, timeout=2)
    assert sender.send(request(url), time.monotonic() + 2).content == BODY
    assert f"Host: {url.split('//')[1]}\r\n".encode() in server.requests[0] + b"\r\n"
    with pytest.raises(EndpointConnectionError):
        awshttp._resolve("no-such-host.invalid", 80, time.monotonic() + 2, "http://no-such-host.invalid")


# ------------------------------------------------------------------ authorize
def test_authorize_runs_once_the_connection_is_up_and_before_any_byte(
    scripted: Callable[..., ScriptedServer],
) -> None:
    server = scripted([ok])
    sender = Sender(server.url, timeout=2)
    seen: dict[str, Any] = {}

    def authorize(req: AWSPreparedRequest) -> float:
        deadline = time.monotonic() + 1
        while server.connections < 1 and time.monotonic() < deadline:  # accept() returns in its own thread
            time.sleep(0.005)
        seen["accepted"], seen["requests"] = server.connections, len(server.requests)
        seen["target"] = req.headers["X-Amz-Target"]
        return time.monotonic() + 2

    assert sender.send(request(server.url), time.monotonic() + 2, authorize=authorize).content == BODY
    assert seen == {"accepted": 1, "requests": 0, "target": "T.Op"}  # connected, nothing written yet
    assert len(server.requests) == 1


class Refused(Exception):
    pass


def test_authorize_refusing_sends_nothing(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([ok, ok])
    sender = Sender(server.url, timeout=2)

    def refuse(_req: AWSPreparedRequest) -> float:
        raise Refused("lease lost")

    with pytest.raises(Refused):
        sender.send(request(server.url), time.monotonic() + 2, authorize=refuse)
    time.sleep(0.2)
    assert server.requests == []
    assert sender.last is not None and not sender.last.maybe_sent and sender.last.error == "Refused"
    sender.send(request(server.url), time.monotonic() + 2)  # nothing was written: the connection is kept
    assert server.connections == 1 and len(server.requests) == 1


def test_authorize_can_shorten_the_deadline(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([lambda _r: None])
    sender = Sender(server.url, timeout=5)
    took, error = timed(
        lambda: sender.send(request(server.url), time.monotonic() + 5, authorize=lambda _r: time.monotonic() + 0.3)
    )
    assert isinstance(error, ReadTimeoutError) and took <= 0.3 + SLACK


def test_a_frozen_process_writing_after_its_deadline_is_reported(
    scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A freeze between the last deadline check and the write cannot be prevented, only reported."""
    server = scripted([ok])
    sender = Sender(server.url, timeout=2)
    real_left = awshttp._left
    checks: list[float] = []

    def freeze_after_the_last_check(deadline: float) -> float:
        left = real_left(deadline)
        checks.append(left)
        if len(checks) == 1:  # the first check after authorize is the last one before the write
            time.sleep(0.3)  # the whole process frozen here: the check passed, the write comes late
        return left

    def authorize(_r: AWSPreparedRequest) -> float:
        checks.clear()
        return time.monotonic() + 0.1

    monkeypatch.setattr(awshttp, "_left", freeze_after_the_last_check)
    with pytest.raises(ReadTimeoutError):  # no time is left to read the answer
        sender.send(request(server.url), time.monotonic() + 2, authorize=authorize)
    assert sender.last is not None and sender.last.sent_late and sender.last.maybe_sent
    end = time.monotonic() + 1
    while not server.requests and time.monotonic() < end:
        time.sleep(0.01)
    assert len(server.requests) == 1  # it did go out


def test_send_record_flags() -> None:
    assert not SendRecord(started=0, deadline=1).maybe_sent
    assert SendRecord(started=0, deadline=1, send_started=0.5).maybe_sent
    assert not SendRecord(started=0, deadline=1, send_started=0.5, sent_at=0.9).sent_late
    assert SendRecord(started=0, deadline=1, send_started=0.5, sent_at=1.1).sent_late
    # Sent means acknowledged: bytes handed over in time but acknowledged after the deadline are late,
    # and bytes never acknowledged are in doubt.
    assert SendRecord(started=0, deadline=1, send_started=0.5, sent_at=0.6, acked_at=1.2).sent_late
    assert SendRecord(started=0, deadline=1, send_started=0.5, sent_at=0.6).in_doubt
    assert not SendRecord(started=0, deadline=1, send_started=0.5, sent_at=0.6, acked_at=0.7).in_doubt
    assert not SendRecord(started=0, deadline=1).in_doubt


def test_every_answer_passes_its_server_time_to_the_listener(scripted: Callable[..., ScriptedServer]) -> None:
    dated = b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Dec 2026 10:00:05 GMT\r\nContent-Length: 2\r\n\r\n{}"
    server = scripted([lambda _r: dated, ok])
    sender = Sender(server.url, timeout=2)
    seen: list[tuple[float, float, float]] = []
    awshttp.set_answer_listener(lambda sent, received, date: seen.append((sent, received, date)))
    try:
        t0 = time.monotonic()
        sender.send(request(server.url), time.monotonic() + 2)
        sender.send(request(server.url), time.monotonic() + 2)  # no Date header: nothing to pass on
    finally:
        awshttp.set_answer_listener(None)
    assert len(seen) == 1
    sent, received, date = seen[0]
    assert t0 <= sent <= received <= time.monotonic()
    assert date == 1796119205.0  # 2026-12-01T10:00:05Z


# ----------------------------------------------------------------------- TLS
def test_tls_is_verified_with_the_given_bundle_and_bounded_too(
    scripted: Callable[..., ScriptedServer], tmp_path: Path
) -> None:
    context, ca = self_signed_tls(tmp_path)
    server = scripted([ok, ok, lambda _r: SLOW_BODY, ok], tls=context)
    sender = Sender(server.url, timeout=2, verify=ca)
    for _ in range(2):
        assert sender.send(request(server.url), time.monotonic() + 2).content == BODY
    assert server.connections == 1  # kept alive over TLS
    took, error = timed(lambda: sender.send(request(server.url), time.monotonic() + 0.6))
    assert isinstance(error, ReadTimeoutError) and took <= 0.6 + SLACK
    with pytest.raises(SSLError):  # botocore's default bundle does not know this certificate
        Sender(server.url, timeout=2).send(request(server.url), time.monotonic() + 2)


def test_a_tls_handshake_that_never_completes_ends_at_the_deadline(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([])  # plain TCP: accepts, reads the ClientHello, never answers it
    url = server.url.replace("http://", "https://")
    sender = Sender(url, timeout=2)
    took, error = timed(lambda: sender.send(request(url), time.monotonic() + 0.5))
    assert isinstance(error, ConnectTimeoutError) and took <= 0.5 + SLACK, f"{took:.2f} s: {error!r}"


# -------------------------------------------------------------------- install
def dynamodb_client(url: str, **config: Any) -> Any:
    return botocore.session.get_session().create_client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=url,
        config=Config(retries={"total_max_attempts": 1}, **config),
    )


def test_install_sends_a_clients_signed_requests(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([lambda _r: http_response(200, b'{"TableNames": ["t"]}')] * 2)
    client = install(dynamodb_client(server.url), Sender(server.url, timeout=1))
    assert client.list_tables()["TableNames"] == ["t"]
    assert client.list_tables()["TableNames"] == ["t"]
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n\r\n")[0].decode()
    assert "X-Amz-Target: DynamoDB_20120810.ListTables" in head and "Authorization: AWS4-HMAC-SHA256" in head


def test_install_with_authorize(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([lambda _r: http_response(200, b'{"TableNames": []}')] * 2)
    allowed = threading.Event()
    calls: list[str] = []

    def authorize(req: AWSPreparedRequest) -> float:
        calls.append(req.headers["X-Amz-Target"].decode() if isinstance(req.headers["X-Amz-Target"], bytes) else "")
        if not allowed.is_set():
            raise Refused("not the holder")
        return time.monotonic() + 1

    client = install(dynamodb_client(server.url), Sender(server.url, timeout=1), authorize)
    with pytest.raises(Refused):
        client.list_tables()
    time.sleep(0.2)
    assert server.requests == []
    allowed.set()
    assert client.list_tables()["TableNames"] == []
    assert len(calls) == 2 and len(server.requests) == 1


def test_install_leaves_mock_aws_answering() -> None:
    with mock_aws():
        client = dynamodb_client("https://dynamodb.us-east-1.amazonaws.com")
        sender = Sender("https://dynamodb.us-east-1.amazonaws.com", timeout=1)
        install(client, sender)
        assert client.list_tables()["TableNames"] == []  # moto answered in before-send
        assert sender.last is None  # the sender never ran: nothing left this machine


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://dynamodb.eu-west-1.amazonaws.com", "dynamodb.eu-west-1.amazonaws.com"),
        ("https://dynamodb.eu-west-1.amazonaws.com:443/", "dynamodb.eu-west-1.amazonaws.com"),
        ("http://127.0.0.1:8000", "127.0.0.1:8000"),
        ("http://[::1]:8000/", "[::1]:8000"),
        ("HTTPS://EC2.US-EAST-1.AMAZONAWS.COM:8443", "ec2.us-east-1.amazonaws.com:8443"),
    ],
)
def test_the_host_header_is_the_one_botocore_signs(url: str, host: str) -> None:
    from botocore.auth import _host_from_url

    assert awshttp.host_header(url) == host == _host_from_url(url)


# ------------------------------------------------------------------ framing
def test_interim_answers_and_bodyless_statuses(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted(
        [
            lambda _r: b"HTTP/1.1 100 Continue\r\n\r\n" + http_response(200, BODY),
            lambda _r: b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            ok,
        ]
    )
    sender = Sender(server.url, timeout=2)
    assert sender.send(request(server.url), time.monotonic() + 2).content == BODY
    response = sender.send(request(server.url), time.monotonic() + 2)
    assert (response.status_code, response.content) == (204, b"")
    assert sender.send(request(server.url), time.monotonic() + 2).content == BODY
    assert server.connections == 1


def test_a_header_that_would_split_the_request_is_refused(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([ok])
    bad = AWSRequest(method="POST", url=server.url + "/", data=b"{}", headers={"X-Evil": "a\r\nX-Other: b"}).prepare()
    with pytest.raises(HTTPClientError):
        Sender(server.url, timeout=2).send(bad, time.monotonic() + 2)
    time.sleep(0.2)
    assert server.requests == []
