"""ctnetlink messages for the sync's flows: built from and read into :class:`agent.host.flows.Flow`. Pure (bytes).

Why not the ``conntrack`` tool: it sends one request per entry and waits for its answer (``-R``),
prints text that has to be parsed again (``-E``, ``-L``), and its ``-D``/``-U`` filter a dump of
the whole table for every line. Here many requests go in one send, the kernel answers only
failures, and the kernel's binary answers are read with a few ``struct`` calls.

Wire format (include/uapi/linux/netfilter/nfnetlink_conntrack.h): a netlink header whose type is
``NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*``, an ``nfgenmsg`` (AF_INET), then attributes.
An IPv4 TCP or UDP tuple always has the same 52-byte layout::

    CTA_TUPLE_ORIG|NESTED  { CTA_TUPLE_IP|NESTED {CTA_IP_V4_SRC, CTA_IP_V4_DST},
                             CTA_TUPLE_PROTO|NESTED {CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT} }

A created entry is what ``conntrack -R`` sends for a save line (captured with strace from
conntrack 1.4.7; tests/unit/ctsync/test_ctnetlink.py holds it): the original tuple, the reply
tuple with destination 0.0.0.0 and the public port, the status (kept bits and CONFIRMED), the
timeout, for TCP its state with the be-liberal flag both ways, and ``CTA_NAT_SRC`` {the NAT
address}: the kernel sets up the source NAT and keeps the reply tuple's port when it is free.
Only what :func:`flow_of` accepts is read back (the same shapes :func:`agent.host.flows.parse`
accepts): TCP and UDP, source NAT only, zone 0.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator

from agent.host.flows import MAX_TIMEOUT, STATUS_KEPT, TCP_STATE_NAMES, Flow, aton, ntoa

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
MSG_NEW = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
MSG_DELETE = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLM_F_MULTI = 0x2
NLMSG_ERROR, NLMSG_DONE = 0x2, 0x3
NLA_F_NESTED = 0x8000
#: Multicast groups (nfnetlink_compat / NFNLGRP_*): bind with the bits ``1 << (group - 1)``.
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_NAT_SRC, CTA_TIMEOUT = 1, 2, 3, 4, 6, 7
CTA_ID, CTA_ZONE = 12, 18
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, CTA_PROTOINFO_TCP_FLAGS_REPLY = 4, 5
CTA_NAT_V4_MINIP = 1
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 0x2, 0x4, 0x8
IP_CT_TCP_FLAG_SACK_PERM, IP_CT_TCP_FLAG_BE_LIBERAL = 0x2, 0x8
#: enum tcp_conntrack; SYN_SENT2 (9) and anything later are not synced.
TCP_STATES = TCP_STATE_NAMES
PROTO_NUMBERS = {"tcp": 6, "udp": 17}
PROTO_NAMES = {6: "tcp", 17: "udp"}

_HDR = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_NFGEN = struct.pack("!BBH", socket.AF_INET, 0, 0)
_ATTR = struct.Struct("=HH")
TUPLE_BYTES = 52
# One tuple (after its own 4-byte header): the headers of its 5 leaf and 2 nested attributes, with the
# values as network-order bytes. Ports go through htons so that one native-order struct packs it all.
_TUPLE = struct.Struct("=HHHH4sHH4sHHHHB3xHHH2xHHH2x")
_U32 = struct.Struct("!I")
_U32N = struct.Struct("=I")
_PROTOINFO = struct.Struct("=HHHHB")  # CTA_PROTOINFO_TCP's header, then CTA_PROTOINFO_TCP_STATE's and its value


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _ATTR.pack(n, kind) + payload + b"\0" * (-n % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def tuple_attr(kind: int, src: bytes, dst: bytes, proto: int, sport: int, dport: int) -> bytes:
    """A 52-byte ``CTA_TUPLE_ORIG`` or ``CTA_TUPLE_REPLY`` (addresses as 4 bytes, ports as numbers)."""
    return _ATTR.pack(TUPLE_BYTES, NLA_F_NESTED | kind) + _TUPLE.pack(
        20, NLA_F_NESTED | CTA_TUPLE_IP, 8, CTA_IP_V4_SRC, src, 8, CTA_IP_V4_DST, dst,
        28, NLA_F_NESTED | CTA_TUPLE_PROTO, 5, CTA_PROTO_NUM, proto,
        6, CTA_PROTO_SRC_PORT, socket.htons(sport), 6, CTA_PROTO_DST_PORT, socket.htons(dport),
    )  # fmt: skip


def orig_tuple(f: Flow) -> bytes:
    """``CTA_TUPLE_ORIG`` of a flow: the client's tuple (what finds the entry)."""
    return tuple_attr(CTA_TUPLE_ORIG, aton(f.src), aton(f.dst), PROTO_NUMBERS[f.proto], f.sport, f.dport)


def message(kind: int, flags: int, seq: int, attrs: bytes) -> bytes:
    """One ctnetlink request for IPv4."""
    return _HDR.pack(20 + len(attrs), NFNL_SUBSYS_CTNETLINK << 8 | kind, NLM_F_REQUEST | flags, seq, 0) + _NFGEN + attrs


def delete_message(f: Flow, seq: int) -> bytes:
    return message(IPCTNL_MSG_CT_DELETE, 0, seq, orig_tuple(f))


def timeout_message(f: Flow, timeout: int, seq: int) -> bytes:
    """Change an existing entry's timeout (IPCTNL_MSG_CT_NEW without NLM_F_CREATE)."""
    return message(IPCTNL_MSG_CT_NEW, 0, seq, orig_tuple(f) + _attr(CTA_TIMEOUT, _U32.pack(timeout)))


_FLAGS = struct.pack("BB", IP_CT_TCP_FLAG_BE_LIBERAL | IP_CT_TCP_FLAG_SACK_PERM,
                     IP_CT_TCP_FLAG_BE_LIBERAL | IP_CT_TCP_FLAG_SACK_PERM)  # fmt: skip
_TCP_INFO = {
    state: _nested(CTA_PROTOINFO, _nested(
        CTA_PROTOINFO_TCP, _attr(CTA_PROTOINFO_TCP_STATE, bytes([n])),
        _attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, _FLAGS), _attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, _FLAGS)))
    for n, state in enumerate(TCP_STATES)
}  # fmt: skip
_STATUS_BITS = {"SEEN_REPLY": IPS_SEEN_REPLY, "ASSURED": IPS_ASSURED}
_STATUS: dict[str, int] = {}  # a status text -> the CTA_STATUS a created entry gets (network order, as a number)
_NAT: dict[str, bytes] = {}  # a NAT address -> its CTA_NAT_SRC
# A create up to its TCP state: the header, the nfgenmsg, both tuples, the status and the timeout, in one pack.
_CREATE = struct.Struct("=IHHII4sHH" + _TUPLE.format[1:] + "HH" + _TUPLE.format[1:] + "HHIHHI")


def _status_of(status: str) -> int:
    bits = _STATUS.get(status)
    if bits is None:
        value = IPS_CONFIRMED | sum(_STATUS_BITS[s] for s in status.split(",") if s in _STATUS_BITS)
        bits = _STATUS[status] = socket.htonl(value)
    return bits


def _nat_attr(nat: str) -> bytes:
    a = _NAT.get(nat)
    if a is None:
        a = _NAT[nat] = _nested(CTA_NAT_SRC, _attr(CTA_NAT_V4_MINIP, aton(nat)))
    return a


def create_message(f: Flow, seq: int) -> bytes:
    """Create the entry ``f`` describes, with ``f.nat`` as its NAT address and ``f.nat_port`` its public port
    (NLM_F_EXCL: an entry of the tuple that exists already is left as it is and answered with EEXIST).

    What :func:`tuple_attr`, ``CTA_STATUS``, ``CTA_TIMEOUT``, the TCP state and ``CTA_NAT_SRC`` make, packed
    at once: a push creates 100,000 of these."""
    proto = PROTO_NUMBERS[f.proto]
    src, dst = aton(f.src), aton(f.dst)
    sport, dport = socket.htons(f.sport), socket.htons(f.dport)
    tail = (_TCP_INFO[f.state or "ESTABLISHED"] if proto == 6 else b"") + _nat_attr(f.nat)
    return _CREATE.pack(
        _CREATE.size + len(tail), MSG_NEW, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, seq, 0, _NFGEN,
        TUPLE_BYTES, NLA_F_NESTED | CTA_TUPLE_ORIG,
        20, NLA_F_NESTED | CTA_TUPLE_IP, 8, CTA_IP_V4_SRC, src, 8, CTA_IP_V4_DST, dst,
        28, NLA_F_NESTED | CTA_TUPLE_PROTO, 5, CTA_PROTO_NUM, proto, 6, CTA_PROTO_SRC_PORT, sport,
        6, CTA_PROTO_DST_PORT, dport,
        TUPLE_BYTES, NLA_F_NESTED | CTA_TUPLE_REPLY,
        20, NLA_F_NESTED | CTA_TUPLE_IP, 8, CTA_IP_V4_SRC, dst, 8, CTA_IP_V4_DST, b"\0\0\0\0",
        28, NLA_F_NESTED | CTA_TUPLE_PROTO, 5, CTA_PROTO_NUM, proto, 6, CTA_PROTO_SRC_PORT, dport,
        6, CTA_PROTO_DST_PORT, socket.htons(f.nat_port),
        8, CTA_STATUS, _status_of(f.status), 8, CTA_TIMEOUT, socket.htonl(min(f.timeout, MAX_TIMEOUT)),
    ) + tail  # fmt: skip


def dump_request(seq: int) -> bytes:
    """List every IPv4 entry (the kernel filters by family; the caller by subnet)."""
    return message(IPCTNL_MSG_CT_GET, NLM_F_DUMP, seq, b"")


# ------------------------------------------------------------------ reading
def messages(data: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int]]:
    """(type, offset, length) of every netlink message in a buffer."""
    at, end = 0, len(data)
    while at + 16 <= end:
        length, kind = _HDR.unpack_from(data, at)[:2]
        if length < 16 or at + length > end:
            return
        yield kind, at, length
        at += (length + 3) & ~3


def error_of(data: bytes | bytearray | memoryview, at: int) -> int:
    """The errno of an NLMSG_ERROR message at ``at`` (0: an acknowledgement)."""
    return -int(struct.unpack_from("=i", data, at + 16)[0])


def errors(data: bytes | bytearray | memoryview) -> list[int]:
    """The errno of every NLMSG_ERROR in a buffer of netlink answers (0: an acknowledgement)."""
    return [e for e, _ in failures(data)]


def failures(data: bytes | bytearray | memoryview) -> list[tuple[int, int]]:
    """(errno, the request's sequence number) of every NLMSG_ERROR in a buffer of answers (-1: no request
    header in it). The answer carries the request's header after the errno (struct nlmsgerr)."""
    return [(error_of(data, at), _U32N.unpack_from(data, at + 28)[0] if length >= 32 else -1)
            for kind, at, length in messages(data) if kind == NLMSG_ERROR and length >= 20]  # fmt: skip


_STATUS_TEXT = {0: "", IPS_SEEN_REPLY: "SEEN_REPLY", IPS_ASSURED: "ASSURED",
                IPS_SEEN_REPLY | IPS_ASSURED: ",".join(STATUS_KEPT)}  # fmt: skip


def _pair_skeleton() -> tuple[int, int]:
    """The two tuples' attribute headers as one number, and the mask that leaves out their values."""
    pair = tuple_attr(CTA_TUPLE_ORIG, bytes(4), bytes(4), 0, 0, 0) + tuple_attr(CTA_TUPLE_REPLY, bytes(4), bytes(4), 0,
                                                                                0, 0)  # fmt: skip
    mask = bytearray(b"\xff" * len(pair))
    for base in (0, TUPLE_BYTES):  # the values and the padding after them
        for a, b in ((12, 16), (20, 24), (32, 36), (40, 44), (48, 52)):
            mask[base + a : base + b] = bytes(b - a)
    return int.from_bytes(pair, "little"), int.from_bytes(mask, "little")


_PAIR_SKELETON, _PAIR_MASK = _pair_skeleton()
_PAIR = struct.Struct("!12x4s4x4s8xB7xH6xH2x12x4s4x4s8xB7xH6xH2x")  # the values of CTA_TUPLE_ORIG, CTA_TUPLE_REPLY
_PAIR_BYTES = 2 * TUPLE_BYTES


def flow_of(
    data: bytes | bytearray | memoryview, at: int, length: int, want_src: Callable[[bytes], bool] | None = None
) -> Flow | None:
    """The flow a ctnetlink message (an event or a dump entry) describes, or None if it is not one we sync.

    The kernel puts the original and the reply tuple first; a message whose tuples are not both the IPv4
    layout above (IPv6, another protocol, a per-direction zone) is not ours. ``want_src``: skip entries
    whose client address (4 bytes) it refuses before reading the rest. An update or a new entry reads
    as op "A", an end as "D"; ``userspace``: a program caused the event (the message names its netlink
    port), not a packet (a dump's answers name our port too, but are parts of one answer: NLM_F_MULTI).
    """
    _, kind, flags, _, pid = _HDR.unpack_from(data, at)
    end, pos = at + length, at + 20 + _PAIR_BYTES
    if (kind != MSG_NEW and kind != MSG_DELETE) or pos > end or data[at + 16] != socket.AF_INET:
        return None
    if int.from_bytes(data[at + 20 : pos], "little") & _PAIR_MASK != _PAIR_SKELETON:
        return None
    src, dst, proto, sport, dport, rsrc, rdst, rproto, rsport, rdport = _PAIR.unpack_from(data, at + 20)
    if rproto != proto or rsrc != dst or rsport != dport or rdst == src or not (sport and dport and rdport):
        return None  # not source NAT only (destination NAT, or no NAT at all)
    name = PROTO_NAMES.get(proto)
    if name is None or (want_src is not None and not want_src(src)):
        return None
    status = timeout = 0
    state = -1
    need = 3 if proto == 6 else 2  # status, timeout (and a TCP state): the kernel puts CTA_ZONE before them all
    unpack_attr, unpack_u32 = _ATTR.unpack_from, _U32.unpack_from
    while pos + 4 <= end:
        alen, t = unpack_attr(data, pos)
        if alen < 4 or pos + alen > end:
            return None
        t &= 0x7FFF
        if t == CTA_STATUS and alen >= 8:
            status = unpack_u32(data, pos + 4)[0]
            need -= 1
        elif t == CTA_TIMEOUT and alen >= 8:
            timeout = unpack_u32(data, pos + 4)[0]
            need -= 1
        elif t == CTA_PROTOINFO:
            # Usually {CTA_PROTOINFO_TCP {CTA_PROTOINFO_TCP_STATE, ...}}: read in place, else walked.
            if alen >= 13:
                tcp_len, tcp_type, state_len, state_type, state = _PROTOINFO.unpack_from(data, pos + 4)
                if not (tcp_type & 0x7FFF == CTA_PROTOINFO_TCP and state_type == CTA_PROTOINFO_TCP_STATE
                        and state_len == 5 and 9 <= tcp_len <= alen - 4):  # fmt: skip
                    state = _tcp_state(data, pos + 4, pos + alen)
            else:
                state = _tcp_state(data, pos + 4, pos + alen)
            need -= 1
        elif t == CTA_ZONE and (alen < 6 or data[pos + 4] or data[pos + 5]):
            return None
        pos += (alen + 3) & ~3
        if need <= 0:
            break  # the rest (ids, marks, counters, labels) is not ours to read
    if name == "tcp":
        if not 0 < state < len(TCP_STATES):
            return None
        tcp_state = TCP_STATES[state]
    else:
        tcp_state = ""
    return Flow("D" if kind == MSG_DELETE else "A", name, ntoa(src), ntoa(dst), sport, dport, ntoa(rdst), rdport,
                timeout, _STATUS_TEXT[status & (IPS_SEEN_REPLY | IPS_ASSURED)], tcp_state,
                pid != 0 and not flags & NLM_F_MULTI)  # fmt: skip


def _tcp_state(data: bytes | bytearray | memoryview, at: int, end: int) -> int:
    """CTA_PROTOINFO_TCP_STATE inside a CTA_PROTOINFO payload (-1: none)."""
    while at + 4 <= end:
        alen, atype = _ATTR.unpack_from(data, at)
        if alen < 4 or at + alen > end:
            return -1
        if atype & 0x7FFF == CTA_PROTOINFO_TCP:
            inner, stop = at + 4, at + alen
            while inner + 4 <= stop:
                ilen, itype = _ATTR.unpack_from(data, inner)
                if ilen < 4 or inner + ilen > stop:
                    return -1
                if itype & 0x7FFF == CTA_PROTOINFO_TCP_STATE and ilen >= 5:
                    return int(data[inner + 4])
                inner += (ilen + 3) & ~3
            return -1
        at += (alen + 3) & ~3
    return -1


# ------------------------------------------------------------------ the event socket's filter
BPF_LD_LEN, BPF_LDW_ABS, BPF_LDH_ABS, BPF_LDB_ABS = 0x80, 0x20, 0x28, 0x30
BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x15, 0x35, 0x06
_SOCK_FILTER = struct.Struct("=HBBI")
# Where a TCP update's state sits when the kernel lays it out as usual (Linux 4.x to 6.x, zone 0): the two
# tuples, CTA_ID, CTA_STATUS, CTA_TIMEOUT, then CTA_PROTOINFO {CTA_PROTOINFO_TCP {CTA_PROTOINFO_TCP_STATE}}.
_EXPECT = ((126, CTA_ID), (134, CTA_STATUS), (142, CTA_TIMEOUT))
_STATE_AT = 160


def _be_type(kind: int) -> int:
    """An attribute type as a classic-BPF half-word load sees it (netlink is host order, BPF loads big-endian)."""
    return int.from_bytes(kind.to_bytes(2, "little"), "big")


def _be_word(value: int) -> int:
    """A host-order 32-bit field as a classic-BPF word load sees it."""
    return int.from_bytes(value.to_bytes(4, "little"), "big")


def event_filter(own_port: int = 0) -> list[tuple[int, int, int, int]]:
    """A classic BPF program for the event socket: the kernel drops a TCP update whose state is not ESTABLISHED
    (a flow's handshake and closing steps: most of a short TCP flow's events), which the service
    would read only to ignore, and (``own_port``, not 0) every event caused by a request from that
    netlink port (our own loads and deletes: the event names the requester's port in its header).
    Anything else, and any message not laid out as expected, is passed on: the service decides
    (:func:`flow_of`). Instructions are (code, jump if true, jump if false, k)."""
    accept, drop = -1, -2  # labels, resolved to jump offsets at the end
    prog = []
    if own_port:
        prog += [(BPF_LDW_ABS, 0, 0, 12), (BPF_JEQ_K, drop, 0, _be_word(own_port))]  # nlmsghdr.nlmsg_pid
    prog += [
        (BPF_LD_LEN, 0, 0, 0),
        (BPF_JGE_K, 0, accept, _STATE_AT + 4),
        (BPF_LDH_ABS, 0, 0, 4),
        (BPF_JEQ_K, 0, accept, _be_type(MSG_NEW)),
        (BPF_LDB_ABS, 0, 0, 20 + 4 + 28),  # the original tuple's protocol number
        (BPF_JEQ_K, 0, accept, 6),
    ]
    for offset, kind in _EXPECT:
        prog += [(BPF_LDH_ABS, 0, 0, offset), (BPF_JEQ_K, 0, accept, _be_type(kind))]
    prog += [
        (BPF_LDH_ABS, 0, 0, 150),
        (BPF_JEQ_K, 0, drop, _be_type(NLA_F_NESTED | CTA_PROTOINFO)),  # a TCP update with no state: nothing
        (BPF_LDH_ABS, 0, 0, 154),
        (BPF_JEQ_K, 0, accept, _be_type(NLA_F_NESTED | CTA_PROTOINFO_TCP)),
        (BPF_LDH_ABS, 0, 0, 158),
        (BPF_JEQ_K, 0, accept, _be_type(CTA_PROTOINFO_TCP_STATE)),
        (BPF_LDB_ABS, 0, 0, _STATE_AT),
        (BPF_JEQ_K, accept, drop, TCP_STATE_NAMES.index("ESTABLISHED")),
    ]
    at = {drop: len(prog), accept: len(prog) + 1}

    def jump(i: int, target: int) -> int:
        return at[target] - i - 1 if target < 0 else target

    out = [(code, jump(i, jt), jump(i, jf), k) for i, (code, jt, jf, k) in enumerate(prog)]
    return [*out, (BPF_RET_K, 0, 0, 0), (BPF_RET_K, 0, 0, 0xFFFFFFFF)]


def filter_bytes(prog: list[tuple[int, int, int, int]]) -> bytes:
    """The program as an array of struct sock_filter."""
    return b"".join(_SOCK_FILTER.pack(*ins) for ins in prog)
