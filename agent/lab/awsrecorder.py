"""A stand-in for the AWS query APIs the bootstrap and the lifecycle hook call, that records each call.

``python -m agent.lab.awsrecorder --port P --out FILE`` serves on 127.0.0.1 (of the namespace it
runs in) and answers CloudFormation's ``SignalResource`` and Auto Scaling's
``CompleteLifecycleAction`` - both AWS query protocol: a form-encoded POST, an XML answer - as AWS
does when they succeed, and appends one JSON line per call to FILE: the action and its parameters
(``{"Action": "SignalResource", "StackName": ..., "Status": "SUCCESS", ...}``). moto implements
neither. Point a client at it with ``AWS_ENDPOINT_URL_CLOUDFORMATION`` / ``AWS_ENDPOINT_URL_AUTO_SCALING``.
What it does not check: signatures (moto does not either) and whether the stack or the group exists.
It exits when its parent is gone; :class:`Recorder` is the same in a thread, for tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from agent.lab.stubserver import serve_until_orphaned

NAMESPACES = {
    "SignalResource": "http://cloudformation.amazonaws.com/doc/2010-05-15/",
    "CompleteLifecycleAction": "http://autoscaling.amazonaws.com/doc/2011-01-01/",
}


def make_handler(out: Path) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            form = dict(urllib.parse.parse_qsl(self.rfile.read(size).decode()))
            action = form.get("Action", "")
            if action not in NAMESPACES:
                self._send(400, f"<ErrorResponse><Error><Code>InvalidAction</Code><Message>{action}</Message>"
                                "</Error></ErrorResponse>")  # fmt: skip
                return
            with lock, out.open("a") as fh:
                fh.write(json.dumps(form, sort_keys=True) + "\n")
            ns = NAMESPACES[action]
            result = f"<{action}Result/>" if action == "CompleteLifecycleAction" else ""
            self._send(200, f'<{action}Response xmlns="{ns}">{result}<ResponseMetadata><RequestId>'
                            f"lab-{time.monotonic_ns()}</RequestId></ResponseMetadata></{action}Response>")  # fmt: skip

        def _send(self, code: int, body: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    return Handler


class Recorder:
    """The recorder in a thread of this process, on 127.0.0.1 and a free port."""

    def __init__(self, out: Path, port: int = 0) -> None:
        self.out = out
        self.server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(out))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="awsrecorder", daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self) -> list[dict[str, str]]:
        return read(self.out)


def read(out: Path) -> list[dict[str, str]]:
    """The recorded calls, oldest first."""
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.lab.awsrecorder", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    return serve_until_orphaned("awsrecorder", "127.0.0.1", args.port, make_handler(args.out))


if __name__ == "__main__":
    sys.exit(main())
