"""A pause holds: no EC2 write at all while a NAT dies, for as long as the pause lasts.

    python bench/pause.py [--seconds 60] [--json pause.json]

The loopback group (agent/lab/localgroup.py: three real agent processes, moto server as EC2 and
DynamoDB) at the production timings, restarts included (``restart_after`` 30 s: a dead NAT is
stopped and started inside the window unless the pause holds that too). ``nat-ha pause`` is run
as an operator runs it and waits for every agent's acknowledgement; then one NAT's agent is
SIGKILLed and, for ``--seconds``, every AWS call the agents make is read from their call records:
the EC2 writes (ReplaceRoute, CreateRoute, CreateTags, StopInstances, StartInstances,
AssociateAddress) must stay at 0. The dead NAT's lease still moves (the lease only). Then
``nat-ha resume``: how long until its table is routed to the new holder.

Timing-sensitive: run it under the shared lock (flock /tmp/nat-ha-heavy.lock ...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.lab.localgroup import DUMMY_ENV, LocalGroup  # noqa: E402
from bench.cli import BenchParser  # noqa: E402

EC2_WRITES = ("ReplaceRoute", "CreateRoute", "CreateTags", "StopInstances", "StartInstances", "AssociateAddress")
PRODUCTION = {  # LocalGroup's demo timing shortened these; the pause must hold at the real ones
    "failback_hold_down": 10.0,
    "restart_after": 30.0,
    "restart_cooldown": 300.0,
    "restart_poll_interval": 2.0,
    "ec2_reconcile_interval": 5.0,
}


def nat_ha(g: LocalGroup, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **DUMMY_ENV, "NAT_HA_OPERATOR": "bench@pause"}
    command = [sys.executable, "-m", "agent.commands.cli", *argv, "--config", str(g.nats[0].config_path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def writes(g: LocalGroup) -> dict[str, int]:
    return {a: sum(len(g.calls(i, a)) for i in g.members) for a in EC2_WRITES}


def run(workdir: Path, seconds: float) -> dict[str, Any]:
    with LocalGroup(workdir, n=3, metrics=False, timing=PRODUCTION) as g:
        if not g.wait_for(g.at_home, 60):
            raise RuntimeError("the group did not settle")
        victim = g.nats[1]
        t0 = time.monotonic()
        paused = nat_ha(g, "pause", "--reason", "bench", "--wait", "15")
        if paused.returncode != 0:
            raise RuntimeError(f"nat-ha pause: {paused.stdout}{paused.stderr}")
        ack_s = time.monotonic() - t0
        before = writes(g)
        g.kill(victim.instance_id)
        killed = time.monotonic()
        lease_moved = None
        samples = 0
        during: dict[str, int] = {}
        while time.monotonic() - killed < seconds:
            time.sleep(1.0)
            samples += 1
            during = {a: n - before[a] for a, n in writes(g).items()}
            if lease_moved is None and g.snapshot().routes[victim.route_table].owner != victim.instance_id:
                lease_moved = time.monotonic() - killed
            if g.route_targets()[victim.route_table] != victim.instance_id:
                raise RuntimeError(f"{victim.route_table} was routed away while paused")
        held_s = time.monotonic() - killed
        owner = g.snapshot().routes[victim.route_table].owner
        resumed = time.monotonic()
        done = nat_ha(g, "resume", "--wait", "0")
        if done.returncode != 0:
            raise RuntimeError(f"nat-ha resume: {done.stdout}{done.stderr}")
        routed = g.wait_for(lambda: g.route_targets()[victim.route_table] == owner, 15, interval=0.05)
        route_s = time.monotonic() - resumed if routed else None
        return {
            "seconds_paused_after_the_kill": round(held_s, 1),
            "ec2_writes_while_paused": sum(during.values()),
            "ec2_writes_by_action": during,
            "samples": samples,
            "pause_acknowledged_s": round(ack_s, 2),
            "dead_nats_lease_moved_after_s": round(lease_moved, 2) if lease_moved is not None else None,
            "route_written_after_resume_s": round(route_s, 2) if route_s is not None else None,
            "timing": PRODUCTION,
        }


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(prog="pause.py", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long the pause holds after the kill (default 60)")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    if not 5 <= args.seconds <= 3600:
        p.error("--seconds must be between 5 and 3600")
    with tempfile.TemporaryDirectory(prefix="nat-ha-pause-") as tmp:
        result = run(Path(tmp), args.seconds)
    print(
        f"paused, one NAT killed: {result['ec2_writes_while_paused']} EC2 writes in "
        f"{result['seconds_paused_after_the_kill']:.0f} s (by action: {result['ec2_writes_by_action']}); "
        f"pause acknowledged by every agent in {result['pause_acknowledged_s']:.2f} s; the dead NAT's lease "
        f"moved after {result['dead_nats_lease_moved_after_s']} s (the lease only); after resume its table was "
        f"routed to the new holder in {result['route_written_after_resume_s']} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ec2_writes_while_paused"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
