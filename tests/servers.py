"""Real local servers for tests and benchmarks: moto server and dynalite.

Every server binds 127.0.0.1 on a free port, is waited for with a bounded
deadline, and is stopped when the ``with`` block ends, also on failure.
Nothing here depends on pytest, so ``bench/`` uses the same code.

* :func:`moto_server` / :func:`moto_server_process` - ``python -m moto.server``
  as a separate OS process (tests may SIGSTOP it through ``.process``).
* :func:`threaded_moto_server` - moto's ``ThreadedMotoServer`` in this process.
* :func:`dynalite_server` / :func:`dynalite_server_process` - dynalite 4.0.0
  (npm), installed on first use into ``<repo>/.cache/dynalite``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
DYNALITE_VERSION = "4.0.0"
DYNALITE_DIR = CACHE / "dynalite"
DYNALITE_BIN = DYNALITE_DIR / "node_modules" / ".bin" / "dynalite"

# Dummy credentials: a process started from here never signs for real AWS.
TEST_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


class ServerError(RuntimeError):
    """A server could not be installed or did not become ready in time."""


@dataclass(frozen=True)
class ServerProcess:
    """A running server: its endpoint URL and its OS process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def pause(self) -> None:
        """SIGSTOP the server (it stops answering; connections hang)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


def set_test_aws_env(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set dummy AWS credentials and region where not already set to dummy ones.

    Real credentials from the environment are always overridden, so a test can
    never reach real AWS by accident.
    """
    for name, value in TEST_AWS_ENV.items():
        environ[name] = value
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        environ.pop(name, None)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_http(url: str, timeout_s: float) -> bool:
    """True once anything speaks HTTP at ``url`` (an error status counts)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # loopback only
            resp.read()
        return True
    except urllib.error.HTTPError:
        return True
    except (OSError, urllib.error.URLError):
        return False


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 3.0) -> None:
    """Stop a server process: SIGCONT (it may be paused), SIGTERM, then SIGKILL after ``grace_s``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
        process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=grace_s)


@contextlib.contextmanager
def _run(
    name: str, argv_for_port: list[str], ready_path: str, *, ready_s: float, attempts: int = 3, env: dict[str, str]
) -> Iterator[ServerProcess]:
    """Start ``argv`` (with ``{port}`` substituted) until it is ready; stop it at exit."""
    CACHE.mkdir(exist_ok=True)
    last_error = ""
    for _ in range(attempts):  # a free port may be taken between probe and bind: retry
        port = free_port()
        argv = [a.replace("{port}", str(port)) for a in argv_for_port]
        log = CACHE / f"{name}-{port}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_s
            ready = False
            while time.monotonic() < deadline and process.poll() is None:
                if _answers_http(url + ready_path, timeout_s=0.5):
                    ready = True
                    break
                time.sleep(0.05)
            if not ready:
                last_error = f"{name} exited with {process.poll()}" if process.poll() is not None else "timed out"
                last_error += f": {log.read_text(errors='replace')[-2000:]}"
                stop_process(process)
                continue
            yield ServerProcess(url, process, log)
            return
        finally:
            stop_process(process)
            with contextlib.suppress(OSError):
                log.unlink()
    raise ServerError(f"{name} did not become ready on 127.0.0.1 ({last_error})")


def child_env() -> dict[str, str]:
    """This environment with dummy AWS credentials (for server and worker processes)."""
    env = dict(os.environ)
    set_test_aws_env(env)
    return env


# ------------------------------------------------------------------------- moto
@contextlib.contextmanager
def moto_server_process(
    ready_s: float = 20.0, *, unauthenticated_calls: int | None = None, module: str = "moto.server"
) -> Iterator[ServerProcess]:
    """``python -m moto.server`` on 127.0.0.1 in its own OS process.

    ``unauthenticated_calls``: after that many calls moto checks every request's
    access key and SigV4 signature against the IAM users it holds (moto's
    INITIAL_NO_AUTH_ACTION_COUNT); the first calls create such a user.
    ``module="agent.lab.motofix"``: moto with AWS's Elastic IP association (bound to the
    private address asked for; moto alone reports the interface's primary address).
    """
    argv = [sys.executable, "-m", module, "-H", "127.0.0.1", "-p", "{port}"]
    env = child_env()
    if unauthenticated_calls is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(unauthenticated_calls)
    with _run("moto", argv, "/moto-api/", ready_s=ready_s, env=env) as server:
        yield server


@contextlib.contextmanager
def moto_server(ready_s: float = 20.0) -> Iterator[str]:
    """The endpoint URL of a fresh moto server process."""
    with moto_server_process(ready_s) as server:
        yield server.url


@contextlib.contextmanager
def threaded_moto_server() -> Iterator[str]:
    """moto's ThreadedMotoServer in this process (cheap; shares state with ``mock_aws``)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# --------------------------------------------------------------------- dynalite
def node_available() -> bool:
    return shutil.which("node") is not None


def ensure_dynalite(timeout_s: float = 300.0) -> Path:
    """Install dynalite into ``.cache/dynalite`` once (file-locked); return its binary."""
    if DYNALITE_BIN.exists():
        return DYNALITE_BIN
    npm = shutil.which("npm")
    if npm is None or not node_available():
        raise ServerError("dynalite needs node and npm (apt-get install nodejs npm; node >= 20)")
    DYNALITE_DIR.mkdir(parents=True, exist_ok=True)
    with open(DYNALITE_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs install once
        if not DYNALITE_BIN.exists():
            done = subprocess.run(
                [
                    npm,
                    "install",
                    "--prefix",
                    str(DYNALITE_DIR),
                    "--no-audit",
                    "--no-fund",
                    f"dynalite@{DYNALITE_VERSION}",
                ],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            if done.returncode != 0 or not DYNALITE_BIN.exists():
                raise ServerError(f"npm install dynalite@{DYNALITE_VERSION} failed: {done.stderr[-2000:]}")
    return DYNALITE_BIN


@contextlib.contextmanager
def dynalite_server_process(ready_s: float = 20.0) -> Iterator[ServerProcess]:
    """dynalite (in-memory) on 127.0.0.1 in its own OS process."""
    binary = ensure_dynalite()
    argv = [str(binary), "--host", "127.0.0.1", "--port", "{port}", "--createTableMs", "0", "--deleteTableMs", "0"]
    with _run("dynalite", argv, "/", ready_s=ready_s, env=child_env()) as server:
        yield server


@contextlib.contextmanager
def dynalite_server(ready_s: float = 20.0) -> Iterator[str]:
    """The endpoint URL of a fresh dynalite server process."""
    with dynalite_server_process(ready_s) as server:
        yield server.url
