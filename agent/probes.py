"""Peer probes: ICMP (icmplib, async) or TCP connect, in a rolling K-of-N window.

Probing runs on its own thread and asyncio loop at ``probe.interval``, all peers
at once, so a slow peer never delays the HA cycle; the cycle reads a snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.decide import PeerProbe

ProbeObserver = Callable[[str, bool, float], None]  # (peer, answered, rtt seconds)
ECHO_PAYLOAD = b"nat-ha-probe\n"


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

    def add(self, answered: bool, now: float) -> None:
        self.results.append(answered)
        if answered:
            self.last_reply = now

    def view(self, now: float) -> PeerProbe:
        lost = sum(1 for ok in self.results if not ok)
        return PeerProbe(
            up=lost < self.down_after, lost=lost, window=len(self.results), silent_for=max(0.0, now - self.last_reply)
        )


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
    ) -> None:
        if method not in ("icmp", "tcp", "tcp-echo"):
            raise ProbeSetupError(f"unknown probe method {method!r}")
        self.targets = targets
        self.method = method
        self.interval = interval
        self.timeout = timeout
        self.observer = observer
        self.clock = clock
        self.privileged = icmp_privilege(privileged) if method == "icmp" and targets else False
        now = clock()
        self._windows = {t.instance: Window(window, down_after, now) for t in targets}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    # ---------------------------------------------------------------- probes
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
        now = self.clock()
        with self._lock:
            self._windows[t.instance].add(ok, now)
        if self.observer is not None:
            self.observer(t.instance, ok, rtt)

    async def _run(self) -> None:
        next_round = time.monotonic()
        while not self._stop.is_set():
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
        if not self.targets:
            return
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="nat-ha-probes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
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
