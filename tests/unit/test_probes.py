"""Peer probes on loopback: tcp-echo against a real responder, ICMP when allowed, the K-of-N window."""

from __future__ import annotations

import os
import socket
import time

import pytest

from agent.probes import EchoResponder, Prober, ProbeSetupError, Target, Window


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


def test_window_k_of_n() -> None:
    w = Window(size=5, down_after=3, now=0.0)
    for ok in (True, False, True, False):
        w.add(ok, 1.0)
    assert w.view(1.0).up and w.view(1.0).lost == 2
    w.add(False, 1.2)
    v = w.view(1.5)
    assert not v.up and v.lost == 3 and v.silent_for == pytest.approx(0.5)


def test_tcp_echo_up_then_down_when_the_peer_stops_answering() -> None:
    port = free_port()
    responder = EchoResponder("127.0.0.1", port)
    responder.start()
    seen: list[bool] = []
    prober = Prober(
        [Target("i-b", "127.0.0.1", port)],
        method="tcp-echo",
        interval=0.05,
        timeout=0.04,
        window=5,
        down_after=3,
        observer=lambda peer, ok, rtt: seen.append(ok),
    )
    prober.start()
    try:
        assert wait(lambda: prober.rounds >= 5)
        assert prober.snapshot()["i-b"].up and all(seen[:5])
        responder.stop()
        assert wait(lambda: not prober.snapshot()["i-b"].up), "a silent peer was never judged down"
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


@pytest.mark.skipif(os.geteuid() != 0, reason="privileged ICMP needs root or CAP_NET_RAW")
def test_icmp_probe_of_loopback() -> None:
    prober = Prober(
        [Target("i-b", "127.0.0.1")],
        method="icmp",
        interval=0.05,
        timeout=0.04,
        window=3,
        down_after=2,
        privileged="true",
    )
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
