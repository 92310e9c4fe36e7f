"""Real ``nat-ha agent`` processes with runtime directories: what a restart takes over, what a stop leaves.

Two agents on a moto server (agent/lab/localgroup.py), each with its own runtime directory (as
systemd's RuntimeDirectory= gives the unit), probing each other by ICMP on 127.0.0.1: the kernel
answers, as a NAT's does while only its agent restarts. Real signals, real exit codes. The
timing of a restart under systemd is the systemd tier's and bench/restart.py's; here the peers
tolerate 6 s of silence (``silent_owner_after``) so that a loaded CI machine cannot turn a
take-over into a failover, and the test checks what is taken over, and when not.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from agent.lab.localgroup import DUMMY_ENV, LocalGroup

pytestmark = pytest.mark.integration

TOOK_OVER = "took over session"


@pytest.fixture(scope="module")
def the_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGroup]:
    """One group for the module (its start-up is most of the cost); the stop test runs last."""
    g = LocalGroup(
        tmp_path_factory.mktemp("restarts") / "group", n=2, metrics=False, runtime_dirs=True, probe_method="icmp",
        timing={"silent_owner_after": 6.0},
    )  # fmt: skip
    with g:
        yield g


@pytest.fixture
def group(the_group: LocalGroup) -> LocalGroup:
    g = the_group
    assert g.wait_for(lambda: g.at_home() and all(g.alive(n.instance_id) for n in g.nats), 60, 0.3), "not settled"
    return g


def record(g: LocalGroup, instance: str) -> dict[str, object]:
    data = json.loads((g.runtime_dir(instance) / "agent.json").read_text())
    assert isinstance(data, dict)
    return data


def end(g: LocalGroup, instance: str, sig: int) -> int:
    nat = g.nat(instance)
    assert nat.proc is not None
    nat.proc.send_signal(sig)
    return nat.proc.wait(30)


def log_since(g: LocalGroup, instance: str, offset: int) -> str:
    return g.nat(instance).log_path.read_bytes()[offset:].decode(errors="replace")


def test_a_second_agent_on_the_same_runtime_directory_is_refused(group: LocalGroup) -> None:
    g = group
    me = g.nats[0].instance_id
    before = g.snapshot().members[me]
    nat = g.nat(me)
    proc = subprocess.run(
        [sys.executable, "-m", "agent.commands.cli", "agent", "--config", str(nat.config_path),
         "--runtime-dir", str(g.runtime_dir(me))],
        capture_output=True, text=True, timeout=60, env={**DUMMY_ENV, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"nat-ha agent: another nat-ha agent (pid {nat.proc.pid if nat.proc else '?'}) runs with the runtime "
        f"directory {g.runtime_dir(me)}"
    )
    assert g.alive(me) and g.snapshot().members[me].session == before.session


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGUSR2], ids=["kill", "restart"])
def test_a_crash_or_a_restart_is_taken_over_and_nothing_moves(group: LocalGroup, sig: int) -> None:
    g = group
    me, rtb = g.nats[0].instance_id, g.nats[0].route_table
    before = g.snapshot()
    offset = g.nat(me).log_path.stat().st_size
    code = end(g, me, sig)
    assert code == (0 if sig == signal.SIGUSR2 else -signal.SIGKILL)
    rec = record(g, me)
    session = rec["session"]
    assert isinstance(session, dict) and session["session"] == before.members[me].session
    assert session["ended"] == ("restart" if sig == signal.SIGUSR2 else "")
    assert g.snapshot().members[me].state == "alive"  # not left: nothing was drained
    g.restart_agent(me)
    assert g.wait_for(lambda: TOOK_OVER in log_since(g, me, offset), 30, 0.2), log_since(g, me, offset)
    assert g.wait_for(lambda: g.snapshot().members[me].version > before.members[me].version + 3, 10)
    after = g.snapshot()
    assert after.members[me].session == before.members[me].session
    assert (after.routes[rtb].owner, after.routes[rtb].term) == (me, before.routes[rtb].term)
    assert g.route_targets()[rtb] == me
    text = log_since(g, me, offset)
    if sig == signal.SIGUSR2:
        assert "exiting for a restart without draining: session renewed" in text
        assert "it exited for a restart" in text
    else:
        assert "it ended without a restart signal" in text
    assert "draining: handing" not in text and "handing route tables over" not in text


def test_a_stop_drains_and_forgets_so_the_next_start_is_a_new_session(group: LocalGroup) -> None:
    g = group
    me, rtb = g.nats[0].instance_id, g.nats[0].route_table
    before = g.snapshot()
    offset = g.nat(me).log_path.stat().st_size
    assert end(g, me, signal.SIGTERM) == 0
    left = g.snapshot()
    assert left.members[me].state == "left" and left.routes[rtb].owner != me
    assert record(g, me)["session"] is None
    g.restart_agent(me)
    assert g.wait_for(
        lambda: (m := g.snapshot().members[me]).state == "alive" and m.session != before.members[me].session, 30
    )
    assert TOOK_OVER not in log_since(g, me, offset)
