"""The systemd tier: the namespace lab with every NAT a container booted by a real systemd.

One lab for the tier (``NetLab(systemd=True)``, agent/lab/netlab.py and agent/lab/nspawn.py):
the stack's user data installs nat-ha in a Debian bookworm image, the shipped units run it, and
each NAT's container is joined to the NAT's network namespace. Skips, saying why, where the lab
or nspawn cannot run (not root, no systemd-nspawn, no rootfs and no debootstrap, no overlayfs).
Afterwards nothing may be left: containers off, overlay disks unmounted, their cgroups and the
namespaces gone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.lab import netlab, nspawn

VICTIM = 0


def _leftovers(tag: str, names: list[str]) -> list[str]:
    left = [n for n in netlab.sh("ip", "netns", "list", check=False).stdout.split() if n in names]
    left += [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if tag in line]
    for root in nspawn.CGROUP_ROOTS:
        if Path(root).is_dir():
            left += [f"{root}/{d}" for d in os.listdir(root) if d.startswith(tag) or d == "payload"]
    return left


@pytest.fixture(scope="package")  # gone before the next tier starts: the tiers share 2 cores
def sdlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netlab.NetLab]:
    reason = netlab.skip_reason() or nspawn.skip_reason()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("sdlab")
    the_lab = netlab.NetLab(workdir, n=3, systemd=True)
    names: list[str] = []
    t0 = time.monotonic()
    try:
        the_lab.__enter__()
        names = list(the_lab.topo.made)
        assert the_lab.wait_for(the_lab.settled, 90, 0.3), f"the systemd lab never settled (logs in {workdir})"
        baked = "the image baked ahead by tests/run-all.sh" if the_lab.image_baked_ahead else "image baked"
        print(f"\nsystemd lab up and settled in {time.monotonic() - t0:.1f} s ({baked}, 3 containers booted)")
        yield the_lab
    finally:
        the_lab.close()
        left = _leftovers(f"{nspawn.MARK}{os.getpid()}-", names)
        assert not left, f"left behind: {left}"


@pytest.fixture
def lab(sdlab: netlab.NetLab) -> Iterator[netlab.NetLab]:
    """The systemd lab, settled before the test and brought back after it."""
    assert sdlab.wait_for(sdlab.settled, 60, 0.3), "the lab did not settle before the test"
    yield sdlab
    for i in range(sdlab.n):
        sdlab.topo.clear_faults(i)
        ct = sdlab.container(i)
        try:
            if ct.running:
                ct.run("systemctl", "kill", "--kill-who=main", "--signal=SIGCONT", "nat-ha.service", check=False)
                if ct.is_active("nat-ha.service") not in ("active", "activating"):
                    ct.systemctl("start", "--no-block", "nat-ha.service")
        except RuntimeError:  # it went down meanwhile (a peer's StopInstances: the lab kills the container)
            pass
        if not ct.running:
            sdlab.boot(i)
    assert sdlab.wait_for(sdlab.settled, 60, 0.3), "the lab did not settle after the test"


def wall_of_monotonic(usec: str) -> float:
    """A systemd ...TimestampMonotonic (µs; the container shares the host's CLOCK_MONOTONIC) as wall time."""
    return time.time() - (time.monotonic() - int(usec) / 1e6)


def metric(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample of the Prometheus text ``text`` (None: not there)."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return None
