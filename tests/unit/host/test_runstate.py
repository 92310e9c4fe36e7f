"""The runtime directory: the lifetime lock, the session record, the crash-loop back-off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.host import runstate
from agent.host.runstate import LockHeld, Recorded, RunState, backoff


def test_a_session_recorded_is_read_by_the_next_process(tmp_path: Path) -> None:
    first = RunState.claim(tmp_path, now=10.0)
    assert first.recorded is None and first.note == "" and first.starts == [10.0]
    first.remember("lab", "i-a", "nat-ha", "s-1")
    first.close()  # the process exits (a crash: nothing else is written)
    second = RunState.claim(tmp_path, now=12.0)
    assert second.recorded == Recorded("lab", "i-a", "nat-ha", "s-1", os.getpid())
    assert second.starts == [10.0, 12.0]
    second.close()


def test_an_exit_for_a_restart_says_so_and_a_leave_forgets(tmp_path: Path) -> None:
    s = RunState.claim(tmp_path, now=1.0)
    s.remember("lab", "i-a", "nat-ha", "s-1")
    s.ended_for_restart(now=5.5)
    s.close()
    s = RunState.claim(tmp_path, now=6.0)
    assert s.recorded is not None and (s.recorded.ended, s.recorded.ended_at) == ("restart", 5.5)
    s.remember("lab", "i-a", "nat-ha", "s-1")  # taken over
    s.forget()  # drained and left the group
    s.close()
    s = RunState.claim(tmp_path, now=7.0)
    assert s.recorded is None and s.note == ""
    s.close()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from agent.host.runstate import RunState
    state = RunState.claim(sys.argv[1], now=1.0)
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_a_live_process_holding_the_lock_is_refused_and_its_death_frees_it(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld, match=rf"another nat-ha agent \(pid {holder.pid}\)"):
            RunState.claim(tmp_path, now=2.0)
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock, nobody unlocks
        holder.wait(10)
    state = RunState.claim(tmp_path, now=3.0)
    assert state.starts == [1.0, 3.0]  # the refused attempt wrote nothing
    state.close()


@pytest.mark.parametrize(
    ("text", "note"),
    [
        ("{not json", "is not JSON"),
        (json.dumps({"format": 99, "session": {"session": "s"}}), "has another format (99)"),
        (json.dumps({"format": runstate.FORMAT, "session": {"session": "s"}}), "bad session record"),
        (json.dumps({"format": runstate.FORMAT, "session": {**dict.fromkeys(
            ("group", "instance", "table"), "x"), "session": "", "pid": 1}}), "has no session"),
    ],
)  # fmt: skip
def test_a_stale_or_bad_record_is_ignored_with_a_reason(tmp_path: Path, text: str, note: str) -> None:
    (tmp_path / runstate.STATE_FILE).write_text(text)
    state = RunState.claim(tmp_path, now=1.0)
    assert state.recorded is None and note in state.note
    state.close()


def test_files_are_private(tmp_path: Path) -> None:
    run = tmp_path / "run"
    state = RunState.claim(run, now=1.0)
    assert run.stat().st_mode & 0o777 == 0o700
    assert not list(run.glob(".agent-*"))  # no temporary file left by the atomic replace
    state.close()


@pytest.mark.parametrize(
    ("starts", "now", "wait"),
    [
        ([], 100.0, 0.0),  # first start
        ([10.0], 100.0, 0.0),  # a crash after a long run
        ([95.0], 100.0, 0.0),  # a crash soon after a start: taken over at once
        ([90.0, 95.0], 100.0, 0.0),
        ([80.0, 85.0, 90.0, 95.0], 100.0, 0.0),
        ([75.0, 80.0, 85.0, 90.0, 95.0], 100.0, 1.0),  # the sixth quick start waits
        ([70.0, 75.0, 80.0, 85.0, 90.0, 95.0], 100.0, 2.0),
        ([10.0 + 5 * k for k in range(18)], 100.0, 30.0),  # capped
        ([50.0, 75.0, 80.0, 85.0, 90.0, 95.0], 100.0, 1.0),  # only the chain of quick starts counts
        ([75.0, 80.0, 85.0, 90.0, 95.0], 120.0, 0.0),  # the loop ended: a quiet spell resets it
    ],
)
def test_backoff(starts: list[float], now: float, wait: float) -> None:
    assert backoff(starts, now) == wait


def test_default_dir_is_systemds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/nat-ha:/run/other")
    assert runstate.default_dir() == "/run/nat-ha"
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    assert runstate.default_dir() == ""
