"""systemd notifications (READY, WATCHDOG, STATUS, STOPPING) without a dependency."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends to $NOTIFY_SOCKET when systemd gave us one; a no-op otherwise."""

    def __init__(self) -> None:
        path = os.environ.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + path[1:]) if path.startswith("@") else path
        self.watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)

    def send(self, message: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode())
        except OSError:
            pass  # systemd gone or socket unusable: nothing useful to do about it

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status[:200]}")

    def watchdog(self, status: str) -> None:
        self.send(f"WATCHDOG=1\nSTATUS={status[:200]}")

    def stopping(self, status: str) -> None:
        self.send(f"STOPPING=1\nSTATUS={status[:200]}")
