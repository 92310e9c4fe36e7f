"""How the lab's stand-ins for AWS endpoints run as processes in a namespace (agent.lab.imds, awsrecorder).

Serve on ``address:port``, say ``ready`` on stdout once listening (the parent waits for that line),
and exit when the parent is gone: a stand-in never outlives the lab that started it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_until_orphaned(name: str, address: str, port: int, handler: type[BaseHTTPRequestHandler]) -> int:
    """The stand-in's main loop; 1 with one line on stderr when it cannot listen."""
    try:
        server = ThreadingHTTPServer((address, port), handler)
    except OSError as exc:
        print(f"{name}: cannot listen on {address}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    print("ready", flush=True)
    parent = os.getppid()
    while os.getppid() == parent:  # bounded by its parent's life
        time.sleep(0.5)
    server.shutdown()
    return 0
