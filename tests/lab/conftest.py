"""The network-namespace lab fixture (root only): one lab for the tier, gone before the next one.

The lab itself (topology, moto in ``inet``, reconciler, real agents) is agent/lab/netlab.py,
shared with bench/failover.py, bench/soak.py and ``nat-ha demo --netns``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.lab import netlab


@pytest.fixture(scope="package")  # gone before the next tier starts: the tiers share 2 cores
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netlab.NetLab]:
    reason = netlab.skip_reason()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("netlab")
    the_lab = netlab.NetLab(workdir, n=3)
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
    assert lab.wait_for(lab.settled, 60, 0.3), "the lab did not settle before the test"
    yield lab
    for i in range(lab.n):  # whatever the test left: no faults, every agent running
        lab.topo.boot(i)
        lab.signal(lab.nats[i].instance_id, 18)  # SIGCONT
        if lab.nats[i].expect_running and not lab.agent_running(i):
            lab.start_agent(i)
    if lab.moto is not None:
        lab.moto.resume()  # type: ignore[attr-defined]
