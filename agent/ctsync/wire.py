"""The sync protocol between NATs: an authenticated handshake, then MACed frames. Pure (bytes in, bytes out).

Why HMAC with a group key, not mutual TLS: the NATs of a group already share a secret channel for
nothing else, the messages need integrity and authenticity (a forged entry is a forged connection)
rather than secrecy (they are connection tuples inside the VPC), and a key file is one secret to
provision (the stacks can put it in a Secrets Manager secret) where TLS needs a CA, a certificate
per instance and their rotation. The handshake binds each connection to both instances and two
fresh nonces, so a recorded connection cannot be replayed; every frame carries a sequence number
under the connection's key, so frames cannot be dropped, reordered or replayed within it.

Handshake (client = the NAT that sends flows, server = the one that receives them)::

    client -> server  HELLO   magic | client id | server id | client nonce | HMAC(group key, ...)
    server -> client  WELCOME magic | server nonce | HMAC(group key, client nonce | server nonce | ids)
    session key = HMAC(group key, "session" | client nonce | server nonce | client id | server id)

Frame: ``length (4) | kind (1) | seq (8) | payload | HMAC(session key, kind | seq | payload)`` (32).
Payload of a data frame: a 2-byte header length, a JSON header, then zlib-compressed flow records of
26 bytes each (network order)::

    op (0 entry, 1 ended) | protocol number | client address | server address | client port | server port
    | NAT address | public port | timeout (4) | status (bit 0 SEEN_REPLY, bit 1 ASSURED) | TCP state number

Binary, not the ``conntrack`` tool's save lines: a push of 100,000 flows is read in a tenth of the
time, and every field is checked as it is read (a record that is not a TCP or UDP flow with ports
and, for TCP, a known state is dropped).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agent.host.flows import MAX_TIMEOUT, TCP_STATE_NAMES, Flow, aton, ntoa

MAGIC = b"NHCT2"
NONCE_BYTES = 16
MAC_BYTES = 32
MAX_FRAME = 64 * 1024 * 1024
MIN_KEY_BYTES = 32
_ID_MAX = 64

# Frame kinds. Sender -> receiver:
DELTA = 1  # changes of one table since the last batch
SNAPSHOT = 2  # a part of a table's full list (resync): the receiver's copy is made equal to it at the last part
PUSH = 3  # a part of a table's full list before a planned hand-over: the receiver flushes the table first
FINAL = 4  # the giver of a hand-over stops streaming the table
PING = 5
# Receiver -> sender:
ACK = 16

_HEAD = struct.Struct("!IBQ")


class ProtocolError(Exception):
    """The peer broke the protocol or failed authentication (the connection is closed)."""


def load_key(text: bytes) -> bytes:
    """The group key from a key file's bytes (surrounding whitespace ignored); at least 32 bytes."""
    key = text.strip()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the sync key must be at least {MIN_KEY_BYTES} characters (openssl rand -hex 32)")
    return key


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(struct.pack("!I", len(p)) + p for p in parts), hashlib.sha256).digest()


def _id(text: str) -> bytes:
    raw = text.encode()
    if not 0 < len(raw) <= _ID_MAX:
        raise ValueError(f"instance id {text!r}: 1-{_ID_MAX} bytes")
    return raw


def _pack_str(raw: bytes) -> bytes:
    return struct.pack("!B", len(raw)) + raw


def _unpack_str(data: bytes, at: int) -> tuple[str, int]:
    if at >= len(data):
        raise ProtocolError("truncated handshake")
    n = data[at]
    raw = data[at + 1 : at + 1 + n]
    if len(raw) != n:
        raise ProtocolError("truncated handshake")
    return raw.decode(errors="replace"), at + 1 + n


def hello(key: bytes, client: str, server: str, nonce: bytes | None = None) -> tuple[bytes, bytes]:
    """The client's HELLO message and its nonce."""
    nonce = nonce or os.urandom(NONCE_BYTES)
    c, s = _id(client), _id(server)
    body = MAGIC + _pack_str(c) + _pack_str(s) + nonce
    return body + _mac(key, b"hello", c, s, nonce), nonce


def read_hello(key: bytes, data: bytes) -> tuple[str, str, bytes]:
    """(client id, server id, client nonce) of a HELLO, or :class:`ProtocolError` if it is not authentic."""
    if not data.startswith(MAGIC):
        raise ProtocolError("not a nat-ha sync peer (bad magic)")
    client, at = _unpack_str(data, len(MAGIC))
    server, at = _unpack_str(data, at)
    nonce, mac = data[at : at + NONCE_BYTES], data[at + NONCE_BYTES :]
    if len(nonce) != NONCE_BYTES or not hmac.compare_digest(mac, _mac(key, b"hello", client.encode(),
                                                                       server.encode(), nonce)):  # fmt: skip
        raise ProtocolError(f"HELLO from {client!r} failed authentication (another group key?)")
    return client, server, nonce


def welcome(
    key: bytes, client: str, server: str, client_nonce: bytes, nonce: bytes | None = None
) -> tuple[bytes, bytes]:
    """The server's WELCOME and its nonce."""
    nonce = nonce or os.urandom(NONCE_BYTES)
    return MAGIC + nonce + _mac(key, b"welcome", client_nonce, nonce, _id(client), _id(server)), nonce


def read_welcome(key: bytes, data: bytes, client: str, server: str, client_nonce: bytes) -> bytes:
    """The server nonce of an authentic WELCOME."""
    if not data.startswith(MAGIC) or len(data) != len(MAGIC) + NONCE_BYTES + MAC_BYTES:
        raise ProtocolError("bad WELCOME")
    nonce, mac = data[len(MAGIC) : len(MAGIC) + NONCE_BYTES], data[len(MAGIC) + NONCE_BYTES :]
    if not hmac.compare_digest(mac, _mac(key, b"welcome", client_nonce, nonce, _id(client), _id(server))):
        raise ProtocolError(f"WELCOME from {server!r} failed authentication (another group key?)")
    return nonce


def session_key(key: bytes, client_nonce: bytes, server_nonce: bytes, client: str, server: str) -> bytes:
    return _mac(key, b"session", client_nonce, server_nonce, _id(client), _id(server))


def handshake_frame(message: bytes) -> bytes:
    """A handshake message on the wire (length-prefixed, not MACed: it carries its own MAC)."""
    return struct.pack("!I", len(message)) + message


@dataclass
class Sealer:
    """Seals outgoing frames of one connection direction (sequence numbers from 1)."""

    key: bytes
    seq: int = 0

    def seal(self, kind: int, payload: bytes) -> bytes:
        self.seq += 1
        head = struct.pack("!BQ", kind, self.seq)
        mac = hmac.new(self.key, head + payload, hashlib.sha256).digest()
        return struct.pack("!I", 1 + 8 + len(payload) + MAC_BYTES) + head + payload + mac


@dataclass
class Opener:
    """Checks incoming frames of one connection direction: authentic and in sequence."""

    key: bytes
    seq: int = 0

    def open(self, body: bytes) -> tuple[int, int, bytes]:
        """(kind, seq, payload) of a frame body (what followed its length)."""
        if len(body) < 1 + 8 + MAC_BYTES:
            raise ProtocolError("short frame")
        head, payload, mac = body[:9], body[9:-MAC_BYTES], body[-MAC_BYTES:]
        if not hmac.compare_digest(mac, hmac.new(self.key, head + payload, hashlib.sha256).digest()):
            raise ProtocolError("frame failed authentication")
        kind, seq = struct.unpack("!BQ", head)
        if seq != self.seq + 1:
            raise ProtocolError(f"frame {seq} out of sequence (expected {self.seq + 1})")
        self.seq = seq
        return kind, seq, payload


def frame_length(prefix: bytes) -> int:
    """The body length announced by a frame's first 4 bytes (bounded)."""
    (n,) = struct.unpack("!I", prefix)
    if n > MAX_FRAME:
        raise ProtocolError(f"frame of {n} bytes is over the {MAX_FRAME}-byte limit")
    return int(n)


_RECORD = struct.Struct("!BB4s4sHH4sHIBB")
_PROTO = {"tcp": 6, "udp": 17}
_PROTO_NAME = {6: "tcp", 17: "udp"}
_STATUS_BITS = {"": 0, "SEEN_REPLY": 1, "ASSURED": 2, "SEEN_REPLY,ASSURED": 3}
_STATUS_TEXT = ("", "SEEN_REPLY", "ASSURED", "SEEN_REPLY,ASSURED")
_STATE_NUMBER = {name: n for n, name in enumerate(TCP_STATE_NAMES)}


def pack_flows(flows: Iterable[Flow]) -> bytes:
    """The flows as records (uncompressed)."""
    pack = _RECORD.pack
    return b"".join(
        pack(f.op == "D", _PROTO[f.proto], aton(f.src), aton(f.dst), f.sport, f.dport, aton(f.nat), f.nat_port,
             min(f.timeout, MAX_TIMEOUT), _STATUS_BITS.get(f.status, 0), _STATE_NUMBER.get(f.state, 0))
        for f in flows
    )  # fmt: skip


def unpack_flows(body: bytes) -> list[Flow]:
    """The flows of a record body; a record that is not a flow we sync is left out."""
    if len(body) % _RECORD.size:
        raise ProtocolError(f"flow records: {len(body)} bytes is not a whole number of records")
    out = []
    states = len(TCP_STATE_NAMES)
    for op, proto, src, dst, sport, dport, nat, nat_port, timeout, status, state in _RECORD.iter_unpack(body):
        name = _PROTO_NAME.get(proto)
        if name is None or op > 1 or not (sport and dport and nat_port) or status > 3:
            continue
        if name == "tcp":
            if not 0 < state < states:
                continue
            tcp_state = TCP_STATE_NAMES[state]
        elif state:
            continue
        else:
            tcp_state = ""
        out.append(Flow("D" if op else "A", name, ntoa(src), ntoa(dst), sport, dport, ntoa(nat), nat_port,
                        min(timeout, MAX_TIMEOUT), _STATUS_TEXT[status], tcp_state))  # fmt: skip
    return out


def encode(header: dict[str, Any], flows: Iterable[Flow] | None = None) -> bytes:
    """A data frame's payload: the JSON header and, compressed, the flows."""
    head = json.dumps(header, separators=(",", ":")).encode()
    records = pack_flows(flows) if flows is not None else b""
    body = zlib.compress(records, 1) if records else b""
    return struct.pack("!H", len(head)) + head + body


def decode(payload: bytes) -> tuple[dict[str, Any], list[Flow]]:
    """(header, flows) of a data frame's payload."""
    if len(payload) < 2:
        raise ProtocolError("short payload")
    (n,) = struct.unpack("!H", payload[:2])
    try:
        header = json.loads(payload[2 : 2 + n])
        body = payload[2 + n :]
        records = zlib.decompressobj().decompress(body, MAX_FRAME * 8) if body else b""
    except (ValueError, zlib.error) as exc:
        raise ProtocolError(f"bad payload: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad payload header")
    return header, unpack_flows(records)
