"""The agent's side of conntrack_sync: the cycle's :class:`agent.cycle.ports.FlowSyncLike`, over the control socket.

Nothing here blocks the cycle. A planned hand-over's first :meth:`FlowSync.handover_wait` starts
the push on a thread and says "waiting"; the cycle retries the hand-over each cycle, and it goes
ahead once the taker has confirmed, once the push failed (a sync failure never holds a route
back), or once ``push_timeout`` has passed. A crash takeover never waits: the taker's copies
were loaded all along. A thread tells the service every second (and at once after a take or a
hand-over) which member holds each table, and reads its figures for the metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import Config, ConntrackSyncConfig
from agent.ctsync import control, plan
from agent.metrics import SyncMetrics
from coordinator.items import GroupSnapshot

log = logging.getLogger("nat_ha.agent")

POLL_S = 1.0
ANSWER_TIMEOUT_S = 0.5  # state and stats; a push waits push_timeout
OVERRIDE_S = 5.0  # how long our own take or hand-over counts over a group snapshot that lags it
STALE_PUSH_S = 30.0  # a push older than this is done again (a hand-over retried much later)

Request = Callable[[str, dict[str, Any], float], dict[str, Any]]


@dataclass
class Push:
    successor: str
    started: float  # the cycle's clock
    result: dict[str, Any] | None = None
    seconds: float = 0.0
    reported: bool = False


class FlowSync:
    """What the cycle calls (handover_wait, taking, released), talking to ``nat-ha ctsync``."""

    def __init__(
        self,
        config: ConntrackSyncConfig,
        me: str,
        members: dict[str, str],
        snapshot: Callable[[], GroupSnapshot | None],
        metrics: SyncMetrics | None = None,
        request: Request = control.request,
        group: Callable[[], Config] | None = None,
    ) -> None:
        self.path = config.control_socket
        self.bound = config.push_timeout
        self.me = me
        self.members = members
        self.group = group  # the agent's current config (members_from_tags: rediscovered), when given
        self.snapshot = snapshot
        self.metrics = metrics
        self.request = request
        self.pushes: dict[str, Push] = {}
        self.overrides: dict[str, tuple[str, float]] = {}  # route table -> (holder, when we changed it)
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.answering: bool | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the cycle's port
    def handover_wait(self, route_table: str, successor: str, now: float) -> str:
        with self.lock:
            p = self.pushes.get(route_table)
            if p is None or p.successor != successor or (p.result is not None and now - p.started > STALE_PUSH_S):
                p = self.pushes[route_table] = Push(successor, now)
                threading.Thread(target=self._push, args=(route_table, p), name="ctsync-push", daemon=True).start()
                return f"pushing {route_table}'s connection-tracking entries to {successor} first"
            result = p.result
        if result is not None:
            self._report(route_table, p)
            return ""
        if now - p.started >= self.bound:
            if not p.reported:
                p.reported = True
                log.warning(
                    "%s did not confirm %s's connection-tracking entries within %.1f s: moving the route anyway",
                    successor, route_table, self.bound,
                )  # fmt: skip
                if self.metrics is not None:
                    self.metrics.pushes.labels("timeout").inc()
            return ""
        return f"waiting for {successor} to load {route_table}'s connection-tracking entries"

    def taking(self, route_table: str, previous: str) -> None:
        self._changed(route_table, self.me)

    def released(self, route_table: str, successor: str) -> None:
        self._changed(route_table, successor)

    # ------------------------------------------------------------------ threads
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ctsync-agent", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(2)

    def _changed(self, route_table: str, holder: str) -> None:
        with self.lock:
            self.pushes.pop(route_table, None)
            self.overrides[route_table] = (holder, time.monotonic())
        self.wake.set()

    def _push(self, route_table: str, p: Push) -> None:
        t0 = time.monotonic()
        message = {"op": "push", "table": route_table, "to": p.successor, "timeout": self.bound}
        try:
            result = self.request(self.path, message, self.bound + ANSWER_TIMEOUT_S)
        except control.ControlError as exc:
            result = {"ok": False, "error": str(exc)}
        with self.lock:
            p.seconds = time.monotonic() - t0
            p.result = result

    def _report(self, route_table: str, p: Push) -> None:
        if p.reported or p.result is None:
            return
        p.reported = True
        if p.result.get("ok"):
            log.info("%s loaded %s's %s connection-tracking entries (%.2f s)",
                     p.successor, route_table, p.result.get("entries", "?"), p.seconds)  # fmt: skip
            if self.metrics is not None:
                self.metrics.pushes.labels("acked").inc()
                self.metrics.push_duration.observe(p.seconds)
            return
        timed_out = "did not confirm" in str(p.result.get("error", ""))
        log.warning("could not hand %s's connection-tracking entries to %s (%s): moving the route anyway",
                    route_table, p.successor, p.result.get("error", "no answer"))  # fmt: skip
        if self.metrics is not None:
            self.metrics.pushes.labels("timeout" if timed_out else "failed").inc()

    def holders(self) -> dict[str, str]:
        """Route table -> holder: the last group snapshot, with our own recent takes and hand-overs over it."""
        snap = self.snapshot()
        out = {rt: r.owner for rt, r in snap.routes.items() if r.owner} if snap is not None else {}
        now = time.monotonic()
        with self.lock:
            for rt, (holder, at) in list(self.overrides.items()):
                if now - at > OVERRIDE_S or out.get(rt) == holder:
                    del self.overrides[rt]
                else:
                    out[rt] = holder
        return out

    def state(self) -> dict[str, Any]:
        """The ``state`` request: the holders and the group; with ``group``, also this NAT and the tables'
        addresses as the agent knows them now (a replaced NAT's successor is a new member)."""
        message: dict[str, Any] = {"op": "state", "holders": self.holders(), "members": self.members}
        if self.group is not None:
            config = self.group()
            message["members"] = {m.instance_id: m.address for m in config.members}
            message["me"] = self.me
            message["tables"] = plan.tables_wire(plan.tables_of(config))
            if self.metrics is not None:
                self.metrics.peers = [m for m in message["members"] if m != self.me]
        return message

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.wake.wait(POLL_S)
            self.wake.clear()
            if self.stop.is_set():
                return
            self.poll()

    def poll(self) -> None:
        """Tell the service the holders, read its figures (one round; the thread's loop)."""
        try:
            self.request(self.path, self.state(), ANSWER_TIMEOUT_S)
            stats = self.request(self.path, {"op": "stats"}, ANSWER_TIMEOUT_S)
        except control.ControlError as exc:
            if self.answering is not False:
                log.warning("connection-tracking sync: %s (flows will not survive a move until it runs)", exc)
            self.answering = False
            if self.metrics is not None:
                self.metrics.stats = None
            return
        if self.answering is False:
            log.info("connection-tracking sync answers again")
        self.answering = True
        if self.metrics is not None:
            self.metrics.stats = stats if stats.get("ok") else None
