"""TCP connections between sync services: one outgoing link per peer (sends flows), and the listener.

An outgoing link connects, authenticates (:mod:`agent.ctsync.wire`), sends queued frames in order
and reads the peer's acknowledgements; it reconnects with a growing pause when the connection
fails or a frame stays unacknowledged too long (a peer that hangs), and tells the service, which
then sends that peer a full resync. Its queue is bounded: a peer that cannot keep up gets the
queue dropped and a full resync instead.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.ctsync import wire
from agent.host.flows import Flow

log = logging.getLogger("nat_ha.ctsync")

CONNECT_TIMEOUT_S = 2.0
HANDSHAKE_TIMEOUT_S = 5.0
ACK_TIMEOUT_S = 10.0  # a frame unacknowledged this long: the peer is hung, reconnect
BACKOFF_S = (0.2, 5.0)
QUEUE_MAX_BYTES = 64 * 1024 * 1024
PING_AFTER_S = 5.0


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket) -> bytes:
    return recv_exact(sock, wire.frame_length(recv_exact(sock, 4)))


def _keepalive(sock: socket.socket) -> None:
    """A silent dead peer is noticed in about 11 s even when nothing is being sent."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class Link:
    """The outgoing connection to one peer's sync service."""

    me: str
    peer: str
    address: str
    port: int
    key: bytes
    bind: str  # our own address (the peer accepts us only from the address it knows for us)
    on_connected: Callable[[str], None]
    on_ack: Callable[[str, dict[str, Any]], None]
    on_error: Callable[[str, str], None]
    stop: threading.Event = field(default_factory=threading.Event)
    connected: bool = False
    _queue: collections.deque[tuple[int, bytes]] = field(default_factory=collections.deque)
    _queued_bytes: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None
    _unacked: collections.deque[tuple[int, float]] = field(default_factory=collections.deque)  # (seq, sent at)
    bytes_sent: int = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"ctsync-link-{self.peer}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        with self._cond:
            self._cond.notify_all()

    def send(self, kind: int, payload: bytes) -> bool:
        """Queue a frame; False (and the queue dropped) when it would pass the bound: resync the peer."""
        with self._cond:
            if self._queued_bytes + len(payload) > QUEUE_MAX_BYTES:
                self._queue.clear()
                self._queued_bytes = 0
                return False
            self._queue.append((kind, payload))
            self._queued_bytes += len(payload)
            self._cond.notify_all()
        return True

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._unacked)

    def _run(self) -> None:
        pause = BACKOFF_S[0]
        while not self.stop.is_set():
            sock = None
            try:
                sock, sealer, opener = self._connect()
                pause = BACKOFF_S[0]
                self._serve(sock, sealer, opener)
            except (OSError, ConnectionError, wire.ProtocolError, ValueError) as exc:
                if not self.stop.is_set():
                    self.on_error(self.peer, f"{type(exc).__name__}: {exc}")
            finally:
                self.connected = False
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            self.stop.wait(pause)
            pause = min(pause * 2, BACKOFF_S[1])

    def _connect(self) -> tuple[socket.socket, wire.Sealer, wire.Opener]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self.bind:
                sock.bind((self.bind, 0))
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect((self.address, self.port))
            sock.settimeout(HANDSHAKE_TIMEOUT_S)
            _keepalive(sock)
            hello, nonce = wire.hello(self.key, self.me, self.peer)
            sock.sendall(wire.handshake_frame(hello))
            server_nonce = wire.read_welcome(self.key, read_frame(sock), self.me, self.peer, nonce)
        except BaseException:
            sock.close()
            raise
        k = wire.session_key(self.key, nonce, server_nonce, self.me, self.peer)
        return sock, wire.Sealer(k), wire.Opener(k)

    def _serve(self, sock: socket.socket, sealer: wire.Sealer, opener: wire.Opener) -> None:
        with self._cond:  # what was queued for the old connection is superseded by the resync
            self._queue.clear()
            self._queued_bytes = 0
            self._unacked.clear()
        self.connected = True
        self.on_connected(self.peer)
        sock.settimeout(None)
        dead = threading.Event()
        reader = threading.Thread(target=self._read_acks, args=(sock, opener, dead), daemon=True,
                                  name=f"ctsync-acks-{self.peer}")  # fmt: skip
        reader.start()
        last_send = time.monotonic()
        try:
            while not self.stop.is_set() and not dead.is_set():
                with self._cond:
                    if not self._queue:
                        self._cond.wait(0.5)
                    batch = list(self._queue)
                    self._queue.clear()
                    self._queued_bytes = 0
                    oldest = self._unacked[0][1] if self._unacked else None
                now = time.monotonic()
                if oldest is not None and now - oldest > ACK_TIMEOUT_S:
                    raise ConnectionError(f"no acknowledgement for {now - oldest:.0f} s")
                if not batch and now - last_send > PING_AFTER_S:
                    batch = [(wire.PING, wire.encode({"t0": now}))]
                if not batch:
                    continue
                data = b""
                for kind, payload in batch:
                    data += sealer.seal(kind, payload)
                    with self._cond:
                        self._unacked.append((sealer.seq, now))
                sock.sendall(data)
                self.bytes_sent += len(data)
                last_send = now
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            reader.join(5)

    def _read_acks(self, sock: socket.socket, opener: wire.Opener, dead: threading.Event) -> None:
        try:
            while True:
                kind, _seq, payload = opener.open(read_frame(sock))
                if kind != wire.ACK:
                    raise wire.ProtocolError(f"unexpected frame kind {kind} from a receiver")
                header, _ = wire.decode(payload)
                acked = int(header.get("seq", 0))
                with self._cond:
                    while self._unacked and self._unacked[0][0] <= acked:
                        self._unacked.popleft()
                self.on_ack(self.peer, header)
        except (OSError, ConnectionError, wire.ProtocolError, ValueError) as exc:
            if not self.stop.is_set() and self.connected:
                self.on_error(self.peer, f"acknowledgements: {type(exc).__name__}: {exc}")
        finally:
            dead.set()
            with self._cond:
                self._cond.notify_all()


Handler = Callable[[str, int, int, dict[str, Any], list[Flow], Callable[[dict[str, Any]], None]], None]


@dataclass
class Listener:
    """Accepts peers' connections: authenticates each, then hands its frames to ``handle``.

    ``members()`` gives the group's members and their addresses: a connection is accepted only
    from a member, from that member's address, with the group key.
    """

    me: str
    address: str
    port: int
    key: bytes
    members: Callable[[], dict[str, str]]
    handle: Handler
    on_error: Callable[[str, str], None]
    stop: threading.Event = field(default_factory=threading.Event)
    sock: socket.socket | None = None

    def start(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.address, self.port))
        s.listen(16)
        self.sock = s
        threading.Thread(target=self._accept, name="ctsync-listen", daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self.sock.close()

    def _accept(self) -> None:
        assert self.sock is not None
        while not self.stop.is_set():
            try:
                conn, (host, _port) = self.sock.accept()
            except OSError:
                if self.stop.is_set():
                    return
                time.sleep(0.1)
                continue
            threading.Thread(target=self._serve, args=(conn, host), name=f"ctsync-in-{host}", daemon=True).start()

    def _serve(self, conn: socket.socket, host: str) -> None:
        who = host
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT_S)
            _keepalive(conn)
            client, server, nonce = wire.read_hello(self.key, read_frame(conn))
            who = client
            members = self.members()
            if server != self.me:
                raise wire.ProtocolError(f"{client} wanted {server}, this is {self.me}")
            if client not in members or client == self.me:
                raise wire.ProtocolError(f"{client} is not a member of the group")
            if members[client] and members[client] != host:
                raise wire.ProtocolError(f"{client} connected from {host}, not from its address {members[client]}")
            message, server_nonce = wire.welcome(self.key, client, self.me, nonce)
            conn.sendall(wire.handshake_frame(message))
            k = wire.session_key(self.key, nonce, server_nonce, client, self.me)
            opener, sealer = wire.Opener(k), wire.Sealer(k)
            lock = threading.Lock()
            conn.settimeout(None)

            def reply(header: dict[str, Any]) -> None:
                with lock, contextlib.suppress(OSError):
                    conn.sendall(sealer.seal(wire.ACK, wire.encode(header)))

            while not self.stop.is_set():
                kind, seq, payload = opener.open(read_frame(conn))
                header, received = wire.decode(payload)
                self.handle(client, kind, seq, header, received, reply)
        except ConnectionError:
            return
        except (OSError, wire.ProtocolError, ValueError) as exc:
            if not self.stop.is_set():
                self.on_error(who, f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(OSError):
                conn.close()
