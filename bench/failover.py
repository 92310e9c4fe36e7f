"""Failover benchmark in the network-namespace lab: nat-ha against nat_monitor.sh's policy.

    sudo python bench/failover.py [--trials 20] [--json failover.json] [--plot timeline.png]

For each fault the private host of AZ a pings 203.0.113.10 every 100 ms (``ping -D -O
-i 0.1 -W 1``) and the benchmark measures the outage (largest gap between replies,
minus one interval), the lost packets and the time from the fault to the route switch
(the reconciler applying moto's new route to the VPC router). Faults: crash (links
down, agent killed), hang (every packet in/out/through the NAT dropped), forwarding
broken (ip_forward=0), drain (``nat-ha drain``) and the fail-back after each crash and
drain; partition (ICMP between NATs dropped for 10 s) counts route changes. The same
faults run against bench/nat_monitor.py (3 pings, 1 s timeout, 2 s between rounds,
ReplaceRoute to itself, no arbiter) in the same run, and nat-ha's outage is printed as
a fraction of that baseline. Root only (agent/lab/netlab.py).

``--egress-ip follow`` runs the lab with its internet gateway (agent/lab/netlab.py) and every
route table's Elastic IP following the table: beside the outage it prints ``same_ip_outage``,
the largest gap between packets of AZ a's host that reached the fake internet *with table a's
EIP* (minus one interval; its end is the first packet with the right address after the fault),
and the packets that arrived with any other address (every host, every trial). It runs once per
``--egress-order`` (route-first, address-first, or both, the default), crash, hang and drain by
default, and no baseline (nat_monitor.sh moves routes, never an EIP).

``--systemd`` runs every NAT as a container booted by a real systemd (agent/lab/nspawn.py):
nat-ha installed by the stack's user data, the shipped units unmodified, a crash is the
container killed, an EC2 stop/start a container off and booted again, a drain ``nat-ha drain``
run inside the container. It runs crash, hang and drain (with their fail-backs) by default and
no baseline (nat_monitor.sh is not a systemd service; its figures are the default run's).
Three more faults restart the victim's agent alone, its NAT forwarding all along, and expect 0
route changes and 0 lost: ``agent_kill`` (SIGKILL; ``Restart=always``), ``agent_restart``
(``systemctl restart``) and ``agent_upgrade`` (``pip install`` of another version of this
checkout, its trimmed AWS models deleted as a botocore upgrade would, then ``systemctl
restart``); ``away_s`` is how long the agent was away: from the kill or the restart command to
the new process's renewal of the taken-over session (its journal line).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent import __version__  # noqa: E402
from agent.config import Timing  # noqa: E402
from agent.host.runstate import LOOP_WINDOW  # noqa: E402
from agent.lab import nspawn  # noqa: E402
from agent.lab.localgroup import Nat  # noqa: E402
from agent.lab.netlab import PING_INTERVAL, NetLab, PingResult, sh, skip_reason  # noqa: E402

VICTIM = 0
AGENT_FAULTS = ("agent_kill", "agent_restart", "agent_upgrade")  # systemd only: the agent alone restarts
PROCESS_FAULTS = ("crash", "hang", "forwarding", "drain", "partition", "frozen_write")
FAULTS = (*PROCESS_FAULTS, *AGENT_FAULTS)
SYSTEMD_FAULTS = ("crash", "hang", "drain", *AGENT_FAULTS)
# A fault comes at a random point of the agents' heartbeat grid, as a real one does: a fixed wait
# after the previous trial's fail-back (itself on that grid) would give every trial nearly the same
# lease left at the fault, and a run's median would measure one phase, not the failover.
FAULT_PHASES = random.Random(1)
AGENT_SETTLE_S = 3.5  # after the take-over: past its settle write and any peer's silent_owner_after
EGRESS_FAULTS = ("crash", "hang", "drain")
EGRESS_ORDERS = ("route-first", "address-first")
PARTITION_S = 10.0
UNDETECTED_WINDOW_S = 10.0


def baseline_command(lab: NetLab, i: int, nat: Nat) -> list[str]:
    """nat_monitor.sh in NAT i: it watches the next NAT (a ring, one watcher per NAT, as the script's pairs)."""
    assert lab.moto is not None
    j = (i + 1) % lab.n
    peer = lab.nats[j]
    return [
        sys.executable, str(REPO / "bench" / "nat_monitor.py"), "--endpoint", lab.moto.url,
        "--me", nat.instance_id, "--my-rt", nat.route_table,
        "--peer", peer.instance_id, "--peer-ip", lab.topo.nat_ip(j), "--peer-rt", peer.route_table,
    ]  # fmt: skip


@dataclass
class Trial:
    fault: str
    outage_s: float | None = None
    lost: int | None = None
    switch_s: float | None = None
    route_changes: int = 0
    failback_lost: int | None = None
    failback_outage_s: float | None = None
    profile: dict[str, float] = field(default_factory=dict)
    ping: PingResult | None = None
    t_fault: float = 0.0
    # egress_ip = follow: AZ a's traffic at the fake internet with table a's EIP
    same_ip_outage_s: float | None = None
    wrong_address: int | None = None  # packets (any host) that arrived with an address not their table's EIP
    eip_switch_s: float | None = None  # fault -> the gateway maps table a's EIP to the taker's address
    failback_same_ip_outage_s: float | None = None


def _wait(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(interval)
    return False


def _route_event(lab: NetLab, since: float, rtb: str, target: str = "", other_than: str = "") -> float | None:
    for e in lab.events_since(since, "route"):
        hit = e.data["rtb"] == rtb and (not target or e.data["target"] == target)
        if hit and (not other_than or e.data["target"] != other_than):
            return e.t
    return None


def _largest_gap(times: list[float], interval: float, ends_after: float, ends_before: float = math.inf) -> float:
    """Largest gap between consecutive times, minus one interval, among those ending in (ends_after, ends_before]."""
    gaps = [b - a - interval for a, b in itertools.pairwise(sorted(times)) if ends_after < b <= ends_before]
    return max([0.0, *gaps])


def _lost_between(r: PingResult, t_from: float, t_to: float) -> int:
    """Probes sent in [t_from, t_to) that were never answered (send times from the reply clock)."""
    if not r.received:
        return 0
    seq0, t0 = min(r.received.items())
    return sum(1 for s in r.lost_seqs() if t_from <= t0 + (s - seq0) * r.interval < t_to)


def _log_lines(text: str) -> Iterator[tuple[float, str]]:
    """(wall time, message) of each JSON line of an agent's log."""
    for line in text.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        ts = time.mktime(time.strptime(d["ts"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        yield ts + int(d["ts"][20:23]) / 1000, d["msg"]


def takeover_profile(
    victim: list[tuple[float, str]], takers: list[list[tuple[float, str]]], t_fault: float, vid: str, rtb: str
) -> dict[str, float]:
    """Where a crash's or hang's time went, from the agents' debug logs ((wall time, message) lines), each
    relative to the fault: the victim's last renewal (sent, written), the taker's first read showing it
    (``sighted``), the expiry that read allows (``expiry_due``: sighted + lease + margin), the expire call's
    start and end, the claim, and the route write (tag + ReplaceRoute); ``detected_s`` and ``takeover_s``
    from the info lines."""
    p: dict[str, float] = {}
    # The victim's last renewal is the newest of its versions the taker read before taking over. Its
    # own log may not have it: killed between sending a renewal and logging it, the victim's log
    # ends one renewal early while the write landed (and its expiry counts from that later one).
    logged = {
        int(msg.split()[2][1:]): (ts, float(msg.split()[4])) for ts, msg in victim if msg.startswith("trace renewed v")
    }
    for taker in takers:
        mine: dict[str, float] = {}
        reads: list[tuple[float, int]] = []  # (relative time, the victim's version) before the takeover
        for ts, msg in taker:
            if ts < t_fault - 1.5:
                continue
            rel = ts - t_fault
            if rel >= 0 and "not healthy:" in msg and vid in msg.split("not healthy:", 1)[1]:
                p["detected_s"] = min(p.get("detected_s", 1e9), rel)
            if rel >= 0 and (f"took over {rtb}" in msg or f"handing {rtb}" in msg):
                p["takeover_s"] = min(p.get("takeover_s", 1e9), rel)
                mine.setdefault("took", rel)
            if "took" in mine:
                continue
            if msg.startswith("trace read "):
                versions = dict(kv.split("=") for kv in msg.split()[2].split(",") if "=" in kv)
                if vid in versions:
                    reads.append((rel, int(versions[vid])))
            elif msg.startswith(f"trace expired {vid} "):
                mine["expire_start"], mine["expired"] = rel - float(msg.split()[4]), rel
            elif msg.startswith(f"trace claimed {rtb} "):
                mine["claimed"] = rel
            elif msg.startswith(f"trace routed {rtb} "):
                mine["routed"] = rel
        if "took" not in mine or not reads:
            continue
        final = max(v for _, v in reads)
        mine["sighted"] = min(rel for rel, v in reads if v >= final)
        for key in ("sighted", "expire_start", "expired", "claimed", "routed"):
            if key in mine:
                p[f"{key}_s"] = mine[key]
        p["expiry_due_s"] = mine["sighted"] + Timing().lease + Timing().margin
        if final in logged:
            ts, rtt = logged[final]
            p["renewal_sent_s"], p["renewal_written_s"] = ts - rtt - t_fault, ts - t_fault
        else:
            p["renewal_unlogged"] = 1.0  # sent as the fault struck: its time is not in the victim's log
    return p


class Runner:
    def __init__(self, lab: NetLab, policy: str) -> None:
        self.lab = lab
        self.systemd = lab.systemd
        self.policy = policy
        self.victim = lab.nats[VICTIM]
        self.upgrades = 0
        self._wheels: dict[int, Path] = {}

    def upgrade_wheel(self, n: int) -> Path:
        """A wheel of this checkout as another version (two alternate, so every upgrade changes the version)."""
        k = n % 2
        if k not in self._wheels:
            version = f"{__version__}+bench.upgrade{k}"
            dest = nspawn.build_wheels(self.lab.workdir / f"upgrade-wheels-{k}", version=version, deps=False)
            self._wheels[k] = next(dest.glob("nat_ha-*.whl"))
        return self._wheels[k]

    def home(self) -> bool:
        lab = self.lab
        if not lab.data_plane_at_home() or not all(lab.agent_running(i) for i in range(lab.n)):
            return False
        if self.policy == "nat-ha":
            return lab.settled()
        return all(lab.route_targets().get(n.route_table) == n.instance_id for n in lab.nats)

    def restore(self) -> None:
        lab = self.lab
        for i, n in enumerate(lab.nats):
            lab.topo.clear_faults(i)
            if n.expect_running and not lab.agent_running(i):
                lab.start_agent(i)
        if not _wait(self.home, 45, 0.3):
            for i, n in enumerate(lab.nats):  # an operator's reboot of anything still off
                if not lab.agent_running(i):
                    lab.ec2_restart(n.instance_id)
            if not _wait(self.home, 45, 0.3):
                raise RuntimeError(f"{self.policy}: the lab did not return home")
        time.sleep(0.5)

    def _egress(self, tr: Trial, t_start: float, back: float | None) -> None:
        """Same public IP: when AZ a's packets reached the fake internet with table a's EIP again; wrong ones."""
        lab, t = self.lab, tr.t_fault
        arrivals = lab.arrivals(t_start)
        right = [a.t for a in arrivals if a.host == VICTIM and a.source == lab.eip(VICTIM)]
        tr.same_ip_outage_s = _largest_gap(right, PING_INTERVAL, t, back - 1.0 if back is not None else math.inf)
        tr.wrong_address = sum(1 for a in arrivals if a.host >= 0 and a.source != lab.eip(a.host))
        home = lab.topo.egress_address(VICTIM, VICTIM)
        moved = [
            e.t for e in lab.events_since(t, "eip")
            if e.data["allocation"] == lab.allocations[VICTIM] and e.data["private"] not in ("", home)
        ]  # fmt: skip
        tr.eip_switch_s = moved[0] - t if moved else None
        if back is not None:
            tr.failback_same_ip_outage_s = _largest_gap(right, PING_INTERVAL, back - 1.0, back + 1.5)

    def _profile(self, tr: Trial) -> None:
        """Detection and take-over times from the surviving agents' JSON logs (nat-ha only).

        With ``--trace`` (the agents log at debug) also where the time went, each relative to the fault:
        the victim's last renewal (sent, written), the taker's first read showing it (``sighted``), the
        expiry that read allows (``expiry_due``: sighted + lease + margin), the expire call's start and
        end, the claim, the route write (tag + ReplaceRoute) and the route switch in the lab's router.
        """
        if self.policy != "nat-ha":
            return
        lines = [list(_log_lines(self.lab.agent_log(i))) for i in range(self.lab.n)]
        tr.profile.update(
            takeover_profile(lines[VICTIM], [lines[i] for i in range(1, self.lab.n)], tr.t_fault,
                             self.victim.instance_id, self.victim.route_table)
        )  # fmt: skip

    def trial(self, fault: str) -> Trial:
        lab, v = self.lab, self.victim
        rtb, vid = v.route_table, v.instance_id
        tr = Trial(fault)
        if fault in ("drain", "frozen_write") and self.policy != "nat-ha":
            return tr  # nat_monitor.sh has no planned handover, and no lease for a late write to outlive
        if fault == "frozen_write":
            return _frozen_write(self, tr)
        if fault in AGENT_FAULTS:
            return _agent_restart(self, tr)
        t_start = time.time()
        ping = lab.ping(VICTIM, 60)
        others = [lab.ping(i, 60) for i in range(1, lab.n)] if lab.egress else []  # every subnet's address
        time.sleep(1.0 + FAULT_PHASES.uniform(0.0, Timing().heartbeat_interval))
        tr.t_fault = t = time.time()
        drain_cmd = [
            "ip", "netns", "exec", lab.topo.nat_ns(VICTIM), sys.executable, "-m", "agent.commands.cli", "drain",
            "--config", str(v.config_path), "--wait", "15",
        ]  # fmt: skip
        if self.systemd:  # the operator's command on the instance: its own config, identity from IMDS
            drain_cmd = ["nsenter", "-t", str(lab.container(VICTIM).leader), "-a", "/opt/nat-ha/bin/nat-ha",
                         "drain", "--wait", "15"]  # fmt: skip
        if fault == "crash":
            lab.crash(VICTIM)
        elif fault == "hang":
            lab.hang(VICTIM)
        elif fault == "forwarding":
            lab.break_forwarding(VICTIM, "ip_forward")
        elif fault == "drain":
            sh(*drain_cmd, check=False, timeout=30)
        elif fault == "partition":
            lab.partition(True)
        back: float | None = None
        if fault == "partition":
            time.sleep(PARTITION_S)
            lab.partition(False)
            time.sleep(2.0)
        else:
            limit = UNDETECTED_WINDOW_S if fault == "forwarding" else 20.0
            _wait(lambda: _route_event(lab, t, rtb, other_than=vid) is not None, limit)
            moved = _route_event(lab, t, rtb, other_than=vid)
            tr.switch_s = None if moved is None else moved - t
            if fault == "forwarding":
                lab.topo.clear_faults(VICTIM)
            elif fault == "drain":
                time.sleep(1.0)
                sh(*drain_cmd, "--undo", check=False, timeout=30)
            if moved is not None or fault == "forwarding":
                t_wait = time.time()
                _wait(lambda: _route_event(lab, t_wait, rtb, target=vid) is not None, 40)
                back = _route_event(lab, t_wait, rtb, target=vid)
            time.sleep(1.5)
        r = ping.finish()
        for other in others:
            other.finish()
        tr.ping = r
        tr.route_changes = len(lab.events_since(t, "route"))
        if lab.egress:
            self._egress(tr, t_start, back)
        end = back - 1.0 if back is not None else time.time()
        outage, _, resumed = r.outage(t)
        if fault == "forwarding" and tr.switch_s is None:
            outage = UNDETECTED_WINDOW_S  # never detected: down until the fault was removed
        tr.outage_s = outage
        tr.lost = _lost_between(r, t, end if fault != "partition" else time.time())
        if back is not None:
            tr.failback_lost = _lost_between(r, back - 1.0, time.time())
            times = sorted(r.received.values())
            gaps = [b - a - r.interval for a, b in itertools.pairwise(times) if back - 1.0 <= b <= back + 1.5]
            tr.failback_outage_s = max([0.0, *gaps])
        self._profile(tr)
        if resumed:
            tr.profile["first_reply_s"] = resumed - t
        return tr


def _frozen_write(runner: Runner, tr: Trial) -> Trial:
    """The taker is frozen inside its ReplaceRoute; AWS applies that request after a newer term's write.

    NAT a (the victim) crashes; b, next in line, takes a's table and sends its ReplaceRoute,
    which the lab's EC2 proxy holds (AWS may apply a request long after the client gave up);
    b is frozen (SIGSTOP) right then, with the request in flight. Its session runs out; c takes
    the table (b answers probes: c waits silent_owner_after) and writes it. Then the proxy lets
    b's old request through: it lands on top of c's - a stray write, beyond the horizon nat-ha
    assumes - and b is resumed. Measured: when the stray landed and how long until c's table
    pointed at c again (c writes again ec2_apply_horizon after taking it).
    """
    lab, v = runner.lab, runner.victim
    rtb = v.route_table
    taker_i, third_i = (VICTIM + 1) % lab.n, (VICTIM + 2) % lab.n
    taker, third = lab.nats[taker_i], lab.nats[third_i]
    ping = lab.ping(VICTIM, 60)
    time.sleep(1.0)
    tr.t_fault = t = time.time()
    lab.hold_ec2(taker_i, "ReplaceRoute")
    lab.crash(VICTIM)
    try:
        held = None
        if _wait(lambda: lab.ec2_held_at(taker_i, t) is not None, 15, 0.01):
            lab.signal(taker.instance_id, signal.SIGSTOP)  # frozen with its write in flight
            held = lab.ec2_held_at(taker_i, t)
        if held is not None:
            tr.profile["taker_froze_s"] = held - t
            _wait(lambda: _route_event(lab, t, rtb, target=third.instance_id) is not None, 20)
            moved = _route_event(lab, t, rtb, target=third.instance_id)
            tr.switch_s = None if moved is None else moved - t
            t_rel = time.time()
            lab.release_ec2(taker_i)
            _wait(lambda: _route_event(lab, t_rel, rtb, target=taker.instance_id) is not None, 5)
            stray = _route_event(lab, t_rel, rtb, target=taker.instance_id)
            if stray is not None:
                tr.profile["stray_landed_s"] = stray - t
                _wait(lambda: _route_event(lab, stray, rtb, target=third.instance_id) is not None, 10)
                fixed = _route_event(lab, stray, rtb, target=third.instance_id)
                if fixed is not None:
                    tr.profile["stray_corrected_after_s"] = fixed - stray
    finally:
        lab.signal(taker.instance_id, signal.SIGCONT)
        lab.release_ec2(taker_i)
    time.sleep(1.0)
    return _count(lab, tr, ping, t)


def _count(lab: NetLab, tr: Trial, ping: Any, t: float) -> Trial:
    """End a trial's ping; count its route changes, outage and lost packets since ``t``."""
    r = ping.finish()
    tr.ping = r
    tr.route_changes = len(lab.events_since(t, "route"))
    tr.outage_s, _, _ = r.outage(t)
    tr.lost = _lost_between(r, t, time.time())
    return tr


def _agent_restart(runner: Runner, tr: Trial) -> Trial:
    """The victim's agent alone is ended and started again (systemd); its NAT forwards all along."""
    lab = runner.lab
    if not lab.systemd:
        raise RuntimeError(f"{tr.fault} needs --systemd (a unit that restarts the agent)")
    time.sleep(LOOP_WINDOW)  # trials of a run are not a crash loop (agent/host/runstate.py backs those off)
    if tr.fault == "agent_upgrade":
        runner.upgrades += 1
        lab.install_wheel(VICTIM, runner.upgrade_wheel(runner.upgrades))
        lab.container(VICTIM).run("sh", "-c", "rm -rf /var/cache/private/nat-ha/botocore-*")
    ping = lab.ping(VICTIM, 30)
    time.sleep(1.0)
    tr.t_fault = t = lab.restart_unit(VICTIM, "kill" if tr.fault == "agent_kill" else "restart")
    _wait(lambda: lab.takeover_line(VICTIM, t) is not None, 15, 0.2)
    took = lab.takeover_line(VICTIM, t)
    if took is not None:
        tr.profile["away_s"] = took[0] - t
    time.sleep(AGENT_SETTLE_S)
    return _count(lab, tr, ping, t)


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median_s": None, "p90_s": None, "max_s": None}
    vs = sorted(values)
    p90 = vs[min(len(vs) - 1, max(0, math.ceil(0.9 * len(vs)) - 1))]
    return {"median_s": round(statistics.median(vs), 3), "p90_s": round(p90, 3), "max_s": round(vs[-1], 3)}


def summarize(trials: list[Trial]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    by: dict[str, list[Trial]] = {}
    for tr in trials:
        by.setdefault(tr.fault, []).append(tr)
    for fault, ts in by.items():
        ts = [t for t in ts if t.ping is not None]
        if not ts:
            continue
        row: dict[str, Any] = {
            **_stats([t.outage_s for t in ts if t.outage_s is not None]),
            "lost_median": statistics.median([t.lost or 0 for t in ts]),
            "lost_max": max(t.lost or 0 for t in ts),
            "route_changes": sum(t.route_changes for t in ts),
            "switch_median_s": _stats([t.switch_s for t in ts if t.switch_s is not None])["median_s"],
            "switch_max_s": _stats([t.switch_s for t in ts if t.switch_s is not None])["max_s"],
            "trials": len(ts),
            "undetected": sum(1 for t in ts if t.switch_s is None and fault != "partition"),
        }
        if fault in AGENT_FAULTS:
            row["taken_over"] = sum(1 for t in ts if "away_s" in t.profile)
        for key in ("detected_s", "takeover_s", "first_reply_s", "stray_landed_s", "stray_corrected_after_s", "away_s"):
            vals = [t.profile[key] for t in ts if key in t.profile]
            if vals:
                row[f"{key.removesuffix('_s')}_median_s"] = round(statistics.median(vals), 3)
                row[f"{key.removesuffix('_s')}_max_s"] = round(max(vals), 3)
        if fault == "frozen_write":
            row["strays"] = sum(1 for t in ts if "stray_landed_s" in t.profile)
        same = [t.same_ip_outage_s for t in ts if t.same_ip_outage_s is not None]
        if same:
            stats = _stats(same)
            row["same_ip_outage"] = {"median_s": stats["median_s"], "p90_s": stats["p90_s"], "max_s": stats["max_s"]}
            row["wrong_address"] = sum(t.wrong_address or 0 for t in ts)
            row["eip_switch_median_s"] = _stats([t.eip_switch_s for t in ts if t.eip_switch_s is not None])["median_s"]
        out[fault] = row
        fb = [t for t in ts if t.failback_lost is not None]
        if fb and fault in ("crash", "drain"):
            fbrow = {
                **_stats([t.failback_outage_s or 0.0 for t in fb]),
                "lost_median": statistics.median([t.failback_lost or 0 for t in fb]),
                "lost_max": max(t.failback_lost or 0 for t in fb),
                "route_changes": len(fb),
                "trials": len(fb),
            }
            fb_same = [t.failback_same_ip_outage_s for t in fb if t.failback_same_ip_outage_s is not None]
            if fb_same:
                fbrow["same_ip_outage"] = _stats(fb_same)
                fbrow["wrong_address"] = 0  # counted in the trial's row (the whole trial)
            prev = out.get("failback")
            if prev is None or fault == "crash":
                out["failback"] = fbrow
    return out


PHASES = (
    ("renewal_sent_s", "victim's last renewal sent"),
    ("renewal_written_s", "  ... written (answered)"),
    ("sighted_s", "taker's read showing it"),
    ("expiry_due_s", "expiry due (sighted + lease + margin)"),
    ("detected_s", "probes judge it down (log line)"),
    ("expire_start_s", "expire call sent"),
    ("expired_s", "expired"),
    ("claimed_s", "table claimed"),
    ("routed_s", "tag + ReplaceRoute answered"),
    ("switch_s", "route switched in the lab's router"),
    ("first_reply_s", "first ping reply"),
)


def phases(trials: list[Trial]) -> dict[str, dict[str, float]]:
    """Median (and max) of each phase's time after the fault, per fault (crash, hang)."""
    out: dict[str, dict[str, float]] = {}
    for fault in ("crash", "hang"):
        ts = [t for t in trials if t.fault == fault]
        row: dict[str, float] = {}
        for key, _ in PHASES:
            vals = [t.switch_s if key == "switch_s" else t.profile.get(key) for t in ts]
            got = [v for v in vals if v is not None]
            if got:
                row[key] = round(statistics.median(got), 3)
                row[key.removesuffix("_s") + "_max_s"] = round(max(got), 3)
        gaps = [t.profile["expire_start_s"] - t.profile["expiry_due_s"] for t in ts
                if "expire_start_s" in t.profile and "expiry_due_s" in t.profile]  # fmt: skip
        if gaps:
            row["expire_after_due_s"] = round(statistics.median(gaps), 3)
            row["expire_after_due_max_s"] = round(max(gaps), 3)
        unlogged = sum(1 for t in ts if "renewal_unlogged" in t.profile)
        if unlogged:
            row["renewal_unlogged_trials"] = unlogged  # the victim died between sending its renewal and logging it
        lags = [t.profile["sighted_s"] - t.profile["renewal_sent_s"] for t in ts
                if "sighted_s" in t.profile and "renewal_sent_s" in t.profile]  # fmt: skip
        if lags:
            row["sighting_lag_s"] = round(statistics.median(lags), 3)
            row["sighting_lag_max_s"] = round(max(lags), 3)
        if row:
            out[fault] = row
    return out


def phase_table(rows: dict[str, dict[str, float]]) -> str:
    head = f"{'phase':<40} " + " ".join(f"{f + ' med':>10} {'max':>6}" for f in rows)
    lines = [head, "-" * len(head)]
    for key, label in (*PHASES, ("sighting_lag_s", "sighting lag (sighted - sent)"),
                       ("expire_after_due_s", "expire sent - expiry due")):  # fmt: skip
        cells = []
        for row in rows.values():
            mx = row.get(key.removesuffix("_s") + "_max_s")
            cells.append(f"{_fmt(row.get(key)):>10} {_fmt(mx):>6}")
        lines.append(f"{label:<40} " + " ".join(cells))
    for fault, row in rows.items():
        if row.get("renewal_unlogged_trials"):
            lines.append(
                f"{fault}: in {row['renewal_unlogged_trials']:.0f} trial(s) the victim's last renewal landed but is "
                "not in its log (it died between the send and the log line): sighted and expiry count from it"
            )
    return "\n".join(lines)


def plot(tr: Trial, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = tr.ping
    assert r is not None and r.received
    seq0, t0 = min(r.received.items())
    sent = {s: t0 + (s - seq0) * r.interval - tr.t_fault for s in range(1, r.sent + 1)}
    lo, hi = -1.0, max((tr.switch_s or 0) + 2.5, 4.0)
    ok = [(sent[s], 1) for s in sent if s in r.received and lo <= sent[s] <= hi]
    lost = [(sent[s], 0) for s in sent if s not in r.received and lo <= sent[s] <= hi]
    fig, ax = plt.subplots(figsize=(8, 2.6), dpi=80)
    if ok:
        ax.scatter([x for x, _ in ok], [y for _, y in ok], marker="|", color="tab:green", s=120, label="reply received")
    if lost:
        ax.scatter([x for x, _ in lost], [y for _, y in lost], marker="x", color="tab:red", s=30, label="ping lost")
    marks = [("fault", 0.0, "black")]
    for key, label, color in (("detected_s", "peer judged down", "tab:orange"),
                              ("takeover_s", "lease taken over + ReplaceRoute", "tab:purple")):  # fmt: skip
        if key in tr.profile:
            marks.append((label, tr.profile[key], color))
    if tr.switch_s is not None:
        marks.append(("route switched in the VPC router", tr.switch_s, "tab:blue"))
    for label, x, color in marks:
        ax.axvline(x, color=color, linestyle="--", linewidth=1)
        ax.text(x, 0.5, f" {label} ({x:.2f} s)", rotation=90, va="center", fontsize=7, color=color)
    ax.set_yticks([0, 1], ["lost", "received"])
    ax.set_ylim(-0.5, 1.5)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("seconds after the fault (pings every 100 ms from the private host)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(v: Any, unit: str = "") -> str:
    return "-" if v is None else (f"{v:.2f}{unit}" if isinstance(v, float) else f"{v}{unit}")


def table(results: dict[str, Any]) -> str:
    s, b = results["scenarios"], results["baseline"]
    head = (
        f"{'scenario':<11} {'policy':<12} {'lost med':>8} {'outage med':>10} {'p90':>6} {'max':>6} "
        f"{'switch med':>10} {'switch max':>10} {'routes':>6} {'vs base':>8}"
    )
    lines = [head, "-" * len(head)]
    for name in ("crash", "hang", "forwarding", "drain", "failback", "partition", "frozen_write"):
        if name not in s and name not in b:
            continue  # not run (--faults, --systemd)
        for pol, data in (("nat-ha", s), ("nat_monitor", b)):
            if pol == "nat_monitor" and not b:
                continue  # no baseline run (--no-baseline, --systemd)
            row = data.get(name)
            if row is None:
                lines.append(f"{name:<11} {pol:<12} {'n/a (no such action)':>40}")
                continue
            ratio = ""
            if pol == "nat-ha" and b.get(name, {}).get("median_s") and row.get("median_s") is not None:
                ratio = f"{row['median_s'] / b[name]['median_s']:.2f}x"
            lines.append(
                f"{name:<11} {pol:<12} {_fmt(row.get('lost_median')):>8} {_fmt(row.get('median_s'), ' s'):>10} "
                f"{_fmt(row.get('p90_s')):>6} {_fmt(row.get('max_s')):>6} {_fmt(row.get('switch_median_s'), ' s'):>10} "
                f"{_fmt(row.get('switch_max_s')):>10} {row.get('route_changes', 0):>6} {ratio:>8}"
            )
    return "\n".join(lines)


def agent_table(results: dict[str, Any]) -> str:
    """Restarts of the agent alone (--systemd): nothing may move, nothing may be lost."""
    head = f"{'scenario':<14} {'routes':>6} {'lost max':>8} {'away med':>9} {'away max':>9} {'taken over':>10}"
    lines = [head, "-" * len(head)]
    for name in AGENT_FAULTS:
        row = results["scenarios"].get(name)
        if row is None:
            continue
        lines.append(
            f"{name:<14} {row.get('route_changes', 0):>6} {_fmt(row.get('lost_max')):>8} "
            f"{_fmt(row.get('away_median_s'), ' s'):>9} {_fmt(row.get('away_max_s'), ' s'):>9} "
            f"{row.get('taken_over', 0):>4}/{row['trials']:<5}"
        )
    return "\n".join(lines)


def egress_table(results: dict[str, Any]) -> str:
    """Same public IP restored (egress_ip = follow), per order and fault."""
    head = (
        f"{'scenario':<11} {'order':<14} {'same-ip med':>11} {'p90':>6} {'max':>6} {'outage med':>10} "
        f"{'eip switch':>10} {'wrong addr':>10} {'trials':>6}"
    )
    lines = [head, "-" * len(head)]
    for order, scenarios in results.get("egress", {}).items():
        for name in ("crash", "hang", "drain", "failback"):
            row = scenarios.get(name)
            if row is None or "same_ip_outage" not in row:
                continue
            same = row["same_ip_outage"]
            lines.append(
                f"{name:<11} {order:<14} {_fmt(same['median_s'], ' s'):>11} {_fmt(same['p90_s']):>6} "
                f"{_fmt(same['max_s']):>6} {_fmt(row.get('median_s'), ' s'):>10} "
                f"{_fmt(row.get('eip_switch_median_s'), ' s'):>10} {row.get('wrong_address', 0):>10} {row['trials']:>6}"
            )
    return "\n".join(lines)


def run_policy(
    policy: str,
    workdir: Path,
    trials: int,
    faults: list[str],
    log: Callable[[str], None],
    systemd: bool = False,
    egress_order: str = "",
    trace: bool = False,
) -> list[Trial]:
    kwargs: dict[str, Any] = {} if policy == "nat-ha" else {"agent_command": baseline_command}
    if trace and policy == "nat-ha":
        kwargs["log_level"] = "debug"
    if egress_order:
        kwargs.update(egress_ip="follow", egress_order=egress_order)
    out: list[Trial] = []
    if policy == "nat-ha":
        kwargs["ec2_proxy"] = "frozen_write" in faults  # EC2 behind the lab's hold proxy
    name = f"{policy}-{egress_order}" if egress_order else policy
    with NetLab(workdir / name, n=3, max_seconds=7200, systemd=systemd, **kwargs) as lab:
        runner = Runner(lab, policy)
        runner.restore()
        for fault in faults:
            n = trials if fault in ("crash", "hang") else max(1, min(trials, 5))
            for k in range(n):
                tr = runner.trial(fault)
                out.append(tr)
                same = ""
                if egress_order:
                    same = (f"same-ip outage {_fmt(tr.same_ip_outage_s, ' s')}, "
                            f"eip switch {_fmt(tr.eip_switch_s, ' s')}, wrong address {tr.wrong_address}, "
                            f"failback same-ip {_fmt(tr.failback_same_ip_outage_s, ' s')}, ")  # fmt: skip
                log(
                    f"{name:<11} {fault:<10} trial {k + 1}/{n}: outage {_fmt(tr.outage_s, ' s')}, {same}"
                    f"lost {_fmt(tr.lost)}, switch {_fmt(tr.switch_s, ' s')}, routes {tr.route_changes}, "
                    f"failback lost {_fmt(tr.failback_lost)} { ({k: round(v, 2) for k, v in tr.profile.items()}) }"
                )
                runner.restore()
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.cli import BenchParser  # after the repository is on sys.path

    p = BenchParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--trials", type=int, default=20, help="trials of crash and hang (others: min(N, 5)); default 20")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--plot", metavar="PNG", default="failover-timeline.png", help="timeline of one crash trial")
    p.add_argument("--faults", default="", help=f"comma-separated subset of {','.join(FAULTS)} (default: "
                   f"{','.join(PROCESS_FAULTS)}; with --systemd: {','.join(SYSTEMD_FAULTS)})")  # fmt: skip
    p.add_argument("--systemd", action="store_true",
                   help="every NAT a container with a real systemd, the shipped units (no baseline)")  # fmt: skip
    p.add_argument("--no-baseline", action="store_true", help="skip the nat_monitor.sh reference runs")
    p.add_argument("--egress-ip", choices=("off", "follow"), default="off",
                   help="follow: each route table's Elastic IP follows it; measure when its traffic leaves with it "
                   "again (same_ip_outage)")  # fmt: skip
    p.add_argument("--egress-order", choices=(*EGRESS_ORDERS, "both"), default="both",
                   help="with --egress-ip follow: the agents' egress_order (default: both, one lab each)")  # fmt: skip
    p.add_argument("--trace", action="store_true",
                   help="agents log at debug: print where crash and hang trials' time went (per phase)")  # fmt: skip
    p.add_argument("--workdir", metavar="DIR", help="keep logs here (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=1, help="seed of the faults' random phases (default 1)")
    args = p.parse_args(argv)
    FAULT_PHASES.seed(args.seed)
    follow = args.egress_ip == "follow"
    if follow and args.systemd:
        p.error("--egress-ip follow runs in the process lab (the systemd lab has no internet gateway)")
    default = SYSTEMD_FAULTS if args.systemd else EGRESS_FAULTS if follow else PROCESS_FAULTS
    faults = [f.strip() for f in (args.faults or ",".join(default)).split(",") if f.strip()]
    bad = [f for f in faults if f not in FAULTS]
    if bad or not faults:
        p.error(f"--faults: unknown fault(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(FAULTS)}")
    if not args.systemd and any(f in AGENT_FAULTS for f in faults):
        p.error(f"--faults: {', '.join(f for f in faults if f in AGENT_FAULTS)}: only with --systemd (a unit restarts "
                "the agent)")  # fmt: skip
    if not 1 <= args.trials <= 1000:
        p.error("--trials must be between 1 and 1000")
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: the lab's namespaces and processes go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    reason = skip_reason() or (nspawn.skip_reason() if args.systemd else None)
    if reason:
        print(f"failover: {reason}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, flush=True)

    with tempfile.TemporaryDirectory(prefix="nat-ha-failover-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        egress: dict[str, list[Trial]] = {}
        if follow:
            orders = EGRESS_ORDERS if args.egress_order == "both" else (args.egress_order,)
            for order in orders:
                egress[order] = run_policy("nat-ha", workdir, args.trials, faults, log, egress_order=order)
            ours = egress[orders[0]]
        else:
            ours = run_policy("nat-ha", workdir, args.trials, faults, log, systemd=args.systemd, trace=args.trace)
        skip_base = args.no_baseline or args.systemd or follow
        base = [] if skip_base else run_policy("nat_monitor", workdir, args.trials, faults, log)
    results: dict[str, Any] = {
        "trials": args.trials,
        "systemd": args.systemd,
        "egress_ip": args.egress_ip,
        "ping_interval_s": 0.1,
        "scenarios": summarize(ours),
        "baseline": summarize(base),
    }
    if follow:
        results["egress"] = {order: summarize(trs) for order, trs in egress.items()}
    print()
    print(table(results))
    if args.trace:
        results["phases"] = phases(ours)
        print("\nwhere the time went (median s after the fault; --trace)\n")
        print(phase_table(results["phases"]))
    if any(f in results["scenarios"] for f in AGENT_FAULTS):
        print("\nthe agent alone restarted (its NAT forwards all along)\n")
        print(agent_table(results))
    if follow:
        print(f"\nsame public IP ({', '.join(egress)}; the table above: {next(iter(egress))})\n")
        print(egress_table(results))
    crash = [t for t in ours if t.fault == "crash" and t.ping is not None and t.outage_s is not None]
    if crash and args.plot:
        median = sorted(crash, key=lambda t: t.outage_s or 0)[len(crash) // 2]
        plot(
            median, Path(args.plot), f"nat-ha: NAT crash (median trial of {len(crash)}), outage {median.outage_s:.2f} s"
        )
        print(f"\ntimeline plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
