"""What the NAT itself does: packets forwarded, bytes per interface, connection tracking, drops, and the
ENA driver's ``*_allowance_exceeded`` counters that say the instance type is too small.

NAT Gateway's CloudWatch metrics give an operator these; a NAT instance has them in the kernel.
They are read when Prometheus scrapes (a collector), never by the HA cycle: no cost between
scrapes. Every source is optional - a file that is absent (no conntrack module), an interface
whose driver is not ENA (the lab's veth, a virtio test VM), a kernel without a column - leaves its
series out; nothing here can fail a scrape.

Sources (all of the agent's own network namespace):

* ``/proc/net/snmp`` (``Ip:``): ForwDatagrams (packets forwarded), InDiscards, OutDiscards;
* ``/proc/net/dev``: bytes, packets and drops per interface (``lo`` left out);
* ``/proc/sys/net/netfilter/nf_conntrack_count`` and ``_max``; ``/proc/net/stat/nf_conntrack``
  (per CPU, hex): drop, early_drop, insert_failed;
* the ENA counters, read the way ``ethtool -S`` reads them (the ETHTOOL_GDRVINFO, GSTRINGS and
  GSTATS ioctls on a socket): bw_in, bw_out, pps, conntrack and linklocal ``_allowance_exceeded``,
  and ``conntrack_allowance_available``. AWS documents them for the ENA driver only.
"""

from __future__ import annotations

import array
import fcntl
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
ETHTOOL_GSTRINGS = 0x0000001B
ETHTOOL_GSTATS = 0x0000001D
ETH_SS_STATS = 1
ETH_GSTRING_LEN = 32
DRVINFO_SIZE = 196  # struct ethtool_drvinfo
DRVINFO_N_STATS = 180  # offset of n_stats in it
MAX_STATS = 4096  # a driver reporting more is not believed

ALLOWANCES = ("bw_in", "bw_out", "pps", "conntrack", "linklocal")
CONNTRACK_DROPS = ("drop", "early_drop", "insert_failed")


@dataclass(frozen=True)
class DriverStats:
    driver: str
    stats: dict[str, int]


def _buffer(size: int) -> array.array[int]:
    """A zeroed buffer the kernel writes into (an array: its address is known without ctypes)."""
    return array.array("B", bytes(size))


def _ifreq(name: str, data: array.array[int]) -> bytes:
    """struct ifreq with ifr_data pointing at ``data`` (name[16], then the pointer)."""
    return struct.pack("16sP", name.encode()[:15], data.buffer_info()[0]) + b"\0" * 16


def ethtool_stats(interface: str) -> DriverStats | None:
    """``ethtool -S interface``: the driver's name and its statistics; None when the ioctls are refused."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            info = _buffer(DRVINFO_SIZE)
            struct.pack_into("I", info, 0, ETHTOOL_GDRVINFO)
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, _ifreq(interface, info))
            driver = info.tobytes()[4:36].split(b"\0", 1)[0].decode(errors="replace")
            (count,) = struct.unpack_from("I", info, DRVINFO_N_STATS)
            if not 0 < count <= MAX_STATS:
                return DriverStats(driver, {})
            names = _buffer(12 + count * ETH_GSTRING_LEN)
            struct.pack_into("III", names, 0, ETHTOOL_GSTRINGS, ETH_SS_STATS, count)
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, _ifreq(interface, names))
            values = _buffer(8 + count * 8)
            struct.pack_into("II", values, 0, ETHTOOL_GSTATS, count)
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, _ifreq(interface, values))
    except OSError:
        return None
    raw = names.tobytes()[12:]
    labels = [raw[i * ETH_GSTRING_LEN : (i + 1) * ETH_GSTRING_LEN].split(b"\0", 1)[0].decode(errors="replace")
              for i in range(count)]  # fmt: skip
    numbers = struct.unpack_from(f"{count}Q", values, 8)
    return DriverStats(driver, dict(zip((n.strip() for n in labels), numbers, strict=True)))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def snmp_ip(text: str) -> dict[str, int]:
    """The ``Ip:`` counters of /proc/net/snmp (a header line, then a value line)."""
    lines = [line.split() for line in text.splitlines() if line.startswith("Ip:")]
    if len(lines) < 2:
        return {}
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=False) if v.lstrip("-").isdigit()}


def net_dev(text: str) -> dict[str, dict[str, int]]:
    """Per interface of /proc/net/dev: rx/tx bytes, packets, drops (``lo`` left out)."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 12 or name.strip() == "lo":
            continue
        try:
            values = [int(x) for x in fields[:12]]
        except ValueError:
            continue
        out[name.strip()] = {
            "rx_bytes": values[0], "rx_packets": values[1], "rx_dropped": values[3],
            "tx_bytes": values[8], "tx_packets": values[9], "tx_dropped": values[11],
        }  # fmt: skip
    return out


def conntrack_stat(text: str) -> dict[str, int]:
    """/proc/net/stat/nf_conntrack summed over CPUs (hex columns named by its header)."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return {}
    header = lines[0]
    totals = dict.fromkeys(header, 0)
    for row in lines[1:]:
        for name, value in zip(header, row, strict=False):
            try:
                totals[name] += int(value, 16)
            except ValueError:
                continue
    totals.pop("entries", None)  # the same on every row (a gauge, not a per-CPU counter)
    return totals


def _number(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


class DataPlaneCollector:
    """A Prometheus collector: the NAT's data-plane counters, read at scrape time."""

    def __init__(self, procfs: str = "/proc", stats: Callable[[str], DriverStats | None] = ethtool_stats) -> None:
        self.proc = Path(procfs)
        self.stats = stats

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: which families appear depends on the host

    def collect(self) -> Iterator[Metric]:
        ip = snmp_ip(_read(self.proc / "net" / "snmp"))
        if "ForwDatagrams" in ip:
            yield CounterMetricFamily(
                "nat_ha_forwarded_packets", "IP packets this host forwarded (/proc/net/snmp ForwDatagrams)",
                value=ip["ForwDatagrams"],
            )  # fmt: skip
        discards = CounterMetricFamily(
            "nat_ha_ip_discards",
            "IP packets discarded for lack of resources (InDiscards, OutDiscards)",
            labels=["direction"],
        )
        for direction, key in (("in", "InDiscards"), ("out", "OutDiscards")):
            if key in ip:
                discards.add_metric([direction], ip[key])
        yield discards
        devs = net_dev(_read(self.proc / "net" / "dev"))
        families = {
            "bytes": CounterMetricFamily(
                "nat_ha_interface_bytes",
                "Bytes received (rx) and sent (tx) per interface",
                labels=["interface", "direction"],
            ),
            "packets": CounterMetricFamily(
                "nat_ha_interface_packets", "Packets received and sent per interface", labels=["interface", "direction"]
            ),
            "dropped": CounterMetricFamily(
                "nat_ha_interface_dropped", "Packets the interface dropped", labels=["interface", "direction"]
            ),
        }
        for name, c in sorted(devs.items()):
            for direction in ("rx", "tx"):
                for kind, family in families.items():
                    family.add_metric([name, direction], c[f"{direction}_{kind}"])
        yield from families.values()
        count = _number(_read(self.proc / "sys" / "net" / "netfilter" / "nf_conntrack_count"))
        limit = _number(_read(self.proc / "sys" / "net" / "netfilter" / "nf_conntrack_max"))
        if count is not None:
            yield GaugeMetricFamily("nat_ha_conntrack_entries", "Connections tracked now", value=count)
        if limit is not None:
            yield GaugeMetricFamily(
                "nat_ha_conntrack_max", "Most connections the kernel tracks (nf_conntrack_max)", value=limit
            )
        stat = conntrack_stat(_read(self.proc / "net" / "stat" / "nf_conntrack"))
        drops = CounterMetricFamily(
            "nat_ha_conntrack_dropped",
            "Packets conntrack dropped: drop (table full), early_drop (evicted to make room), insert_failed",
            labels=["reason"],
        )
        for reason in CONNTRACK_DROPS:
            if reason in stat:
                drops.add_metric([reason], stat[reason])
        yield drops
        yield from self._ena(sorted(devs))

    def _ena(self, interfaces: list[str]) -> Iterator[Metric]:
        exceeded = CounterMetricFamily(
            "nat_ha_ena_allowance_exceeded",
            "Packets the ENA device queued or dropped because the instance's allowance was exceeded "
            "(bw_in, bw_out, pps, conntrack, linklocal): the instance type is too small for the traffic",
            labels=["interface", "allowance"],
        )
        available = GaugeMetricFamily(
            "nat_ha_ena_conntrack_allowance_available",
            "Connections the instance may still track before hitting its conntrack allowance (ENA)",
            labels=["interface"],
        )
        for name in interfaces:
            found = self.stats(name)
            if found is None:
                continue
            for allowance in ALLOWANCES:
                value = found.stats.get(f"{allowance}_allowance_exceeded")
                if value is not None:
                    exceeded.add_metric([name, allowance], value)
            value = found.stats.get("conntrack_allowance_available")
            if value is not None:
                available.add_metric([name], value)
        yield exceeded
        yield available
