"""Delete connection-tracking entries, or change their timeout, by their exact tuple: ctnetlink, one message each.

Why not the ``conntrack`` tool for these: its ``-D`` and ``-U`` filter a dump of the whole table
for every line (``conntrack -R`` included), so deleting or refreshing m entries of an n-entry
table costs m x n; the kernel finds an entry by its tuple in O(1). Creating entries stays with
``conntrack -R`` (it sets up the NAT binding, which a hand-written message would have to get
exactly right). Needs ``CAP_NET_ADMIN``.

Wire format (include/uapi/linux/netfilter/nfnetlink_conntrack.h): a netlink message of subsystem
``NFNL_SUBSYS_CTNETLINK`` and type ``IPCTNL_MSG_CT_DELETE`` (or ``IPCTNL_MSG_CT_NEW`` without
``NLM_F_CREATE``: change an existing entry), an ``nfgenmsg`` (AF_INET), and the nested attribute
``CTA_TUPLE_ORIG`` {``CTA_TUPLE_IP`` {src, dst}, ``CTA_TUPLE_PROTO`` {number, ports}}, plus
``CTA_TIMEOUT`` for a change. Many messages go in one send; the kernel answers only errors (an
entry already gone: ``ENOENT``), which are read and counted, not raised.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Iterable

from agent.host.flows import Flow

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 0x2
NLA_F_NESTED = 0x8000
CTA_TUPLE_ORIG, CTA_TIMEOUT = 1, 7
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
PROTO_NUMBERS = {"tcp": 6, "udp": 17}
PER_SEND = 512  # messages per sendto (about 40 KB)


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def tuple_attr(f: Flow) -> bytes:
    """``CTA_TUPLE_ORIG`` of a flow: the client's tuple."""
    return _nested(
        CTA_TUPLE_ORIG,
        _nested(
            CTA_TUPLE_IP, _attr(CTA_IP_V4_SRC, socket.inet_aton(f.src)), _attr(CTA_IP_V4_DST, socket.inet_aton(f.dst))
        ),
        _nested(
            CTA_TUPLE_PROTO,
            _attr(CTA_PROTO_NUM, struct.pack("B", PROTO_NUMBERS[f.proto])),
            _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", f.sport)),
            _attr(CTA_PROTO_DST_PORT, struct.pack("!H", f.dport)),
        ),
    )


def message(kind: int, seq: int, attrs: bytes) -> bytes:
    """One ctnetlink request (no NLM_F_ACK: only failures are answered)."""
    body = struct.pack("!BBH", socket.AF_INET, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | kind, NLM_F_REQUEST, seq, 0) + body


def delete_message(f: Flow, seq: int) -> bytes:
    return message(IPCTNL_MSG_CT_DELETE, seq, tuple_attr(f))


def timeout_message(f: Flow, timeout: int, seq: int) -> bytes:
    return message(IPCTNL_MSG_CT_NEW, seq, tuple_attr(f) + _attr(CTA_TIMEOUT, struct.pack("!I", timeout)))


def errors(data: bytes) -> list[int]:
    """The errno of every NLMSG_ERROR in a buffer of netlink answers (0: an acknowledgement)."""
    out, at = [], 0
    while at + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, at)
        if length < 16:
            break
        if kind == NLMSG_ERROR and at + 20 <= len(data):
            out.append(-struct.unpack_from("=i", data, at + 16)[0])
        at += (length + 3) & ~3
    return out


class Writer:
    """A ctnetlink socket that deletes entries and changes their timeouts (one instance per thread)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        with contextlib.suppress(OSError):  # errors answered without a copy of each request (smaller)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setblocking(False)
        self.seq = 0
        self.failed: dict[int, int] = {}  # errno -> how many requests failed with it (ENOENT: already gone)

    def close(self) -> None:
        self.sock.close()

    def delete(self, flows: Iterable[Flow]) -> int:
        return self._send(delete_message(f, self._next()) for f in flows)

    def set_timeouts(self, changes: Iterable[tuple[Flow, int]]) -> int:
        return self._send(timeout_message(f, t, self._next()) for f, t in changes)

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
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # answers were dropped: they were only failures
                    continue
                raise
            for e in errors(data):
                if e:
                    self.failed[e] = self.failed.get(e, 0) + 1

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.close()
