"""Send botocore-prepared requests over one keep-alive urllib3 connection under a hard deadline.

Why: botocore's (and urllib3's) timeouts bound each socket operation, not the
call. A server that drips one byte per read timeout keeps a call open for as
long as it likes (measured here: 3.2 s with a 0.6 s read timeout). A lease
holder needs the opposite: "this call is over, one way or the other, at time T".

:class:`Sender` gives that for one endpoint:

* one urllib3 connection, kept alive between calls and checked for a close by
  the server before reuse; no retries, no redirects, no proxy; TLS verified
  with the CA bundle botocore would use; TCP_NODELAY (urllib3's default);
* ``send(request, deadline)``: ``deadline`` is an absolute ``time.monotonic()``
  value and the whole call (name lookup, connect, TLS, send, status, headers,
  body) ends by it. Every blocking step gets the time left as its timeout, set
  again before each one: each ``recv`` of the answer (so a server dripping a
  byte at a time runs out of time instead of resetting the clock), each
  ``sendall`` (whose timeout bounds its total since Python 3.5), the TCP
  connect, the TLS handshake (bounded as a whole by CPython) and the name
  lookup (in a helper thread, waited for until the deadline). On expiry the
  connection is closed (never reused) and botocore's own exception is raised:
  ``ConnectTimeoutError`` before the request was sent, ``ReadTimeoutError``
  after; so callers classify failures as before. No timer thread: one would
  wake once per call, ~0.1 ms of CPU each on this machine, which the agent's
  four DynamoDB calls a second cannot afford (bench/README.md);
* after every call :attr:`Sender.last` (a :class:`SendRecord`) says when the
  request bytes were handed to the kernel: ``sent_late`` is true when that
  finished after the deadline (the process was frozen between the last check
  and the write), ``maybe_sent`` when the write started but did not finish.

:func:`install` puts a sender behind a botocore client: it answers where
botocore's Endpoint would call its urllib3 session, right after the
``before-send`` event (the request is signed, credentials and endpoint are
resolved). Handlers of ``before-send`` that answer themselves (moto's
``mock_aws``) still do; pynamodb's extra headers are already on the request.
With ``authorize`` the caller decides, once the connection is up and just
before the bytes go out, whether this request may be sent and until when.
"""

from __future__ import annotations

import functools
import io
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http.client import HTTPConnection as HTTPConnectionBase
from http.client import HTTPException, HTTPResponse
from typing import Any, cast
from urllib.parse import urlsplit

from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import (
    BotoCoreError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.ssl_ import create_urllib3_context

# authorize(request) -> absolute monotonic deadline, or raise to refuse the send.
Authorize = Callable[[AWSPreparedRequest], float]


# ------------------------------------------------------------- name lookup
_resolver: ThreadPoolExecutor | None = None
_resolver_lock = threading.Lock()


def _resolve(host: str, port: int, deadline: float, url: str) -> str:
    """The address to connect to; a name is looked up in a helper thread, waited for until ``deadline``.

    getaddrinfo cannot be interrupted; the caller stops waiting for it instead.
    IP literals need no lookup (and no thread).
    """
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    global _resolver
    with _resolver_lock:
        if _resolver is None:
            _resolver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="awshttp-dns")
    future = _resolver.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout as exc:
        raise ConnectTimeoutError(endpoint_url=url, error=f"looking up {host}: deadline passed") from exc
    except OSError as exc:
        raise EndpointConnectionError(endpoint_url=url, error=exc) from exc
    return str(infos[0][4][0])


# ------------------------------------------------------------------ sender
@dataclass
class SendRecord:
    """What happened to one request, on the ``time.monotonic()`` clock.

    ``send_started`` is taken just before the first byte is written and
    ``sent_at`` right after the kernel accepted the last one. ``sent_late``
    means the bytes went out after the deadline: the process was frozen between
    the deadline check and the write (or just after it: conservative).
    """

    started: float
    deadline: float
    send_started: float | None = None
    sent_at: float | None = None
    ended: float | None = None
    error: str = ""

    @property
    def maybe_sent(self) -> bool:
        """Some request bytes may have reached the server."""
        return self.send_started is not None

    @property
    def sent_late(self) -> bool:
        return self.sent_at is not None and self.sent_at > self.deadline


class _Body:
    """The already-read body in the shape botocore's AWSResponse reads (``raw.stream()``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
        yield self.data

    def read(self, *_: Any, **__: Any) -> bytes:
        data, self.data = self.data, b""
        return data


def host_header(url: str) -> str:
    """The Host header SigV4 signed for ``url`` (botocore's rule: lower case, default port left out)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def verify_for(session: Any) -> str | bool:
    """The CA bundle botocore uses for a client made from ``session`` without ``verify=``."""
    return session.get_config_variable("ca_bundle") or os.environ.get("REQUESTS_CA_BUNDLE") or True


class Sender:
    """One keep-alive connection to one endpoint; :meth:`send` ends by its deadline. One call at a time.

    ``timeout`` is the whole-call budget :func:`install` gives a request when
    no ``authorize`` shortens it.
    """

    def __init__(self, endpoint_url: str, *, timeout: float, verify: str | bool = True) -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint_url!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.endpoint_url = endpoint_url.rstrip("/")
        self.timeout = timeout
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = parts.scheme == "https"
        self.host_header = host_header(endpoint_url)
        self.verify = verify is not False
        self.ca_bundle: str | None = None
        self._tls_context: ssl.SSLContext | None = None
        if self.tls:
            # One context per sender: loading the CA bundle costs ~20 ms, not something to repeat per connection.
            self._tls_context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED if self.verify else ssl.CERT_NONE)
            if self.verify:
                from botocore.httpsession import get_cert_path

                self.ca_bundle = get_cert_path(verify)  # type: ignore[arg-type]  # True or a path, as botocore passes
                self._tls_context.load_verify_locations(cafile=self.ca_bundle)
        self.last: SendRecord | None = None
        self._conn: HTTPConnection | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ connection
    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self, deadline: float) -> HTTPConnection:
        """The kept connection if the server has not closed it, else a new one (connected by ``deadline``)."""
        conn = self._conn
        if conn is not None and conn.is_connected:  # readable while idle: closed by the server (or garbage)
            return conn
        self.close()
        address = _resolve(self.host, self.port, deadline, self.endpoint_url)
        left = _left(deadline)
        if self.tls:
            conn = _HTTPSConnection(
                address,
                self.port,
                timeout=left,
                server_hostname=self.host,
                cert_reqs="CERT_REQUIRED" if self.verify else "CERT_NONE",
                ssl_context=self._tls_context,
                assert_hostname=None if self.verify else False,
            )
            conn.deadline = deadline
        else:
            conn = HTTPConnection(address, self.port, timeout=left)
        conn.connect()
        self._conn = conn
        return conn

    # ------------------------------------------------------------------ send
    def send(self, request: AWSPreparedRequest, deadline: float, *, authorize: Authorize | None = None) -> AWSResponse:
        """Send ``request`` and read the whole answer, all by ``deadline`` (monotonic).

        ``authorize`` (optional) is called once the connection is up, right before
        the request is written; it returns a deadline (the earlier of the two
        applies) or raises to refuse the send, in which case nothing is written.
        """
        with self._lock:
            record = SendRecord(started=time.monotonic(), deadline=deadline)
            self.last = record
            try:
                return self._send(request, record, authorize)
            except BaseException as exc:
                record.error = type(exc).__name__
                raise
            finally:
                record.ended = time.monotonic()

    def _send(self, request: AWSPreparedRequest, record: SendRecord, authorize: Authorize | None) -> AWSResponse:
        url = request.url
        if record.started >= record.deadline:
            raise ConnectTimeoutError(endpoint_url=url, error="deadline passed before the call")
        try:
            conn = self._connection(record.deadline)
        except BotoCoreError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise _connect_error(exc, url) from exc
        if authorize is not None:
            record.deadline = min(record.deadline, authorize(request))  # may raise: nothing is written
        try:
            return self._exchange(conn, request, record)
        except BaseException:
            self.close()  # never reuse a connection a request failed on
            raise

    def _exchange(self, conn: HTTPConnection, request: AWSPreparedRequest, record: SendRecord) -> AWSResponse:
        url = request.url
        deadline = record.deadline
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = _bytes(request.body) if request.body else b""
        sock = conn.sock
        assert sock is not None
        try:
            sock.settimeout(_left(deadline))
        except TimeoutError as exc:
            raise ConnectTimeoutError(endpoint_url=url, error="deadline passed before the request was sent") from exc
        try:
            # http.client's request API on urllib3's connection (urllib3's request()/getresponse() add a
            # response wrapper and header checks this does not need: ~0.1 ms of CPU per call).
            putheader = HTTPConnectionBase.putheader  # http.client's own checks, not urllib3's extra layer
            conn.putrequest(request.method, target, skip_host=True)
            if "host" not in request.headers:
                putheader(conn, "Host", self.host_header)  # what SigV4 signed; the connection may be to an address
            for name, value in request.headers.items():
                putheader(conn, name, value)
            record.send_started = time.monotonic()
            conn.endheaders()  # sendall, bounded by the time left
            if body:
                sock.settimeout(_left(deadline))
                conn.send(body)
            record.sent_at = time.monotonic()
            conn.response_class = functools.partial(_DeadlineResponse, deadline=deadline)  # type: ignore[assignment]
            response = HTTPConnectionBase.getresponse(conn)
            data = response.read()
        except TimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=url, error=exc) from exc
        except (OSError, HTTPException, ValueError) as exc:
            raise ConnectionClosedError(endpoint_url=url, error=exc) from exc
        headers = {name.lower(): value for name, value in response.getheaders()}  # one pass over the parsed head
        return AWSResponse(url, response.status, cast(Any, headers), _Body(data))


class _HTTPSConnection(HTTPSConnection):
    """urllib3's TLS connection, with the TLS handshake given only what the TCP connect left of the deadline."""

    deadline = float("inf")

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        try:
            sock.settimeout(_left(self.deadline))  # CPython bounds the whole handshake by this timeout
        except TimeoutError:
            sock.close()
            raise
        return sock


class _DeadlineReader(io.RawIOBase):
    """A socket's receive side whose every ``recv`` gets the time left until ``deadline`` as its timeout."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock = sock
        self.raw = sock.makefile("rb", buffering=0)  # holds the socket open, as http.client's own file does
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self.sock.settimeout(_left(self.deadline))
        return self.raw.readinto(buffer)

    def close(self) -> None:
        self.raw.close()
        super().close()


class _DeadlineResponse(HTTPResponse):
    """http.client's response parser reading through a :class:`_DeadlineReader`: a drip cannot outlast the deadline."""

    def __init__(self, sock: socket.socket, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        plain, self.fp = self.fp, io.BufferedReader(_DeadlineReader(sock, deadline))
        plain.close()


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; TimeoutError when it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _bytes(body: Any) -> bytes:
    """A prepared request's body as bytes (botocore leaves a query-protocol form as str)."""
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    data = body.read()
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _connect_error(exc: Exception, url: str) -> Exception:
    """botocore's exception for a failure to connect (as its URLLib3Session maps urllib3's)."""
    if isinstance(exc, (TimeoutError, Urllib3Timeout)) and not isinstance(exc, NewConnectionError):
        return ConnectTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, (Urllib3SSLError, ssl.SSLError)):
        return SSLError(endpoint_url=url, error=exc)
    return EndpointConnectionError(endpoint_url=url, error=exc)


# ---------------------------------------------------------------- install
class _Session:
    """Stands where botocore's Endpoint keeps its URLLib3Session: ``send(request)`` and ``close()``."""

    def __init__(self, sender: Sender, authorize: Authorize | None) -> None:
        self.sender = sender
        self.authorize = authorize

    def send(self, request: AWSPreparedRequest) -> AWSResponse:
        return self.sender.send(request, time.monotonic() + self.sender.timeout, authorize=self.authorize)

    def close(self) -> None:
        self.sender.close()


def install(client: Any, sender: Sender, authorize: Authorize | None = None) -> Any:
    """Make ``client`` send every request through ``sender``; returns the client.

    The request reaches the sender after botocore built and signed it and
    emitted ``before-send`` (where moto's ``mock_aws`` answers instead).
    Without ``authorize`` each request gets ``sender.timeout`` from the send;
    with it, ``authorize(request)`` runs once the connection is up, after
    signing, right before the write, and returns the deadline or raises to
    refuse (its exception reaches the caller of the client method). Keep
    botocore's retries off (``total_max_attempts: 1``) where one write per
    check matters: each retry is a new send and a new ``authorize``.
    """
    endpoint = client._endpoint  # botocore keeps its HTTP session here; no public way to pass one
    endpoint.http_session = _Session(sender, authorize)
    return client


def sender_for(client: Any, session: Any, timeout: float) -> Sender:
    """A :class:`Sender` to the endpoint botocore resolved for ``client``, verifying TLS as it would."""
    return Sender(client.meta.endpoint_url, timeout=timeout, verify=verify_for(session))
