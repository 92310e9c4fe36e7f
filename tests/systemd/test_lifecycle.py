"""The agent's life under a real systemd, with the shipped nat-ha.service unmodified.

Start (Type=notify: READY=1 only when ready), the watchdog (WatchdogSec=10), stop (SIGTERM
drains within TimeoutStopSec=30) and a reboot (nat-ha-setup.service first). Pings every 100 ms
from the private host of AZ a count the packets lost, as in tests/lab.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.lab.netlab import INET_IP, MOTO_PORT, NetLab
from tests.systemd.conftest import VICTIM, metric, wall_of_monotonic

pytestmark = [pytest.mark.systemd, pytest.mark.timeout(180)]

UNIT = "nat-ha.service"
WATCHDOG_S = 10.0  # WatchdogSec of deploy/systemd/nat-ha.service
RESTART_S = 0.1  # RestartSec (100ms)
STOP_TIMEOUT_S = 30.0  # TimeoutStopSec


def _unit_value(key: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "deploy" / "systemd" / UNIT).read_text()
    m = re.search(rf"^{key}=(\S+)$", text, re.MULTILINE)
    assert m, key
    return m.group(1)


def test_the_timings_here_are_the_shipped_units() -> None:
    assert float(_unit_value("WatchdogSec")) == WATCHDOG_S
    assert _unit_value("RestartSec") == f"{round(RESTART_S * 1000)}ms"
    assert _unit_value("RestartKillSignal") == "SIGUSR2" and _unit_value("KillSignal") == "SIGTERM"
    assert _unit_value("RuntimeDirectoryPreserve") == "restart"
    assert float(_unit_value("TimeoutStopSec")) == STOP_TIMEOUT_S


def test_start_returns_once_the_agent_is_ready(lab: NetLab) -> None:
    """`systemctl start` blocks until READY=1: by then the session is live and the probes run."""
    ct, me = lab.container(VICTIM), lab.nats[VICTIM].instance_id
    ct.systemctl("stop", UNIT)
    assert lab.wait_for(lambda: lab.snapshot().members[me].state != "alive", 10)
    t0 = time.monotonic()
    ct.systemctl("start", UNIT)
    took = time.monotonic() - t0
    text = lab.scrape(VICTIM)  # at once: the endpoint is served before READY=1
    snap = lab.snapshot()
    print(f"systemctl start {UNIT} returned after {took:.2f} s")
    assert ct.is_active(UNIT) == "active"
    assert text is not None, "READY=1 was sent before /metrics answered"
    assert metric(text, "nat_ha_session_valid") == 1.0
    assert snap.members[me].state == "alive", "READY=1 before the session was in DynamoDB"
    for peer in lab.nats[1:]:
        sent = metric(text, "nat_ha_probes_sent_total", f'peer="{peer.instance_id}"')
        assert sent is not None and sent > 0, f"READY=1 before any probe of {peer.instance_id}"
    lines = [e["MESSAGE"] for e in ct.journal_entries(UNIT)]
    started = max(i for i, m in enumerate(lines) if m.startswith("Started nat-ha.service"))
    assert any("starting: group" in m for m in lines[:started]), "the unit was Started before the agent ran"
    assert lab.wait_for(lab.settled, 40, 0.3), "its route table did not fail back"


def _restart_seen(lab: NetLab, old_pid: int, timeout: float) -> float | None:
    ct = lab.container(VICTIM)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        pid = ct.main_pid(UNIT)
        if pid and pid != old_pid and ct.is_active(UNIT) == "active":
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def test_watchdog_restarts_a_frozen_agent(lab: NetLab) -> None:
    """SIGSTOP: no WATCHDOG=1 -> SIGABRT within WatchdogSec -> restarted; the peers fail over meanwhile.

    The frozen agent's NAT still answers probes and forwards, but its heartbeat is silent: after
    ``silent_owner_after`` (2 s) a peer takes its route table (a NAT whose agent cannot reach AWS
    is not trusted to forward, README "What is guaranteed"). Both NATs forward, so no packet is
    lost; once systemd has restarted the agent, the table fails back.
    """
    ct, me, rtb = lab.container(VICTIM), lab.nats[VICTIM].instance_id, lab.nats[VICTIM].route_table
    old_pid = ct.main_pid(UNIT)
    restarts = int(ct.show(UNIT, "NRestarts")["NRestarts"])
    ping = lab.ping(VICTIM, 40)
    time.sleep(1.0)
    t_freeze = time.time()
    lab.signal(me, signal.SIGSTOP)
    silent_seen = lab.wait_for(
        lambda: metric(lab.scrape(1) or "", "nat_ha_peer_session_alive", f'peer="{me}"') == 0.0, WATCHDOG_S
    )
    took = _restart_seen(lab, old_pid, WATCHDOG_S + RESTART_S + 20)
    assert took is not None, "the frozen agent was not restarted"
    entries = ct.journal_entries(UNIT)
    kill = [e for e in entries if re.search(rf"Killing process {old_pid} \(.*\) with signal SIGABRT", e["MESSAGE"])]
    assert kill, "systemd did not kill the frozen agent with SIGABRT"
    killed_after = int(kill[-1]["__REALTIME_TIMESTAMP"]) / 1e6 - t_freeze
    print(f"frozen agent killed by the watchdog {killed_after:.2f} s after SIGSTOP; active again after {took:.2f} s")
    assert killed_after <= WATCHDOG_S + 0.5, "the watchdog fired later than WatchdogSec after the last ping"
    messages = [e["MESSAGE"] for e in entries]
    assert any("Watchdog timeout (limit 10s)!" in m for m in messages)
    assert any("Failed with result 'watchdog'" in m for m in messages)
    assert int(ct.show(UNIT, "NRestarts")["NRestarts"]) == restarts + 1
    assert silent_seen, "the peers never saw the frozen agent's heartbeat stop"
    routes = lab.events_since(t_freeze, "route")
    moved = next((e for e in routes if e.data["rtb"] == rtb and e.data["target"] != me), None)
    assert moved is not None, "no peer took the frozen agent's route table"
    print(f"a peer took {rtb} {moved.t - t_freeze:.2f} s after SIGSTOP")
    assert moved.t - t_freeze < WATCHDOG_S, "the table moved only after the watchdog"
    assert lab.wait_for(lab.settled, 40, 0.3), "the table did not fail back after the restart"
    result = ping.finish()
    assert result.lost == 0, f"lost {result.lost_seqs()}"


def test_slow_ec2_never_trips_the_watchdog(lab: NetLab) -> None:
    """EC2 behind a proxy that holds every request 2 s (past ec2_timeout): cycles stay far below WatchdogSec."""
    ct, i = lab.container(VICTIM), VICTIM
    proxy_port = MOTO_PORT + 1
    proxy = subprocess.Popen(
        ["ip", "netns", "exec", lab.topo.inet, sys.executable, str(Path(__file__).with_name("slowproxy.py")),
         INET_IP, str(proxy_port), INET_IP, str(MOTO_PORT), "2.0"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    original = (ct.root / "etc/nat-ha/config.toml").read_text()
    try:
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        slow = original.replace(f'[ec2]\nendpoint_url = "http://{INET_IP}:{MOTO_PORT}"',
                                f'[ec2]\nendpoint_url = "http://{INET_IP}:{proxy_port}"')  # fmt: skip
        assert slow != original
        ct.write("/etc/nat-ha/config.toml", slow)
        ct.systemctl("restart", UNIT)
        pid = ct.main_pid(UNIT)
        restarts = int(ct.show(UNIT, "NRestarts")["NRestarts"])
        t0 = time.time()
        time.sleep(2.5 * WATCHDOG_S)
        text = lab.scrape(i) or ""
        assert ct.main_pid(UNIT) == pid and int(ct.show(UNIT, "NRestarts")["NRestarts"]) == restarts
        since = [e["MESSAGE"] for e in ct.journal_entries(UNIT) if int(e["__REALTIME_TIMESTAMP"]) / 1e6 >= t0]
        assert not [m for m in since if "Watchdog timeout" in m], since
        errors = sum(
            float(ln.split()[-1])
            for ln in text.splitlines()
            if ln.startswith("nat_ha_aws_errors_total{") and 'operation="DescribeRouteTables"' in ln
        )
        over = [ln for ln in text.splitlines() if ln.startswith("nat_ha_cycle_duration_seconds_bucket")]
        count = metric(text, "nat_ha_cycle_duration_seconds_count") or 0
        within_1s = next((float(ln.split()[-1]) for ln in over if 'le="1.0"' in ln), 0.0)
        within_half = next((float(ln.split()[-1]) for ln in over if 'le="0.5"' in ln), 0.0)
        print(
            f"slow EC2 for {2.5 * WATCHDOG_S:.0f} s: {errors:.0f} DescribeRouteTables errors, {count:.0f} cycles, "
            f"{count - within_half:.0f} longer than 0.5 s, {count - within_1s:.0f} longer than 1 s; no watchdog"
        )
        assert errors > 0, "the slow EC2 never reached the agent"
        assert count - within_half > 0, "no cycle was slowed down: the test did not test a long cycle"
    finally:
        ct.write("/etc/nat-ha/config.toml", original)
        ct.systemctl("restart", UNIT)
        proxy.kill()
        proxy.wait(5)


def test_stop_drains_before_exiting(lab: NetLab) -> None:
    """`systemctl stop` (SIGTERM): the route table is with a peer before the process exits; 0 lost."""
    ct, me, rtb = lab.container(VICTIM), lab.nats[VICTIM].instance_id, lab.nats[VICTIM].route_table
    ping = lab.ping(VICTIM, 60)
    time.sleep(1.0)
    t0 = time.time()
    m0 = time.monotonic()
    ct.systemctl("stop", UNIT)
    took = time.monotonic() - m0
    props = ct.show(UNIT, "ExecMainExitTimestampMonotonic", "ExecMainStatus", "Result")
    exited = wall_of_monotonic(props["ExecMainExitTimestampMonotonic"])
    moved = next((e.t for e in lab.events_since(t0, "route") if e.data["rtb"] == rtb and e.data["target"] != me), None)
    print(f"systemctl stop took {took:.2f} s; route moved {0 if moved is None else moved - t0:.2f} s after the stop, "
          f"process exited {exited - t0:.2f} s after it")  # fmt: skip
    assert props["Result"] == "success" and props["ExecMainStatus"] == "0", props
    assert took < STOP_TIMEOUT_S
    assert moved is not None and moved <= exited, "the agent exited before its route table was with a peer"
    route = lab.snapshot().routes[rtb]
    assert route.owner != me and route.owner in lab.members
    assert any("drained: every route table handed over" in e["MESSAGE"] for e in ct.journal_entries(UNIT))
    ct.systemctl("start", UNIT)
    back = lab.wait_event(t0, "route", 40, rtb=rtb, target=me)
    assert back is not None, "no fail-back after the start"
    time.sleep(1.5)
    result = ping.finish()
    assert result.lost == 0, f"lost {result.lost_seqs()}"


def test_reboot_setup_unit_first_then_rejoin_and_fail_back(lab: NetLab) -> None:
    """poweroff (drains), a fresh kernel (forwarding off, no masquerade), boot: nat-ha-setup.service
    restores both before nat-ha.service starts; the agent rejoins and its table fails back, 0 lost."""
    ct, me, rtb = lab.container(VICTIM), lab.nats[VICTIM].instance_id, lab.nats[VICTIM].route_table
    ping = lab.ping(VICTIM, 80)
    time.sleep(1.0)
    t0 = time.time()
    down, up = lab.reboot(VICTIM)
    assert ct.wait_active(UNIT, 60), "the agent did not start after the boot"
    setup = ct.show("nat-ha-setup.service", "ExecMainExitTimestampMonotonic", "Result", "ActiveState")
    agent = ct.show(UNIT, "ExecMainStartTimestampMonotonic")
    assert setup["Result"] == "success" and setup["ActiveState"] == "active", setup
    assert 0 < int(setup["ExecMainExitTimestampMonotonic"]) < int(agent["ExecMainStartTimestampMonotonic"])
    applied = [e["MESSAGE"] for e in ct.journal_entries("nat-ha-setup.service")]
    # The masquerade rule is the setup unit's to restore; ip_forward comes back earlier, from the
    # file setup-nat persisted (/etc/sysctl.d/90-nat-ha.conf, applied by systemd-sysctl.service).
    assert "applied: masquerade on pub0 (nftables)" in applied, applied
    assert "ok: sysctl net.ipv4.ip_forward = 1" in applied or "applied: sysctl net.ipv4.ip_forward = 1" in applied
    sysctl = ct.show("systemd-sysctl.service", "Result", "ExecMainExitTimestampMonotonic")
    assert sysctl["Result"] == "success"
    assert int(sysctl["ExecMainExitTimestampMonotonic"]) < int(agent["ExecMainStartTimestampMonotonic"])
    assert lab.topo.nat_exec(VICTIM, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert 'oifname "pub0" masquerade' in lab.topo.nat_exec(VICTIM, "nft", "list", "table", "ip", "nat_ha").stdout
    back = lab.wait_event(t0, "route", 45, rtb=rtb, target=me)
    print(f"reboot: poweroff {down:.2f} s, boot {up:.2f} s; route back home {0 if back is None else back - t0:.1f} s "
          "after the poweroff")  # fmt: skip
    assert back is not None, "its route table did not fail back"
    assert lab.wait_for(lab.settled, 20, 0.3)
    time.sleep(1.5)
    result = ping.finish()
    assert result.lost == 0, f"lost {result.lost_seqs()}"
