"""The fake internet's recorder: which private host a request came from, and when it arrived."""

from __future__ import annotations

import socket
import struct
import time

from agent.lab import egresswatch


def _echo_request(source: str, fill: int, seq: int) -> bytes:
    ip = bytes([0x45, 0, 0, 84]) + bytes(8) + socket.inet_aton(source) + socket.inet_aton("203.0.113.10")
    icmp = struct.pack("!BBHHH", egresswatch.ECHO_REQUEST, 0, 0, 0x1234, seq) + bytes([fill]) * 56
    return ip + icmp


def test_a_private_host_is_told_by_its_pattern_and_the_marker_apart_from_both() -> None:
    assert egresswatch.parse_packet(_echo_request("203.0.113.101", 0xE1, 7)) == ("203.0.113.101", 1, 7)
    assert egresswatch.parse_packet(_echo_request("203.0.113.10", 0xAA, 1)) == ("203.0.113.10", -1, 1)
    marker = int(egresswatch.MARKER, 16)
    assert egresswatch.parse_packet(_echo_request("203.0.113.10", marker, 1))[1] == egresswatch.MARKER_HOST  # type: ignore[index]


def test_a_packet_is_dated_by_the_kernel_not_by_when_the_recorder_read_it() -> None:
    stamp = egresswatch.TIMEVAL.pack(1_700_000_000, 250_000)
    ancillary = [(socket.SOL_SOCKET, egresswatch.SO_TIMESTAMP, stamp)]
    assert egresswatch.arrival_time(ancillary) == 1_700_000_000.25
    assert egresswatch.arrival_time([]) > 1_700_000_000.25  # no stamp: now


def test_the_kernel_timestamps_a_real_socket_the_way_we_read_it() -> None:
    """A UDP pair on loopback: SO_TIMESTAMP (29 on Linux) and the timeval layout are what the kernel sends."""
    rx, tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, egresswatch.SO_TIMESTAMP, 1)
        rx.settimeout(2)
        before = time.time()
        tx.sendto(b"x", rx.getsockname())
        _, ancillary, _, _ = rx.recvmsg(16, socket.CMSG_SPACE(egresswatch.TIMEVAL.size))
        assert ancillary and ancillary[0][:2] == (socket.SOL_SOCKET, egresswatch.SO_TIMESTAMP)
        assert before - 0.01 <= egresswatch.arrival_time(ancillary) <= time.time()
