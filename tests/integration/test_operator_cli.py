"""``nat-ha status``, ``switchover`` and ``drain`` against a live local group (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands.status import render
from agent.lab.localgroup import DUMMY_ENV, LocalGroup

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGroup]:
    # A short fail-back hold-down and drain timeout: the tests below kill, pause and stop NATs and wait for
    # the group to be home again; the behaviour is the same, the waits are shorter.
    timing = {"failback_hold_down": 2.0}
    with LocalGroup(tmp_path_factory.mktemp("ops"), n=3, metrics=False, timing=timing, drain_timeout=3.0) as g:
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
                "flags": ["NO LIVE OWNER", "MISMATCH"],
                "verdict": "NO LIVE OWNER",
            }
        ],
    }
    text = render(status)
    assert "MISMATCH" in text and "i-a (dead)" in text and "problems:" in text


def test_agent_once_beside_the_running_agent_observes_and_changes_nothing(group: LocalGroup) -> None:
    # Hole 3: `nat-ha agent --once` on a live NAT used to start a session of its own, which the
    # peers took for the running agent's restart. Now it only observes and decides - as the running
    # agent's session (issue 20: it printed only "not starting a session", never the decision).
    before = group.snapshot()
    done = nat_ha(group, "agent", "--once")
    assert done.returncode == 0, done.stderr
    a = group.nats[0]
    first, second = done.stdout.splitlines()[:2]
    assert first.startswith(f"would: holding {a.route_table} (term "), done.stdout
    assert second.startswith("(decided as the running agent's session "), done.stdout
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


# ---------------------------------------------------------------------------------- issue 20
EC2_WRITES = ("ReplaceRoute", "CreateRoute", "CreateTags", "StopInstances", "StartInstances", "AssociateAddress")


def ec2_writes(g: LocalGroup) -> int:
    return sum(len(g.calls(i, action)) for i in g.members for action in EC2_WRITES)


def from_anywhere(g: LocalGroup, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI with no config file: the group named by environment variables, AWS at moto's address."""
    assert g.moto is not None
    env = {**os.environ, **DUMMY_ENV, "NAT_HA_GROUP": g.group, "NAT_HA_REGION": "us-east-1",
           "NAT_HA_TABLE": g.table, "AWS_ENDPOINT_URL": g.moto.url, "NAT_HA_OPERATOR": "alice@laptop"}  # fmt: skip
    env.pop("NAT_HA_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "agent.commands.cli", *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_status_from_a_workstation_without_a_config(group: LocalGroup) -> None:
    assert group.wait_for(group.at_home, 30)
    done = from_anywhere(group, "status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(done.stdout)
    assert sorted(m["instance_id"] for m in status["members"]) == sorted(group.members)
    assert {t["route_table"]: (t["owner"], t["ec2_target"]) for t in status["route_tables"]} == {
        n.route_table: (n.instance_id, n.instance_id) for n in group.nats
    }


def test_status_exits_non_zero_within_one_cycle_of_a_members_death(group: LocalGroup) -> None:
    """After kill -9, status showed the member healthy with exit 0. Now the first status run after
    the kill (started within one HA cycle of it) says the member is not running and exits 1."""
    assert group.wait_for(group.at_home, 30)
    c = group.nats[2]
    group.kill(c.instance_id)
    t0 = time.monotonic()
    done = nat_ha(group, "status", "--json")
    took = time.monotonic() - t0
    assert done.returncode == 1, done.stdout
    status = json.loads(done.stdout)
    row = next(m for m in status["members"] if m["instance_id"] == c.instance_id)
    assert row["state"] in ("stale", "expired") and row["healthy"] is None, row
    assert any(p.startswith(f"{c.instance_id}: ") for p in status["problems"]), status["problems"]
    print(f"status started at the kill, exit 1 naming {c.instance_id} {row['state']}, {took:.2f} s later")
    group.restart_agent(c.instance_id)  # systemd would; quicker than the peers' stop/start
    assert group.wait_for(group.at_home, 60), "the killed NAT did not come back and fail back"


def test_pause_holds_every_ec2_write_while_a_nat_dies_and_resume_writes_again(group: LocalGroup) -> None:
    """CI's short window (8 s); bench/pause.py holds it 60 s. Leases move, routes do not."""
    assert group.wait_for(group.at_home, 30)
    b = group.nats[1]
    done = from_anywhere(group, "pause", "--reason", "maintenance window", "--wait", "10")
    assert done.returncode == 0 and "acknowledged by every live agent" in done.stdout, done.stdout + done.stderr
    writes = ec2_writes(group)
    group.kill(b.instance_id)
    time.sleep(6)  # detection, takeover and the demo's restart_after (4 s) all pass
    assert ec2_writes(group) == writes, "an EC2 write while the group was paused"
    assert group.route_targets()[b.route_table] == b.instance_id, "the paused route moved"
    owner = group.snapshot().routes[b.route_table].owner
    assert owner != b.instance_id, "the dead NAT's lease was not taken (the lease only)"
    status = from_anywhere(group, "status")
    assert status.returncode == 1 and "PAUSED" in status.stdout
    assert "pause of the group by alice@laptop" in status.stdout and "maintenance window" in status.stdout
    done = from_anywhere(group, "resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert group.wait_for(lambda: group.route_targets()[b.route_table] == owner, 10), "resume did not write the route"
    group.restart_agent(b.instance_id)  # systemd would; quicker than the peers' stop/start
    assert group.wait_for(group.at_home, 60), "the dead NAT did not come back and fail back after the pause"


def test_history_says_what_happened_who_and_how_long(group: LocalGroup) -> None:
    done = from_anywhere(group, "history", "--json")
    assert done.returncode == 0, done.stderr
    events = json.loads(done.stdout)["events"]
    kinds = [e["event"] for e in events]
    for kind in ("failover", "failback", "pause", "resume", "pin", "unpin", "drain", "undrain"):
        assert kind in kinds, (kind, kinds)
    pause = next(e for e in events if e["event"] == "pause")
    assert (pause["by"], pause["why"], pause["target"]) == ("alice@laptop", "maintenance window", "group")
    resume = next(e for e in events if e["event"] == "resume")
    assert resume["seconds"] > 6
    failover = next(e for e in events if e["event"] == "failover")
    assert failover["by"] in group.members and " -> " in failover["detail"] and 0 < failover["seconds"] < 5
    text = from_anywhere(group, "history", "--limit", "5")
    assert text.returncode == 0 and text.stdout.startswith(f"group {group.group}: the 5 newest entries")


def default_routes(ec2: object, tables: list[str]) -> set[str]:
    """Where 0.0.0.0/0 of each table goes: an instance or a NAT gateway."""
    found = set()
    for rt in ec2.describe_route_tables(RouteTableIds=tables)["RouteTables"]:  # type: ignore[attr-defined]
        for r in rt["Routes"]:
            if r.get("DestinationCidrBlock") == "0.0.0.0/0":
                found.add(r.get("NatGatewayId") or r.get("InstanceId") or r.get("NetworkInterfaceId") or "")
    return found


def test_rollback_to_a_nat_gateway_and_forward_again(group: LocalGroup) -> None:
    """The runbook's procedure: pause, every route to a NAT Gateway, stop the agents - the routes stay
    on the NAT Gateway; start the agents, resume - every table back on its NAT."""
    import signal

    assert group.wait_for(group.at_home, 30)
    ec2 = group.client("ec2")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    alloc = ec2.allocate_address(Domain="vpc")["AllocationId"]
    gateway = ec2.create_nat_gateway(SubnetId=subnet, AllocationId=alloc)["NatGateway"]["NatGatewayId"]
    assert from_anywhere(group, "pause", "--reason", "rollback").returncode == 0
    for n in group.nats:
        ec2.replace_route(RouteTableId=n.route_table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=gateway)
    status = json.loads(from_anywhere(group, "status", "--json").stdout)
    assert {t["ec2_target"] for t in status["route_tables"]} == {f"other:{gateway}"}
    for n in group.nats:  # systemctl stop nat-ha on every NAT
        group.signal(n.instance_id, signal.SIGTERM)
    for n in group.nats:
        assert n.proc is not None
        n.proc.wait(timeout=40)
    assert not any(group.alive(i) for i in group.members)
    time.sleep(1)
    tables = [n.route_table for n in group.nats]
    assert default_routes(ec2, tables) == {gateway}, "a route left the NAT Gateway after the agents stopped"
    for n in group.nats:  # systemctl start nat-ha: still paused
        group.restart_agent(n.instance_id)
    assert group.wait_for(lambda: all(m.state == "alive" for m in group.snapshot().members.values()), 30)
    time.sleep(2)
    assert default_routes(ec2, tables) == {gateway}, "a paused agent wrote a route at start-up"
    assert from_anywhere(group, "resume").returncode == 0
    assert group.wait_for(group.at_home, 40), "resume did not bring every table back to its NAT"
    assert from_anywhere(group, "status").returncode == 0


def test_demo_keep_says_what_to_type_and_it_works(group: LocalGroup) -> None:
    """`nat-ha demo --keep` leaves its group running with the operator commands to try: they work as printed."""
    import threading

    from agent.lab.demo import keep_running
    from tests.integration.test_demo import Recorder

    console, stop = Recorder(), threading.Event()
    keeper = threading.Thread(target=keep_running, args=(group, console, stop), daemon=True)
    keeper.start()
    try:
        assert group.wait_for(lambda: any("export NAT_HA_CONFIG=" in x for x in console.lines), 5)
        export = next(x for x in console.lines if "export NAT_HA_CONFIG=" in x).split()[1:]
        env = {**os.environ, **dict(pair.partition("=")[::2] for pair in export)}
        for line in console.lines:
            command = line.strip().split("#")[0].split()
            if command[:2] in (["nat-ha", "status"], ["nat-ha", "history"]):
                done = subprocess.run(
                    [sys.executable, "-m", "agent.commands.cli", *command[1:]],
                    capture_output=True, text=True, timeout=60, env=env,
                )  # fmt: skip
                assert done.returncode in (0, 1) and "Traceback" not in done.stderr, (command, done.stderr)
                assert done.stdout.startswith(f"group {group.group}"), (command, done.stdout)
    finally:
        stop.set()
        keeper.join(5)
    assert console.lines[-1] == "stopping the group"
