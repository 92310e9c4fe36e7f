"""Peer probes on loopback: tcp-echo against a real responder, ICMP when allowed, the K-of-N window.

ICMP tests that need root skip without it; the silent-peer test runs in a network namespace it
creates (``unshare --net``), so its firewall rule and ping_group_range never touch the host.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.host.probes import (
    ICMP_PAYLOAD,
    EchoResponder,
    EchoRound,
    Prober,
    ProbeSetupError,
    Target,
    Window,
    _filter_raw_socket,
    echo_request,
    icmp_checksum,
    parse_echo_reply,
)

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="privileged ICMP needs root or CAP_NET_RAW")


def icmp_prober(
    targets: list[Target], privileged: str = "true", *, kind: type[Prober] = Prober, **kwargs: Any
) -> Prober:
    """An ICMP prober (of class ``kind``) with the tests' short cadence unless ``kwargs`` say otherwise."""
    settings: dict[str, Any] = {"interval": 0.1, "timeout": 0.08, "window": 5, "down_after": 3}
    settings.update(kwargs)
    return kind(targets, method="icmp", privileged=privileged, **settings)


def test_window_k_of_n() -> None:
    w = Window(size=5, down_after=3, now=0.0)
    for ok in (True, False, True, False):
        w.add(ok, 1.0)
    assert w.view(1.0).up and w.view(1.0).lost == 2
    w.add(False, 1.2)
    v = w.view(1.5)
    assert not v.up and v.lost == 3 and v.silent_for == pytest.approx(0.5)


def test_window_says_when_a_result_turns_the_peer_down() -> None:
    w = Window(size=5, down_after=3, now=0.0)
    turned = [w.add(ok, 1.0) for ok in (True, False, False, True, False, False, True, True, True, True)]
    # down at the third loss in the window (index 4), stays down (index 5), up again once two
    # losses have left the window (index 8), and never "turned down" twice for one transition
    assert turned == [False, False, False, False, True, False, False, False, False, False]
    assert w.up


def test_tcp_echo_up_then_down_when_the_peer_stops_answering() -> None:
    port = free_port()
    responder = EchoResponder("127.0.0.1", port)
    responder.start()
    seen: list[bool] = []
    downs: list[str] = []
    prober = Prober(
        [Target("i-b", "127.0.0.1", port)],
        method="tcp-echo",
        interval=0.05,
        timeout=0.04,
        window=5,
        down_after=3,
        observer=lambda peer, ok, rtt: seen.append(ok),
        on_down=downs.append,
    )
    prober.start()
    try:
        assert wait(lambda: prober.rounds >= 5)
        assert prober.snapshot()["i-b"].up and all(seen[:5]) and downs == []
        responder.stop()
        assert wait(lambda: not prober.snapshot()["i-b"].up), "a silent peer was never judged down"
        rounds = prober.rounds
        assert wait(lambda: prober.rounds >= rounds + 3)
        assert downs == ["i-b"], "the daemon is woken once when the peer turns down, not every lost probe"
    finally:
        prober.stop()
        responder.stop()


def test_tcp_connect_probe_to_a_closed_port_is_lost() -> None:
    prober = Prober(
        [Target("i-b", "127.0.0.1", free_port())], method="tcp", interval=0.05, timeout=0.04, window=3, down_after=2
    )
    prober.start()
    try:
        assert wait(lambda: not prober.snapshot()["i-b"].up)
    finally:
        prober.stop()


def test_peers_can_join_and_leave_while_probing() -> None:
    """The members changed (a NAT replaced): a lone prober starts probing a new peer, stops a gone one."""
    port = free_port()
    responder = EchoResponder("127.0.0.1", port)
    responder.start()
    seen: list[str] = []
    prober = Prober([], method="tcp-echo", interval=0.05, timeout=0.04, window=5, down_after=3,
                    observer=lambda peer, ok, rtt: seen.append(peer))  # fmt: skip
    prober.start()  # no peer yet (the first NAT of a stack): it starts anyway
    try:
        assert wait(lambda: prober.rounds >= 2) and prober.snapshot() == {}
        prober.set_targets([Target("i-new", "127.0.0.1", port)])
        assert "i-new" in prober.snapshot(), "a new peer is reported at once (empty window)"
        assert wait(lambda: prober.snapshot()["i-new"].window >= 3) and prober.snapshot()["i-new"].up
        prober.set_targets([Target("i-other", "127.0.0.1", port)])
        assert set(prober.snapshot()) == {"i-other"}, "a gone peer is not reported any more"
        rounds = prober.rounds
        assert wait(lambda: prober.rounds >= rounds + 2)
        count = seen.count("i-new")
        assert wait(lambda: prober.rounds >= rounds + 4) and seen.count("i-new") == count, "still probing i-new"
    finally:
        prober.stop()
        responder.stop()


@needs_root
def test_icmp_probe_of_loopback() -> None:
    prober = icmp_prober([Target("i-b", "127.0.0.1")], interval=0.05, timeout=0.04, window=3, down_after=2)
    prober.start()
    try:
        assert wait(lambda: prober.rounds >= 3)
        view = prober.snapshot()["i-b"]
        assert view.up and view.lost == 0
    finally:
        prober.stop()


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ProbeSetupError):
        Prober([], method="udp", interval=0.2, timeout=0.1, window=5, down_after=3)


# ------------------------------------------------------------------ ICMP: replies and rounds, no socket needed
def ip_packet(icmp: bytes, source: str = "127.0.0.1", options: bytes = b"") -> bytes:
    """What a raw socket reads: an IPv4 header (with ``options``, if any) then the ICMP message."""
    ihl = (20 + len(options)) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(icmp), 0, 0, 64, 1, 0,
                         socket.inet_aton(source), socket.inet_aton("127.0.0.1"))  # fmt: skip
    return header + options + icmp


def echo_reply(identifier: int, sequence: int, payload: bytes = ICMP_PAYLOAD) -> bytes:
    header = struct.pack("!BBHHH", 0, 0, 0, identifier, sequence)
    return struct.pack("!BBHHH", 0, 0, icmp_checksum(header + payload), identifier, sequence) + payload


def test_echo_request_is_well_formed() -> None:
    packet = echo_request(0x1234, 0xBEEF)
    assert packet[0] == 8 and packet[1] == 0 and packet[4:8] == b"\x12\x34\xbe\xef"
    assert len(packet) == 64 and icmp_checksum(packet) == 0  # a valid checksum sums to zero


def test_parse_echo_reply_raw_and_datagram() -> None:
    reply = echo_reply(7, 42)
    assert parse_echo_reply(ip_packet(reply), ip_header=True) == (7, 42)
    assert parse_echo_reply(ip_packet(reply, options=b"\x01" * 4), ip_header=True) == (7, 42)  # IHL 6
    assert parse_echo_reply(reply, ip_header=False) == (7, 42)  # a Linux datagram socket: no IP header


def test_parse_echo_reply_ignores_what_is_not_a_reply() -> None:
    assert parse_echo_reply(ip_packet(echo_request(7, 42)), ip_header=True) is None  # our own request, on lo
    unreachable = struct.pack("!BBHI", 3, 1, 0, 0) + ip_packet(echo_request(7, 42))[:28]
    assert parse_echo_reply(ip_packet(unreachable), ip_header=True) is None  # an error quoting our request
    assert parse_echo_reply(ip_packet(echo_reply(7, 42))[:26], ip_header=True) is None  # truncated
    assert parse_echo_reply(b"\x45" + bytes(10), ip_header=True) is None
    assert parse_echo_reply(b"", ip_header=False) is None
    assert parse_echo_reply(b"\x60" + bytes(47), ip_header=True) is None  # not IPv4


def test_echo_round_takes_only_its_own_replies() -> None:
    r = EchoRound(identifier=7, sequence=42, timeout=0.15)
    r.sent("127.0.0.1", 10.0)
    r.sent("127.0.0.2", 10.0)
    assert r.deadline == pytest.approx(10.15) and not r.done
    assert r.match("127.0.0.1", 8, 42, 10.01) is None  # another prober's (or program's) identifier
    assert r.match("127.0.0.1", 7, 41, 10.01) is None  # the previous round's reply, come late
    assert r.match("127.0.0.9", 7, 42, 10.01) is None  # from an address this round did not probe
    assert r.match("127.0.0.1", 7, 42, 10.02) == pytest.approx(0.02)
    assert r.match("127.0.0.1", 7, 42, 10.03) is None  # a duplicate
    assert r.match("127.0.0.2", 7, 42, 10.16) is None  # late: lost, as if it never came
    assert not r.done and set(r.waiting) == {"127.0.0.2"}


def test_echo_round_done_when_every_address_answered() -> None:
    r = EchoRound(identifier=1, sequence=0, timeout=0.1)
    r.sent("127.0.0.1", 0.0)
    assert r.match("127.0.0.1", 1, 0, 0.001) is not None and r.done


# ---------------------------------------------------------------------- ICMP on loopback (root)


@needs_root
def test_icmp_several_targets_one_socket() -> None:
    seen: list[tuple[str, bool, float]] = []
    targets = [Target("i-b", "127.0.0.1"), Target("i-c", "127.0.0.2"), Target("i-d", "127.0.0.2")]
    prober = icmp_prober(targets, observer=lambda peer, ok, rtt: seen.append((peer, ok, rtt)))
    prober.start()
    try:
        assert wait(lambda: prober.rounds >= 5)
        views = prober.snapshot()
        assert all(v.up and v.lost == 0 for v in views.values()), views
        rounds = prober.rounds
        assert wait(lambda: prober.rounds > rounds), "rounds stopped advancing"
        for peer in ("i-b", "i-c", "i-d"):
            mine = [(ok, rtt) for p, ok, rtt in list(seen) if p == peer]
            assert len(mine) >= 5 and all(ok and 0 < rtt < 0.08 for ok, rtt in mine), (peer, mine)
        assert prober._sockets_opened == 1  # one socket for every round and target
    finally:
        prober.stop()
    assert prober._thread is not None and not prober._thread.is_alive()
    assert prober._sock is None  # closed on stop


@needs_root
def test_icmp_stop_is_prompt_and_closes_the_socket() -> None:
    prober = icmp_prober([Target("i-b", "127.0.0.1")], interval=2.0, timeout=1.0)
    prober.start()
    assert wait(lambda: prober.rounds >= 1)
    sock = prober._sock
    assert sock is not None
    t0 = time.monotonic()
    prober.stop()
    assert time.monotonic() - t0 < 1.0, "stop waited for the next round"
    assert prober._thread is not None and not prober._thread.is_alive()
    assert sock.fileno() == -1


@needs_root
def test_raw_socket_filter_passes_only_our_replies() -> None:
    from icmplib import ICMPv4Socket

    with ICMPv4Socket(privileged=True) as icmp:
        sock = icmp.sock
        assert _filter_raw_socket(sock, 0x4242) == "bpf"
        sock.settimeout(1.0)
        sock.sendto(echo_request(0x4243, 1), ("127.0.0.1", 0))  # someone else's ping
        sock.sendto(echo_request(0x4242, 2), ("127.0.0.1", 0))  # ours
        packet, _ = sock.recvfrom(2048)
        assert parse_echo_reply(packet, ip_header=True) == (0x4242, 2)  # neither requests nor their reply
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recvfrom(2048)


class FailingSends(Prober):
    """Sends fail (as with a network unreachable) while ``fail`` > 0."""

    fail = 0

    def _sendto(self, sock: socket.socket, packet: bytes, address: str) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise OSError(errno.ENETUNREACH, "injected: network is unreachable")
        super()._sendto(sock, packet, address)


@needs_root
def test_icmp_send_error_counts_lost_and_reopens_the_socket(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[bool] = []
    prober = icmp_prober(
        [Target("i-b", "127.0.0.1")], kind=FailingSends, observer=lambda peer, ok, rtt: seen.append(ok)
    )
    assert isinstance(prober, FailingSends)
    prober.start()
    try:
        assert wait(lambda: prober.rounds >= 3)
        before = len(seen)
        prober.fail = 2
        assert wait(lambda: prober._sockets_opened >= 3), "the socket was not reopened after each error"
        assert wait(lambda: len(seen) >= before + 5)
        after = seen[before:]
        assert after.count(False) == 2 and after[-1], after
        assert prober.snapshot()["i-b"].up  # 2 lost of 5 < down_after
        assert "reopening" in caplog.text
    finally:
        prober.stop()


@needs_root
def test_icmp_socket_closed_under_the_prober_is_reopened() -> None:
    seen: list[bool] = []
    prober = icmp_prober([Target("i-b", "127.0.0.1")], observer=lambda peer, ok, rtt: seen.append(ok))
    prober.start()
    try:
        assert wait(lambda: prober.rounds >= 3)
        loop, sock = prober._loop, prober._sock
        assert loop is not None and sock is not None
        loop.call_soon_threadsafe(sock.close)
        assert wait(lambda: prober._sockets_opened >= 2)
        count = len(seen)
        assert wait(lambda: len(seen) >= count + 3) and all(seen[count:]), seen
    finally:
        prober.stop()


@needs_root
def test_icmp_observer_error_does_not_stop_probing() -> None:
    def broken(peer: str, ok: bool, rtt: float) -> None:
        raise RuntimeError("observer bug")

    prober = icmp_prober([Target("i-b", "127.0.0.1")], observer=broken)
    prober.start()
    try:
        assert wait(lambda: prober.rounds >= 5)
        assert prober.snapshot()["i-b"].up
    finally:
        prober.stop()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@needs_root
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1 here")
def test_icmp_ipv6_target_beside_ipv4_ones() -> None:
    prober = icmp_prober([Target("i-b", "127.0.0.1"), Target("i-c", "::1")], timeout=0.5, interval=0.1)
    prober.start()
    try:
        assert wait(lambda: prober.rounds >= 3)
        views = prober.snapshot()
        assert views["i-b"].up and views["i-c"].up and views["i-c"].lost == 0, views
    finally:
        prober.stop()


def ping_group_allows_us() -> bool:
    try:
        with open("/proc/sys/net/ipv4/ping_group_range") as fh:
            low, high = (int(x) for x in fh.read().split())
    except (OSError, ValueError):
        return False
    return low <= os.getgid() <= high


@pytest.mark.skipif(not ping_group_allows_us(), reason="net.ipv4.ping_group_range does not allow our group")
def test_icmp_unprivileged_on_loopback() -> None:
    prober = icmp_prober([Target("i-b", "127.0.0.1"), Target("i-c", "127.0.0.2")], privileged="false")
    assert prober.privileged is False
    prober.start()
    try:
        assert wait(lambda: prober.rounds >= 3)
        assert all(v.up and v.lost == 0 for v in prober.snapshot().values())
    finally:
        prober.stop()


# ------------------------------------------- ICMP in a network namespace of our own (root)
NETNS_SCRIPT = """
import json, sys, time
from agent.host.probes import Prober, Target

answered = {"i-up": 0, "i-down": 0}
def observe(peer, ok, rtt):
    answered[peer] += ok
prober = Prober([Target("i-up", "127.0.0.1"), Target("i-down", "127.0.0.3")], method="icmp", interval=0.1,
                timeout=0.08, window=5, down_after=3, privileged=sys.argv[1], observer=observe)
prober.start()
deadline = time.monotonic() + 10
while prober.rounds < 12 and time.monotonic() < deadline:
    time.sleep(0.05)
prober.stop()
views = prober.snapshot()
print(json.dumps({"privileged": prober.privileged, "rounds": prober.rounds, "answered": answered,
                  "up": {p: v.up for p, v in views.items()}, "lost": {p: v.lost for p, v in views.items()}}))
"""


def in_own_netns(shell: str) -> subprocess.CompletedProcess[str]:
    """Run ``shell`` in a new network namespace (only lo, brought up), gone when it exits."""
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", f"ip link set lo up && {shell}"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def netns_usable() -> bool:
    if os.geteuid() != 0 or not all(shutil.which(c) for c in ("unshare", "ip", "iptables")):
        return False
    try:
        return in_own_netns("true").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not netns_usable(), reason="needs root, unshare, ip and iptables")
@pytest.mark.parametrize("privileged", ["true", "false"])
def test_icmp_only_the_silent_target_is_down(privileged: str) -> None:
    # 127.0.0.3 drops echo requests (in this namespace only); 127.0.0.1 answers. In the namespace
    # ping_group_range is the namespace's own, so the datagram socket can be allowed there alone.
    setup = "iptables -A INPUT -p icmp --icmp-type echo-request -d 127.0.0.3 -j DROP"
    if privileged == "false":
        setup += " && sysctl -qw net.ipv4.ping_group_range='0 2147483647'"
    script = f"{setup} && exec {shlex.quote(sys.executable)} -c {shlex.quote(NETNS_SCRIPT)} {privileged}"
    done = in_own_netns(script)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["privileged"] is (privileged == "true")
    assert result["rounds"] >= 12
    assert result["up"] == {"i-up": True, "i-down": False}, result
    assert result["lost"]["i-up"] == 0 and result["lost"]["i-down"] == 5, result
    assert result["answered"]["i-down"] == 0 and result["answered"]["i-up"] >= 12, result
