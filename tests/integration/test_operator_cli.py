"""``nat-ha status``, ``switchover`` and ``drain`` against a live local group (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands.status import render
from agent.lab.localgroup import DUMMY_ENV, LocalGroup

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGroup]:
    with LocalGroup(tmp_path_factory.mktemp("ops"), n=3, metrics=False) as g:
        assert g.wait_for(g.at_home, 45), "the group never settled"
        yield g


def nat_ha(g: LocalGroup, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.commands.cli", *argv, "--config", str(g.nats[0].config_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **DUMMY_ENV},
    )


def test_status_shows_members_owners_and_ec2(group: LocalGroup) -> None:
    done = nat_ha(group, "status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert [m["instance_id"] for m in status["members"]] == group.members
    assert all(m["state"] == "alive" and m["healthy"] for m in status["members"])
    for t, n in zip(status["route_tables"], group.nats, strict=True):
        assert (t["route_table"], t["owner"], t["ec2_target"], t["mismatch"]) == (
            n.route_table,
            n.instance_id,
            n.instance_id,
            False,
        )
    assert status["problems"] == []
    text = nat_ha(group, "status")
    assert text.returncode == 0 and "ROUTE TABLE" in text.stdout and "MISMATCH" not in text.stdout


def test_switchover_pins_and_clear_returns_home(group: LocalGroup) -> None:
    a, b = group.nats[0], group.nats[1]
    done = nat_ha(group, "switchover", "--route-table", a.route_table, "--to", b.instance_id, "--wait", "20")
    assert done.returncode == 0, done.stderr
    assert f"{a.route_table} is served by {b.instance_id}" in done.stdout
    assert group.route_targets()[a.route_table] == b.instance_id
    # Pinned: no fail-back even after the hold-down.
    assert not group.wait_for(lambda: group.route_targets()[a.route_table] == a.instance_id, 7)
    done = nat_ha(group, "switchover", "--route-table", a.route_table, "--clear")
    assert done.returncode == 0, done.stderr
    assert group.wait_for(group.at_home, 30), "the route table did not return home after the pin was cleared"


def test_drain_and_undo(group: LocalGroup) -> None:
    c = group.nats[2]
    done = nat_ha(group, "drain", "--instance", c.instance_id, "--wait", "20")
    assert done.returncode == 0, done.stderr
    assert group.route_targets()[c.route_table] != c.instance_id
    assert group.snapshot().routes[c.route_table].owner != c.instance_id
    done = nat_ha(group, "drain", "--instance", c.instance_id, "--undo")
    assert done.returncode == 0, done.stderr
    assert group.wait_for(group.at_home, 30)


def test_operator_errors_are_one_line(group: LocalGroup) -> None:
    for argv in (
        ["switchover", "--route-table", "rtb-0000", "--to", group.members[0]],
        ["switchover", "--route-table", group.nats[0].route_table, "--to", "i-0000"],
        ["drain", "--instance", "i-0000"],
    ):
        done = nat_ha(group, *argv)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "not a" in done.stderr


def test_render_flags_mismatch_and_dead_owner() -> None:
    status = {
        "group": "g",
        "table": "t",
        "problems": ["rtb-a: EC2 routes to i-b (active) but the lease is held by i-a"],
        "members": [
            {
                "instance_id": "i-a",
                "az": "a",
                "state": "alive",
                "healthy": True,
                "reaches": [],
                "draining": False,
                "heartbeat_age_s": 0.3,
                "detail": "",
            }
        ],
        "route_tables": [
            {
                "route_table": "rtb-a",
                "home": "i-a",
                "pinned_to": "",
                "owner": "i-a",
                "owner_live": False,
                "term": 3,
                "ec2_target": "i-b",
                "ec2_state": "active",
                "mismatch": True,
            }
        ],
    }
    text = render(status)
    assert "MISMATCH" in text and "i-a (dead)" in text and "problems:" in text


def test_agent_once_beside_the_running_agent_observes_and_changes_nothing(group: LocalGroup) -> None:
    # Hole 3: `nat-ha agent --once` on a live NAT used to start a session of its own, which the
    # peers took for the running agent's restart. Now it only observes and decides.
    before = group.snapshot()
    done = nat_ha(group, "agent", "--once")
    assert done.returncode == 0, done.stderr
    assert "not starting a session: another agent of" in done.stdout
    after = group.snapshot()
    me = group.nats[0].instance_id
    assert after.members[me].session == before.members[me].session, "--once superseded the running agent"
    assert {rt: (r.owner, r.owner_session, r.term) for rt, r in after.routes.items()} == {
        rt: (r.owner, r.owner_session, r.term) for rt, r in before.routes.items()
    }


def test_agent_once_without_the_store_says_so_and_exits_1(group: LocalGroup, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    text = group.nats[0].config_path.read_text()
    store = next(line for line in text.splitlines() if line.startswith("endpoint_url") and "[store]" in text)
    config.write_text(text.replace(store, 'endpoint_url = "http://127.0.0.1:9"', 1))
    done = subprocess.run(
        [sys.executable, "-m", "agent.commands.cli", "agent", "--once", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, **DUMMY_ENV},
    )  # fmt: skip
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "store unavailable" in done.stdout
    assert "Traceback" not in done.stderr
