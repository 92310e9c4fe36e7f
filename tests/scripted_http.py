"""A scripted HTTP server on 127.0.0.1 for transport tests (coordinator/awshttp.py, dynamo_http.py).

Each request read on a connection is answered by the next reply of a script. A
reply is a function of the request bytes returning:

* ``bytes``: sent at once (ending in :data:`THEN_CLOSE`: sent without it, then
  the connection is closed; ``Connection: close`` and HTTP/1.0 answers close too);
* ``None``: never answered (the connection is held until the server stops);
* ``b""``: the connection is closed without an answer;
* :data:`RESET`: the connection is reset (RST, not FIN);
* :class:`Drip`: ``data`` sent ``at_once`` bytes first, then one byte every ``every`` seconds.

Bounded: a connection serves at most 50 requests, a drip at most ``limit``
seconds, and :meth:`ScriptedServer.close` stops everything.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

THEN_CLOSE = b"\0then-close"  # a reply ending with this is sent without it, then the connection closed
RESET = b"\0reset"


@dataclass(frozen=True)
class Drip:
    data: bytes
    every: float = 0.2
    at_once: int = 0
    limit: float = 10.0


Reply = Callable[[bytes], "bytes | Drip | None"]


def http_response(status: int, body: bytes, headers: dict[str, str] | None = None, *, crc: bool = True) -> bytes:
    """A DynamoDB-shaped HTTP/1.1 answer (JSON content type, Content-Length, x-amz-crc32)."""
    head = {"Content-Type": "application/x-amz-json-1.0", "Content-Length": str(len(body))}
    if crc:
        head["x-amz-crc32"] = str(zlib.crc32(body))
    head.update(headers or {})
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    return f"HTTP/1.1 {status} X\r\n{lines}\r\n".encode() + body


class ScriptedServer:
    """Answers each request with the next reply of a script; counts connections, keeps the requests."""

    def __init__(self, replies: list[Reply], tls: ssl.SSLContext | None = None) -> None:
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed = 0  # connections this server has closed or that ended
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        raw.settimeout(2)
        try:
            conn = self.tls.wrap_socket(raw, server_side=True) if self.tls else raw
        except OSError:
            raw.close()
            self.closed += 1
            return
        try:
            with conn:
                self._converse(conn)
        finally:
            self.closed += 1

    def _converse(self, conn: socket.socket) -> None:
        buf = b""
        for _ in range(50):  # bounded: a test makes a handful of calls
            try:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                while len(rest) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return  # the client closed mid-body
                    rest += chunk
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                buf = rest[length:]
                if not self.replies:
                    return
                raw = self.replies.pop(0)(self.requests[-1])
                if raw is None:
                    self._stop.wait(10.0)  # never answer (the client gives up first)
                    return
                if raw == b"":
                    return  # close without an answer
                if raw == RESET:
                    sock = conn.unwrap() if isinstance(conn, ssl.SSLSocket) else conn
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if isinstance(raw, Drip):
                    self._drip(conn, raw)
                    return
                conn.sendall(raw.removesuffix(THEN_CLOSE))
                if (
                    raw.endswith(THEN_CLOSE)
                    or b"Connection: close" in raw.split(b"\r\n\r\n")[0]
                    or raw.startswith(b"HTTP/1.0")
                ):
                    return  # the body ends with the connection
            except OSError:
                return

    def _drip(self, conn: socket.socket, drip: Drip) -> None:
        end = time.monotonic() + drip.limit
        conn.sendall(drip.data[: drip.at_once])
        for i in range(drip.at_once, len(drip.data)):
            if self._stop.wait(drip.every) or time.monotonic() > end:
                return
            conn.sendall(drip.data[i : i + 1])  # OSError once the client has gone: the caller returns

    def wait_closed(self, n: int, timeout: float = 2.0) -> bool:
        """Wait (bounded) until ``n`` connections have ended on the server's side."""
        end = time.monotonic() + timeout
        while self.closed < n and time.monotonic() < end:
            time.sleep(0.01)
        return self.closed >= n

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)


class PausingSocket:
    """A client socket whose ``sendall`` sleeps ``pause`` seconds first: a process (or VM) frozen after
    the transport's last check, while handing the bytes to the kernel."""

    def __init__(self, sock: Any, pause: float = 0.7) -> None:
        self.sock = sock
        self.pause = pause

    def sendall(self, data: bytes) -> None:
        time.sleep(self.pause)
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@contextmanager
def scripted_servers() -> Iterator[Callable[..., ScriptedServer]]:
    """``with scripted_servers() as make: server = make([reply, ...])``; all closed at the end."""
    made: list[ScriptedServer] = []

    def make(replies: list[Reply], **kwargs: Any) -> ScriptedServer:
        made.append(ScriptedServer(replies, **kwargs))
        return made[-1]

    try:
        yield make
    finally:
        for server in made:
            server.close()


def self_signed_tls(directory: Any) -> tuple[ssl.SSLContext, str]:
    """A server TLS context for 127.0.0.1 with a fresh self-signed certificate, and the certificate's path.

    The path is the CA bundle a client must be given to verify the server.
    """
    import datetime
    import ipaddress
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nat-ha test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = Path(directory) / "server.pem"
    key_path = Path(directory) / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, str(cert_path)


class SlowTaker:
    """A server on 127.0.0.1 that takes a request late: it accepts, reads nothing for ``hold`` seconds, then
    reads what has arrived (bounded by ``read_for``) and answers 200 if the request arrived complete.

    Its receive buffer is the smallest Linux allows (its window closes after ~1.1 KB), so a longer
    request waits in the *client's* kernel: what the client does with it after giving up (a plain
    close keeps sending it; an abort drops it) decides whether the server ever gets it whole.
    At ``hold`` it also records the socket's pending error: ECONNRESET when the client has reset.
    """

    def __init__(self, hold: float, read_for: float = 1.5, answer: bytes = b"") -> None:
        self.hold = hold
        self.read_for = read_for
        self.answer = answer
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # inherited by accepted sockets
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted_at = -1.0
        self.error_at_hold = 0  # SO_ERROR when the hold ended (before any read)
        self.received = b""
        self.read_at = -1.0  # when the last byte arrived
        self.complete = False
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        end = time.monotonic() + 30
        conn = None
        while conn is None and not self._stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
        if conn is None:
            return
        with conn:
            self.accepted_at = time.monotonic()
            self._stop.wait(self.hold)
            self.error_at_hold = conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            conn.settimeout(0.1)
            stop = time.monotonic() + self.read_for
            while time.monotonic() < stop and not self.complete:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break  # reset
                if not chunk:
                    break
                self.received += chunk
                self.read_at = time.monotonic()
                head, sep, body = self.received.partition(b"\r\n\r\n")
                length = next(
                    (int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")),
                    -1,
                )
                self.complete = bool(sep) and length >= 0 and len(body) >= length
            if self.complete and self.answer:
                with contextlib.suppress(OSError):
                    conn.sendall(self.answer)
        self.done.set()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(3)
