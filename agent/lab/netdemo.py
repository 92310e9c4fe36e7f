"""``nat-ha demo --netns`` (root): the network-namespace lab, one NAT crashed, the private host's ping beside it.

The same lab as tests/lab and bench/failover.py (agent.lab.netlab): three NAT namespaces with
``nat-ha setup-nat``, a VPC router, a fake internet with moto server, real agents probing
with ICMP. The private host of AZ a pings 203.0.113.10 every 100 ms; NAT a is crashed
(links down, agent killed). Its ping output is printed as it comes, with the gap, and the
timeline (route switch, restart, fail-back) beside it, like the seed article's capture.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent.lab.netlab import INET_IP, NetLab

REPLY = re.compile(r"^\[(\d+\.\d+)\] (.*)$")


def main(workdir: Path, timeout: float) -> int:
    """Run the namespace demo in ``workdir`` (root; the command checked the arguments)."""
    print("building the lab: 3 AZs, NAT namespaces (setup-nat), VPC router, fake internet, moto, agents...")
    with NetLab(workdir, n=3) as lab:
        if not lab.wait_for(lab.settled, 60, 0.3):
            print("the lab did not settle", file=sys.stderr)
            return 1
        victim = lab.nats[0]
        names = {n.instance_id: f"nat-{chr(97 + i)}" for i, n in enumerate(lab.nats)}
        rt_name = {n.route_table: f"rtb-{chr(97 + i)}" for i, n in enumerate(lab.nats)}
        seconds = min(max(20.0, timeout - 10), 60.0)
        print(f"settled. priv-a ({lab.topo.priv_ip(0)}) pings {INET_IP} every 100 ms; nat-a crashes after 2 s\n")
        print(f"{'ping from priv-a':<64} | timeline")
        ping = subprocess.Popen(
            ["ip", "netns", "exec", lab.topo.priv_ns(0), "stdbuf", "-oL", "timeout", str(int(seconds) + 5),
             "ping", "-D", "-O", "-n", "-i", "0.1", "-W", "1", "-c", str(int(seconds * 10)), INET_IP],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        t0 = time.time()
        printed = threading.Lock()
        fault: dict[str, float] = {}
        done = threading.Event()

        def show(left: str, right: str = "") -> None:
            with printed:
                print(f"{left:<64} | {right}", flush=True)

        def events() -> None:
            seen = 0
            while not done.is_set():
                evs = lab.events_since(t0)
                for e in evs[seen:]:
                    rel = e.t - fault.get("t", e.t)
                    if e.kind == "route":
                        what = f"route {rt_name.get(e.data['rtb'], e.data['rtb'])} -> {names.get(e.data['target'])}"
                    elif e.kind in ("stopped", "running"):
                        what = f"EC2: {names.get(e.data['instance'])} {e.kind}"
                    else:
                        continue
                    show("", f"{rel:+6.2f} s  {what}")
                seen = len(evs)
                time.sleep(0.05)

        watcher = threading.Thread(target=events, daemon=True)
        watcher.start()

        def crash() -> None:
            time.sleep(2.0)
            fault["t"] = time.time()
            lab.crash(0)
            show("", f" +0.00 s  nat-a crashes (links down, agent killed) [{victim.instance_id}]")

        threading.Thread(target=crash, daemon=True).start()
        last = 0.0
        assert ping.stdout is not None
        for line in ping.stdout:
            m = REPLY.match(line.rstrip())
            if not m:
                if line.strip():
                    show(line.rstrip()[:64])
                continue
            t = float(m.group(1))
            text = m.group(2).replace(f"64 bytes from {INET_IP}: ", "")
            gap = f"  (gap {t - last:.2f} s)" if last and "time=" in text and t - last > 0.3 else ""
            if "time=" in text:
                last = t
            show(f"{t - t0:6.2f} {text}{gap}"[:64])
        ping.wait(10)
        lab.wait_for(lambda: lab.route_targets().get(victim.route_table) == victim.instance_id, 30)
        time.sleep(0.5)
        done.set()
        watcher.join(2)
        back = lab.route_targets().get(victim.route_table) == victim.instance_id
        print(f"\nnat-a {'serves its route table again' if back else 'has not failed back yet'}.")
        return 0
