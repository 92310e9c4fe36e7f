"""Three real ``nat-ha agent`` processes on a moto server: crash, restart, hang, planned handover.

Each agent plays its NAT instance (it answers tcp-echo probes), so SIGKILL is the
instance dying and SIGSTOP is the instance hanging. Polls are bounded; every
process is stopped by the LocalGroup on exit.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lab.localgroup import LocalGroup
from agent.lab.routewatch import RouteWatch

pytestmark = pytest.mark.integration

# Failover bound for this loaded 2-core box: lease 1.2 + margin 0.1 + detection and
# cycle phase + moto latency. The benchmarks measure the real distribution.
FAILOVER_BOUND_S = 6.0


@pytest.fixture
def group(tmp_path: Path) -> Iterator[LocalGroup]:
    with LocalGroup(tmp_path / "group", n=3, metrics=False) as g:
        assert g.wait_for(g.at_home, 45), "the group never settled with every route table at home"
        yield g


def route_watch(g: LocalGroup) -> RouteWatch:
    """Samples EC2's route targets and records every change (to prove 'exactly once')."""
    watch = RouteWatch(g.route_targets)
    watch.poll()
    return watch


def test_crash_moves_routes_once_then_restart_and_failback(group: LocalGroup) -> None:
    g = group
    victim = g.nats[0]
    watch = route_watch(g)
    t0 = time.monotonic()
    g.kill(victim.instance_id)
    assert watch.until(lambda t: t[victim.route_table] != victim.instance_id, FAILOVER_BOUND_S), (
        f"{victim.route_table} still routed to the dead NAT after {FAILOVER_BOUND_S} s"
    )
    moved_after = time.monotonic() - t0
    new_home = watch.current[victim.route_table]
    assert new_home in {n.instance_id for n in g.nats[1:]}
    # A peer stops and starts the dead instance (restart_after 6 s in the local group), then the
    # route table fails back after the 5 s hold-down.
    assert watch.until(lambda t: t[victim.route_table] == victim.instance_id, 60), "no fail-back"
    assert victim.starts == 2, "the dead NAT was not restarted exactly once by a peer"
    moves = [c for c in watch.changes if c.route_table == victim.route_table]
    assert [(c.before, c.after) for c in moves] == [(victim.instance_id, new_home), (new_home, victim.instance_id)]
    others = [c for c in watch.changes if c.route_table != victim.route_table]
    assert others == [], f"route tables of healthy NATs moved: {others}"
    stops = [c for n in g.nats for c in g.calls(n.instance_id, "StopInstances")]
    assert len(stops) == 1 and stops[0]["resources"]["InstanceIds"] == [victim.instance_id]
    print(f"failover {moved_after:.2f} s")


def test_hung_agent_loses_its_route_and_writes_none_after_waking(group: LocalGroup) -> None:
    g = group
    victim = g.nats[1]
    watch = route_watch(g)
    g.signal(victim.instance_id, signal.SIGSTOP)

    def route_writes() -> int:
        return len(g.calls(victim.instance_id, "ReplaceRoute")) + len(g.calls(victim.instance_id, "CreateRoute"))

    try:
        assert watch.until(lambda t: t[victim.route_table] != victim.instance_id, FAILOVER_BOUND_S)
        term_before = g.snapshot().routes[victim.route_table].term
        writes_before, log_before = route_writes(), len(victim.log_path.read_text())  # stopped: nothing moves
    finally:
        g.signal(victim.instance_id, signal.SIGCONT)  # hung for well over its 1.2 s lease, under restart_after
    time.sleep(3.0)  # the woken agent runs several cycles; fail-back needs 5 s of health first
    watch.poll()
    # The call record has a line per call made (botocore's before-parameter-build), before the fence: a
    # route write the agent had begun when it was stopped is recorded on waking, then refused unsent by
    # the fence ("[not sent: the lease has 0.000 s left]", seen in CI). Every route write recorded since
    # waking must be such a refusal: none may leave the process. (A refusal before any call is made,
    # "renewing first", is logged but not recorded: not counted.)
    woke = victim.log_path.read_text()[log_before:].splitlines()
    refused = [x for x in woke if "route" in x and "[not sent:" in x and "renewing first" not in x]
    sent = route_writes() - writes_before - len(refused)
    assert sent <= 0, f"the woken agent wrote a route table it no longer holds: {woke}"
    route = g.snapshot().routes[victim.route_table]
    assert route.term >= term_before and route.owner != victim.instance_id
    assert watch.current[victim.route_table] == route.owner
    log = victim.log_path.read_text()
    assert "session lost" in log, "the woken agent did not learn that its session was expired"


def test_sigterm_hands_over_before_exit(group: LocalGroup) -> None:
    g = group
    victim = g.nats[2]
    watch = route_watch(g)
    proc = victim.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(20)
    # The route was moved (and verified) before the process exited.
    targets = watch.poll()
    assert code == 0, victim.log_path.read_text()[-2000:]
    assert targets[victim.route_table] != victim.instance_id
    snap = g.snapshot()
    assert snap.routes[victim.route_table].owner == targets[victim.route_table]
    assert snap.members[victim.instance_id].state == "left"
    assert "drained: every route table handed over; exiting" in victim.log_path.read_text()
    # Nobody restarts a NAT that left on purpose.
    time.sleep(1.0)
    assert g.calls(g.nats[0].instance_id, "StopInstances") == []
    assert g.calls(g.nats[1].instance_id, "StopInstances") == []


def test_a_stop_and_start_between_two_looks_still_brings_the_agent_back(group: LocalGroup) -> None:
    # moto stops and starts at once: a peer's stop and start can both fall between two of the
    # group's looks at the instance states. The StartInstances in the peers' call records counts.
    victim, peer = group.nats[0], group.nats[1]
    group.kill(victim.instance_id)
    time.sleep(0.5)  # five looks: the kill alone (moto says running) brings nothing back
    assert not group.alive(victim.instance_id)
    starts = victim.starts
    record = {"service": "ec2", "action": "StartInstances", "resources": {"InstanceIds": [victim.instance_id]}}
    with open(group.calls_path(peer.instance_id), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
    assert group.wait_for(lambda: group.alive(victim.instance_id), 5), "the started instance got no agent"
    assert victim.starts == starts + 1
