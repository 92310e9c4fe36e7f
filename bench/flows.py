"""Do established connections survive a move? Real flows through real NATs, with and without conntrack_sync.

    sudo python bench/flows.py [--trials 2] [--flows 50] [--json flows.json]   # about 12 minutes

The network-namespace lab with its internet gateway, egress_ip = "follow" (each table's Elastic
IP follows the table) and two NATs (agent/lab/netlab.py), run twice: with ``conntrack_sync`` (every
NAT runs ``nat-ha ctsync``; setup-nat adds the guard, firewall and sysctls) and without. In every
trial the private host of AZ a keeps ``--flows`` long-lived flows open, an equal share of each kind
(agent/lab/flowtool.py: TCP where the client talks, TCP where only the server pushes, UDP both ways,
UDP where only the server pushes, TCP whose public port the NAT remapped), every 100 ms each, all
established more than 1 s before the fault. Scenarios, each on NAT a's route table:

* crash - links down and agent killed; the peer takes the table (its peer then stops and starts it);
* hang - every packet in, out and through NAT a dropped;
* drain - ``nat-ha drain`` (a planned hand-over);
* failback - NAT a crashes, the flows start through the survivor, and NAT a, started again by its
  peer, gets its table back by the planned fail-back;
* switchover - ``nat-ha switchover --to`` the other NAT (a planned hand-over to a named NAT).

A flow survived when it saw no error, received data within 1.5 s of the end (about 6 s after the
move) and the server saw it from one public address and port all along. ``resets_seen`` counts the
resets either end saw before the end. ``max_gap`` is the largest silence of a surviving flow.

Then the sync's cost (sync on only): ``--churn-rate`` new flows per second (half TCP: connect, echo,
close after 1 s; half UDP) through NAT a for ``--churn-seconds`` after a warm-up, the CPU of both NATs'
sync services (their own, kernel time of their ctnetlink calls included, and their children's: ``nft``
reading the guard counters) and the bytes the senders sent
(``sync_cpu_percent``, ``sync_bytes_per_s``); and ``push_100k_s``: 100,000 entries of table a
loaded into NAT a, pushed to NAT b as before a planned hand-over, timed from the request to the
taker's confirmation: once with NAT b's streamed copies current (``push_100k_current_s``, the usual
case: the taker compares and keeps them), once after they were deleted (``push_100k_s``: the taker
loads every entry). The TIME_WAIT timeout of the NATs' conntrack is set
to 10 s during the churn (per namespace), so that the ends of the churned TCP flows (each sends one
event) fall inside the measured window rather than 120 s later.

What the lab cannot show: AWS's security groups (the shipped one lets the world reach the NATs'
high ports so that a moved flow's server packets get in) and AWS's own Elastic IP move (3-6 s
published; moto moves it at once): on AWS a moved flow's inbound packets reach the old NAT a few
seconds longer, which a planned hand-over covers (the giver streams until they stop) and a crash
turns into a longer pause, not a lost flow (TCP retransmits).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.lab import flowtool  # noqa: E402
from agent.lab.flowtrial import FlowRun, entries  # noqa: E402
from agent.lab.netlab import INET_IP, NetLab, sh, skip_reason  # noqa: E402
from bench.cli import BenchParser  # noqa: E402

VICTIM, PEER = 0, 1
SCENARIOS = ("crash", "hang", "drain", "failback", "switchover")
AFTER_MOVE_S = 6.0
CLK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ helpers
def moved(lab: NetLab, since: float, timeout: float, home: bool) -> float | None:
    return lab.moved(VICTIM, since, timeout, home)


def cli(lab: NetLab, i: int, *args: str) -> None:
    cmd = ["ip", "netns", "exec", lab.topo.nat_ns(i), sys.executable, "-m", "agent.commands.cli", *args,
           "--config", str(lab.nats[i].config_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nat-ha {' '.join(args)}: {done.stdout[-300:]} {done.stderr[-300:]}")


def settle(lab: NetLab, timeout: float = 45.0) -> None:
    """Every table home and every NAT healthy. A hung NAT whose stop and start by its peer fell between two
    of the reconciler's looks at moto (0.3 s apart) is still hung: its faults are cleared as a reboot
    would; a NAT still off is restarted through EC2, as an operator would."""
    if lab.wait_for(lab.settled, timeout, 0.3):
        return
    for i, n in enumerate(lab.nats):
        lab.topo.clear_faults(i)
        if n.expect_running and not lab.agent_running(i):
            lab.start_agent(i)
    if lab.wait_for(lab.settled, timeout, 0.3):
        return
    for i, n in enumerate(lab.nats):
        if not lab.agent_running(i):
            lab.ec2_restart(n.instance_id)
    if not lab.wait_for(lab.settled, timeout, 0.3):
        raise RuntimeError(f"the lab did not settle (logs in {lab.workdir})")


def kinds_for(total: int) -> dict[str, int]:
    base, extra = divmod(total, len(flowtool.KINDS))
    return {k: base + (1 if i < extra else 0) for i, k in enumerate(flowtool.KINDS)}


def trial(lab: NetLab, scenario: str, kinds: dict[str, int], n: int) -> dict[str, Any]:
    """One trial; the lab is settled again afterwards. Each trial has source ports of its own: a flow the NAT
    dropped leaves its client's socket retrying its FIN for minutes, and a new flow cannot reuse that tuple."""
    slot = n * len(SCENARIOS) + SCENARIOS.index(scenario)
    first_port = 20000 + (slot * (sum(kinds.values()) + 10)) % 30000
    run = FlowRun(lab, VICTIM, kinds, seconds=120, first_port=first_port, name=f"{scenario}-{n}")
    victim = lab.nats[VICTIM]
    if scenario == "failback":
        t0 = time.time()
        lab.crash(VICTIM)
        if moved(lab, t0, 10, home=False) is None:
            raise RuntimeError("failback: the table did not move on the crash")
        run.start()
        time.sleep(1.2)
        back = moved(lab, t0, 60, home=True)
        if back is None:
            run.stop()
            raise RuntimeError("failback: no fail-back")
        time.sleep(AFTER_MOVE_S)
        verdict = run.finish()
        settle(lab)
        return verdict
    run.start()
    time.sleep(1.2)  # every flow older than 1 s at the fault
    t0 = time.time()
    if scenario == "crash":
        lab.crash(VICTIM)
    elif scenario == "hang":
        lab.hang(VICTIM)
    elif scenario == "drain":
        cli(lab, VICTIM, "drain", "--wait", "20")
    elif scenario == "switchover":
        cli(lab, VICTIM, "switchover", "--route-table", victim.route_table, "--to", lab.nats[PEER].instance_id,
            "--wait", "20")  # fmt: skip
    at = moved(lab, t0, 15, home=False)
    if at is None:
        run.stop()
        raise RuntimeError(f"{scenario}: the table did not move")
    time.sleep(AFTER_MOVE_S)
    verdict = run.finish()
    verdict["move_s"] = at - t0
    if scenario == "drain":
        cli(lab, VICTIM, "drain", "--undo", "--wait", "20")
    elif scenario == "switchover":
        cli(lab, VICTIM, "switchover", "--route-table", victim.route_table, "--clear", "--wait", "20")
    settle(lab)
    return verdict


# ------------------------------------------------------------------ cost
def _ticks(pid: int) -> tuple[int, int, int]:
    """CPU ticks of a process: its own, the children it waited for (nft), its live children's, recursively."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return (0, 0, 0)
    own, waited, live = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]), 0
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            live += sum(_ticks(int(child)))
    return own, waited, live


def cost(lab: NetLab, rate: float, seconds: float, warmup: float) -> dict[str, Any]:
    for i in range(lab.n):
        lab.topo.nat_exec(i, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=10")
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.topo.inet, sys.executable, "-m", "agent.lab.flowtool", "serve", "--address",
         INET_IP, "--seconds", str(warmup + seconds + 30), "--out", str(lab.workdir / "churn-server.json")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    churners = [  # two processes (the lab's NATs, agents and AWS share the same 2 cores)
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lab.topo.priv_ns(VICTIM),
                sys.executable,
                "-m",
                "agent.lab.flowtool",
                "churn",
                "--server",
                INET_IP,
                "--rate",
                str(rate / 2),
                "--seconds",
                str(warmup + seconds + 2),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(warmup)
    pids = {i: p.pid for i, p in lab.ctsync.items()}
    before = {i: _ticks(pid) for i, pid in pids.items()}
    sent0 = {i: lab.ctsync_request(i, {"op": "stats"})["bytes_sent"] for i in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    after = {i: _ticks(pid) for i, pid in pids.items()}
    stats = {i: lab.ctsync_request(i, {"op": "stats"}) for i in pids}
    made = [json.loads(c.communicate(timeout=60)[0].strip().splitlines()[-1]) for c in churners]
    server.terminate()
    server.wait(10)
    for i in range(lab.n):
        lab.topo.nat_exec(i, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=120")

    def pct(ticks: float) -> float:
        return round(100.0 * ticks / CLK / elapsed, 2)

    cpu = {f"nat{i}": pct(sum(after[i]) - sum(before[i])) for i in pids}
    parts = {f"nat{i}": dict(zip(("service", "children waited for (nft)", "live children"),
                                 (pct(a - b) for a, b in zip(after[i], before[i], strict=True)), strict=True))
             for i in pids}  # fmt: skip
    sent = {f"nat{i}": round((stats[i]["bytes_sent"] - sent0[i]) / elapsed) for i in pids}
    total = {k: sum(m[k] for m in made) for k in ("made", "answered", "failed")}
    return {
        "churn": {**total, "per_s": round(total["made"] / max(m["seconds"] for m in made), 1)},
        "sync_cpu_percent_parts": parts,
        "sync_cpu_percent_by_nat": cpu,
        "sync_bytes_per_s_by_nat": sent,
        "sync_cpu_percent": max(cpu.values()),
        "sync_bytes_per_s": sum(sent.values()),
        "lag_s": stats[VICTIM]["lag"],
        "entries_on_victim": len(entries(lab, VICTIM, VICTIM)),
        "copies_on_peer": len(entries(lab, PEER, VICTIM)),
    }


def push_100k(lab: NetLab, n: int = 100_000) -> dict[str, Any]:
    """Load ``n`` entries of table a into NAT a, then push them to NAT b twice, as before a planned hand-over:
    ``current`` once b's streamed copies have caught up (the usual case: the push only confirms them), ``cold``
    after b's copies are deleted (b loads every entry: the push's worst case). Each the push's own time."""
    addr = lab.topo.egress_address(VICTIM, VICTIM)
    subnet = lab.topo.private_subnet(VICTIM)

    def clear() -> None:
        for i in (VICTIM, PEER):  # conntrack -D: ends that NAT a's sync streams too
            sh("ip", "netns", "exec", lab.topo.nat_ns(i), "conntrack", "-D", "-s", subnet, check=False, timeout=120)

    def push() -> tuple[dict[str, Any], float]:
        t0 = time.monotonic()
        answer = lab.ctsync_request(VICTIM, {"op": "push", "table": lab.nats[VICTIM].route_table,
                                             "to": lab.nats[PEER].instance_id, "timeout": 60.0}, 70.0)  # fmt: skip
        return answer, round(time.monotonic() - t0, 3)

    clear()  # the churn's leftovers: the push carries exactly n entries
    lab.wait_for(lambda: not entries(lab, PEER, VICTIM), 60, 1.0)
    lines = []
    for i in range(n):  # unique public tuples: 100 server ports x 1,000 public ports
        host, port = 10 + i % 240, 20000 + i // 240
        lines.append(f"-A -t 3600 -u SEEN_REPLY,ASSURED -s 10.0.1.{host} -d 203.0.113.10 -r 203.0.113.10 -n {addr} "
                     f"-p tcp --sport {port} --dport {9000 + i % 100} --reply-port-src {9000 + i % 100} "
                     f"--reply-port-dst {30000 + i // 100} --state ESTABLISHED")  # fmt: skip
    t0 = time.monotonic()
    sh("ip", "netns", "exec", lab.topo.nat_ns(VICTIM), "conntrack", "-R", "-", stdin="\n".join(lines) + "\n",
       timeout=120)  # fmt: skip
    # Stragglers of the trials (a client retrying its FIN) may be there too: they are not established, not synced.
    loaded = sum(1 for ln in entries(lab, VICTIM, VICTIM) if f" -n {addr} " in ln and "--state ESTABLISHED" in ln)
    caught_up = lab.wait_for(lambda: len(entries(lab, PEER, VICTIM)) >= loaded, 180, 1.0)
    streamed_s = round(time.monotonic() - t0, 1)
    current, current_s = push()
    sh("ip", "netns", "exec", lab.topo.nat_ns(PEER), "conntrack", "-D", "-s", subnet, check=False, timeout=120)
    cold, cold_s = push()
    copies = len(entries(lab, PEER, VICTIM))
    clear()
    return {"entries": loaded, "push_s": cold_s, "answer": cold, "copies_on_peer": copies,
            "current_push_s": current_s, "current_answer": current,
            "streamed_copies_s": streamed_s if caught_up else None}  # fmt: skip


# ------------------------------------------------------------------ the run
def run_mode(sync: bool, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    kinds = kinds_for(args.flows)
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in args.scenarios}
    extra: dict[str, Any] = {}
    with NetLab(workdir / ("sync" if sync else "nosync"), n=2, egress_ip="follow", conntrack_sync=sync) as lab:
        settle(lab)
        for n in range(args.trials):
            for scenario in args.scenarios:
                v = trial(lab, scenario, kinds, n)
                print(f"  {'sync' if sync else 'no sync'} {scenario} trial {n + 1}: {v['kinds']} resets {v['resets']}"
                      + (f" lost {v['lost']}" if v["lost"] else ""), flush=True)  # fmt: skip
                results[scenario].append(v)
        if sync and args.churn_rate > 0:
            extra["cost"] = cost(lab, args.churn_rate, args.churn_seconds, args.churn_warmup)
            print(f"  cost: {extra['cost']}", flush=True)
        if sync and args.push:
            settle(lab)
            extra["push"] = push_100k(lab)
            print(f"  push: {extra['push']}", flush=True)
    return {"results": results, **extra}


def summarize(mode: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario, trials in mode["results"].items():
        kinds: dict[str, list[int]] = {}
        for v in trials:
            for k, c in v["kinds"].items():
                tot = kinds.setdefault(k, [0, 0])
                tot[0] += c["survived"]
                tot[1] += c["flows"]
        gaps = [f["max_gap"] for v in trials for f in v["flows"] if not f["error"]]
        out[scenario] = {
            "survived_percent": {k: round(100.0 * s / n, 1) for k, (s, n) in kinds.items()},
            "all_percent": round(
                100.0 * sum(s for s, _ in kinds.values()) / max(1, sum(n for _, n in kinds.values())), 1
            ),
            "resets_seen": sum(v["resets"] for v in trials),
            "max_gap_median_s": round(statistics.median(gaps), 2) if gaps else None,
            "max_gap_max_s": round(max(gaps), 2) if gaps else None,
            "trials": len(trials),
            "flows_per_trial": sum(trials[0]["kinds"][k]["flows"] for k in trials[0]["kinds"]) if trials else 0,
        }
    return out


def table(summary: dict[str, Any]) -> str:
    kinds = flowtool.KINDS
    head = (
        f"{'scenario':<11} {'sync':<4} "
        + " ".join(f"{k:>12}" for k in kinds)
        + f" {'all':>6} {'resets':>6} {'gap med':>7} {'gap max':>7}"
    )
    lines = [head, "-" * len(head)]
    for scenario in SCENARIOS:
        for mode in ("sync", "nosync"):
            s = summary.get(mode, {}).get(scenario)
            if s is None:
                continue
            cells = " ".join(f"{s['survived_percent'].get(k, float('nan')):>11.1f}%" for k in kinds)
            gm = f"{s['max_gap_median_s']:.2f}" if s["max_gap_median_s"] is not None else "-"
            gx = f"{s['max_gap_max_s']:.2f}" if s["max_gap_max_s"] is not None else "-"
            lines.append(f"{scenario:<11} {'on' if mode == 'sync' else 'off':<4} {cells} {s['all_percent']:>5.1f}% "
                         f"{s['resets_seen']:>6} {gm:>7} {gx:>7}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(prog="flows.py", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--flows", type=int, default=50, help="flows per trial (an equal share of each kind)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--no-baseline", action="store_true", help="skip the run with sync off")
    p.add_argument("--churn-rate", type=float, default=1000.0, help="new flows per second for the cost (0: skip)")
    p.add_argument("--churn-seconds", type=float, default=30.0)
    p.add_argument("--churn-warmup", type=float, default=15.0)
    p.add_argument("--no-push", dest="push", action="store_false", help="skip the 100,000-entry push")
    p.add_argument("--json", default="", help="write the figures here")
    p.add_argument("--workdir", default="")
    args = p.parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    if bad or args.trials < 1 or args.flows < len(flowtool.KINDS):
        p.error(f"--scenarios from {','.join(SCENARIOS)}; --trials >= 1; --flows >= {len(flowtool.KINDS)}")
    reason = skip_reason() or ("the conntrack tool is not installed" if not Path("/usr/sbin/conntrack").exists()
                               and not Path("/sbin/conntrack").exists() else None)  # fmt: skip
    if reason:
        print(f"flows.py: {reason}", file=sys.stderr)
        return 1
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="nat-ha-flows-"))
    modes = {"sync": run_mode(True, args, workdir)}
    if not args.no_baseline:
        modes["nosync"] = run_mode(False, args, workdir)
    summary = {m: summarize(r) for m, r in modes.items()}
    print(table(summary))
    cost_fig = modes["sync"].get("cost", {})
    push = modes["sync"].get("push", {})
    figures = {
        "survived_percent": {m: {s: v["survived_percent"] for s, v in sm.items()} for m, sm in summary.items()},
        "resets_seen": {m: {s: v["resets_seen"] for s, v in sm.items()} for m, sm in summary.items()},
        "sync_cpu_percent": cost_fig.get("sync_cpu_percent"),
        "sync_bytes_per_s": cost_fig.get("sync_bytes_per_s"),
        "push_100k_s": push.get("push_s"),
        "push_100k_current_s": push.get("current_push_s"),
        "summary": summary,
        "cost": cost_fig,
        "push": push,
        "trials": args.trials,
        "flows_per_trial": args.flows,
    }
    print(json.dumps({k: figures[k] for k in ("survived_percent", "resets_seen", "sync_cpu_percent",
                                              "sync_bytes_per_s", "push_100k_s", "push_100k_current_s")},
                     indent=1))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
