"""Real Prometheus and Alertmanager (Debian packages) for tests, started by hand on 127.0.0.1.

Every process binds 127.0.0.1 on a free port, keeps its data in a temporary
directory, is waited for with a bounded deadline and is stopped when its
``with`` block ends, also on failure. Alertmanager runs with clustering off
(``--cluster.listen-address=``), otherwise it binds 0.0.0.0:9094 and waits for
gossip to settle. Nothing here depends on pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.servers import free_port, stop_process

PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"
PACKAGES = {PROMETHEUS: "prometheus", ALERTMANAGER: "prometheus-alertmanager"}

T = TypeVar("T")


class StackError(RuntimeError):
    """A server could not be installed, did not become ready, or a wait timed out."""


def missing_binaries() -> list[str]:
    return [b for b in PACKAGES if shutil.which(b) is None]


def ensure_installed(timeout_s: float = 600.0) -> str | None:
    """Install the Debian packages if missing (root only). Returns a reason to skip, or None."""
    missing = missing_binaries()
    if not missing:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{', '.join(missing)} not installed and cannot apt-get install them (not root or no apt-get)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    packages = sorted({PACKAGES[b] for b in missing})
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            return f"{' '.join(argv)} failed: {proc.stderr[-500:]}"
    still = missing_binaries()
    return f"{', '.join(still)} still missing after apt-get install" if still else None


def http_json(url: str, timeout_s: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def wait_until(what: str, probe: Callable[[], T | None], timeout_s: float, interval_s: float = 0.25) -> T:
    """Call ``probe`` until it returns something truthy; raise StackError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except (OSError, ValueError, KeyError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what} (last error: {last_error})")
        time.sleep(interval_s)


@contextlib.contextmanager
def _server(name: str, argv_for_port: Callable[[int], list[str]], log: Path, ready_s: float) -> Iterator[str]:
    """Start a server on a free port until ``/-/ready`` answers 200; stop it at exit."""
    last = ""
    for _attempt in range(3):  # a free port may be taken between probe and bind
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv_for_port(port), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            deadline = time.monotonic() + ready_s
            ready = False
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    with urllib.request.urlopen(url + "/-/ready", timeout=0.5) as resp:
                        ready = resp.status == 200
                except (OSError, urllib.error.URLError):
                    ready = False
                if ready:
                    break
                time.sleep(0.05)
            if not ready:
                last = f"exit code {process.poll()}" if process.poll() is not None else f"not ready in {ready_s} s"
                last += ": " + log.read_text(errors="replace")[-1500:]
                continue
            yield url
            return
        finally:
            stop_process(process, grace_s=5.0)
    raise StackError(f"{name} did not start on 127.0.0.1 ({last})")


# ------------------------------------------------------------------ Prometheus
@dataclass
class Prometheus:
    url: str
    workdir: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (raises StackError on a query error)."""
        q = urllib.parse.urlencode({"query": expr})
        try:
            data = http_json(f"{self.url}/api/v1/query?{q}")
        except urllib.error.HTTPError as exc:
            raise StackError(f"query {expr!r} failed: {exc.read().decode(errors='replace')}") from exc
        if data.get("status") != "success":
            raise StackError(f"query {expr!r} failed: {data}")
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def label_values(self, label: str, match: str = "") -> list[str]:
        params = [("match[]", match)] if match else []
        data = http_json(f"{self.url}/api/v1/label/{label}/values?{urllib.parse.urlencode(params)}")
        values: list[str] = data["data"]
        return values

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts as Prometheus sees them (pending and firing)."""
        alerts: list[dict[str, Any]] = http_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]
        return alerts

    def targets_up(self) -> int:
        return sum(1 for r in self.query('up{job="nat-ha"} == 1'))


def shorten_for(rules_text: str, duration: str = "1s") -> str:
    """A copy of alert rules with every ``for:`` set to ``duration`` (for a live test in seconds)."""
    return re.sub(r"^(\s*)for:\s*\S+\s*$", rf"\1for: {duration}", rules_text, flags=re.MULTILINE)


@contextlib.contextmanager
def prometheus(
    workdir: Path,
    targets: list[str],
    *,
    rule_files: Sequence[Path] = (),
    alertmanager_url: str = "",
    interval: str = "1s",
    job: str = "nat-ha",
    ready_s: float = 30.0,
) -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` ("host:port") as ``job`` every ``interval``, evaluating rules as often."""
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
    }
    if alertmanager_url:
        host = urllib.parse.urlparse(alertmanager_url).netloc
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    check = subprocess.run(["promtool", "check", "config", str(config_path)], capture_output=True, text=True)
    if check.returncode != 0:
        raise StackError(f"promtool check config failed: {check.stdout}{check.stderr}")

    def argv(port: int) -> list[str]:
        return [
            PROMETHEUS,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]

    with _server("prometheus", argv, workdir / "prometheus.log", ready_s) as url:
        yield Prometheus(url, workdir)


# ---------------------------------------------------------------- Alertmanager
@dataclass
class Alertmanager:
    url: str
    workdir: Path

    def alerts(self) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``: active, suppressed (inhibited/silenced) and unprocessed alerts."""
        alerts: list[dict[str, Any]] = http_json(f"{self.url}/api/v2/alerts")
        return alerts


def alertmanager_config_for_test(example: Path, webhook_url: str) -> dict[str, Any]:
    """The example config with every receiver sent to ``webhook_url`` and waits cut to a second."""
    config: dict[str, Any] = yaml.safe_load(example.read_text())
    for receiver in config["receivers"]:
        name = receiver["name"]
        for key in [k for k in receiver if k.endswith("_configs")]:
            del receiver[key]
        receiver["webhook_configs"] = [{"url": f"{webhook_url}/{name}", "send_resolved": True}]

    def fast(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = "1s"
        for child in route.get("routes", []):
            fast(child)

    fast(config["route"])
    config["route"]["group_wait"] = "1s"
    config["route"]["group_interval"] = "1s"
    return config


@contextlib.contextmanager
def alertmanager(workdir: Path, config: dict[str, Any], ready_s: float = 30.0) -> Iterator[Alertmanager]:
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(config))

    def argv(port: int) -> list[str]:
        return [
            ALERTMANAGER,
            f"--config.file={config_path}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    with _server("alertmanager", argv, workdir / "alertmanager.log", ready_s) as url:
        yield Alertmanager(url, workdir)


# ------------------------------------------------------------- webhook receiver
@dataclass
class Webhook:
    url: str
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[tuple[str, dict[str, Any]]]:
        """(path, Alertmanager webhook payload) of every notification so far."""
        with self.lock:
            return list(self.posts)


@contextlib.contextmanager
def webhook_receiver() -> Iterator[Webhook]:
    """A tiny HTTP server on 127.0.0.1 that records Alertmanager's webhook notifications."""
    hook = Webhook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
            with contextlib.suppress(ValueError), hook.lock:
                hook.posts.append((self.path, json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
