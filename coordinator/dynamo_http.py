"""The agent's hot DynamoDB calls (Query, GetItem, PutItem) over one keep-alive connection.

Why: an agent makes ~4 DynamoDB calls a second (a consistent Query every HA cycle,
a heartbeat PutItem every 0.7 s). Through botocore each cost ~2 ms of CPU (event
hooks, endpoint rules, shape-driven serialising and parsing, urllib3 and the
``email`` header parser): ~0.9 % of a core, most of the agent's 1 % budget alone.
DynamoDB speaks JSON over HTTP POST, so for these three operations pynamodb's
botocore client gets a thin stand-in (:class:`FastClient`): it POSTs the same
parameters to the endpoint botocore resolved, signed with SigV4 using the
session's own credentials, over one persistent connection, and returns the
decoded JSON (what botocore returns for these operations: their responses hold
no blobs or timestamps). About 0.4 ms per call instead of 2.

It behaves like the botocore client it stands in for:

* errors are the exceptions botocore raises: ``ClientError`` with the same
  ``Error.Code``/``Message`` (read as botocore's JSON parser reads them),
  ``ConnectTimeoutError``, ``ReadTimeoutError``, ``EndpointConnectionError``,
  ``ConnectionClosedError``, ``ChecksumError`` (DynamoDB's ``x-amz-crc32``),
  ``NoCredentialsError``; so pynamodb and :mod:`coordinator.dynamo` classify them
  as before;
* it emits botocore's ``before-send`` event with the signed request, so handlers
  still see it: pynamodb's ``extra_headers``, and moto's in-process ``mock_aws``,
  which answers it (the unit tests run through this module);
* timeouts, User-Agent, CA bundle and endpoint are the botocore client's.

It is used only where it matches botocore: one attempt per call (the agent's
default ``store_attempts = 1``: botocore's retries sleep up to a second) and no
proxy for the endpoint. ``NAT_HA_DYNAMODB_BOTOCORE=1`` turns it off. The
signature is checked against botocore's ``SigV4Auth`` and by a moto server that
verifies signatures (tests/unit/coordinator/test_dynamo_http.py).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import select
import socket
import ssl
import time
import zlib
from typing import Any
from urllib.parse import urlsplit

from botocore.awsrequest import AWSPreparedRequest, HTTPHeaders
from botocore.exceptions import (
    ChecksumError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.hooks import first_non_none_response

from coordinator.instrument import CallObserver, record_call

FAST_OPERATIONS = frozenset({"Query", "GetItem", "PutItem"})
OFF_ENV = "NAT_HA_DYNAMODB_BOTOCORE"
TARGET_PREFIX = "DynamoDB_20120810."
CONTENT_TYPE = "application/x-amz-json-1.0"
SERVICE = "dynamodb"
MAX_HEADER_LINES = 100
MAX_LINE = 65536


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

    Not botocore's ``SigV4Auth``: that one builds an ``AWSRequest``, prepares it and
    canonicalises any URL and header set, ~0.2 ms per call; this request is always
    the same shape. Tests compare the two signatures for the same request.
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


def read_response(reader: io.BufferedReader) -> tuple[int, dict[str, str], bytes, bool]:
    """One HTTP/1.1 response: (status, lower-case headers, body, server closes the connection).

    Enough of HTTP/1.1 for an API endpoint: Content-Length or chunked bodies, or a
    body up to the close. Raises ``ValueError`` on anything malformed and
    ``ConnectionError`` when the server closed the connection first.
    """
    line = reader.readline(MAX_LINE)
    if not line:
        raise ConnectionResetError("the server closed the connection")
    version, _, rest = line.decode("latin-1").partition(" ")
    if not version.startswith("HTTP/") or not rest[:3].isdigit():
        raise ValueError(f"not an HTTP status line: {line[:80]!r}")
    status = int(rest[:3])
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = reader.readline(MAX_LINE)
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise ConnectionResetError("the server closed the connection in the headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ValueError(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    else:
        raise ValueError("too many header lines")
    connection = headers.get("connection", "").lower()
    closes = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size_line = reader.readline(MAX_LINE)
            size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
            if size == 0:
                while reader.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            chunks.append(_read_exactly(reader, size))
            reader.readline(MAX_LINE)
        return status, headers, b"".join(chunks), closes
    if "content-length" in headers:
        return status, headers, _read_exactly(reader, int(headers["content-length"])), closes
    return status, headers, reader.read(), True


def _read_exactly(reader: io.BufferedReader, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise ConnectionResetError(f"the server closed the connection after {len(data)} of {size} body bytes")
    return data


class DynamoHttp:
    """Signed DynamoDB JSON calls over one persistent HTTP(S) connection (one thread at a time)."""

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        credentials: Any,
        *,
        connect_timeout: float,
        read_timeout: float,
        user_agent: str = "",
        verify: str | bool = True,  # botocore's meaning: True = its default CA bundle, or a path
        on_call: CallObserver | None = None,
        events: Any = None,
    ) -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint_url!r}")
        self.endpoint_url = endpoint_url.rstrip("/")
        self.url = self.endpoint_url + "/"
        self.credentials = credentials
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.user_agent = user_agent
        self.on_call = on_call
        self.events = events  # the botocore client's event emitter (before-send)
        self.signer = SigV4(region)
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._host_header = parts.netloc  # sent as Host and signed as such
        self._context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            from botocore.httpsession import get_cert_path

            self._context = ssl.create_default_context(cafile=get_cert_path(verify))  # type: ignore[arg-type]
        self._sock: socket.socket | None = None
        self._reader: io.BufferedReader | None = None

    # ------------------------------------------------------------ connection
    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connection(self) -> tuple[socket.socket, io.BufferedReader]:
        """The open connection, or a new one when there is none or the server closed it."""
        if self._sock is not None and self._reader is not None:
            # Readable while idle means the server closed it (or sent garbage): do not reuse.
            # poll, not select: select fails on descriptors above 1023.
            idle = select.poll()
            idle.register(self._sock, select.POLLIN)
            if not idle.poll(0):
                return self._sock, self._reader
            self.close()
        try:
            sock = socket.create_connection((self._host, self._port), timeout=self.connect_timeout)
        except TimeoutError as exc:
            raise ConnectTimeoutError(endpoint_url=self.endpoint_url, error=exc) from exc
        except OSError as exc:
            raise EndpointConnectionError(endpoint_url=self.endpoint_url, error=exc) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as urllib3 does
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self._host)
        except TimeoutError as exc:
            sock.close()
            raise ConnectTimeoutError(endpoint_url=self.endpoint_url, error=exc) from exc
        except OSError as exc:
            sock.close()
            raise EndpointConnectionError(endpoint_url=self.endpoint_url, error=exc) from exc
        sock.settimeout(self.read_timeout)
        self._sock, self._reader = sock, sock.makefile("rb")
        return self._sock, self._reader

    # ------------------------------------------------------------------ call
    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One attempt of ``operation``; the decoded response, or the botocore exception botocore would raise."""
        record_call(SERVICE, operation, params)
        t0 = time.monotonic()
        code: str | None = None
        try:
            return self._call(operation, params)
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
        headers = {"Host": self._host_header, "Content-Type": CONTENT_TYPE, "X-Amz-Target": TARGET_PREFIX + operation}
        self.signer.sign(headers, body, frozen, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        if self.user_agent:
            headers["User-Agent"] = self.user_agent  # not signed, as botocore does
        headers["Content-Length"] = str(len(body))
        return AWSPreparedRequest("POST", self.url, HTTPHeaders.from_dict(headers), body, False)

    def _call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(params, separators=(",", ":")).encode()
        request = self._signed_request(operation, body)
        answer = None
        if self.events is not None:
            # What botocore's Endpoint does before sending: handlers may add headers (pynamodb's
            # extra_headers) or answer the request themselves (moto's in-process mock_aws).
            answer = first_non_none_response(self.events.emit(f"before-send.{SERVICE}.{operation}", request=request))
        if answer is not None:
            status = int(answer.status_code)
            headers = {str(k).lower(): str(v) for k, v in answer.headers.items()}
            data = bytes(answer.content)
        else:
            status, headers, data = self._send(request, body)
        return self._parse(operation, status, headers, data)

    def _send(self, request: AWSPreparedRequest, body: bytes) -> tuple[int, dict[str, str], bytes]:
        head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
        sock, reader = self._connection()
        try:
            sock.sendall(f"POST / HTTP/1.1\r\n{head}\r\n".encode() + body)  # one write: no Nagle stall
            status, headers, data, closes = read_response(reader)
        except TimeoutError as exc:
            self.close()
            raise ReadTimeoutError(endpoint_url=self.endpoint_url, error=exc) from exc
        except (OSError, ValueError) as exc:
            self.close()
            raise ConnectionClosedError(endpoint_url=self.endpoint_url, error=exc) from exc
        if closes:
            self.close()
        return status, headers, data

    def _parse(self, operation: str, status: int, headers: dict[str, str], data: bytes) -> dict[str, Any]:
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


def fast_client_for(client: Any, session: Any, *, on_call: CallObserver | None) -> FastClient | None:
    """A :class:`FastClient` around a botocore DynamoDB ``client``; None when a proxy applies (botocore's job)."""
    from botocore.utils import get_environ_proxies

    config = client.meta.config
    endpoint = client.meta.endpoint_url
    if config.proxies or get_environ_proxies(endpoint):
        return None
    verify: str | bool = session.get_config_variable("ca_bundle") or os.environ.get("REQUESTS_CA_BUNDLE") or True
    http = DynamoHttp(
        endpoint,
        client.meta.region_name,
        session.get_credentials(),
        connect_timeout=float(config.connect_timeout),
        read_timeout=float(config.read_timeout),
        user_agent=config.user_agent or "",
        verify=verify,
        on_call=on_call,
        events=client.meta.events,
    )
    return FastClient(client, http)
