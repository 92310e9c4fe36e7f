"""The NAT's data-plane counters: parsed from a recorded /proc, read from the kernel, never failing a scrape.

tests/unit/host/proc_nat/ is a /proc of a NAT (the files the collector reads, recorded from a Linux
6.x host and given numbers a busy NAT would have); ethtool-S-ena.txt is ``ethtool -S`` of an ENA
interface as AWS documents its counters (this machine has no ENA device: the ENA mapping is
tested on that text, the ioctl itself on the interfaces this machine has - a veth pair in a
namespace of its own when root).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.host.dataplane import DataPlaneCollector, DriverStats, ethtool_stats
from tests.unit.host.test_probes import REPO, netns_usable

PROC = Path(__file__).with_name("proc_nat")


def ena(name: str) -> DriverStats | None:
    if name != "ens5":
        return None  # ens6: ethtool refused (a driver without statistics)
    lines = (PROC / "ethtool-S-ena.txt").read_text().splitlines()
    stats = {k.strip(): int(v) for k, _, v in (x.partition(":") for x in lines if x and not x.startswith("#"))}
    return DriverStats("ena", stats)


def samples(collector: DataPlaneCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_nats_counters_from_proc_and_ethtool() -> None:
    got = samples(DataPlaneCollector(str(PROC), stats=ena))
    assert got[("nat_ha_forwarded_packets_total", ())] == 9007133
    assert got[("nat_ha_ip_discards_total", (("direction", "in"),))] == 3
    assert got[("nat_ha_ip_discards_total", (("direction", "out"),))] == 7
    assert got[("nat_ha_interface_bytes_total", (("direction", "rx"), ("interface", "ens5")))] == 7340032000
    assert got[("nat_ha_interface_packets_total", (("direction", "tx"), ("interface", "ens6")))] == 5110000
    assert got[("nat_ha_interface_dropped_total", (("direction", "rx"), ("interface", "ens5")))] == 17
    assert not [k for k in got if ("interface", "lo") in k[1]], "lo is not a NAT's traffic"
    assert got[("nat_ha_conntrack_entries", ())] == 41969 and got[("nat_ha_conntrack_max", ())] == 262144
    # per-CPU hex columns, summed: drop 0xa + 0x6, early_drop 4 + 1, insert_failed 2 + 1
    assert got[("nat_ha_conntrack_dropped_total", (("reason", "drop"),))] == 16
    assert got[("nat_ha_conntrack_dropped_total", (("reason", "early_drop"),))] == 5
    assert got[("nat_ha_conntrack_dropped_total", (("reason", "insert_failed"),))] == 3
    allowances = {
        dict(labels)["allowance"]: v
        for (name, labels), v in got.items()
        if name == "nat_ha_ena_allowance_exceeded_total"
    }
    assert allowances == {"bw_in": 1274, "bw_out": 386, "pps": 42, "conntrack": 7, "linklocal": 0}
    assert got[("nat_ha_ena_conntrack_allowance_available", (("interface", "ens5"),))] == 183233


def test_a_host_without_any_of_it_scrapes_empty(tmp_path: Path) -> None:
    """No conntrack module, no /proc/net, no ENA (the lab, a container): no series, no error."""
    got = samples(DataPlaneCollector(str(tmp_path), stats=lambda _name: None))
    assert got == {}


def test_garbage_in_proc_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "net" / "stat").mkdir(parents=True)
    (tmp_path / "net" / "snmp").write_text("Ip: Forwarding ForwDatagrams\nIp: 1\n")
    (tmp_path / "net" / "dev").write_text("h1\nh2\n  eth0: 1 2 x\n  eth1: a b c d e f g h i j k l\n")
    (tmp_path / "net" / "stat" / "nf_conntrack").write_text("entries drop\nzz 0000000g\n")
    got = samples(DataPlaneCollector(str(tmp_path), stats=lambda _name: None))
    assert got == {("nat_ha_conntrack_dropped_total", (("reason", "drop"),)): 0.0}


def test_the_ioctl_reads_what_ethtool_reads_on_this_machine() -> None:
    """ETHTOOL_GDRVINFO/GSTRINGS/GSTATS on the first interface that has a driver (virtio, veth, ena...)."""
    names = [n for _i, n in socket.if_nameindex() if n != "lo"]
    found = [s for s in map(ethtool_stats, names) if s is not None and s.stats]
    if not found:
        pytest.skip(f"no interface here answers ETHTOOL_GSTATS ({', '.join(names) or 'none but lo'})")
    assert found[0].driver and all(isinstance(v, int) for v in found[0].stats.values())


VETH = """
import json, socket, sys
sys.path.insert(0, sys.argv[1])
from agent.host.dataplane import ethtool_stats
print(json.dumps({n: ethtool_stats(n).__dict__ for n in ("nh-dp0", "nh-dp1")}))
"""


@pytest.mark.skipif(not netns_usable(), reason="needs root, unshare, ip and iptables")
def test_the_ioctl_on_a_veth_pair_in_a_namespace_of_its_own() -> None:
    """veth's ethtool statistics include peer_ifindex: the other end's index, which `ip` reports too."""
    script = (
        "ip link add nh-dp0 type veth peer name nh-dp1 && ip -j link show nh-dp1 > /dev/stderr && "
        f"exec {shlex.quote(sys.executable)} -c {shlex.quote(VETH)} {shlex.quote(str(REPO))}"
    )
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, timeout=30, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    peer_index = json.loads(done.stderr)[0]["ifindex"]
    found = json.loads(done.stdout)
    assert found["nh-dp0"]["driver"] == "veth"
    assert found["nh-dp0"]["stats"]["peer_ifindex"] == peer_index
