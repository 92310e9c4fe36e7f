"""The agent's hot DynamoDB calls (Query, GetItem, PutItem) without botocore's per-call machinery.

Why: an agent makes ~4 DynamoDB calls a second (a consistent Query every HA cycle,
a heartbeat PutItem every 0.7 s). Through botocore each cost ~1-2.5 ms of CPU (event
hooks, endpoint rules, shape-driven serialising and parsing): most of the
agent's 1 % budget alone. DynamoDB speaks JSON over HTTP POST, so for these
three operations pynamodb's botocore client gets a thin stand-in
(:class:`FastClient`): it POSTs the same parameters to the endpoint botocore
resolved, signed with SigV4 (:class:`SigV4`, checked against botocore's
``SigV4Auth``) with the session's own credentials, over the keep-alive urllib3
connection of :class:`coordinator.awshttp.Sender`, and returns the decoded JSON
(what botocore returns for these operations: their responses hold no blobs or
timestamps).

It behaves like the botocore client it stands in for:

* errors are the exceptions botocore raises: ``ClientError`` with the same
  ``Error.Code``/``Message`` (read as botocore's JSON parser reads them),
  ``ConnectTimeoutError``, ``ReadTimeoutError``, ``EndpointConnectionError``,
  ``ConnectionClosedError``, ``SSLError``, ``ChecksumError`` (DynamoDB's
  ``x-amz-crc32``), ``NoCredentialsError``; so pynamodb and
  :mod:`coordinator.dynamo` classify them as before;
* it emits botocore's ``before-send`` event with the signed request, so handlers
  still see it: pynamodb's ``extra_headers``, and moto's in-process ``mock_aws``,
  which answers it (the unit tests run through this module);
* User-Agent, CA bundle and endpoint are the botocore client's;
* every call ends by a hard deadline (the store's timeout; the sender closes
  the connection and raises a timeout at it), where botocore only bounds each
  socket operation.

It is used only where it matches botocore: one attempt per call (the agent's
default ``store_attempts = 1``: botocore's retries sleep up to a second) and no
proxy for the endpoint. ``NAT_HA_DYNAMODB_BOTOCORE=1`` turns it off; the calls
then go through botocore, still over a :class:`~coordinator.awshttp.Sender`
with the same deadline (:func:`bound_botocore_client`). Tested by
tests/unit/coordinator/test_dynamo_http.py, against a moto server that checks
signatures among others.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from botocore.awsrequest import AWSPreparedRequest, HeadersDict
from botocore.exceptions import (
    ChecksumError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    NoCredentialsError,
)
from botocore.hooks import first_non_none_response

from coordinator.awshttp import Sender, install, verify_for
from coordinator.instrument import CallObserver, record_call

FAST_OPERATIONS = frozenset({"Query", "GetItem", "PutItem"})
OFF_ENV = "NAT_HA_DYNAMODB_BOTOCORE"
TARGET_PREFIX = "DynamoDB_20120810."
CONTENT_TYPE = "application/x-amz-json-1.0"
SERVICE = "dynamodb"


def fast_path_off() -> bool:
    return os.environ.get(OFF_ENV, "").strip().lower() in ("1", "true", "yes")


def _error_code(status: int, body: bytes) -> tuple[str, str]:
    """(code, message) of an error response, read the way botocore's JSON parser reads them."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = {"message": text}
    if not isinstance(data, dict):
        data = {"message": text}
    code = str(data.get("__type") or status).split(":", 1)[0].rpartition("#")[2]
    return code, str(data.get("message", data.get("Message", "")))


class SigV4:
    """AWS Signature Version 4 for DynamoDB's POST / requests (no query string).

    Hand-written on purpose (with awshttp's request line and response reader,
    the only hand-written pieces left on this path): botocore's ``SigV4Auth``
    builds an ``AWSRequest``, prepares it and canonicalises any URL and header
    set; through the store a Query cost 0.64 ms of CPU with it and 0.47 ms with
    this (bench/store_calls.py, coordinator/README.md), and the agent was over
    its 1 % budget with it. This request always has the same shape; tests
    compare the two signatures.
    """

    def __init__(self, region: str) -> None:
        self.region = region
        self._key: tuple[str, str, bytes] = ("", "", b"")  # (secret, date, derived signing key)

    def _signing_key(self, secret: str, date: str) -> bytes:
        if self._key[:2] != (secret, date):
            key = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
            for part in (self.region, SERVICE, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key = (secret, date, key)
        return self._key[2]

    def sign(self, headers: dict[str, str], body: bytes, credentials: Any, amz_date: str) -> None:
        """Add X-Amz-Date, X-Amz-Security-Token (if any) and Authorization to ``headers``.

        Every header present is signed (as botocore does; User-Agent is added after).
        """
        headers["X-Amz-Date"] = amz_date
        if credentials.token:
            headers["X-Amz-Security-Token"] = credentials.token
        canonical = sorted((k.lower(), " ".join(v.split())) for k, v in headers.items())
        signed = ";".join(k for k, _ in canonical)
        canonical_request = "\n".join(
            (
                "POST",
                "/",
                "",
                "".join(f"{k}:{v}\n" for k, v in canonical),
                signed,
                hashlib.sha256(body).hexdigest(),
            )
        )
        date = amz_date[:8]
        scope = f"{date}/{self.region}/{SERVICE}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
        signature = hmac.new(
            self._signing_key(credentials.secret_key, date), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )


class CallBudget:
    """How long the store call in progress on this thread may take, when its caller says so.

    The coordinator gives each call a budget fitted to its lease (coordinator.leases.StoreBudget);
    the store sets it around the call and the transport (:class:`DynamoHttp`, :class:`CallDeadline`)
    reads it here, since pynamodb passes nothing of the kind through. None: the sender's timeout.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self) -> float | None:
        seconds: float | None = getattr(self._local, "seconds", None)
        return seconds

    @contextmanager
    def using(self, seconds: float | None) -> Iterator[None]:
        before = self.get()
        self._local.seconds = seconds
        try:
            yield
        finally:
            self._local.seconds = before


class DynamoHttp:
    """Signed DynamoDB JSON calls through a :class:`~coordinator.awshttp.Sender` (one thread at a time).

    Each call's whole budget (connect, send and the full answer) is ``budget``'s for this call
    when set, never more than the sender's ``timeout`` (the budget when none is set).
    """

    def __init__(
        self,
        sender: Sender,
        region: str,
        credentials: Any,
        *,
        user_agent: str = "",
        on_call: CallObserver | None = None,
        events: Any = None,
        budget: CallBudget | None = None,
    ) -> None:
        self.sender = sender
        self.budget = budget
        self.endpoint_url = sender.endpoint_url
        self.url = self.endpoint_url + "/"
        self.region = region
        self.credentials = credentials
        self.signer = SigV4(region)
        self.user_agent = user_agent
        self.on_call = on_call
        self.events = events  # the botocore client's event emitter (before-send)

    def close(self) -> None:
        self.sender.close()

    # ------------------------------------------------------------------ call
    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One attempt of ``operation``; the decoded response, or the botocore exception botocore would raise."""
        record_call(SERVICE, operation, params)
        t0 = time.monotonic()
        code: str | None = None
        given = self.budget.get() if self.budget is not None else None
        seconds = min(given, self.sender.timeout) if given else self.sender.timeout
        try:
            return self._call(operation, params, t0 + seconds)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "ClientError"))
            raise
        except Exception as exc:
            code = type(exc).__name__
            raise
        finally:
            if self.on_call is not None:
                self.on_call(SERVICE, operation, time.monotonic() - t0, code)

    def _signed_request(self, operation: str, body: bytes) -> AWSPreparedRequest:
        frozen = self.credentials.get_frozen_credentials() if self.credentials is not None else None
        if frozen is None or not frozen.access_key or not frozen.secret_key:
            raise NoCredentialsError()
        headers = {
            "Host": self.sender.host_header,
            "Content-Type": CONTENT_TYPE,
            "X-Amz-Target": TARGET_PREFIX + operation,
        }
        self.signer.sign(headers, body, frozen, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        if self.user_agent:
            headers["User-Agent"] = self.user_agent  # not signed, as botocore does
        headers["Content-Length"] = str(len(body))
        return AWSPreparedRequest("POST", self.url, HeadersDict(headers), body, False)  # type: ignore[arg-type]

    def _call(self, operation: str, params: dict[str, Any], deadline: float) -> dict[str, Any]:
        body = json.dumps(params, separators=(",", ":")).encode()
        request = self._signed_request(operation, body)
        answer = None
        if self.events is not None:
            # What botocore's Endpoint does before sending: handlers may add headers (pynamodb's
            # extra_headers) or answer the request themselves (moto's in-process mock_aws).
            answer = first_non_none_response(self.events.emit(f"before-send.{SERVICE}.{operation}", request=request))
        if answer is None:
            answer = self.sender.send(request, deadline)
        headers = {str(k).lower(): str(v) for k, v in answer.headers.items()}
        return self._parse(operation, int(answer.status_code), headers, bytes(answer.content))

    def _parse(self, operation: str, status: int, headers: Mapping[str, str], data: bytes) -> dict[str, Any]:
        crc = headers.get("x-amz-crc32")
        if crc is not None and crc.isdigit() and int(crc) != zlib.crc32(data):
            self.close()
            raise ChecksumError(checksum_type="crc32", expected_checksum=crc, actual_checksum=str(zlib.crc32(data)))
        meta = {"HTTPStatusCode": status, "RequestId": headers.get("x-amzn-requestid", ""), "HTTPHeaders": headers}
        if status >= 300:
            code, message = _error_code(status, data)
            error = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": meta}
            raise ClientError(error, operation)  # type: ignore[arg-type]
        try:
            parsed = json.loads(data) if data else {}
        except ValueError as exc:
            self.close()
            raise ConnectionClosedError(endpoint_url=self.endpoint_url, error=exc) from exc
        if not isinstance(parsed, dict):
            raise ConnectionClosedError(endpoint_url=self.endpoint_url, error=f"unexpected response {parsed!r}")
        parsed["ResponseMetadata"] = meta
        return parsed


class FastClient:
    """pynamodb's botocore DynamoDB client, with :data:`FAST_OPERATIONS` sent by :class:`DynamoHttp`.

    Everything else (``meta``, other operations, the signer pynamodb inspects)
    is the wrapped botocore client's.
    """

    def __init__(self, client: Any, http: DynamoHttp) -> None:
        self.botocore_client = client
        self.http = http

    def __getattr__(self, name: str) -> Any:
        return getattr(self.botocore_client, name)

    def _make_api_call(self, operation_name: str, api_params: dict[str, Any]) -> dict[str, Any]:
        if operation_name in FAST_OPERATIONS:
            return self.http.call(operation_name, api_params)
        result: dict[str, Any] = self.botocore_client._make_api_call(operation_name, api_params)
        return result


def sender_for(client: Any, session: Any, timeout: float) -> Sender | None:
    """The store's :class:`Sender` to ``client``'s endpoint; None when a proxy applies (botocore's job)."""
    from botocore.utils import get_environ_proxies

    endpoint = client.meta.endpoint_url
    if client.meta.config.proxies or get_environ_proxies(endpoint):
        return None
    return Sender(endpoint, timeout=timeout, verify=verify_for(session))


def fast_client_for(
    client: Any, session: Any, sender: Sender, *, on_call: CallObserver | None, budget: CallBudget | None = None
) -> FastClient:
    """A :class:`FastClient` around a botocore DynamoDB ``client``, sending through ``sender``."""
    http = DynamoHttp(
        sender,
        client.meta.region_name,
        session.get_credentials(),
        user_agent=client.meta.config.user_agent or "",
        on_call=on_call,
        events=client.meta.events,
        budget=budget,
    )
    return FastClient(client, http)


class CallDeadline:
    """The deadline of the botocore call in progress on this thread: its start + ``budget``
    (or the caller's budget for this call, from ``call_budget``).

    Registered on ``before-call``; as the sender's ``authorize`` it bounds every
    attempt of a call with retries by the call's budget and refuses an attempt
    once the budget is spent. botocore's backoff sleep between attempts (up to
    1 s in standard mode, only with more than one attempt) is not bounded here.
    """

    def __init__(self, budget: float, call_budget: CallBudget | None = None) -> None:
        self.budget = budget
        self.call_budget = call_budget
        self._local = threading.local()

    def start(self, **_: Any) -> None:
        given = self.call_budget.get() if self.call_budget is not None else None
        self._local.deadline = time.monotonic() + (min(given, self.budget) if given else self.budget)

    def authorize(self, request: AWSPreparedRequest) -> float:
        deadline: float = getattr(self._local, "deadline", 0.0) or time.monotonic() + self.budget
        if time.monotonic() >= deadline:
            raise ConnectTimeoutError(endpoint_url=request.url, error=f"the call's {self.budget:g} s are spent")
        return deadline


def bound_botocore_client(client: Any, sender: Sender, attempts: int, budget: CallBudget | None = None) -> Any:
    """Send ``client``'s own calls through ``sender``.

    Each attempt ends by ``sender.timeout``, each call by ``attempts`` times that (or by the
    caller's budget for the call, from ``budget``).
    """
    deadline = CallDeadline(sender.timeout * attempts, budget)
    client.meta.events.register(f"before-call.{SERVICE}", deadline.start, unique_id=f"nat-ha-deadline-{id(client)}")
    return install(client, sender, deadline.authorize)
