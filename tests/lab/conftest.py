"""The network-namespace lab fixtures (root only): one lab per module, gone before the next one.

The lab itself (topology, moto in ``inet``, reconciler, real agents) is agent/lab/netlab.py,
shared with bench/failover.py, bench/soak.py and ``nat-ha demo --netns``. Module scope: the
2 cores never run two labs' agents at once (test_egress.py has its own lab, with the internet
gateway), and the process lab is gone before the systemd tier starts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from agent.lab import netlab


@pytest.fixture(scope="module")  # gone before the next module's lab: the tiers share 2 cores
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netlab.NetLab]:
    yield from _lab(tmp_path_factory, "netlab")


@pytest.fixture(scope="module")
def egress_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netlab.NetLab]:
    """The lab with an internet gateway and egress_ip = "follow" (each table's EIP follows it)."""
    yield from _lab(tmp_path_factory, "egresslab", egress_ip="follow")


@pytest.fixture(scope="module")
def sync_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netlab.NetLab]:
    """Two NATs, egress_ip = "follow" and conntrack_sync: each NAT runs `nat-ha ctsync` too (test_flows.py)."""
    if shutil.which("conntrack") is None:
        pytest.skip("the flow tests need the conntrack tool (apt-get install conntrack)")
    yield from _lab(tmp_path_factory, "synclab", n=2, egress_ip="follow", conntrack_sync=True)


def _lab(tmp_path_factory: pytest.TempPathFactory, name: str, n: int = 3, **kwargs: Any) -> Iterator[netlab.NetLab]:
    reason = netlab.skip_reason()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp(name)
    the_lab = netlab.NetLab(workdir, n=n, **kwargs)
    names: list[str] = []
    try:
        the_lab.__enter__()
        names = list(the_lab.topo.made)
        assert the_lab.wait_for(the_lab.settled, 60, 0.3), f"the lab never settled (logs in {workdir})"
        yield the_lab
    finally:
        the_lab.close()
        left = netlab.sh("ip", "netns", "list", check=False).stdout
        assert not any(n in left for n in names), f"namespaces left behind: {left}"


@pytest.fixture
def settled_lab(lab: netlab.NetLab) -> Iterator[netlab.NetLab]:
    """The lab with every route table at home and every NAT healthy, before and after the test."""
    yield from _settled(lab)


@pytest.fixture
def settled_sync_lab(sync_lab: netlab.NetLab) -> Iterator[netlab.NetLab]:
    yield from _settled(sync_lab)


@pytest.fixture
def settled_egress_lab(egress_lab: netlab.NetLab) -> Iterator[netlab.NetLab]:
    """The egress lab settled: every route table and its EIP at home, every NAT healthy."""
    yield from _settled(egress_lab)


def _settled(lab: netlab.NetLab) -> Iterator[netlab.NetLab]:
    assert lab.wait_for(lab.settled, 60, 0.3), "the lab did not settle before the test"
    yield lab
    for i in range(lab.n):  # whatever the test left: no faults, every agent running
        lab.topo.boot(i)
        lab.signal(lab.nats[i].instance_id, 18)  # SIGCONT
        if lab.nats[i].expect_running and not lab.agent_running(i):
            lab.start_agent(i)
    if lab.moto is not None:
        lab.moto.resume()  # type: ignore[attr-defined]
