"""The connection-sync service (``nat-ha ctsync``): each held table's flows follow it to the peers.

Sending (the tables this NAT holds, :func:`agent.ctsync.plan.streams`): the kernel's events report
every update and end of an entry; a flow of a held table is queued the first time it is
established (a TCP flow past its handshake, a UDP flow with a reply) and when it ends, coalesced
per key, and every ``batch_interval`` the queue goes to every peer as one frame per table. A full
list (snapshot) of every held table goes to every peer every ``resync_interval``, at once when a
peer (re)connects, when the kernel dropped events (ENOBUFS) or the event reader restarted, and when
this NAT takes a table.

Receiving: a peer's flows of a table it holds are loaded with this NAT's own address for the
table (:func:`agent.host.flows.apply_changes`, :func:`agent.host.flows.reconcile`), so a crash
takeover finds them. A snapshot makes the copy exactly equal to the holder's list.

Planned hand-over (:meth:`SyncService.push`, asked by the agent before it moves the route): the
table's full list goes to the taker, which flushes its own entries of the table first (a
fail-back must not meet entries it left behind) and acknowledges once loaded; the giver then
streams the table's changes to the taker until no packet of the table has reached it for
``quiet_after`` (the Elastic IP has moved; the guard chain's counter says) or ``stream_max``,
and ends with a FINAL frame. Meanwhile the taker only adds entries it lacks.

Kernel work goes through :class:`Kernel` (the real one: :mod:`agent.host.conntrack`), so the unit
tests run two services over loopback against an in-memory table.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.config import ConntrackSyncConfig
from agent.ctsync import control, plan, wire
from agent.ctsync.links import Link, Listener
from agent.host import flows

log = logging.getLogger("nat_ha.ctsync")

CHUNK_FLOWS = 20_000  # flows per snapshot frame
PUSH_CHUNK_FLOWS = 5_000  # flows per push frame: the taker loads each as it comes
HANDOVER_SLACK_S = 5.0  # the taker accepts a giver's stream this much longer than the giver streams
ERROR_KINDS = ("connect", "auth", "load", "events", "dump", "queue")


class Events(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def running(self) -> bool: ...


class Kernel(Protocol):
    """What the service needs from the kernel (real: :class:`HostKernel`)."""

    def dump(self, subnets: Iterable[str]) -> list[flows.Flow]: ...

    def iter_flows(self, subnets: Iterable[str]) -> Iterator[flows.Flow]: ...

    def load(self, creates: list[flows.Flow]) -> None: ...

    def replace(self, creates: list[flows.Flow]) -> None: ...

    def delete(self, flows: list[flows.Flow]) -> None: ...

    def set_timeouts(self, changes: list[tuple[flows.Flow, int]]) -> None: ...

    def inbound_counters(self) -> dict[str, int]: ...

    def events(self, on_flow: Callable[[flows.Flow], None], on_lost: Callable[[str], None]) -> Events: ...


class HostKernel:
    """The real kernel: ctnetlink sockets (:mod:`agent.host.conntrack`), and nft for the guard counters."""

    def __init__(self) -> None:
        self._writer: Any = None  # agent.host.conntrack.Writer, made by the loader thread, used by it alone

    def _netlink(self) -> Any:
        if self._writer is None:
            from agent.host import conntrack

            self._writer = conntrack.Writer()
        return self._writer

    def delete(self, flows: list[flows.Flow]) -> None:
        if flows:
            self._netlink().delete(flows)

    def set_timeouts(self, changes: list[tuple[flows.Flow, int]]) -> None:
        if changes:
            self._netlink().set_timeouts(changes)

    def dump(self, subnets: Iterable[str]) -> list[flows.Flow]:
        from agent.host import conntrack

        return conntrack.dump(subnets)

    def iter_flows(self, subnets: Iterable[str]) -> Iterator[flows.Flow]:
        from agent.host import conntrack

        return conntrack.iter_flows(subnets)

    def load(self, creates: list[flows.Flow]) -> None:
        if creates:
            self._netlink().create(creates)

    def replace(self, creates: list[flows.Flow]) -> None:
        if creates:
            self._netlink().replace(creates)

    def inbound_counters(self) -> dict[str, int]:
        from agent.host import conntrack

        return conntrack.inbound_counters()

    def events(self, on_flow: Callable[[flows.Flow], None], on_lost: Callable[[str], None]) -> Events:
        """The event reader; the kernel keeps from it the events our own writes cause (the writer's netlink
        port): the service would read each only to ignore it."""
        from agent.host import conntrack

        return conntrack.EventStream(on_flow, on_lost, own_port=self._netlink().port)


@dataclass
class Leaving:
    """A table this NAT handed over lately: its changes go on to the taker until its inbound traffic stops."""

    taker: str
    until: float  # stream_max
    count: int = -1  # the guard counter of our address for the table, as last read
    changed_at: float = 0.0


@dataclass
class Incoming:
    """A snapshot or push arriving in parts (:class:`agent.host.flows.Incoming`, made at the first part that
    runs, in the loader thread); every part is loaded as it comes, so the taker's load overlaps the giver's
    dump and the transfer."""

    min_timeout: int
    table: flows.Incoming | None = None
    error: str = ""


@dataclass
class Job:
    """One load for the loader thread: streamed changes (``plan``), or a part of a list (``want``).

    ``done`` gets (entries, error) once it ran.
    """

    kind: str  # "delta" | "part"
    table: str
    plan: flows.Plan = field(default_factory=lambda: flows.Plan([], [], []))
    want: list[flows.Flow] = field(default_factory=list)
    incoming: Incoming | None = None
    last: bool = False
    done: Callable[[int, str], None] = lambda _n, _err: None


@dataclass
class Stats:
    """What the agent exports as metrics (through ``stats`` on the control socket)."""

    entries_sent: int = 0
    entries_loaded: int = 0
    bytes_sent: int = 0
    resyncs: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    lag: dict[str, float] = field(default_factory=dict)  # peer -> seconds from sending a batch to its ack
    takeover_entries: dict[str, int] = field(default_factory=dict)  # route table -> entries here when taken
    last_error: str = ""
    last_error_at: float = 0.0


class SyncService:
    """One NAT's sync service: started with :meth:`start`, stopped with :meth:`close`."""

    def __init__(
        self,
        config: ConntrackSyncConfig,
        me: str,
        members: dict[str, str],
        tables: dict[str, plan.Table],
        key: bytes,
        kernel: Kernel | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.tables = tables
        self.key = key
        self.kernel: Kernel = kernel or HostKernel()
        self.clock = clock
        self.view = plan.View(me, dict(members))
        self.subnets = flows.Subnets({rt: t.subnets for rt, t in tables.items()})
        self.lock = threading.RLock()
        self.send_lock = threading.Lock()  # a snapshot's or push's frames and the deltas after it stay in order
        self.stop = threading.Event()
        self.pending: dict[str, dict[tuple[str, str, int, str, int], flows.Flow]] = {rt: {} for rt in tables}
        self.synced: dict[str, set[tuple[str, str, int, str, int]]] = {rt: set() for rt in tables}
        self.resync_at: dict[tuple[str, str], float] = {}  # (table, peer) -> when its next snapshot is due
        self.leaving: dict[str, Leaving] = {}
        self.handovers_in: dict[str, tuple[str, float]] = {}  # table -> (giver, until)
        self.links: dict[str, Link] = {}
        self.stats = Stats()
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self._incoming: dict[tuple[str, str, str], Incoming] = {}  # (sender, table, list id) -> its state
        self._acks: dict[str, tuple[threading.Event, dict[str, Any]]] = {}  # push id -> (event, ack)
        self._events: Events | None = None
        self._listener: Listener | None = None
        self._control: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.started_at = self.last_tick = clock()
        self._listen = True
        self._started = False

    # ------------------------------------------------------------------ life
    @property
    def me(self) -> str:
        return self.view.me

    def mine(self, table: str) -> str:
        """This NAT's address for ``table`` (the SNAT source of its flows here)."""
        t = self.tables.get(table)  # the agent may have just dropped it (_use_tables)
        return t.addresses.get(self.me, "") if t is not None else ""

    def start(self, listen: bool = True) -> None:
        """Start streaming. With no ``me`` yet (members_from_tags: the agent learns the group from EC2), the
        listener and the links wait for the agent's first ``state`` naming this NAT."""
        self._listen = listen
        with self.lock:
            if self.me:
                self._listen_now()
            self._sync_links()
        self._started = True
        self._events = self.kernel.events(self._on_flow, self._on_lost)
        self._events.start()
        for name, target in (("ctsync-tick", self._tick_loop), ("ctsync-load", self._load_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def serve_control(self, path: str) -> None:
        """Answer the agent on the unix socket ``path`` (replaced if it exists; mode 0600)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        s.listen(16)
        self._control = s
        t = threading.Thread(target=self._control_loop, name="ctsync-control", daemon=True)
        t.start()
        self._threads.append(t)

    def close(self) -> None:
        self.stop.set()
        self.jobs.put(None)
        if self._events is not None:
            self._events.stop()
        if self._listener is not None:
            self._listener.close()
        for link in self.links.values():
            link.close()
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.close()
        for t in self._threads:
            t.join(5)

    def _listen_now(self) -> None:
        """Accept the peers' links (once this NAT's identity is known; under ``lock``)."""
        if self._listen and self._listener is None and not self.stop.is_set():
            self._listener = Listener(self.me, self.view.members.get(self.me, "0.0.0.0"), self.config.port,
                                      self.key, self._members, self._handle, self._peer_error)  # fmt: skip
            self._listener.start()

    # ------------------------------------------------------------------ view
    def _members(self) -> dict[str, str]:
        with self.lock:
            return dict(self.view.members)

    def update_view(
        self,
        members: dict[str, str] | None,
        holders: dict[str, str],
        me: str = "",
        tables: dict[str, plan.Table] | None = None,
    ) -> str:
        """The agent's view of the group. A table that became ours is resynced to every peer at once.

        ``me`` and ``tables``: this NAT and the route tables with every member's address for each, as the
        agent discovered them (members_from_tags: they change when a NAT is replaced). Returns a problem
        ("" if none): an agent naming another NAT than the one this service is.
        """
        now = self.clock()
        taken: list[str] = []
        with self.lock:
            if me and self.me and me != self.me:
                return f"the agent is {me}, this sync service is {self.me}"
            if tables is not None:
                self._use_tables(tables)
            if me and not self.me:
                self.view.me = me
                log.info("this NAT is %s (from the agent)", me)
            before = set(self.view.held())
            if members:
                self.view.members = {**members, self.me: members.get(self.me) or self.view.members.get(self.me, "")}
                self._sync_links()
            self.view.holders = {rt: h for rt, h in holders.items() if rt in self.tables}
            for rt in set(self.view.held()) - before:
                taken.append(rt)
                self.leaving.pop(rt, None)
                for peer in self.view.peers():
                    self.resync_at[(rt, peer)] = now
            if self.me and self._started:
                self._listen_now()
        for rt in taken:
            threading.Thread(target=self._count_taken, args=(rt,), daemon=True).start()
        return ""

    def _use_tables(self, tables: dict[str, plan.Table]) -> None:
        """The route tables from now on (under ``lock``): a new one starts empty, a gone one is forgotten."""
        for rt in tables:
            self.pending.setdefault(rt, {})
            self.synced.setdefault(rt, set())
        for rt in [rt for rt in self.tables if rt not in tables]:
            self.pending.pop(rt, None)
            self.synced.pop(rt, None)
        self.tables = dict(tables)
        self.subnets = flows.Subnets({rt: t.subnets for rt, t in tables.items()})

    def _count_taken(self, table: str) -> None:
        """How many entries of ``table`` a takeover found here (the copies loaded before it)."""
        try:
            mine = self.mine(table)
            n = sum(1 for f in self.kernel.dump(self.tables[table].subnets) if f.nat == mine)
        except Exception as exc:
            self._error("dump", f"counting {table}'s entries: {exc}")
            return
        with self.lock:
            self.stats.takeover_entries[table] = n
        log.info("took %s with %d connection-tracking entries loaded before", table, n)

    def _sync_links(self) -> None:
        """One outgoing link per peer with an address (under ``lock``)."""
        for peer, address in self.view.members.items():
            if not self.me or peer == self.me or not address:
                continue
            link = self.links.get(peer)
            if link is not None and link.address == address:
                continue
            if link is not None:
                link.close()
            link = Link(self.me, peer, address, self.config.port, self.key, self.view.members.get(self.me, ""),
                        self._connected, self._on_ack, self._peer_error)  # fmt: skip
            self.links[peer] = link
            if not self.stop.is_set():
                link.start()
        for peer in [p for p in self.links if p not in self.view.members]:
            self.links.pop(peer).close()

    # ------------------------------------------------------------------ events (sending side)
    def _streamed(self) -> dict[str, list[str]]:
        return plan.streams(self.view, {rt: lv.taker for rt, lv in self.leaving.items()})

    def _on_flow(self, f: flows.Flow) -> None:
        """One connection event. A TCP flow is sent when it becomes established (each connection once: a
        client may reuse a tuple, and the new flow may have another public port), a UDP flow at its first
        reply, and either when it ends if it was sent. Our own loads (``userspace``) are not sent, but
        an entry deleted by a program (a flush, an operator) is no longer counted as sent."""
        if f.op == "A" and f.proto == "tcp" and f.state != "ESTABLISHED":
            return  # a TCP flow's other states: before it is established (not synced yet) or after (synced)
        table = self.subnets.table_of(f.src)
        if not table or f.nat != self.mine(table):
            return
        with self.lock:
            if self.view.holders.get(table) != self.me and table not in self.leaving:
                return  # not a table we stream
            pending, synced, key = self.pending[table], self.synced[table], f.key
            if f.op == "D":
                if key in synced:
                    synced.discard(key)
                    if not f.userspace:
                        pending[key] = f
                else:
                    pending.pop(key, None)
            elif not f.userspace and f.established and (f.proto == "tcp" or key not in synced):
                synced.add(key)
                pending[key] = f

    def _on_lost(self, why: str) -> None:
        self._error("events", why)
        now = self.clock()
        with self.lock:
            for rt, peers in self._streamed().items():
                for peer in peers:
                    self.resync_at[(rt, peer)] = now
        if self._events is not None and not self._events.running() and not self.stop.is_set():
            time.sleep(0.2)
            self._events.start()

    def _connected(self, peer: str) -> None:
        log.info("sync link to %s up", peer)
        now = self.clock()
        with self.lock:
            for rt, peers in self._streamed().items():
                if peer in peers:
                    self.resync_at[(rt, peer)] = now

    # ------------------------------------------------------------------ the batch loop
    def _tick_loop(self) -> None:
        while not self.stop.wait(self.config.batch_interval):
            try:
                self.tick()
            except Exception as exc:
                self._error("dump", f"{type(exc).__name__}: {exc}")

    def alive(self) -> bool:
        """The batch loop ran lately (systemd's watchdog is fed only then)."""
        return self.clock() - self.last_tick < max(5.0, 20 * self.config.batch_interval)

    def tick(self) -> None:
        """One batch: the changes since the last one, the snapshots due, the hand-overs that ended."""
        now = self.last_tick = self.clock()
        with self.send_lock:
            with self.lock:
                streamed = self._streamed()
                batches = {rt: list(self.pending[rt].values()) for rt in streamed if self.pending[rt]}
                for rt in self.pending:
                    self.pending[rt] = {}
                due = sorted(
                    {rt for (rt, peer), at in self.resync_at.items() if at <= now and peer in streamed.get(rt, ())}
                )
            for rt, changes in batches.items():
                payload = wire.encode({"table": rt, "t0": now, "n": len(changes)}, changes)
                for peer in streamed[rt]:
                    self._send(peer, wire.DELTA, payload, len(changes))
            for rt in due:
                self._snapshot(rt, now)
        self._end_handovers(now)

    def _send(self, peer: str, kind: int, payload: bytes, entries: int) -> None:
        link = self.links.get(peer)
        if link is None or not link.connected:
            return  # it gets a snapshot when it connects
        if not link.send(kind, payload):
            self._error("queue", f"{peer} cannot keep up: its queue was dropped; resyncing it")
            with self.lock:
                for rt in self.tables:
                    self.resync_at[(rt, peer)] = self.clock()
            return
        with self.lock:
            self.stats.entries_sent += entries

    def _own_flows(self, table: str) -> tuple[list[flows.Flow], set[tuple[str, str, int, str, int]]]:
        """The held table's established flows here, and their keys."""
        mine = self.mine(table)
        own = [f for f in self.kernel.dump(self.tables[table].subnets) if f.nat == mine and f.established]
        return own, {f.key for f in own}

    def _snapshot(self, table: str, now: float) -> None:
        """The table's full list to every peer whose resync is due (under ``send_lock``)."""
        with self.lock:
            peers = [p for (rt, p), at in self.resync_at.items() if rt == table and at <= now]
            streamed = self._streamed().get(table, [])
            peers = [p for p in peers if p in streamed and (link := self.links.get(p)) is not None and link.connected]
        if not peers:
            return
        own, keys = self._own_flows(table)
        with self.lock:
            pending = self.pending[table]  # events during the dump: sent after it, so counted as synced
            self.synced[table] = keys | {k for k, f in pending.items() if f.op != "D"}
            for p in peers:
                self.resync_at[(table, p)] = now + self.config.resync_interval
            self.stats.resyncs += 1
        for peer in peers:
            for payload in self._chunks(table, own, now):
                self._send(peer, wire.SNAPSHOT, payload, 0)
        with self.lock:
            self.stats.entries_sent += len(own) * len(peers)

    def _chunks(self, table: str, own: list[flows.Flow], now: float, push_id: str = "") -> list[bytes]:
        snap = push_id or secrets.token_hex(4)
        parts = [own[i : i + CHUNK_FLOWS] for i in range(0, len(own), CHUNK_FLOWS)] or [[]]
        return [
            wire.encode(
                {"table": table, "t0": now, "id": snap, "part": i, "last": i == len(parts) - 1, "total": len(own)},
                part,
            )
            for i, part in enumerate(parts)
        ]

    def _end_handovers(self, now: float) -> None:
        """A handed-over table whose inbound traffic has stopped (or after stream_max): FINAL to its taker."""
        with self.lock:
            leaving = dict(self.leaving)
        if not leaving:
            return
        try:
            counts = self.kernel.inbound_counters()
        except Exception as exc:
            self._error("dump", f"reading the guard counters: {exc}")
            counts = {}
        for rt, lv in leaving.items():
            count = counts.get(rt, -1)
            if count != lv.count:
                lv.count, lv.changed_at = count, now
            if now - lv.changed_at < self.config.quiet_after and now < lv.until:
                continue
            with self.send_lock, self.lock:
                if self.leaving.get(rt) is not lv:
                    continue
                del self.leaving[rt]
                self._send(lv.taker, wire.FINAL, wire.encode({"table": rt, "t0": now}), 0)
            log.info("hand-over of %s: final changes sent to %s", rt, lv.taker)

    # ------------------------------------------------------------------ planned hand-over
    def push(self, table: str, to: str, timeout: float) -> dict[str, Any]:
        """Push ``table``'s flows to ``to`` and wait for it to have loaded them (at most ``timeout`` s)."""
        t0 = self.clock()
        deadline = t0 + timeout
        if table not in self.tables:
            return {"ok": False, "error": f"{table} is not a table of the sync (no [[egress.tables]] entry)"}
        link = self.links.get(to)
        if link is None:
            return {"ok": False, "error": f"{to} is not a peer with an address"}
        while not link.connected and self.clock() < deadline and not self.stop.is_set():
            time.sleep(0.01)
        if not link.connected:
            return {"ok": False, "error": f"no sync link to {to}"}
        push_id = secrets.token_hex(6)
        done = threading.Event()
        self._acks[push_id] = (done, {})
        sent = 0
        try:
            with self.send_lock:
                now = self.clock()
                with self.lock:
                    self.leaving[table] = Leaving(to, now + self.config.stream_max, changed_at=now)
                sent = self._stream_list(table, to, push_id, now)
            if not done.wait(max(0.0, deadline - self.clock())):
                return {"ok": False, "error": f"{to} did not confirm within {timeout:g} s", "entries": sent}
            ack = self._acks[push_id][1]
        finally:
            self._acks.pop(push_id, None)
        if ack.get("error"):
            return {"ok": False, "error": f"{to}: {ack['error']}", "entries": sent}
        return {"ok": True, "entries": int(ack.get("entries", sent)), "seconds": self.clock() - t0}

    def _stream_list(self, table: str, to: str, push_id: str, now: float) -> int:
        """The table's entries to ``to`` as PUSH parts while the dump is still being read (under ``send_lock``).

        Every entry NATed with our address for the table goes, in whatever state (the taker checks each
        flow). Returns how many were sent.
        """
        mine = self.mine(table)
        part: list[flows.Flow] = []
        sent = n = 0

        def flush(last: bool) -> None:
            nonlocal part, n
            header = {"table": table, "t0": now, "id": push_id, "part": n, "last": last}
            self._send(to, wire.PUSH, wire.encode(header, part), len(part))
            part, n = [], n + 1

        for f in self.kernel.iter_flows(self.tables[table].subnets):
            if f.nat == mine:
                part.append(f)
                sent += 1
                if len(part) >= PUSH_CHUNK_FLOWS:
                    flush(False)
        flush(True)
        return sent

    def _on_ack(self, peer: str, header: dict[str, Any]) -> None:
        t0 = header.get("t0")
        if isinstance(t0, (int, float)):
            with self.lock:
                self.stats.lag[peer] = max(0.0, self.clock() - t0)
        if header.get("error") and isinstance(header.get("table"), str):
            # The peer could not load a batch (some of it may have landed): make its copy whole again soon.
            with self.lock:
                self.resync_at[(header["table"], peer)] = self.clock() + 1.0
        push_id = header.get("push")
        if isinstance(push_id, str) and push_id in self._acks:
            event, ack = self._acks[push_id]
            ack.update(header)
            event.set()

    # ------------------------------------------------------------------ receiving side
    def _handle(
        self,
        sender: str,
        kind: int,
        seq: int,
        header: dict[str, Any],
        received: list[flows.Flow],
        reply: Callable[[dict[str, Any]], None],
    ) -> None:
        ack: dict[str, Any] = {"seq": seq, "t0": header.get("t0"), "table": header.get("table")}
        table = header.get("table")
        if kind == wire.PING:
            reply(ack)
            return
        if not isinstance(table, str) or table not in self.tables:
            reply({**ack, "ignored": "unknown table"})
            return
        now = self.clock()
        with self.lock:
            if kind == wire.PUSH and header.get("part") == 0:
                self.handovers_in[table] = (sender, now + self.config.stream_max + HANDOVER_SLACK_S)
            giver, until = self.handovers_in.get(table, ("", 0.0))
            if giver and now > until:
                del self.handovers_in[table]
                giver = ""
            mode = plan.accept(self.view, table, sender, giver)
            if kind == wire.FINAL and giver == sender:
                del self.handovers_in[table]
        if kind == wire.FINAL or mode is None:
            reply({**ack, "ignored": "" if kind == wire.FINAL else "not loaded from this sender"})
            return
        sender_nat = self.tables[table].addresses.get(sender, "")
        table_of = self.subnets.table_of
        got = [f for f in received if f.nat == sender_nat and table_of(f.src) == table]
        mine = self.mine(table)
        floor = int(2 * self.config.resync_interval + 30)  # a copy outlives a quiet stretch between resyncs

        def done_reply(n: int, err: str, extra: dict[str, Any] | None = None) -> None:
            reply({**ack, **(extra or {}), "entries": n, **({"error": err} if err else {})})

        if kind == wire.DELTA:
            add_only = mode == plan.ADD_ONLY
            todo = flows.apply_changes(got, mine, add_only=add_only, min_timeout=0 if add_only else floor)
            self.jobs.put(Job("delta", table, todo, done=done_reply))
            return
        part_key = (sender, table, str(header.get("id", "")))
        last = bool(header.get("last"))
        if kind == wire.SNAPSHOT and mode != plan.COPY:
            reply({**ack, "ignored": "this table is ours"})
            return
        # A snapshot or a push, loaded part by part as it comes (flows.Incoming): the entries we have of
        # the table and the list does not name go at the end, any that hold a public port the list
        # needs go before it is loaded (a fail-back must not meet entries it left behind).
        with self.lock:
            state = self._incoming.setdefault(part_key, Incoming(floor if kind == wire.SNAPSHOT else 0))
            if last:
                del self._incoming[part_key]
        extra = {"push": part_key[2]} if kind == wire.PUSH else {}

        def part_done(n: int, err: str) -> None:
            state.error = state.error or err
            if last:
                done_reply(n, state.error, extra)

        self.jobs.put(Job("part", table, want=got, incoming=state, last=last, done=part_done))
        if not last:
            reply(ack)

    def _entries(self, table: str) -> list[flows.Flow]:
        """This host's entries of ``table`` (by its subnets), whatever their NAT address."""
        return self.kernel.dump(self.tables[table].subnets)

    def _load_loop(self) -> None:
        """Runs the loads in the order their frames came. Deltas queued meanwhile (from every peer) go
        in one load, at most one such load per batch interval."""
        last = -1e18
        carry: Job | None = None
        while True:
            job = carry if carry is not None else self.jobs.get()
            carry = None
            if job is None:
                return
            batch = [job]
            if job.kind == "delta":
                wait = self.config.batch_interval - (self.clock() - last)
                if wait > 0:
                    self.stop.wait(wait)
                while carry is None:
                    try:
                        nxt = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is not None and nxt.kind == "delta":
                        batch.append(nxt)
                    else:
                        carry = nxt  # runs next: the order between loads is kept
                        if nxt is None:
                            break
            last = self.clock()
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        err = ""
        counts = [len(j.plan.creates) + len(j.plan.replaces) for j in batch]
        try:
            if batch[0].kind == "part":
                j = batch[0]
                assert j.incoming is not None
                if j.incoming.table is None:
                    have = flows.by_key(self._entries(j.table))
                    j.incoming.table = flows.Incoming(self.mine(j.table), have, j.incoming.min_timeout)
                todo = j.incoming.table.part(j.want)
                if j.last:
                    end = j.incoming.table.end()
                    todo = flows.Plan(end.deletes + todo.deletes, todo.timeouts, todo.creates)
                counts = [j.incoming.table.count if j.last else len(todo.creates)]
            else:
                todo = flows.Plan(
                    [f for j in batch for f in j.plan.deletes],
                    [c for j in batch for c in j.plan.timeouts],
                    [f for j in batch for f in j.plan.creates],
                    [f for j in batch for f in j.plan.replaces],
                )
            self.kernel.delete(todo.deletes)  # first: an entry being replaced must not hold the public port
            self.kernel.set_timeouts(todo.timeouts)
            self.kernel.replace(todo.replaces)
            self.kernel.load(todo.creates)
            with self.lock:
                self.stats.entries_loaded += len(todo.creates) + len(todo.replaces)
        except Exception as exc:  # reported to the sender and counted; the next resync retries
            err = f"{type(exc).__name__}: {exc}"
            self._error("load", err)
        for j, n in zip(batch, counts, strict=True):
            j.done(n, err)

    # ------------------------------------------------------------------ control socket
    def _control_loop(self) -> None:
        assert self._control is not None
        while not self.stop.is_set():
            try:
                conn, _ = self._control.accept()
            except OSError:
                return
            threading.Thread(target=self._control_one, args=(conn,), daemon=True).start()

    def _control_one(self, conn: socket.socket) -> None:
        with conn:
            if not control.peer_allowed(conn):
                control.answer(conn, {"ok": False, "error": "only root and the nat-ha user may use this socket"})
                return
            message = control.read_request(conn)
            if message is None:
                return
            control.answer(conn, self.answer(message))

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """The answer to one control request (``state``, ``push``, ``stats``)."""
        op = message.get("op")
        if op == "state":
            holders, members = message.get("holders"), message.get("members")
            me, tables = message.get("me", ""), message.get("tables")
            if not isinstance(holders, dict) or not (members is None or isinstance(members, dict)):
                return {"ok": False, "error": "state: holders (and members) must be objects"}
            try:
                parsed = None if tables is None else plan.tables_from(tables)
                if parsed is not None:
                    flows.Subnets({rt: t.subnets for rt, t in parsed.items()})  # each one a network
            except (TypeError, ValueError, AttributeError) as exc:
                return {"ok": False, "error": f"state: tables: {exc}"}
            if not isinstance(me, str):
                return {"ok": False, "error": "state: me must be a string"}
            problem = self.update_view({str(k): str(v) for k, v in (members or {}).items()},
                                       {str(k): str(v) for k, v in holders.items()}, me, parsed)  # fmt: skip
            return {"ok": not problem, **({"error": problem} if problem else {})}
        if op == "push":
            table, to, timeout = message.get("table"), message.get("to"), message.get("timeout")
            if not isinstance(table, str) or not isinstance(to, str) or not isinstance(timeout, (int, float)):
                return {"ok": False, "error": "push: table, to and timeout are required"}
            return self.push(table, to, float(timeout))
        if op == "stats":
            return {"ok": True, **self.snapshot_stats()}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def snapshot_stats(self) -> dict[str, Any]:
        """The figures the agent exports and ``nat-ha status`` shows."""
        with self.lock:
            links = {p: {"connected": link.connected, "pending": link.pending()} for p, link in self.links.items()}
            s = self.stats
            return {
                "me": self.me,
                "held": sorted(self.view.held()),
                "leaving": sorted(self.leaving),
                "peers": links,
                "entries_sent": s.entries_sent,
                "entries_loaded": s.entries_loaded,
                "bytes_sent": sum(link.bytes_sent for link in self.links.values()),
                "resyncs": s.resyncs,
                "errors": dict(s.errors),
                "lag": dict(s.lag),
                "takeover_entries": dict(s.takeover_entries),
                "events": bool(self._events is not None and self._events.running()),
                "last_error": s.last_error,
                "last_error_age": round(self.clock() - s.last_error_at, 1) if s.last_error else None,
                "uptime": round(self.clock() - self.started_at, 1),
            }

    # ------------------------------------------------------------------ errors
    def _peer_error(self, peer: str, why: str) -> None:
        kind = "auth" if "authentic" in why or "member" in why or "not from its address" in why else "connect"
        self._error(kind, f"{peer}: {why}")

    def _error(self, kind: str, why: str) -> None:
        with self.lock:
            self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1
            repeat = self.stats.last_error == why
            self.stats.last_error, self.stats.last_error_at = why, self.clock()
        if not repeat:
            log.warning("%s", why)
