"""Soak: random loss on the NAT-to-NAT links for a while; count route changes (target 0).

    sudo python bench/soak.py --minutes 10 [--loss 0.1] [--json soak.json]

The lab is agent/lab/netlab.py (root). netem (loss + 50 ms jitter) is not available on this
kernel (CONFIG_NET_SCH_NETEM is not set), so the loss is ``iptables -m statistic --mode
random --probability P -j DROP`` on every packet a NAT sends to a peer, and there is no jitter.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agent.lab.netlab import NetLab, skip_reason  # noqa: E402

SENT = re.compile(r'^nat_ha_probes_sent_total\{peer="[^"]+"\} ([0-9.e+]+)$', re.M)
LOST = re.compile(r'^nat_ha_probes_lost_total\{peer="[^"]+"\} ([0-9.e+]+)$', re.M)


def _probe_counts(lab: NetLab) -> tuple[float, float]:
    sent = lost = 0.0
    for i in range(lab.n):
        text = lab.scrape(i) or ""
        sent += sum(float(x) for x in SENT.findall(text))
        lost += sum(float(x) for x in LOST.findall(text))
    return sent, lost


def soak(lab: NetLab, seconds: float, loss: float) -> dict[str, Any]:
    """Loss on every NAT's packets to its peers for ``seconds``; what moved meanwhile."""
    sent0, lost0 = _probe_counts(lab)
    t0 = time.time()
    for i in range(lab.n):
        lab.netem_peers(i, loss)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    finally:
        for i in range(lab.n):
            lab.topo.clear_faults(i)
    sent1, lost1 = _probe_counts(lab)
    sent, lost = sent1 - sent0, lost1 - lost0
    return {
        "seconds": seconds,
        "loss_per_packet": loss,
        "jitter_ms": 0,
        "route_changes": len(lab.events_since(t0, "route")),
        "restarts": len(lab.events_since(t0, "stopped")),
        "probes_sent": int(sent),
        "probes_lost": int(lost),
        "probe_loss_ratio": round(lost / sent, 4) if sent else None,
        "at_home_after": lab.at_home(),
    }


def main(argv: list[str] | None = None) -> int:
    from bench.cli import BenchParser  # after the repository is on sys.path

    p = BenchParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="how long to soak (default 10)")
    p.add_argument("--loss", type=float, default=0.10, help="drop probability per packet (default 0.10)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")
    p.add_argument("--workdir", metavar="DIR", help="keep agent logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    if not 0 < args.minutes <= 600:
        p.error("--minutes must be in (0, 600]")
    if not 0 <= args.loss < 1:
        p.error("--loss must be in [0, 1)")
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C: the lab's namespaces and processes go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    reason = skip_reason()
    if reason:
        print(f"soak: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nat-ha-soak-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        with NetLab(workdir, n=3, max_seconds=args.minutes * 60 + 600) as lab:
            if not lab.wait_for(lab.settled, 60, 0.3):
                print("soak: the lab did not settle", file=sys.stderr)
                return 1
            report = soak(lab, args.minutes * 60, args.loss)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["route_changes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
