"""The kernel's connection-tracking table, through the ``conntrack`` tool (conntrack-tools), and its guard counters.

A thin adapter: it runs commands and hands their text to :mod:`agent.host.flows`. The tool is C
and fast (a dump or load of thousands of entries takes tens of milliseconds); ``conntrack -R``
applies its input only at end of file, so every batch is one run. Every command needs
``CAP_NET_ADMIN`` (nat-ha-ctsync.service has it; the agent does not).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agent.host import flows
from agent.host.nat import NFT_FAMILY, NFT_TABLE, nft_inbound_counters

COMMAND_TIMEOUT_S = 30.0
EVENT_BUFFER_BYTES = 8 * 1024 * 1024  # the event socket's receive buffer (ENOBUFS when a burst overflows it)
ENOBUFS = "ENOBUFS"


class ConntrackError(Exception):
    """A conntrack command could not run or failed (one line)."""


def available() -> str | None:
    """Why the conntrack tool cannot be used here (None: it can)."""
    if shutil.which("conntrack") is None:
        return "the conntrack tool is not installed (apt-get install conntrack / dnf install conntrack-tools)"
    return None


def _run(argv: list[str], stdin: str | None = None, timeout: float = COMMAND_TIMEOUT_S) -> str:
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ConntrackError(f"{argv[0]}: not installed") from None
    except subprocess.TimeoutExpired:
        raise ConntrackError(f"{' '.join(argv[:3])}: no answer within {timeout:.0f} s") from None
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        raise ConntrackError(f"{' '.join(argv[:3])}: {err[-1] if err else f'exit {proc.returncode}'}")
    return proc.stdout


def dump_lines(subnets: Iterable[str]) -> list[str]:
    """The ``-o save`` lines of every entry whose original source is in ``subnets`` (IPv4)."""
    out: list[str] = []
    for net in subnets:
        out += _run(["conntrack", "-L", "-f", "ipv4", "-o", "save", "-s", net]).splitlines()
    return out


def iter_lines(subnets: Iterable[str]) -> Iterator[str]:
    """:func:`dump_lines` as the tool prints them (a push sends the first while the tool is still listing)."""
    for net in subnets:
        proc = subprocess.Popen(["conntrack", "-L", "-f", "ipv4", "-o", "save", "-s", net], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        assert proc.stdout is not None
        try:
            yield from proc.stdout
        finally:
            proc.stdout.close()
            if proc.wait(COMMAND_TIMEOUT_S) != 0:
                raise ConntrackError(f"conntrack -L -s {net}: exit {proc.returncode}")


def dump(subnets: Iterable[str]) -> list[flows.Flow]:
    """The flows among :func:`dump_lines` that :func:`agent.host.flows.parse` accepts."""
    return [f for f in map(flows.parse, dump_lines(subnets)) if f is not None]


PARALLEL_FROM = 4_000  # a load this large runs in two conntrack -R processes at once (the kernel takes both)


def load(lines: list[str]) -> None:
    """Create the entries of ``-A`` lines (``conntrack -R``; one that exists already is skipped).

    A large load is split over two processes running at once: the tool does its work line by line
    and most of a load's time is its own.
    """
    if len(lines) < PARALLEL_FROM:
        if lines:
            _run(["conntrack", "-R", "-"], stdin="\n".join(lines) + "\n")
        return
    half = len(lines) // 2
    with ThreadPoolExecutor(2) as pool:
        for result in [pool.submit(load, lines[:half]), pool.submit(load, lines[half:])]:
            result.result()


def inbound_counters() -> dict[str, int]:
    """Route table -> packets that reached this host's address for it (the guard chain's counters)."""
    return nft_inbound_counters(_run(["nft", "-j", "list", "chain", NFT_FAMILY, NFT_TABLE, "guard"], timeout=5.0))


@dataclass
class EventStream:
    """``conntrack -E``: every update and end of an entry, as save lines, to ``on_line`` (a reader thread).

    ``on_lost`` is called when the kernel dropped events (ENOBUFS: the socket buffer overflowed)
    and when the tool exits (it is started again by :meth:`start`); the caller then resyncs from a
    full listing. New entries are not asked for: a flow is worth syncing once it has a reply
    (an update), and every entry that ends sends one end event.
    """

    on_line: Callable[[str], None]
    on_lost: Callable[[str], None]
    proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["conntrack", "-E", "-e", "UPDATE,DESTROY", "-f", "ipv4", "-o", "save", "-b", str(EVENT_BUFFER_BYTES)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        proc = self.proc
        threading.Thread(target=self._read, args=(proc,), name="ctsync-events", daemon=True).start()
        threading.Thread(target=self._errors, args=(proc,), name="ctsync-events-err", daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.on_line(line)
        proc.wait()
        if proc is self.proc:
            self.on_lost(f"conntrack -E exited ({proc.returncode})")

    def _errors(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if ENOBUFS in line:
                self.on_lost("the kernel dropped connection-tracking events (ENOBUFS)")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
