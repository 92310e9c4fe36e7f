"""A TCP proxy that holds every chunk it forwards for DELAY seconds ("slow EC2" for the watchdog test).

    python tests/systemd/slowproxy.py LISTEN_HOST LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT DELAY

Runs inside the lab's ``inet`` namespace (``ip netns exec``); prints ``ready`` once listening and
exits when its parent is gone or after an hour, whichever is first.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time


def pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            time.sleep(delay)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def serve(listen: socket.socket, upstream: tuple[str, int], delay: float) -> None:
    while True:
        client, _ = listen.accept()
        try:
            server = socket.create_connection(upstream, timeout=5)
        except OSError:
            client.close()
            continue
        server.settimeout(None)
        threading.Thread(target=pump, args=(client, server, delay), daemon=True).start()
        threading.Thread(target=pump, args=(server, client, 0.0), daemon=True).start()


def main(argv: list[str]) -> int:
    host, port, up_host, up_port, delay = argv[0], int(argv[1]), argv[2], int(argv[3]), float(argv[4])
    listen = socket.create_server((host, port))
    threading.Thread(target=serve, args=(listen, (up_host, up_port), delay), daemon=True).start()
    print("ready", flush=True)
    parent, deadline = os.getppid(), time.monotonic() + 3600
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
