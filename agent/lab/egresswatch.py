"""The fake internet's record of who it heard from: the source address of every echo request.

Run inside the lab's ``inet`` namespace (``python -m agent.lab.egresswatch OUT --deadline T``):
a raw ICMP socket receives a copy of every ICMP packet the namespace gets, and each echo
request becomes one line of OUT::

    <receive time> <source address> <pattern byte> <icmp seq>

The private hosts ping with ``ping -p XX`` (:func:`pattern`), so the last payload byte says
which private subnet a packet came from whatever its source address became on the way: that
is how a test sees subnet a's traffic arrive with subnet a's Elastic IP, another's, or a NAT's
own. Bounded: it stops at the deadline, when its parent goes, or after ``--max`` lines.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ECHO_REQUEST = 8
PATTERN_BASE = 0xE0  # private host k pings with the byte 0xe0 + k
MARKER = "df"  # the fake internet's own marker request (NetLab.arrivals: the record has caught up)
MARKER_HOST = -2


def pattern(host: int) -> str:
    """The ``ping -p`` argument of private host ``host`` (0, 1, 2 ...)."""
    return f"{PATTERN_BASE + host:02x}"


@dataclass(frozen=True)
class Arrival:
    t: float  # wall clock at the fake internet
    source: str
    host: int  # private host that sent it (-1: no lab pattern, MARKER_HOST: the record's marker)
    seq: int


def parse_packet(data: bytes) -> tuple[str, int, int] | None:
    """(source, pattern host, icmp seq) of an IPv4 echo request, else None."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    icmp = data[ihl:]
    if len(icmp) < 8 or icmp[0] != ECHO_REQUEST:
        return None
    source = socket.inet_ntoa(data[12:16])
    (seq,) = struct.unpack("!H", icmp[6:8])
    payload = icmp[8:]
    host = payload[-1] - PATTERN_BASE if payload and PATTERN_BASE <= payload[-1] < PATTERN_BASE + 16 else -1
    if payload and payload[-1] == int(MARKER, 16):
        host = MARKER_HOST
    return source, host, seq


SO_TIMESTAMP = 29  # Linux (asm-generic/socket.h); the socket module does not name it
TIMEVAL = struct.Struct("@qq")


def arrival_time(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive timestamp of a packet (SCM_TIMESTAMP), else now.

    The recorder may be descheduled for a while under load; its own clock would then date a
    packet by when it was read, not when the fake internet got it.
    """
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP and len(data) >= TIMEVAL.size:
            sec, usec = TIMEVAL.unpack(data[: TIMEVAL.size])
            return float(sec + usec / 1e6)
    return time.time()


def read(path: Path, offset: int = 0) -> tuple[list[Arrival], int]:
    """Complete lines of a record from byte ``offset``: (arrivals, offset to read from next time)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return [], offset
    complete = chunk[: chunk.rfind(b"\n") + 1]
    out = []
    for line in complete.decode(errors="replace").splitlines():
        words = line.split()
        if len(words) == 4:
            try:
                out.append(Arrival(float(words[0]), words[1], int(words[2]), int(words[3])))
            except ValueError:
                continue
    return out, offset + len(complete)


def watch(out: Path, deadline: float, max_lines: int) -> int:
    parent = os.getppid()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)  # the kernel's arrival time, not our read's
    sock.settimeout(0.5)
    written = 0
    with open(out, "a", buffering=1) as fh:
        print("ready", flush=True)
        while time.time() < deadline and os.getppid() == parent and written < max_lines:
            try:
                data, ancillary, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(TIMEVAL.size))
            except TimeoutError:
                continue
            t = arrival_time(ancillary)
            found = parse_packet(data)
            if found is None:
                continue
            source, host, seq = found
            fh.write(f"{t:.6f} {source} {host} {seq}\n")
            written += 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("out", type=Path)
    p.add_argument("--deadline", type=float, required=True, help="stop at this wall-clock time")
    p.add_argument("--max", type=int, default=2_000_000, help="stop after this many lines")
    args = p.parse_args(argv)
    return watch(args.out, args.deadline, args.max)


if __name__ == "__main__":
    sys.exit(main())
