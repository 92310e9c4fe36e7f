"""The sync service's local control socket: one JSON request and one JSON answer per connection.

The agent uses it to tell the service which member holds each table (``state``), to ask for the
push before a planned hand-over (``push``) and to read the figures it exports (``stats``);
``nat-ha status`` reads ``stats`` too. Only root and the service's own user may connect: both
units run as the dynamic user ``nat-ha`` (:func:`peer_allowed`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from typing import Any

MAX_MESSAGE = 1024 * 1024


class ControlError(Exception):
    """The sync service could not be asked or did not answer (one line)."""


def request(path: str, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send ``message`` to the service at ``path`` and return its answer (within ``timeout`` seconds)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(max(timeout, 0.001))
            s.connect(path)
            s.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_MESSAGE:
                    raise ControlError("answer too long")
    except FileNotFoundError:
        raise ControlError(f"the sync service is not running (no {path})") from None
    except ConnectionRefusedError:
        raise ControlError(f"the sync service is not running ({path} refuses connections)") from None
    except PermissionError:
        raise ControlError(f"not allowed to talk to the sync service at {path} (run as root)") from None
    except TimeoutError:
        raise ControlError(f"the sync service did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise ControlError(f"the sync service at {path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError("the sync service gave no answer") from None
    if not isinstance(answer, dict):
        raise ControlError("the sync service gave a bad answer")
    return answer


def peer_allowed(conn: socket.socket) -> bool:
    """The connecting process runs as root or as this process's user (SO_PEERCRED)."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return False
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.geteuid())


def read_request(conn: socket.socket, timeout: float = 5.0) -> dict[str, Any] | None:
    """One request from a connection (None if none came or it is not a JSON object)."""
    conn.settimeout(timeout)
    data = b""
    try:
        while not data.endswith(b"\n") and len(data) <= MAX_MESSAGE:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        message = json.loads(data)
    except (OSError, ValueError):
        return None
    return message if isinstance(message, dict) else None


def answer(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(message).encode() + b"\n")


def health(stats: dict[str, Any]) -> tuple[str, list[str]]:
    """One line about a ``stats`` answer (for ``nat-ha status``) and the problems in it."""
    peers = stats.get("peers", {})
    lag = stats.get("lag", {})
    links = ", ".join(
        f"{p} {'up' if v.get('connected') else 'DOWN'}" + (f" (lag {lag[p]:.2f} s)" if p in lag else "")
        for p, v in sorted(peers.items())
    )
    errors = {k: n for k, n in stats.get("errors", {}).items() if n}
    held = ", ".join(stats.get("held", [])) or "none"
    line = f"streams {held} to {links or 'no peer'}; {stats.get('entries_sent', 0)} entries sent, " + (
        f"{stats.get('entries_loaded', 0)} loaded; errors: "
        + (", ".join(f"{k} {n}" for k, n in errors.items()) or "none")
    )
    problems = [f"conntrack sync: no link to {p}" for p, v in sorted(peers.items()) if not v.get("connected")]
    if not stats.get("events", True):
        problems.append("conntrack sync: not reading the kernel's connection events")
    if stats.get("last_error") and (stats.get("last_error_age") or 1e9) < 60:
        problems.append(f"conntrack sync: {stats['last_error']} ({stats['last_error_age']:.0f} s ago)")
    return line, problems
