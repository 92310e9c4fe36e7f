"""Send botocore-prepared requests over one keep-alive urllib3 connection under a hard deadline.

Why: botocore's (and urllib3's) timeouts bound each socket operation, not the
call. A server that drips one byte per read timeout keeps a call open for as
long as it likes (measured here: 3.2 s with a 0.6 s read timeout). A lease
holder needs the opposite: "this call is over, one way or the other, at time T".

:class:`Sender` gives that for one endpoint:

* one urllib3 connection, kept alive between calls and checked for a close by
  the server before reuse; no retries, no redirects, no proxy; TLS verified
  with the CA bundle botocore would use; TCP_NODELAY (urllib3's default). The
  request is written in one ``sendall`` and the answer read by
  :func:`read_response`, both small and ours, because http.client's way costs
  ~0.15 ms of CPU per call more (measured; coordinator/README.md);
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
* "sent" means acknowledged: after every call :attr:`Sender.last` (a
  :class:`SendRecord`) says when the request bytes were handed to the kernel
  (``sent_at``) and when the peer had acknowledged all of them (``acked_at``,
  from the socket's send queue, ``SIOCOUTQ``, and ``TCP_INFO``'s time of the last
  ACK). ``sent_late`` is true when either happened after the deadline (the
  process was frozen between the last check and the write); ``in_doubt`` when
  bytes left but were not all acknowledged when the call ended: the request may
  still be applied, and must be treated so until the deadline plus the time AWS
  may take to apply it;
* nothing leaves after the deadline: the kernel's retransmission of the request
  is bounded by ``TCP_USER_TIMEOUT`` (the time left, set before the write, so it
  holds while the process is frozen), and a call that did not complete is
  aborted (``SO_LINGER`` 0: a reset, the unsent bytes dropped) instead of closed
  (a plain ``close()`` lets the kernel deliver the request seconds after the
  caller gave up, to a server that was slow to read it);
* every answer's ``Date`` header (the server's clock, to the second) is passed to
  the listener set with :func:`set_answer_listener` with the call's send and
  receive times: coordinator.pauses compares them with the monotonic clock to see
  pauses it did not count.

:func:`install` puts a sender behind a botocore client: it answers where
botocore's Endpoint would call its urllib3 session, right after the
``before-send`` event (the request is signed, credentials and endpoint are
resolved). Handlers of ``before-send`` that answer themselves (moto's
``mock_aws``) still do; pynamodb's extra headers are already on the request.
With ``authorize`` the caller decides, once the connection is up and just
before the bytes go out, whether this request may be sent and until when.
"""

from __future__ import annotations

import calendar
import contextlib
import email.utils
import fcntl
import io
import ipaddress
import os
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import (
    BotoCoreError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
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
# Told of every answer: (when the request started to leave, when the answer's head arrived, its Date
# header in epoch seconds), all but the Date on the time.monotonic() clock.
AnswerListener = Callable[[float, float, float], None]
_answer_listener: AnswerListener | None = None


def set_answer_listener(listener: AnswerListener | None) -> None:
    """Pass every answer's server time (its ``Date``) to ``listener``, from every sender of this process.

    One per process: the clock whose pauses it helps to see is the process's (coordinator.pauses).
    """
    global _answer_listener
    _answer_listener = listener


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

    ``send_started`` is taken just before the first byte is written, ``sent_at``
    right after the kernel accepted the last one, and ``acked_at`` is when the
    peer had acknowledged every byte (None: not all were, when the call ended).
    ``sent_late`` means the bytes went out, or reached the peer, after the
    deadline: the process was frozen between the deadline check and the write
    (or just after it: conservative).
    """

    started: float
    deadline: float
    send_started: float | None = None
    sent_at: float | None = None
    acked_at: float | None = None
    answered_at: float | None = None
    ended: float | None = None
    error: str = ""

    @property
    def maybe_sent(self) -> bool:
        """Some request bytes may have reached the server."""
        return self.send_started is not None

    @property
    def in_doubt(self) -> bool:
        """Bytes left but were not all acknowledged: the server may have the request, or may not."""
        return self.send_started is not None and self.acked_at is None

    @property
    def sent_late(self) -> bool:
        return (self.sent_at is not None and self.sent_at > self.deadline) or (
            self.acked_at is not None and self.acked_at > self.deadline
        )


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
        self._raw: _DeadlineReader | None = None  # the connection's receive side
        self._reader: io.BufferedReader | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ connection
    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._raw = self._reader = None
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        """Close with a reset (SO_LINGER 0): what the kernel still holds of a request is dropped, not sent.

        A plain close keeps (re)transmitting queued bytes after the caller gave up: a request the
        server was slow to take would reach it complete seconds later (issue 17, finding 3).
        """
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing is queued
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.close()

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
        assert conn.sock is not None
        self._conn = conn
        self._raw = _DeadlineReader(conn.sock)
        self._reader = io.BufferedReader(self._raw)
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
            # Never reuse a connection a request failed on; and send nothing more of it.
            if record.send_started is not None and conn.sock is not None:
                _note_acked(conn.sock, record)
            self.abort()
            raise

    def _exchange(self, conn: HTTPConnection, request: AWSPreparedRequest, record: SendRecord) -> AWSResponse:
        url = request.url
        deadline = record.deadline
        sock, raw, reader = conn.sock, self._raw, self._reader
        assert sock is not None and raw is not None and reader is not None
        try:
            message = self._message(request)
        except ValueError as exc:
            raise HTTPClientError(error=exc) from exc  # as botocore's session reports a request it cannot send
        try:
            left = _left(deadline)
            sock.settimeout(left)
            # The kernel stops (re)transmitting by the deadline even while this process is frozen.
            _bound_retransmission(sock, left)
        except TimeoutError as exc:
            raise ConnectTimeoutError(endpoint_url=url, error="deadline passed before the request was sent") from exc
        try:
            record.send_started = time.monotonic()
            sock.sendall(message)  # one write (no second segment); bounded in total by the time left
            record.sent_at = time.monotonic()
            _note_acked(sock, record)
            raw.deadline = deadline  # every recv gets the time left
            status, headers, data, closes = read_response(reader, request.method, record)
        except TimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=url, error=exc) from exc
        except (OSError, ValueError) as exc:
            raise ConnectionClosedError(endpoint_url=url, error=exc) from exc
        if record.acked_at is None:
            # An answer means the server read the whole request: acknowledged by the time it came.
            _note_acked(sock, record)
            if record.acked_at is None and record.answered_at is not None:
                record.acked_at = record.answered_at
        listener = _answer_listener
        if listener is not None and record.answered_at is not None:
            date = _server_time(headers.get("date", ""))
            if date is not None:
                listener(record.send_started, record.answered_at, date)
        if closes:
            self.close()
        return AWSResponse(url, status, cast(Any, headers), _Body(data))

    def _message(self, request: AWSPreparedRequest) -> bytes:
        """The request as it goes on the wire: request line, headers (Host as signed), body."""
        parts = urlsplit(request.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = _bytes(request.body) if request.body else b""
        lines = [f"{request.method} {target} HTTP/1.1"]
        if "host" not in request.headers:
            lines.append(f"Host: {self.host_header}")  # what SigV4 signed; the connection may be to an address
        if "content-length" not in request.headers:
            lines.append(f"Content-Length: {len(body)}")
        for name, value in request.headers.items():
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            if "\r" in text or "\n" in text or "\r" in name or "\n" in name or ":" in name:
                raise ValueError(f"header {name!r} would break the request")
            lines.append(f"{name}: {text}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


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
    """A socket's receive side whose every ``recv`` gets the time left until ``deadline`` as its timeout.

    A server dripping its answer a byte at a time would otherwise reset the
    clock with every byte; here the reads run out of time together.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = float("-inf")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.sock.settimeout(_left(self.deadline))
        return self.sock.recv_into(buffer)


MAX_LINE = 65536
MAX_HEADER_LINES = 100


def read_response(
    reader: io.BufferedReader, method: str = "POST", record: SendRecord | None = None
) -> tuple[int, dict[str, str], bytes, bool]:
    """One HTTP/1.1 response: (status, lower-case headers, body, the server closes the connection).

    Hand-written on purpose, with the request line above (the measured reason is
    in coordinator/README.md): http.client parses headers with the ``email``
    package and writes a request in two sends, ~0.15 ms of CPU per call more than
    this at the agent's four DynamoDB calls a second, which its 1 % budget does
    not have. Enough of HTTP/1.1 for an AWS API endpoint: Content-Length, chunked,
    or up to the close; interim 1xx answers skipped. Raises ``ValueError`` on
    anything malformed and ``ConnectionError`` when the server closed first.
    ``record`` (optional) gets the time the status line arrived.
    """
    for _ in range(10):  # interim 1xx answers (100 Continue) come before the real one
        line = reader.readline(MAX_LINE)
        if not line:
            raise ConnectionResetError("the server closed the connection")
        if record is not None and record.answered_at is None:
            record.answered_at = time.monotonic()
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
        if not 100 <= status < 200:
            break
    else:
        raise ValueError("too many interim answers")
    connection = headers.get("connection", "").lower()
    closes = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
    if method == "HEAD" or status in (204, 304):
        return status, headers, b"", closes
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        for _ in range(1_000_000):
            size = int(reader.readline(MAX_LINE).split(b";", 1)[0].strip() or b"x", 16)
            if size == 0:
                for _ in range(MAX_HEADER_LINES):  # trailers
                    if reader.readline(MAX_LINE) in (b"\r\n", b"\n", b""):
                        break
                return status, headers, b"".join(chunks), closes
            chunks.append(_read_exactly(reader, size))
            reader.readline(MAX_LINE)
        raise ValueError("too many chunks")
    if "content-length" in headers:
        return status, headers, _read_exactly(reader, int(headers["content-length"])), closes
    return status, headers, reader.read(), True


def _read_exactly(reader: io.BufferedReader, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise ConnectionResetError(f"the server closed the connection after {len(data)} of {size} body bytes")
    return data


_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets and drops what is queued
_TCP_INFO_LEN = 104  # struct tcp_info up to tcpi_rcv_space; tcpi_last_ack_recv (u32, ms ago) is at offset 56
_LAST_ACK_RECV = struct.Struct("=I")


def _bound_retransmission(sock: socket.socket, left: float) -> None:
    """TCP_USER_TIMEOUT = the time left: unacknowledged bytes are given up by then, frozen or not (Linux)."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None:
        return
    with contextlib.suppress(OSError):  # not TCP (a test's socket pair): nothing to bound
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(left * 1000)))


def _note_acked(sock: socket.socket, record: SendRecord) -> None:
    """Set ``record.acked_at`` when the peer has acknowledged every byte of the request (Linux).

    The send queue (SIOCOUTQ: bytes not yet sent or not yet acknowledged) is empty once it
    has; the time is that of the last ACK (TCP_INFO), never before the write started.
    """
    if record.acked_at is not None or record.send_started is None:
        return
    try:
        fd = sock.fileno()
        queued = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        if queued:
            return
        now = time.monotonic()
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        ago = _LAST_ACK_RECV.unpack_from(info, 56)[0] / 1000 if len(info) >= 60 else 0.0
        record.acked_at = max(record.send_started, now - ago)
    except (OSError, ValueError, AttributeError):
        return  # cannot tell: the request stays in doubt


def _server_time(date: str) -> float | None:
    """An HTTP ``Date`` header in epoch seconds (None when absent or unreadable)."""
    if not date:
        return None
    parsed = email.utils.parsedate(date)
    return float(calendar.timegm(parsed)) if parsed is not None else None


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
