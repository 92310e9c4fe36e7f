"""Connection-tracking entries of a route table's flows, what to do with a peer's list of them, and their save lines.

Pure: the kernel is read and written elsewhere (:mod:`agent.host.conntrack`). A NAT holding a route table
SNATs the table's subnets to its own address for that table (``egress_ip = "follow"``), so an
entry of one of those flows reads, in ``conntrack -o save`` form::

    -A -t 431999 -u SEEN_REPLY,ASSURED -s 10.0.1.10 -d 203.0.113.10 -r 203.0.113.10 -n 10.0.100.21
       -p tcp --sport 51542 --dport 443 --reply-port-src 443 --reply-port-dst 51542 --state ESTABLISHED

``-n`` is the NAT address (the reply's destination) and ``--reply-port-dst`` the public port the
NAT gave the flow (the client's own port unless it had to remap it). Another NAT takes the flow
over by loading the same entry with ``-n`` its own address for the table and the same public port:
the Elastic IP follows the table, so the server sees the same public address and port.

:func:`parse` accepts exactly that shape (TCP and UDP, source NAT only, zone 0) and nothing else,
as :func:`agent.host.ctnetlink.flow_of` does for the kernel's own messages (the sync reads and
writes the kernel through those; these lines are how the tool, an operator and the lab see them).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from typing import NamedTuple

_IP = r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})"
_LINE = re.compile(
    rf"-([AUD])(?: -t (\d{{1,10}}))? -u ([A-Z_,]+) -s {_IP} -d {_IP} -r {_IP} -n {_IP} -p (tcp|udp) "
    r"--sport (\d{1,5}) --dport (\d{1,5}) --reply-port-src (\d{1,5}) --reply-port-dst (\d{1,5})"
    r"(?: --state ([A-Z_]{2,12}))?( \[USERSPACE\][^\n]*)?\n?\Z"
)
#: The TCP states in the kernel's order (enum tcp_conntrack: ctnetlink and the sync's wire use the numbers).
TCP_STATE_NAMES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT",
                   "CLOSE")  # fmt: skip
TCP_STATES = frozenset(TCP_STATE_NAMES[1:])
#: The status bits a loaded entry may carry (the kernel sets the others itself, e.g. CONFIRMED, SRC_NAT).
STATUS_KEPT = ("SEEN_REPLY", "ASSURED")
MAX_TIMEOUT = 5 * 24 * 3600  # nf_conntrack_tcp_timeout_established's default: no loaded entry lives longer


class Flow(NamedTuple):
    """One SNATed TCP or UDP flow: the client's tuple, the NAT's address and the public port it gave it.

    A named tuple: a dump or push of 100,000 entries makes 100,000 of them (20x cheaper than a
    frozen dataclass to create).
    """

    op: str  # "A" (an entry, or a new or updated one in an event stream) or "D" (it ended)
    proto: str
    src: str
    dst: str
    sport: int
    dport: int
    nat: str
    nat_port: int
    timeout: int = 0
    status: str = ""  # comma-separated, of STATUS_KEPT only
    state: str = ""  # TCP only
    userspace: bool = False  # an event caused by a program (ours loading entries), not by a packet

    @property
    def key(self) -> tuple[str, str, int, str, int]:
        """What identifies the flow whichever NAT carries it (the client's tuple)."""
        return (self.proto, self.src, self.sport, self.dst, self.dport)

    @property
    def established(self) -> bool:
        """Worth keeping on another NAT: a TCP flow past its handshake, or a UDP flow with replies."""
        if self.proto == "tcp":
            return self.state in ("ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE")
        return "SEEN_REPLY" in self.status

    def render(self, nat: str, timeout: int | None = None) -> str:
        """The ``-A`` line of this entry with ``nat`` as the NAT address (the public port kept)."""
        t = min(self.timeout if timeout is None else timeout, MAX_TIMEOUT)
        state = f" --state {self.state}" if self.state else ""
        return (
            f"-A -t {t} -u {self.status or 'UNSET'} -s {self.src} -d {self.dst} -r {self.dst} -n {nat} "
            f"-p {self.proto} --sport {self.sport} --dport {self.dport} --reply-port-src {self.dport} "
            f"--reply-port-dst {self.nat_port}{state}"
        )

    def placed(self, nat: str, timeout: int) -> Flow:
        """The entry to create for this flow here: ``nat`` as its NAT address, the public port kept."""
        return self._replace(op="A", nat=nat, timeout=min(timeout, MAX_TIMEOUT), userspace=False)


#: 4-byte addresses <-> dotted quads, cached (a dump or push of 100,000 entries names a few hundred addresses).
ntoa: Callable[[bytes], str] = functools.lru_cache(maxsize=1 << 16)(socket.inet_ntoa)
aton: Callable[[str], bytes] = functools.lru_cache(maxsize=1 << 16)(socket.inet_aton)


@functools.lru_cache(maxsize=64)
def _kept(status: str) -> str:
    """The bits we keep of a status as the tool prints it (a handful of values)."""
    parts = status.split(",")
    return ",".join(s for s in STATUS_KEPT if s in parts)


@functools.lru_cache(maxsize=1 << 16)
def _ip(text: str) -> bool:
    """Each part of a dotted quad < 256 (clients, servers, NAT addresses)."""
    return all(int(part) < 256 for part in text.split("."))


def parse(line: str) -> Flow | None:
    """The flow a ``conntrack -o save`` line (listing or event) describes, or None if it is not one we sync.

    Not ours: no source NAT (``-q`` instead of ``-n``), a destination NAT (``-r`` differs from
    ``-d``), another protocol or zone, an unknown TCP state, anything malformed. (About 3 us a
    line: a dump or push of 100,000 entries is parsed on both sides.)
    """
    m = _LINE.match(line)
    if m is None:
        return None
    op, timeout, status, src, dst, rsrc, nat, proto, sport, dport, rsport, rdport, state, user = m.groups()
    sp, dp, rdp = int(sport), int(dport), int(rdport)
    if (
        rsrc != dst
        or rsport != dport
        or not (0 < sp < 65536 and 0 < dp < 65536 and 0 < rdp < 65536)
        or not (_ip(src) and _ip(dst) and _ip(nat))
    ):
        return None
    if proto == "tcp":
        if state not in TCP_STATES:
            return None
    elif state:
        return None
    return Flow("D" if op == "D" else "A", proto, src, dst, sp, dp, nat, rdp, int(timeout or 0), _kept(status),
                state or "", user is not None)  # fmt: skip


class Subnets:
    """Which route table a private address belongs to, by the tables' subnets (first match; cached)."""

    CACHE_MAX = 200_000

    def __init__(self, tables: dict[str, tuple[str, ...]]) -> None:
        self.nets = [
            (int(n.network_address), int(n.netmask), rt)
            for rt, subnets in tables.items()
            for n in (ipaddress.IPv4Network(s) for s in subnets)
        ]
        self.subnets = {rt: tuple(subnets) for rt, subnets in tables.items()}
        self._cache: dict[str, str] = {}

    def table_of(self, address: str) -> str:
        """The route table whose subnets hold ``address`` ("" if none)."""
        hit = self._cache.get(address)
        if hit is not None:
            return hit
        try:
            n = int(ipaddress.IPv4Address(address))
        except ValueError:
            return ""
        found = next((rt for net, mask, rt in self.nets if n & mask == net), "")
        if len(self._cache) >= self.CACHE_MAX:
            self._cache.clear()
        self._cache[address] = found
        return found


def by_key(flows: Iterable[Flow]) -> dict[tuple[str, str, int, str, int], Flow]:
    """The flows by key; the last one of a key wins (a later event supersedes an earlier one)."""
    return {f.key: f for f in flows}


class Plan(NamedTuple):
    """What to do to this host's table: delete these entries, set these timeouts, then create these.

    Everything goes by exact tuple (:mod:`agent.host.ctnetlink`); creates are the entries as they
    will be here (:meth:`Flow.placed`), made after the deletes (an entry being replaced must not
    hold the public port).
    """

    deletes: list[Flow]
    timeouts: list[tuple[Flow, int]]
    creates: list[Flow]


PublicTuple = tuple[str, int, str, int]  # server, server port, NAT address, public port: the reply tuple


class Incoming:
    """A holder's full list of a table's flows, arriving in parts, made this host's entries of the table.

    ``have``: our entries of the table when the list started (whatever their NAT address). Each
    part (:meth:`part`) keeps an entry we have with the same public port, replaces one with another
    port or NAT address, creates what is missing and first deletes any entry of ours that holds the
    public port a created flow needs (loaded beside it, the kernel would give the loaded one
    another port); the end (:meth:`end`) deletes whatever we had that the list did not name. So a
    taker never meets entries it left behind, and a table whose copies are up to date costs no load
    at all. ``min_timeout``: a copy must outlive the quiet stretch until the next resync, whereas the
    holder's entry is refreshed by every packet: a kept entry whose timeout is more than a minute
    below that is refreshed too.
    """

    def __init__(self, nat: str, have: dict[tuple[str, str, int, str, int], Flow], min_timeout: int = 0) -> None:
        self.nat = nat
        self.have = dict(have)
        self.by_public: dict[PublicTuple, tuple[str, str, int, str, int]] = {
            (f.dst, f.dport, f.nat, f.nat_port): k for k, f in have.items()
        }
        self.min_timeout = min_timeout
        self.count = 0

    def part(self, want: Iterable[Flow]) -> Plan:
        deletes: list[Flow] = []
        timeouts: list[tuple[Flow, int]] = []
        creates: list[Flow] = []
        for k, f in by_key(f for f in want if f.op == "A").items():
            self.count += 1
            timeout = min(max(f.timeout, self.min_timeout), MAX_TIMEOUT)
            mine = self.have.pop(k, None)
            if mine is not None and mine.nat_port == f.nat_port and mine.nat == self.nat:
                if mine.timeout < timeout - 60:
                    timeouts.append((f, timeout))
                continue
            if mine is not None:
                deletes.append(mine)
            holder = self.by_public.pop((f.dst, f.dport, self.nat, f.nat_port), None)
            if holder is not None and holder != k and holder in self.have:
                deletes.append(self.have.pop(holder))
            creates.append(f.placed(self.nat, timeout))
        return Plan(deletes, timeouts, creates)

    def end(self) -> Plan:
        """Delete what we have that the list did not name."""
        stale, self.have = list(self.have.values()), {}
        return Plan(stale, [], [])


def reconcile(
    have: dict[tuple[str, str, int, str, int], Flow], want: Iterable[Flow], nat: str, min_timeout: int = 0
) -> tuple[Plan, int]:
    """:class:`Incoming` for a whole list at once: what makes ``have`` equal ``want``, and its size."""
    incoming = Incoming(nat, have, min_timeout)
    part, end = incoming.part(want), incoming.end()
    return Plan(end.deletes + part.deletes, part.timeouts, part.creates), incoming.count


def apply_changes(changes: Iterable[Flow], nat: str, *, add_only: bool = False, min_timeout: int = 0) -> Plan:
    """What to do for a batch of streamed changes of one table.

    An ended flow is deleted; a new one replaces whatever entry of its tuple was here (delete, then
    create): a client that reuses a tuple soon after its last flow ended gets a new flow, perhaps
    with another public port, and a create of an entry that exists leaves it as it is: the old
    port would stay, which after a takeover would send the flow out with the wrong one.
    ``add_only`` (the table is ours now, the giver still streams after a hand-over): only create
    what is missing, never change or end an entry that may be carrying traffic here.
    ``min_timeout``: as for :func:`reconcile`.
    """
    deletes, creates = [], []
    for f in by_key(changes).values():
        if not add_only:
            deletes.append(f)
        if f.op == "A":
            creates.append(f.placed(nat, max(f.timeout, min_timeout)))
    return Plan(deletes, [], creates)
