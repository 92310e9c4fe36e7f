"""What one agent process leaves to the next on this host: a lifetime lock and the session it ran.

The directory is systemd's ``RuntimeDirectory=nat-ha`` (``$RUNTIME_DIRECTORY``) with
``RuntimeDirectoryPreserve=restart``: it survives a restart of the unit (``systemctl restart``,
a crash restarted by ``Restart=always``) and is removed by a stop, so a session recorded here
is one a *restart* may take over, never one a stop left behind.

* ``agent.lock`` is ``flock``-ed for the whole life of the process (the kernel releases it
  when the process dies, however it dies). Holding it proves that no earlier agent process
  using this directory still runs, so none can start a new write any more.
* ``agent.json`` records the session this process runs (group, instance, table, session id),
  written when a session starts or is taken over and removed when the agent leaves the group
  (drain), and the start times of recent processes (a crash loop backs off, see
  :func:`backoff`).

Nothing here talks to AWS; :mod:`agent.handoff` decides what a recorded session is worth.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

LOCK_FILE = "agent.lock"
STATE_FILE = "agent.json"
FORMAT = 1  # bump when the fields below change incompatibly (an older file is then ignored)
ENV = "RUNTIME_DIRECTORY"  # set by systemd for RuntimeDirectory= (several: ':'-separated)

# Crash-loop back-off: starts closer together than LOOP_WINDOW count as a loop; the first
# FREE_STARTS of a loop go at once (a crash, a restart: the session is taken over), later ones wait
# BACKOFF_FIRST, doubling up to BACKOFF_MAX. systemd 252 (Debian 12, Amazon Linux 2023) has no
# RestartSteps=, and RestartSec= must stay short for a crash to be taken over in time.
LOOP_WINDOW = 10.0
FREE_STARTS = 5
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
STARTS_KEPT = 8


class LockHeld(Exception):
    """Another process holds the lifetime lock of this runtime directory."""


@dataclass(frozen=True)
class Recorded:
    """The session an earlier process of this agent ran, as it recorded it."""

    group: str
    instance: str
    table: str
    session: str
    pid: int
    ended: str = ""  # "restart" when it exited for a restart (SIGUSR2); "" when it just stopped running
    ended_at: float = 0.0  # CLOCK_MONOTONIC (shared by every process of this boot) of that exit


def default_dir() -> str:
    """systemd's runtime directory for the unit ("" outside systemd)."""
    return os.environ.get(ENV, "").split(":")[0]


def backoff(starts: list[float], now: float) -> float:
    """Seconds to wait before this start, given earlier starts (monotonic) of this runtime directory.

    Pure: ``starts`` are the earlier processes' start times, oldest first.
    """
    loop = 0
    last = now
    for t in reversed(starts):
        if last - t >= LOOP_WINDOW:
            break
        loop += 1
        last = t
    if loop < FREE_STARTS:
        return 0.0
    return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (loop - FREE_STARTS)))


class RunState:
    """The runtime directory of one agent process: its lock (held until exit) and its record."""

    def __init__(self, directory: Path, lock_fd: int, starts: list[float], recorded: Recorded | None, note: str):
        self.directory = directory
        self._lock_fd = lock_fd
        self.starts = starts  # earlier processes' start times (monotonic), oldest first
        self.recorded = recorded  # the session the previous process ran, if it left one
        self.note = note  # why a record found there is not usable ("" if none or usable)
        self._session: Recorded | None = None

    @classmethod
    def claim(cls, directory: str | Path, now: float) -> RunState:
        """Take the lifetime lock (or raise :class:`LockHeld`), read the previous record, note this start."""
        path = Path(directory)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = _read_text(path / LOCK_FILE).strip()
                raise LockHeld(
                    f"another nat-ha agent (pid {holder or '?'}) runs with the runtime directory {path}"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        starts, recorded, note = _read_state(path / STATE_FILE)
        state = cls(path, fd, starts, recorded, note)
        state._save(extra_start=now)
        return state

    # ------------------------------------------------------------ the record
    def remember(self, group: str, instance: str, table: str, session: str) -> None:
        """Record the session this process now runs (a restart of this unit may take it over)."""
        self._session = Recorded(group, instance, table, session, os.getpid())
        self._save()

    def ended_for_restart(self, now: float) -> None:
        """This process exits for a restart: its session stays for the next one to take over."""
        if self._session is not None:
            self._session = Recorded(**{**asdict(self._session), "ended": "restart", "ended_at": now})
        self._save()

    def forget(self) -> None:
        """The session is over (the agent left the group): nothing for a successor to take over."""
        self._session = None
        self.recorded = None
        self._save()

    def close(self) -> None:
        """Release the lock (the process exits anyway; tests call this)."""
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _save(self, extra_start: float | None = None) -> None:
        if extra_start is not None:
            self.starts = [*self.starts, extra_start][-STARTS_KEPT:]
        data = {
            "format": FORMAT,
            "starts": self.starts,
            "session": asdict(self._session) if self._session is not None else None,
        }
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".agent-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.directory / STATE_FILE)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _read_state(path: Path) -> tuple[list[float], Recorded | None, str]:
    """(earlier start times, the recorded session or None, why a record is unusable)."""
    text = _read_text(path)
    if not text:
        return [], None, ""
    try:
        data = json.loads(text)
    except ValueError:
        return [], None, f"{path} is not JSON"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return [], None, f"{path} has another format ({data.get('format') if isinstance(data, dict) else '?'})"
    raw_starts = data.get("starts")
    starts = [float(t) for t in raw_starts if isinstance(t, (int, float))] if isinstance(raw_starts, list) else []
    raw = data.get("session")
    if raw is None:
        return starts, None, ""
    try:
        recorded = Recorded(
            group=str(raw["group"]),
            instance=str(raw["instance"]),
            table=str(raw["table"]),
            session=str(raw["session"]),
            pid=int(raw["pid"]),
            ended=str(raw.get("ended", "")),
            ended_at=float(raw.get("ended_at", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        return starts, None, f"{path}: bad session record ({exc})"
    if not recorded.session:
        return starts, None, f"{path}: the session record has no session"
    return starts, recorded, ""
