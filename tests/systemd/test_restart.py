"""Restarts of the agent alone move nothing; a stop still drains (the shipped unit, a real systemd).

While its agent restarts, a NAT's kernel forwards and answers its peers' probes: only the control
plane is away. ``kill -9`` of the agent (``Restart=always`` starts it again after 100 ms),
``systemctl restart`` (the unit's ``RestartKillSignal=SIGUSR2``: one last renewal, exit without
draining) and an upgrade (``pip install`` of another version, then ``systemctl restart``) must
move no route and lose no packet: the new process takes the session over from the unit's
RuntimeDirectory (agent/handoff.py) within the 2 s of heartbeat silence its peers tolerate.
``systemctl stop`` still drains (tests/systemd/test_lifecycle.py), and then leaves nothing to
take over. Pings every 100 ms from AZ a's private host count the packets lost, as in tests/lab.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent import __version__
from agent.lab import nspawn
from agent.lab.netlab import UNIT, NetLab
from tests.systemd.conftest import VICTIM, metric

pytestmark = [pytest.mark.systemd, pytest.mark.timeout(300)]

UPGRADE_VERSION = f"{__version__}+lab.upgrade"
SETTLE_S = 3.5  # after the take-over: past its settle write (lease + horizon) and any peer's 2 s rule


def quiet_restart(lab: NetLab, how: str) -> tuple[float, str]:
    """Restart NAT a's agent ``how``; assert nothing moved and nothing was lost. Returns (away s, the log line)."""
    ct, me, rtb = lab.container(VICTIM), lab.nats[VICTIM].instance_id, lab.nats[VICTIM].route_table
    before = lab.snapshot()
    session, route = before.members[me].session, before.routes[rtb]
    restarts = int(ct.show(UNIT, "NRestarts")["NRestarts"])
    ping = lab.ping(VICTIM, 30)
    time.sleep(1.0)
    t = lab.restart_unit(VICTIM, how)
    assert lab.wait_for(lambda: lab.takeover_line(VICTIM, t) is not None, 15, 0.2), (
        f"the new agent process did not take the session over after {how}: "
        + " | ".join(e["MESSAGE"] for e in ct.journal_entries(UNIT) if int(e["__REALTIME_TIMESTAMP"]) / 1e6 >= t)
    )
    took = lab.takeover_line(VICTIM, t)
    assert took is not None
    time.sleep(SETTLE_S)
    result = ping.finish()
    after = lab.snapshot()
    moved = lab.events_since(t, "route")
    away = took[0] - t
    print(f"{how}: the agent was away {away:.2f} s; {took[1]}")
    assert not moved, f"routes moved: {[e.data for e in moved]}"
    assert after.members[me].session == session, "a new session: the old one was not taken over"
    assert after.members[me].state == "alive"
    assert (after.routes[rtb].owner, after.routes[rtb].term) == (route.owner, route.term), "the lease changed hands"
    assert result.lost == 0, f"lost {result.lost_seqs()}"
    if how == "kill":
        assert int(ct.show(UNIT, "NRestarts")["NRestarts"]) == restarts + 1
    return away, took[1]


def test_kill_9_of_the_agent_moves_nothing(lab: NetLab) -> None:
    away, line = quiet_restart(lab, "kill")
    assert "it ended without a restart signal" in line
    assert away < 2.0, "peers tolerate 2 s of silence from the last renewal"


def test_systemctl_restart_moves_nothing(lab: NetLab) -> None:
    ct = lab.container(VICTIM)
    t = time.time()
    _, line = quiet_restart(lab, "restart")
    assert "it exited for a restart" in line
    messages = [e["MESSAGE"] for e in ct.journal_entries(UNIT) if int(e["__REALTIME_TIMESTAMP"]) / 1e6 >= t]
    assert any("received SIGUSR2: exiting for a restart" in m for m in messages), messages
    assert not any("handing route tables over" in m or "draining: handing" in m for m in messages), messages
    assert ct.run("test", "-s", "/run/nat-ha/agent.json", check=False).returncode == 0, "no session record"


def test_an_upgrade_with_cold_model_caches_moves_nothing(lab: NetLab, tmp_path: Path) -> None:
    """Another version installed under the running agent, its trimmed AWS models deleted (as an upgrade
    of botocore makes them anew), then ``systemctl restart``: the session is resumed through a
    temporary client and the models are made while a keeper renews it."""
    ct, me = lab.container(VICTIM), lab.nats[VICTIM].instance_id
    wheels = nspawn.build_wheels(tmp_path / "wheels", version=UPGRADE_VERSION, deps=False)
    wheel = next(wheels.glob("nat_ha-*.whl"))
    lab.install_wheel(VICTIM, wheel)
    ct.run("sh", "-c", "rm -rf /var/cache/private/nat-ha/botocore-*")
    t = time.time()
    quiet_restart(lab, "restart")
    text = lab.scrape(VICTIM) or ""
    assert metric(text, "nat_ha_build_info", f'group="{lab.group}",instance_id="{me}",version="{UPGRADE_VERSION}"') == 1
    assert lab.snapshot().members[me].agent_version == UPGRADE_VERSION
    messages = [e["MESSAGE"] for e in ct.journal_entries(UNIT) if int(e["__REALTIME_TIMESTAMP"]) / 1e6 >= t]
    assert any("wrote trimmed AWS service models" in m for m in messages), "the model cache was not cold"


def test_a_stop_drains_and_leaves_nothing_to_take_over(lab: NetLab) -> None:
    """`systemctl stop` drains (test_lifecycle.py measures it); the runtime directory goes with it, so
    the next start is a new session, not a take-over."""
    ct, me = lab.container(VICTIM), lab.nats[VICTIM].instance_id
    session = lab.snapshot().members[me].session
    t = time.time()
    ct.systemctl("stop", UNIT)
    assert lab.snapshot().members[me].state == "left"
    assert ct.run("test", "-e", "/run/nat-ha", check=False).returncode != 0, "the runtime directory survived a stop"
    ct.systemctl("start", UNIT)
    assert lab.snapshot().members[me].session != session
    assert lab.takeover_line(VICTIM, t) is None
