"""The cycle's events as entries of the group's history (``nat-ha history``).

The agent's ``on_event`` sink: each event that an on-call engineer asks about at 3 a.m. - a
failover, a fail-back, a hand-over, the last resort, a foreign change, a peer restart, a session
lost - becomes one entry, queued for the history writer's own thread
(:class:`coordinator.history.HistoryWriter`): never a store call on the cycle's path. A start is
not an entry: an idle agent never starts the writer's thread and connection (the footprint
budget), and the stop before it is.
"""

from __future__ import annotations

from typing import Any

from coordinator.history import HistoryWriter

# route_moved's kind -> the history's event (a repair is said by foreign_change when it was one)
MOVES = {
    "takeover": "failover",
    "failback": "failback",
    "switchover": "switchover",
    "drain": "handover",
    "last_resort": "last_resort",
}


class Journal:
    def __init__(self, writer: HistoryWriter) -> None:
        self.writer = writer

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        record = self.writer.record
        if kind == "route_moved" and data.get("kind") in MOVES and data.get("moved", True):
            seconds = data.get("seconds")
            record(
                MOVES[str(data["kind"])],
                str(data.get("route_table", "")),
                why=str(data.get("why", "")),
                detail=f"{data.get('from') or '-'} -> {data.get('to', '?')}",
                seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
            )
        elif kind == "foreign_change":
            record("foreign_change", str(data.get("route_table", "")), detail=f"to {data.get('to', '?')}")
        elif kind == "peer_stopping":
            record("peer_restart", str(data.get("peer", "")), detail=f"stopping (attempt {data.get('attempt', '?')})")
        elif kind == "peer_started":
            record("peer_restart", str(data.get("peer", "")), detail="running again")
        elif kind == "session_lost":
            record("session_lost", self.writer.writer, why="a peer expired it")
