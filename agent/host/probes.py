"""Peer probes: ICMP (icmplib, async) or TCP connect, in a rolling K-of-N window.

Probing runs on its own thread and asyncio loop at ``probe.interval``, all peers
at once, so a slow peer never delays the HA cycle; the cycle reads a snapshot.

ICMP uses one long-lived icmplib socket per prober (raw when privileged, else the
kernel's datagram "ping" socket): each round sends one Echo Request per peer, all
with the prober's identifier and the round's sequence number, and one reader on the
loop takes the replies, matched on (source, identifier, sequence), until every peer
answered or ``timeout`` passed. A reply after that is a loss, as is an error; the
socket is reopened on the next round after an error. (Opening a socket, resolving,
and a task per probe, as ``icmplib.async_ping`` does, cost several times the CPU.)
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import ipaddress
import logging
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.decide import PeerProbe

log = logging.getLogger("nat_ha.probes")

ProbeObserver = Callable[[str, bool, float], None]  # (peer, answered, rtt seconds)
ECHO_PAYLOAD = b"nat-ha-probe\n"

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP_PAYLOAD = (b"nat-ha-probe " * 5)[:56]  # 56 bytes, the size of ping's and icmplib's default payload
_SOL_RAW, _ICMP_FILTER = 255, 1  # linux/icmp.h: a raw ICMP socket's filter of types, by bit (1 = drop)
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # asm-generic/socket.h (x86-64, arm64)
_RECV_SIZE = 2048
_MAX_READS_PER_WAKE = 64  # the reader drains at most this many packets per call; the loop calls it again


class ProbeSetupError(Exception):
    """Probing cannot work on this host as configured (privileges, method)."""


@dataclass(frozen=True)
class Target:
    instance: str
    address: str
    port: int = 0


def icmp_privilege(mode: str) -> bool:
    """Pick the ICMP socket kind: raw (privileged) or datagram; explain when neither works."""
    from icmplib import ICMPv4Socket
    from icmplib.exceptions import SocketPermissionError

    tries = {"true": [True], "false": [False], "auto": [True, False]}[mode]
    for privileged in tries:
        try:
            ICMPv4Socket(privileged=privileged).close()
            return privileged
        except SocketPermissionError:
            continue
    raise ProbeSetupError(
        "ICMP probes are not allowed for this process: give it CAP_NET_RAW (the systemd unit does), "
        'or add its group to net.ipv4.ping_group_range, or set probe.method = "tcp"'
    )


class Window:
    """The last N probe results of one peer."""

    def __init__(self, size: int, down_after: int, now: float) -> None:
        self.results: collections.deque[bool] = collections.deque(maxlen=size)  # True = answered
        self.down_after = down_after
        self.last_reply = now
        self.last_result = now

    def add(self, answered: bool, now: float) -> bool:
        """Record one result; True when it turned the peer from up to down."""
        was_up = self.up
        self.results.append(answered)
        self.last_result = now
        if answered:
            self.last_reply = now
        return was_up and not self.up

    @property
    def lost(self) -> int:
        return sum(1 for ok in self.results if not ok)

    @property
    def up(self) -> bool:
        return self.lost < self.down_after

    def view(self, now: float) -> PeerProbe:
        lost = self.lost
        return PeerProbe(
            up=lost < self.down_after,
            lost=lost,
            window=len(self.results),
            silent_for=max(0.0, now - self.last_reply),
            result_age=max(0.0, now - self.last_result),
        )


def icmp_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def echo_request(identifier: int, sequence: int, payload: bytes = ICMP_PAYLOAD) -> bytes:
    """An ICMPv4 Echo Request (RFC 792), checksum included (a datagram socket's kernel rewrites both)."""
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, identifier, sequence)
    checksum = icmp_checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, checksum, identifier, sequence) + payload


def parse_echo_reply(packet: bytes, *, ip_header: bool) -> tuple[int, int] | None:
    """(identifier, sequence) of an ICMPv4 Echo Reply; None for anything else.

    A raw socket reads the IP header too (its length is in the packet); a Linux datagram
    ("ping") socket reads the ICMP message alone. Echo Requests (a raw socket sees its own
    on loopback), errors and truncated packets are not replies.
    """
    offset = 0
    if ip_header:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return None
        offset = (packet[0] & 0x0F) * 4
    if len(packet) < offset + 8 or packet[offset] != ICMP_ECHO_REPLY or packet[offset + 1] != 0:
        return None
    identifier, sequence = struct.unpack_from("!HH", packet, offset + 4)
    return identifier, sequence


class EchoRound:
    """The Echo Requests of one round, and which replies answer them.

    A reply answers a request when it has this round's identifier and sequence number,
    comes from an address the round sent to and still waits for, and within ``timeout``
    of that request. Anything else is ignored: another program's pings (a raw socket sees
    all of the host's ICMP), a late reply of an earlier round, a duplicate.
    """

    def __init__(self, identifier: int, sequence: int, timeout: float) -> None:
        self.identifier = identifier
        self.sequence = sequence
        self.timeout = timeout
        self.waiting: dict[str, float] = {}  # address -> time.monotonic() its request was sent
        self.deadline = 0.0

    def sent(self, address: str, at: float) -> None:
        self.waiting[address] = at
        self.deadline = max(self.deadline, at + self.timeout)

    def match(self, source: str, identifier: int, sequence: int, now: float) -> float | None:
        """The round-trip time when this reply answers a request still waited for (no longer, then); else None."""
        if identifier != self.identifier or sequence != self.sequence:
            return None
        sent_at = self.waiting.get(source)
        if sent_at is None:
            return None
        rtt = now - sent_at
        if rtt > self.timeout:  # late: the probe is lost, as when it never comes
            return None
        del self.waiting[source]
        return max(rtt, 0.0)

    @property
    def done(self) -> bool:
        return not self.waiting


def _ipv4(address: str) -> str | None:
    """The canonical form of an IPv4 literal, None for anything else."""
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        return None


def _filter_raw_socket(sock: socket.socket, identifier: int) -> str:
    """Let a raw socket (Linux) wake us for our Echo Replies only, not for every ICMP packet of the host.

    A socket filter (classic BPF) passes Echo Replies with our identifier; without it (an
    error attaching it), the kernel's ICMP type filter passes Echo Replies only. Either is an
    optimisation: every reply is matched anyway. Each avoids a wake-up per packet nobody
    here waits for, e.g. another agent's replies, or our own requests on loopback.
    Returns the filter attached: "bpf", "icmp-type" or "none".
    """
    program = [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)     X = IP header length
        (0x50, 0, 0, 0),  # ldb [x+0]            ICMP type
        (0x15, 0, 3, ICMP_ECHO_REPLY),  # jne -> drop
        (0x48, 0, 0, 4),  # ldh [x+4]            identifier
        (0x15, 0, 1, identifier),  # jne -> drop
        (0x06, 0, 0, 0xFFFFFFFF),  # ret: the whole packet
        (0x06, 0, 0, 0),  # drop: ret 0
    ]
    code = array.array("B", b"".join(struct.pack("=HBBI", *insn) for insn in program))
    address, _ = code.buffer_info()
    fprog = struct.pack("@HP", len(program), address)  # struct sock_fprog; the kernel copies the program
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
        return "bpf"
    except OSError:
        pass
    try:
        sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("=I", ~(1 << ICMP_ECHO_REPLY) & 0xFFFFFFFF))
        return "icmp-type"
    except OSError:
        return "none"


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Prober:
    """Probes every target each interval; ``snapshot()`` is safe to call from any thread."""

    def __init__(
        self,
        targets: list[Target],
        *,
        method: str,
        interval: float,
        timeout: float,
        window: int,
        down_after: int,
        privileged: str = "auto",
        observer: ProbeObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_down: Callable[[str], None] | None = None,
    ) -> None:
        if method not in ("icmp", "tcp", "tcp-echo"):
            raise ProbeSetupError(f"unknown probe method {method!r}")
        self.targets = targets
        self.method = method
        self.interval = interval
        self.timeout = timeout
        self.observer = observer
        self.clock = clock
        # Called (on the probe thread) with a peer's id when its probes turn it down: the daemon
        # runs its next HA cycle then instead of up to a cycle later.
        self.on_down = on_down
        self.privileged = icmp_privilege(privileged) if method == "icmp" else False
        now = clock()
        self._window, self._down_after = window, down_after
        self._windows = {t.instance: Window(window, down_after, now) for t in targets}
        self._pending: list[Target] | None = None  # set_targets(): applied at the next round
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0
        self._observer_failed = False
        # ICMP over one socket: IPv4 targets by address (two targets may share one); any other
        # address (IPv6) is pinged on its own with icmplib.async_ping each round, as before.
        self._icmp_targets: dict[str, list[Target]] = {}
        self._other_targets: list[Target] = []
        self._sort_targets()
        # Everything below belongs to the probe thread once started.
        # Our requests' identifier; a Linux datagram socket's kernel replaces it by the socket's port.
        self._identifier = 0
        if method == "icmp":
            from icmplib.utils import unique_identifier  # the counter async_ping uses: unique in this process

            self._identifier = int(unique_identifier())
        self._linux_dgram = not self.privileged and sys.platform == "linux"
        self._sequence = 0
        self._icmp_socket: Any = None  # icmplib.ICMPv4Socket
        self._sock: socket.socket | None = None  # its socket (icmplib's public ``sock``)
        self._fd = -1  # registered with the loop as a reader
        self._reopen = False  # an error: reopen the socket before the next round
        self._failing = False  # errors in a row (logged once)
        self._sockets_opened = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: asyncio.Future[None] | None = None
        self._round_open = False
        self._echo: EchoRound | None = None  # the requests still waited for this round
        self._deadline: asyncio.TimerHandle | None = None
        self._others_running = 0
        self._next_round = 0.0

    def _sort_targets(self) -> None:
        self._icmp_targets, self._other_targets = {}, []
        if self.method != "icmp":
            return
        for t in self.targets:
            address = _ipv4(t.address)
            if address is None:
                self._other_targets.append(t)
            else:
                self._icmp_targets.setdefault(address, []).append(t)

    def set_targets(self, targets: list[Target]) -> None:
        """Probe these peers from the next round on (the group's members changed); any thread.

        A new peer starts with an empty window (as every peer does when the agent starts); a
        gone peer's window goes at once, so snapshot() no longer reports it.
        """
        now = self.clock()
        with self._lock:
            self._pending = list(targets)
            wanted = {t.instance for t in targets}
            for gone in set(self._windows) - wanted:
                del self._windows[gone]
            for t in targets:
                self._windows.setdefault(t.instance, Window(self._window, self._down_after, now))

    def _apply_pending(self) -> None:
        """At a round's start (the probe thread): the targets set_targets() gave, if any."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self.targets = pending
            self._sort_targets()

    # ---------------------------------------------------------------- record
    def _record(self, t: Target, ok: bool, rtt: float) -> None:
        now = self.clock()
        with self._lock:
            window = self._windows.get(t.instance)
            if window is None:
                return  # no longer a peer (set_targets): its last probe counts for nobody
            went_down = window.add(ok, now)
        if went_down and self.on_down is not None:
            self.on_down(t.instance)
        if self.observer is not None:
            try:
                self.observer(t.instance, ok, rtt)
            except Exception:  # a broken observer must not stop probing
                if not self._observer_failed:
                    self._observer_failed = True
                    log.exception("probe observer failed (logged once)")

    # ------------------------------------------------------- ICMP, one socket
    # Rounds are loop callbacks, not a coroutine: a round costs two timer handles (its deadline,
    # the next round) and the reader's calls; no task, future or wait_for per round or per probe.
    async def _run_icmp(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._finished = loop.create_future()
        self._next_round = time.monotonic()
        loop.call_soon(self._start_round)
        try:
            await self._finished
        finally:
            if self._deadline is not None:
                self._deadline.cancel()
            self._close_socket()

    def _start_round(self) -> None:
        if self._stop.is_set():
            if self._finished is not None:
                _settle(self._finished)
            return
        self._apply_pending()
        self._round_open = True
        loop = self._loop
        assert loop is not None
        try:
            if self._icmp_targets:
                echo = self._send_round()
                if echo is not None and not echo.done:
                    self._echo = echo
                    self._deadline = loop.call_at(echo.deadline, self._end_echo)
            for t in self._other_targets:
                loop.create_task(self._probe(t)).add_done_callback(self._other_done)
                self._others_running += 1
        except Exception:  # a bug: log it, but never stop probing
            log.exception("probe round failed")
        self._maybe_end_round()

    def _other_done(self, _task: asyncio.Task[None]) -> None:
        self._others_running -= 1
        self._maybe_end_round()

    def _end_echo(self) -> None:
        """The round's deadline (or its last reply, or a broken socket): what is still waited for is lost."""
        echo, self._echo = self._echo, None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        try:
            if echo is not None:
                for address in echo.waiting:
                    for t in self._icmp_targets[address]:
                        self._record(t, False, 0.0)
        finally:
            self._maybe_end_round()

    def _maybe_end_round(self) -> None:
        if not self._round_open or self._echo is not None or self._others_running:
            return
        self._round_open = False
        self.rounds += 1
        now = time.monotonic()
        self._next_round += self.interval
        if self._next_round < now:  # overran (host paused or overloaded): start again, do not burst
            self._next_round = now
        assert self._loop is not None
        self._loop.call_at(self._next_round, self._start_round)

    def _socket_error(self, what: str, exc: BaseException) -> None:
        self._reopen = True
        if not self._failing:
            self._failing = True
            log.warning("ICMP probe socket: %s failed (%s); probes count as lost, reopening it", what, exc)

    def _open_socket(self) -> bool:
        from icmplib import ICMPv4Socket

        assert self._loop is not None
        try:
            icmp = ICMPv4Socket(privileged=self.privileged)
        except Exception as exc:  # icmplib's SocketPermissionError, ICMPSocketError, ...
            self._socket_error("open", exc)
            return False
        sock: socket.socket = icmp.sock
        try:
            sock.setblocking(False)
            if self._linux_dgram:
                # Bind now so the kernel picks the identifier (the port) it puts in our requests;
                # it also delivers to this socket only the replies that carry it.
                sock.bind(("0.0.0.0", 0))
                self._identifier = int(sock.getsockname()[1])
            elif self.privileged and sys.platform == "linux":
                _filter_raw_socket(sock, self._identifier)
            fd = sock.fileno()
            self._loop.add_reader(fd, self._on_readable)
        except Exception as exc:
            icmp.close()
            self._socket_error("set-up", exc)
            return False
        self._icmp_socket, self._sock, self._fd = icmp, sock, fd
        self._reopen = False
        self._sockets_opened += 1
        return True

    def _close_socket(self) -> None:
        if self._fd >= 0 and self._loop is not None:
            self._loop.remove_reader(self._fd)  # before closing: the number may be reused at once
        self._fd = -1
        if self._icmp_socket is not None:
            self._icmp_socket.close()
        self._icmp_socket = self._sock = None

    def _send_round(self) -> EchoRound | None:
        """Send this round's requests; None when there is no socket (every probe of the round is lost)."""
        self._sequence = (self._sequence + 1) & 0xFFFF
        if self._reopen or self._sock is None:
            self._close_socket()
            if not self._open_socket():
                for targets in self._icmp_targets.values():
                    for t in targets:
                        self._record(t, False, 0.0)
                return None
        sock = self._sock
        assert sock is not None
        echo = EchoRound(self._identifier, self._sequence, self.timeout)
        packet = echo_request(self._identifier, self._sequence)
        errors = False
        for address, targets in self._icmp_targets.items():
            sent_at = time.monotonic()
            try:
                self._sendto(sock, packet, address)
            except OSError as exc:  # unreachable, refused by a firewall, the socket broke, ...
                errors = True
                self._socket_error(f"send to {address}", exc)
                for t in targets:
                    self._record(t, False, 0.0)
                continue
            echo.sent(address, sent_at)
        if not errors and self._failing:
            self._failing = False
            log.info("ICMP probe socket works again")
        return echo

    def _sendto(self, sock: socket.socket, packet: bytes, address: str) -> None:
        sock.sendto(packet, (address, 0))

    def _on_readable(self) -> None:
        """The socket has data: take the replies of the open round, ignore anything else."""
        for _ in range(_MAX_READS_PER_WAKE):
            sock = self._sock
            if sock is None:
                return
            try:
                packet, source = sock.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._socket_error("receive", exc)
                self._close_socket()
                self._end_echo()  # nothing more can come this round
                return
            now = time.monotonic()
            echo = self._echo
            if echo is None:
                continue
            reply = parse_echo_reply(packet, ip_header=not self._linux_dgram)
            if reply is None:
                continue
            address = source[0]
            rtt = echo.match(address, reply[0], reply[1], now)
            if rtt is None:
                continue
            for t in self._icmp_targets[address]:
                self._record(t, True, rtt)
            if echo.done:
                self._end_echo()
                return  # the usual case: no read to find the socket empty (if it is not, we are called again)

    # ------------------------------------------- TCP, and ICMP to non-IPv4
    async def _icmp(self, t: Target) -> tuple[bool, float]:
        from icmplib import async_ping

        host = await async_ping(t.address, count=1, timeout=self.timeout, privileged=self.privileged)
        return host.is_alive, (host.avg_rtt / 1000.0 if host.is_alive else 0.0)

    async def _tcp(self, t: Target) -> tuple[bool, float]:
        t0 = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(t.address, t.port), self.timeout)
        except (OSError, asyncio.TimeoutError):
            return False, 0.0
        try:
            if self.method == "tcp-echo":
                writer.write(ECHO_PAYLOAD)
                remaining = max(0.001, self.timeout - (time.monotonic() - t0))
                data = await asyncio.wait_for(reader.readexactly(len(ECHO_PAYLOAD)), remaining)
                if data != ECHO_PAYLOAD:
                    return False, 0.0
            return True, time.monotonic() - t0
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return False, 0.0
        finally:
            writer.close()

    async def _probe(self, t: Target) -> None:
        try:
            ok, rtt = await (self._icmp(t) if self.method == "icmp" else self._tcp(t))
        except Exception:
            ok, rtt = False, 0.0
        self._record(t, ok, rtt)

    async def _run(self) -> None:
        if self.method == "icmp":
            await self._run_icmp()
            return
        next_round = time.monotonic()
        while not self._stop.is_set():
            self._apply_pending()
            await asyncio.gather(*(self._probe(t) for t in self.targets))
            self.rounds += 1
            next_round += self.interval
            delay = next_round - time.monotonic()
            if delay < 0:  # overran (host paused or overloaded): start again, do not burst
                next_round = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="nat-ha-probes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        loop = self._loop
        if loop is not None and self.method == "icmp":
            # Do not wait for the next round: the loop sees the stop at once (and closes the socket).
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(self._start_round)
        if self._thread is not None:
            self._thread.join(timeout=self.interval + self.timeout + 1)

    def snapshot(self) -> dict[str, PeerProbe]:
        now = self.clock()
        with self._lock:
            return {peer: w.view(now) for peer, w in self._windows.items()}


class EchoResponder:
    """A TCP echo answering ``tcp-echo`` probes: the demo's agent plays its NAT instance with it."""

    def __init__(self, address: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(64)
        self.sock.settimeout(0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="nat-ha-echo", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(0.5)
                try:
                    data = conn.recv(len(ECHO_PAYLOAD))
                    if data:
                        conn.sendall(data)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
