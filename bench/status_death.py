"""`nat-ha status` says a member died: exit 1 from a status run started at the kill, within one cycle.

    python bench/status_death.py [--trials 5] [--json status_death.json]

The loopback group (agent/lab/localgroup.py: three real agent processes, moto server as EC2 and
DynamoDB) at the production timings. Each trial: `nat-ha status` must exit 0 on the settled
group; then one NAT's agent is SIGKILLed and `nat-ha status --json` is started at once (well
within one HA cycle, 0.35 s, of the death). The figures: how many of those runs exited 1 naming
the dead member as `stale` or `expired` with no health shown (must be every one), and how long
after the kill the answer came (status watches the heartbeats for a lease plus a margin, and a
fresh Python process loads first). Then the agent is started again and the group fails back
before the next trial. Before issue 20 the same run showed the dead member healthy, exit 0.

Timing-sensitive: run it under the shared lock (flock /tmp/nat-ha-heavy.lock ...).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.lab.localgroup import LocalGroup  # noqa: E402
from bench.cli import BenchParser  # noqa: E402
from bench.pause import PRODUCTION, nat_ha  # noqa: E402


def trial(g: LocalGroup, victim: str) -> dict[str, Any]:
    """One kill of ``victim``'s agent and the status run started with it."""
    before = nat_ha(g, "status")
    if before.returncode != 0:
        raise RuntimeError(f"status on the settled group exited {before.returncode}: {before.stdout}{before.stderr}")
    g.kill(victim)
    killed = time.monotonic()
    done = nat_ha(g, "status", "--json")  # subprocess.run starts it now: microseconds after the kill
    answered_s = time.monotonic() - killed
    try:
        status = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"status --json printed no JSON: {done.stdout}{done.stderr}") from None
    row = next((m for m in status.get("members", []) if m["instance_id"] == victim), {})
    named = any(p.startswith(f"{victim}: ") for p in status.get("problems", []))
    return {
        "victim": victim,
        "exit": done.returncode,
        "state": row.get("state"),
        "health_shown": row.get("healthy"),
        "problem_named": named,
        "told": done.returncode == 1 and row.get("state") in ("stale", "expired") and row.get("healthy") is None
        and named,
        "answered_after_kill_s": round(answered_s, 2),
    }  # fmt: skip


def run(workdir: Path, trials: int) -> dict[str, Any]:
    timing = {**PRODUCTION, "restart_after": 600.0}  # the bench starts the agent again itself
    results = []
    with LocalGroup(workdir, n=3, metrics=False, timing=timing) as g:
        for k in range(trials):
            if not g.wait_for(g.at_home, 60):
                raise RuntimeError("the group did not settle")
            victim = g.members[k % len(g.members)]
            results.append(trial(g, victim))
            g.restart_agent(victim)
    answered = [r["answered_after_kill_s"] for r in results]
    return {
        "trials": trials,
        "told": sum(r["told"] for r in results),
        "answered_after_kill_median_s": round(statistics.median(answered), 2),
        "answered_after_kill_max_s": max(answered),
        "runs": results,
        "timing": timing,
    }


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(prog="status_death.py", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5, help="kills, one status run each (default 5)")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    if not 1 <= args.trials <= 100:
        p.error("--trials must be between 1 and 100")
    with tempfile.TemporaryDirectory(prefix="nat-ha-status-death-") as tmp:
        result = run(Path(tmp), args.trials)
    states = ", ".join(f"{r['state']}/exit {r['exit']}" for r in result["runs"])
    print(
        f"status started at a NAT's kill: {result['told']} of {result['trials']} runs exited 1 naming the dead "
        f"member with no health shown ({states}); answered {result['answered_after_kill_median_s']} s after "
        f"the kill (median), {result['answered_after_kill_max_s']} s at most"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["told"] == result["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
