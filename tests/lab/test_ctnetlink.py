"""The sync's ctnetlink adapter (agent.host.conntrack) against a live kernel, in a network namespace of its own.

Entries are created, listed, refreshed and deleted the way nat-ha ctsync does it, while its event
reader listens, and the ``conntrack`` tool's own listing of the same namespace is the referee: what
the tool prints (parsed by agent.host.flows.parse) must be what agent.host.ctnetlink read.
The unit tests hold captured messages (tests/unit/ctsync/test_ctnetlink.py); this checks them live.
About a second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
N = 2_000


def check() -> dict[str, object]:
    """Run inside the namespace: returns what the test asserts on."""
    sys.path.insert(0, str(REPO))
    from agent.host import conntrack, flows

    nat = "10.0.100.21"
    want = []
    for i in range(N):  # unique public tuples; every tenth flow's public port differs from its own (remapped)
        proto = "tcp" if i % 2 else "udp"
        sport = 20000 + i
        state = ("SYN_RECV" if i % 4 == 1 else "ESTABLISHED") if proto == "tcp" else ""
        want.append(flows.Flow("A", proto, f"10.0.1.{10 + i % 200}", "203.0.113.10", sport, 9000 + i % 7, nat,
                               sport + (1000 if i % 10 == 0 else 0), 3600, "SEEN_REPLY,ASSURED", state))  # fmt: skip
    events: list[flows.Flow] = []
    lost: list[str] = []
    stream = conntrack.EventStream(events.append, lost.append)
    stream.start()
    mine: list[flows.Flow] = []
    t0 = time.monotonic()
    with conntrack.Writer() as w:
        own_filtered = conntrack.EventStream(mine.append, lost.append, own_port=w.port)  # what the service runs
        own_filtered.start()
        w.create(want)
        created_s = time.monotonic() - t0
        again = w.create(want[:10])  # exists: EEXIST is not an error
        got = conntrack.dump(["10.0.1.0/24"])
        others = conntrack.dump(["10.0.2.0/24"])
        tool = subprocess.run(["conntrack", "-L", "-o", "save", "-s", "10.0.1.0/24"], capture_output=True, text=True,
                              check=True).stdout.splitlines()  # fmt: skip
        by_tool = [f for f in map(flows.parse, tool) if f is not None]
        w.set_timeouts([(f, 600) for f in want[:100]])  # each an update event (with the TCP state)
        refreshed = [f for f in conntrack.dump(["10.0.1.0/24"]) if f.key in {g.key for g in want[:100]}]
        # A replace: entries that exist get their new public port, new ones are made, and no delete is sent
        # for a tuple that had no entry (it would fail with ENOENT).
        moved = [f._replace(nat_port=f.nat_port + 30000) for f in want[:10]]
        fresh = [flows.Flow("A", "udp", "10.0.1.250", "203.0.113.10", 40000 + i, 53, nat, 40000 + i, 3600,
                            "SEEN_REPLY,ASSURED") for i in range(5)]  # fmt: skip
        enoent = w.failed.get(2, 0)
        w.replace(moved + fresh)
        ports = {f.key: f.nat_port for f in conntrack.dump(["10.0.1.0/24"])}
        replaced = all(ports.get(f.key) == f.nat_port for f in moved + fresh) and len(ports) == N + 5
        replace_enoent = w.failed.get(2, 0) - enoent
        w.delete(want + fresh)
        w.delete(want[:5])  # gone already: ENOENT is not an error
        left = conntrack.dump(["10.0.1.0/24"])
        failed = dict(w.failed)
    deadline = time.monotonic() + 5
    while sum(1 for e in events if e.op == "D") < N and time.monotonic() < deadline:
        time.sleep(0.05)
    stream.stop()
    own_filtered.stop()

    def norm(fs: list[flows.Flow]) -> list[list[object]]:
        return sorted([f.proto, f.src, f.sport, f.dst, f.dport, f.nat, f.nat_port, f.status, f.state] for f in fs)

    return {
        "want": norm(want),
        "got": norm(got),
        "by_tool": norm(by_tool),
        "timeouts_ok": all(3590 <= f.timeout <= 3600 for f in got),
        "refreshed": [
            len(refreshed),
            min((f.timeout for f in refreshed), default=0),
            max((f.timeout for f in refreshed), default=0),
        ],
        "again": again,
        "others": len(others),
        "left": len(left),
        "failed": {str(k): v for k, v in failed.items()},
        "ends": {e.key for e in events if e.op == "D" and e.userspace} == {f.key for f in want + fresh},
        "own_events": len(mine),
        "replaced": replaced,
        "replace_enoent": replace_enoent,
        # The event filter keeps TCP updates in any state but ESTABLISHED in the kernel.
        "updates": sorted({(e.proto, e.state) for e in events if e.op == "A"}),
        "update_count": sum(1 for e in events if e.op == "A"),
        "lost": lost,
        "created_s": created_s,
    }


def test_entries_created_listed_refreshed_and_deleted_through_ctnetlink_match_the_tool() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("conntrack") is None:
        pytest.skip("needs root, ip and the conntrack tool (the referee)")
    ns = f"nh18ct{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__], capture_output=True, text=True,
                             timeout=50, check=False)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        r = json.loads(out.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"{N} entries created in {r['created_s']:.3f} s")
    assert r["got"] == r["want"], "the listing is not what was created (a public port remapped or a field lost)"
    assert r["by_tool"] == r["want"], "the conntrack tool reads the entries differently"
    count, low, high = r["refreshed"]
    assert r["timeouts_ok"] and count == 100 and 590 <= low <= high <= 600, r["refreshed"]  # 3600 s -> 600 s, each
    assert r["again"] == 10 and r["others"] == 0 and r["left"] == 0, (r["again"], r["others"], r["left"])
    assert set(r["failed"]) <= {"17", "2"}, r["failed"]  # EEXIST, ENOENT only
    assert r["ends"], "an end event (from a program) for every deleted entry"
    assert r["updates"] == [["tcp", "ESTABLISHED"], ["udp", ""]], r["updates"]  # no SYN_RECV: filtered
    assert r["update_count"] == 75, r["update_count"]  # of the 100 refreshed: 50 UDP, 25 TCP established
    assert r["lost"] == []
    assert r["replaced"] and r["replace_enoent"] == 0, "a replace changes what exists and deletes nothing else"
    assert r["own_events"] == 0, "the events our own writer caused reach a reader that filters its port"


if __name__ == "__main__":
    json.dump(check(), sys.stdout)
