"""The kernel's connection-tracking table through ctnetlink sockets (messages: :mod:`agent.host.ctnetlink`).

A thin adapter: list a table's entries, create, delete and refresh entries in batches, read the
kernel's events, and read the guard chain's counters (``nft``). Every call needs
``CAP_NET_ADMIN`` (nat-ha-ctsync.service has it; the agent does not). No ``conntrack`` tool is
needed: it sent one request per entry and waited for each answer, and its text had to be parsed
again, which cost more CPU than the sync itself.
"""

from __future__ import annotations

import array
import contextlib
import errno
import ipaddress
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from agent.host import ctnetlink
from agent.host.flows import Flow
from agent.host.nat import NFT_FAMILY, NFT_TABLE, nft_inbound_counters

SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
SO_RCVBUFFORCE, SO_ATTACH_FILTER = 33, 26
EVENT_BUFFER_BYTES = 8 * 1024 * 1024  # the event socket's receive buffer (ENOBUFS when a burst overflows it)
EVENT_PAUSE_S = 0.02  # the event reader's pause between rounds (the buffer holds about 10,000 events)
ANSWER_BUFFER_BYTES = 4 * 1024 * 1024  # a batch's failures (36 bytes each) and a dump's parts
PER_SEND = 512  # requests per send (about 94 KB of creates; the socket's send buffer is about 208 KB)
RECV_BYTES = 1 << 16  # the kernel fills a dump's answer up to 32 KB when the reader offers this much
DUMP_TIMEOUT_S = 30.0
LISTING = "listing the connection-tracking table"
#: Failures that are not errors: an entry created meanwhile (EEXIST), one gone already (ENOENT).
HARMLESS = frozenset({errno.EEXIST, errno.ENOENT})


class ConntrackError(Exception):
    """A ctnetlink request or an nft command failed (one line)."""


def _socket(groups: int = 0, rcvbuf: int = ANSWER_BUFFER_BYTES) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ctnetlink.NETLINK_NETFILTER)
    try:
        try:  # CAP_NET_ADMIN may go past net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        with contextlib.suppress(OSError):  # failures are answered without a copy of each request (smaller)
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


def attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER: the kernel runs the classic BPF ``prog`` on every message before queueing it."""
    code = array.array("B", ctnetlink.filter_bytes(prog))  # kept alive until the kernel has copied it
    fprog = struct.pack("HL", len(prog), code.buffer_info()[0])  # struct sock_fprog {len; filter *}
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def available() -> str | None:
    """Why the kernel's connection-tracking table cannot be used here (None: it can): asks for an entry that
    cannot exist, which the kernel answers ENOENT (EPERM without CAP_NET_ADMIN)."""
    probe = Flow("A", "udp", "0.0.0.1", "0.0.0.2", 1, 1, "0.0.0.3", 1)
    try:
        with contextlib.closing(_socket()) as sock:
            sock.settimeout(5.0)
            sock.send(ctnetlink.message(ctnetlink.IPCTNL_MSG_CT_GET, 0, 1, ctnetlink.orig_tuple(probe)))
            answer = sock.recv(RECV_BYTES)
    except OSError as exc:
        return f"cannot open a ctnetlink socket: {exc}"
    err = next((e for e in ctnetlink.errors(answer)), errno.ENOENT)
    if err not in (0, errno.ENOENT):
        return f"ctnetlink refused ({os.strerror(err)}): the sync needs CAP_NET_ADMIN and nf_conntrack_netlink"
    return None


def _source_filter(subnets: Iterable[str]) -> Callable[[bytes], bool]:
    nets = [(int(n.network_address), int(n.netmask)) for n in (ipaddress.IPv4Network(s) for s in subnets)]

    def wanted(raw: bytes) -> bool:
        a = int.from_bytes(raw, "big")
        return any(a & mask == net for net, mask in nets)

    return wanted


def iter_flows(subnets: Iterable[str]) -> Iterator[Flow]:
    """The flows (:func:`agent.host.ctnetlink.flow_of`) whose client is in ``subnets``, as the kernel lists them
    (a push sends the first while the rest are still being listed)."""
    wanted = _source_filter(subnets)
    sock = _socket()
    sock.settimeout(DUMP_TIMEOUT_S)
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    try:
        sock.send(ctnetlink.dump_request(1))
        while True:
            try:
                n = sock.recv_into(buf)
            except TimeoutError:
                raise ConntrackError(f"{LISTING}: no answer within {DUMP_TIMEOUT_S:.0f} s") from None
            except OSError as exc:
                raise ConntrackError(f"{LISTING}: {os.strerror(exc.errno or 0)}") from None
            data = view[:n]
            for kind, at, length in ctnetlink.messages(data):
                if kind == ctnetlink.NLMSG_DONE:
                    return
                if kind == ctnetlink.NLMSG_ERROR:
                    err = ctnetlink.error_of(data, at)
                    if err:
                        raise ConntrackError(f"{LISTING}: {os.strerror(err)}")
                    continue
                f = ctnetlink.flow_of(data, at, length, wanted)
                if f is not None:
                    yield f
    finally:
        view.release()
        sock.close()


def dump(subnets: Iterable[str]) -> list[Flow]:
    """:func:`iter_flows` as a list."""
    return list(iter_flows(subnets))


class Writer:
    """A ctnetlink socket that creates, deletes and refreshes entries by their tuple (one per thread).

    Requests go :data:`PER_SEND` at a time without asking for acknowledgements; the kernel answers
    only failures, which are counted in ``failed`` (errno -> requests).
    """

    def __init__(self) -> None:
        self.sock = _socket()
        self.sock.setblocking(False)
        self.seq = 0
        self.failed: dict[int, int] = {}

    def close(self) -> None:
        self.sock.close()

    def create(self, flows: Iterable[Flow]) -> int:
        """Create these entries (each with its own NAT address, public port and timeout); one that exists is
        left as it is. Raises :class:`ConntrackError` when the kernel refused some for another reason."""
        before = dict(self.failed)
        sent = self._send(ctnetlink.create_message(f, self._next()) for f in flows)
        refused = {e: n - before.get(e, 0) for e, n in self.failed.items()
                   if e not in HARMLESS and n > before.get(e, 0)}  # fmt: skip
        if refused:
            why = ", ".join(f"{n} {os.strerror(e)}" for e, n in sorted(refused.items()))
            raise ConntrackError(f"{sum(refused.values())} of {sent} entries not created: {why}")
        return sent

    def delete(self, flows: Iterable[Flow]) -> int:
        return self._send(ctnetlink.delete_message(f, self._next()) for f in flows)

    def set_timeouts(self, changes: Iterable[tuple[Flow, int]]) -> int:
        return self._send(ctnetlink.timeout_message(f, t, self._next()) for f, t in changes)

    def _next(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    def _send(self, messages: Iterable[bytes]) -> int:
        """Send in chunks, reading the answers (failures) after each; returns how many were sent."""
        sent, chunk = 0, []
        for m in messages:
            chunk.append(m)
            if len(chunk) == PER_SEND:
                sent += self._flush(chunk)
                chunk = []
        if chunk:
            sent += self._flush(chunk)
        return sent

    def _flush(self, chunk: list[bytes]) -> int:
        self.sock.setblocking(True)
        try:
            self.sock.sendto(b"".join(chunk), (0, 0))
        finally:
            self.sock.setblocking(False)
        self._drain()
        return len(chunk)

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # answers were dropped: they were only failures
                    self.failed[errno.ENOBUFS] = self.failed.get(errno.ENOBUFS, 0) + 1
                    continue
                raise
            for e in ctnetlink.errors(data):
                if e:
                    self.failed[e] = self.failed.get(e, 0) + 1

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.close()


def inbound_counters() -> dict[str, int]:
    """Route table -> packets that reached this host's address for it (the guard chain's counters)."""
    argv = ["nft", "-j", "list", "chain", NFT_FAMILY, NFT_TABLE, "guard"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=5.0, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConntrackError(f"nft list chain guard: {exc}") from None
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        raise ConntrackError(f"nft list chain guard: {err[-1] if err else f'exit {proc.returncode}'}")
    return nft_inbound_counters(proc.stdout)


@dataclass
class EventStream:
    """The kernel's connection events (multicast groups UPDATE and DESTROY) as flows, to ``on_flow`` (a reader
    thread). New entries are not asked for: a flow is worth syncing once it has a reply (an update), and
    every entry that ends sends one end event. A socket filter (:func:`agent.host.ctnetlink.event_filter`)
    keeps the TCP updates the service ignores in the kernel.

    ``on_lost`` is called when the kernel dropped events (ENOBUFS: the socket buffer overflowed) and when
    the reader stops on an error (it is started again by :meth:`start`); the caller then resyncs from a
    full listing.
    """

    on_flow: Callable[[Flow], None]
    on_lost: Callable[[str], None]
    sock: socket.socket | None = None
    thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    GROUPS = (1 << (ctnetlink.NFNLGRP_CONNTRACK_UPDATE - 1)) | (1 << (ctnetlink.NFNLGRP_CONNTRACK_DESTROY - 1))

    def start(self) -> None:
        self._stop = threading.Event()
        self.sock = _socket(self.GROUPS, EVENT_BUFFER_BYTES)
        with contextlib.suppress(OSError):  # without it every event reaches the reader (correct, dearer)
            attach_filter(self.sock, ctnetlink.event_filter())
        # A blocking socket whose receive times out in the kernel (SO_RCVTIMEO): one system call per read.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 1, 0))
        self.thread = threading.Thread(target=self._read, args=(self.sock, self._stop), name="ctsync-events",
                                       daemon=True)  # fmt: skip
        self.thread.start()

    def _read(self, sock: socket.socket, stop: threading.Event) -> None:
        """Wait for an event, read every one queued, then pause :data:`EVENT_PAUSE_S` while more queue up: the
        thread wakes about 50 times a second however many events come (a wake-up per event cost more CPU
        than reading the event), and the batch interval (0.1 s) is what the peers wait anyway."""
        buf = bytearray(RECV_BYTES)
        view = memoryview(buf)
        on_flow, flow_of, messages = self.on_flow, ctnetlink.flow_of, ctnetlink.messages
        why = ""
        flags = 0  # the first read of a round waits; the rest take what is queued (MSG_DONTWAIT)
        while not stop.is_set():
            try:
                n = sock.recv_into(buf, 0, flags)
            except (BlockingIOError, TimeoutError):
                if flags:
                    flags = 0
                    stop.wait(EVENT_PAUSE_S)
                continue
            except OSError as exc:
                if stop.is_set():
                    break
                if exc.errno == errno.ENOBUFS:
                    self.on_lost("the kernel dropped connection-tracking events (ENOBUFS)")
                    continue
                why = f"reading connection-tracking events: {os.strerror(exc.errno or 0)}"
                break
            flags = socket.MSG_DONTWAIT
            data = view[:n]
            for _kind, at, length in messages(data):
                f = flow_of(data, at, length)
                if f is not None:
                    on_flow(f)
        with contextlib.suppress(OSError):
            sock.close()
        if why and self.sock is sock:
            self.sock = None
            self.on_lost(why)

    def running(self) -> bool:
        return self.sock is not None and self.thread is not None and self.thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self.sock = None
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(5)
