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
  body) ends by it. Each socket operation gets the time left as its timeout,
  and one shared timer thread (:class:`DeadlineTimer`) shuts the socket down at
  the deadline, which ends a read or write that is still trickling along. On
  expiry the connection is closed (never reused) and botocore's own exception
  is raised: ``ConnectTimeoutError`` before the request was sent,
  ``ReadTimeoutError`` after; so callers classify failures as before;
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

import contextlib
import heapq
import ipaddress
import itertools
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
from http.client import HTTPException
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

# authorize(request) -> absolute monotonic deadline, or raise to refuse the send.
Authorize = Callable[[AWSPreparedRequest], float]


# ----------------------------------------------------------------- the timer
@dataclass
class _Alarm:
    deadline: float
    action: Callable[[], None]
    fired: bool = False
    cancelled: bool = False


class DeadlineTimer:
    """One daemon thread that runs an action at each armed deadline (unless disarmed first).

    One thread for every sender: arming is a heap push, and the thread is woken
    only when a new deadline is earlier than the one it sleeps towards.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Alarm]] = []
        self._seq = itertools.count()
        self._target = float("inf")  # the deadline the thread sleeps towards
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, action: Callable[[], None]) -> _Alarm:
        alarm = _Alarm(deadline, action)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), alarm))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="awshttp-deadline", daemon=True)
                self._thread.start()
            if deadline < self._target:
                self._cond.notify()
        return alarm

    def disarm(self, alarm: _Alarm) -> bool:
        """Cancel ``alarm``; True when it had already fired."""
        with self._cond:
            alarm.cancelled = True
            return alarm.fired

    def _run(self) -> None:
        while True:
            due: list[_Alarm] = []
            with self._cond:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].cancelled or self._heap[0][0] <= now):
                    alarm = heapq.heappop(self._heap)[2]
                    if not alarm.cancelled:
                        alarm.fired = True
                        due.append(alarm)
                if not due:
                    self._target = self._heap[0][0] if self._heap else float("inf")
                    self._cond.wait(None if not self._heap else max(0.0, self._target - now))
                    self._target = float("-inf")  # awake: arm() need not notify
                    continue
            for alarm in due:
                with contextlib.suppress(Exception):  # an action must never kill the timer
                    alarm.action()


TIMER = DeadlineTimer()


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
        self.ca_bundle: str | None = None
        self.verify = verify is not False
        if self.tls and self.verify:
            from botocore.httpsession import get_cert_path

            self.ca_bundle = get_cert_path(verify)  # type: ignore[arg-type]  # True or a path, as botocore passes it
        self.last: SendRecord | None = None
        self._conn: HTTPConnection | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ connection
    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _abort(self) -> None:
        """At the deadline (timer thread): shut the socket down so a blocked read or write returns now."""
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: leaves TLS state alone

    def _connection(self, deadline: float) -> HTTPConnection:
        """The kept connection if the server has not closed it, else a new one (connected by ``deadline``)."""
        conn = self._conn
        if conn is not None and conn.is_connected:  # readable while idle: closed by the server (or garbage)
            return conn
        self.close()
        address = _resolve(self.host, self.port, deadline, self.endpoint_url)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed before connecting")
        if self.tls:
            conn = HTTPSConnection(
                address,
                self.port,
                timeout=left,
                server_hostname=self.host,
                cert_reqs="CERT_REQUIRED" if self.verify else "CERT_NONE",
                ca_certs=self.ca_bundle,
                assert_hostname=None if self.verify else False,
            )
        else:
            conn = HTTPConnection(address, self.port, timeout=left)
        self._conn = conn  # before connect(): the timer can shut down its socket during the TLS handshake
        conn.connect()
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
        alarm = TIMER.arm(record.deadline, self._abort)
        try:
            try:
                conn = self._connection(record.deadline)
            except BotoCoreError:
                raise
            except Exception as exc:
                raise _connect_error(exc, alarm.fired, url) from exc
            if authorize is not None:
                granted = authorize(request)  # may raise: nothing has been written, the connection stays
                if granted < record.deadline:
                    record.deadline = granted
                    TIMER.disarm(alarm)
                    alarm = TIMER.arm(granted, self._abort)
            try:
                response: AWSResponse = self._exchange(conn, request, record, alarm)
                return response
            except BaseException:
                self.close()  # never reuse a connection a request failed on
                raise
        except BotoCoreError:
            self.close()
            raise
        finally:
            if TIMER.disarm(alarm):
                self.close()  # the timer shut it down (possibly just after a complete answer)

    def _exchange(
        self, conn: HTTPConnection, request: AWSPreparedRequest, record: SendRecord, alarm: _Alarm
    ) -> AWSResponse:
        url = request.url
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = dict(request.headers.items())
        if not any(k.lower() == "host" for k in headers):
            headers["Host"] = self.host_header  # what SigV4 signed; the connection may be to an address
        body = request.body
        left = record.deadline - time.monotonic()
        if left <= 0:
            raise ConnectTimeoutError(endpoint_url=url, error="deadline passed before the request was sent")
        try:
            sock = conn.sock
            assert sock is not None
            sock.settimeout(left)
            # http.client's request API on urllib3's connection (urllib3's request()/getresponse() add a
            # response wrapper and header checks this does not need: ~0.1 ms of CPU per call).
            conn.putrequest(request.method, target, skip_host=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            record.send_started = time.monotonic()
            conn.endheaders()
            if body:
                conn.send(_bytes(body))
            record.sent_at = time.monotonic()
            sock.settimeout(max(1e-3, record.deadline - time.monotonic()))
            response = HTTPConnectionBase.getresponse(conn)
            data = response.read()
        except TimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=url, error=exc) from exc
        except (OSError, HTTPException, ValueError) as exc:
            if alarm.fired:
                raise ReadTimeoutError(endpoint_url=url, error=f"deadline passed: {exc!r}") from exc
            raise ConnectionClosedError(endpoint_url=url, error=exc) from exc
        return AWSResponse(url, response.status, cast(Any, response.msg), _Body(data))


def _bytes(body: Any) -> bytes:
    """A prepared request's body as bytes (botocore leaves a query-protocol form as str)."""
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    data = body.read()
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _connect_error(exc: Exception, fired: bool, url: str) -> Exception:
    """botocore's exception for a failure to connect (as its URLLib3Session maps urllib3's)."""
    if fired or (isinstance(exc, (TimeoutError, Urllib3Timeout)) and not isinstance(exc, NewConnectionError)):
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
