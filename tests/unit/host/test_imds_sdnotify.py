"""IMDSv2 discovery (a fake IMDS on loopback) and systemd notifications (a real datagram socket)."""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from agent.aws import imds
from agent.host.sdnotify import Notifier


class FakeImds(BaseHTTPRequestHandler):
    token = "tok-123"
    data: ClassVar[dict[str, str]] = {
        "instance-id": "i-0abc",
        "placement/region": "eu-west-1",
        "placement/availability-zone": "eu-west-1b",
        "/dynamic/instance-identity/document": '{"accountId": "210987654321", "region": "eu-west-1"}',
    }

    def do_PUT(self) -> None:
        if self.path != "/latest/api/token" or "X-aws-ec2-metadata-token-ttl-seconds" not in self.headers:
            self.send_error(400)
            return
        self._reply(self.token)

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != self.token:
            self.send_error(401)  # IMDSv2 only: no token, no answer
            return
        key = self.path.removeprefix("/latest/meta-data/")
        if self.path.startswith("/latest/dynamic/"):
            key = self.path.removeprefix("/latest")
        if key not in self.data:
            self.send_error(404)
            return
        self._reply(self.data[key])

    def _reply(self, body: str) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_imds(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), FakeImds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", url)
    yield url
    server.shutdown()


def test_identity_from_imdsv2(fake_imds: str) -> None:
    assert imds.identity() == ("i-0abc", "eu-west-1", "eu-west-1b")


def test_imds_down_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(imds.ImdsError, match=re.escape("IMDSv2 at http://127.0.0.1:9 did not answer")):
        imds.identity(timeout=0.5)


def test_config_without_identity_uses_imds(fake_imds: str, tmp_path: Path) -> None:
    from agent.config import parse
    from agent.runtime import resolve

    config = parse(
        {
            "group": "g",
            "members": [
                {"instance_id": "i-0abc", "address": "10.0.1.10", "route_tables": ["rtb-1"]},
                {"instance_id": "i-0def", "address": "10.0.2.10", "route_tables": ["rtb-2"]},
            ],
        }
    )
    os.environ.pop("AWS_REGION", None)
    saved = os.environ.pop("AWS_DEFAULT_REGION", None)
    try:
        rt = resolve(config)
    finally:
        if saved is not None:
            os.environ["AWS_DEFAULT_REGION"] = saved
    assert (rt.config.instance_id, rt.config.region) == ("i-0abc", "eu-west-1")
    # The holder tag names this instance's ARN (ec2:SourceInstanceARN): the account comes from IMDS too.
    assert rt.holder == "arn:aws:ec2:eu-west-1:210987654321:instance/i-0abc"


def test_instance_arn_partitions() -> None:
    assert imds.instance_arn("i-1", "cn-north-1", "1") == "arn:aws-cn:ec2:cn-north-1:1:instance/i-1"
    assert imds.instance_arn("i-1", "us-gov-west-1", "1") == "arn:aws-us-gov:ec2:us-gov-west-1:1:instance/i-1"
    assert imds.instance_arn("i-1", "eu-west-1", "1") == "arn:aws:ec2:eu-west-1:1:instance/i-1"


def test_notifier_sends_ready_and_watchdog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    n = Notifier()
    n.ready("holding rtb-a (term 1)")
    n.watchdog("holding rtb-a (term 1)")
    assert sock.recv(1024) == b"READY=1\nSTATUS=holding rtb-a (term 1)"
    assert sock.recv(1024) == b"WATCHDOG=1\nSTATUS=holding rtb-a (term 1)"
    sock.close()


def test_notifier_without_systemd_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    Notifier().ready("x")  # nothing to send to, nothing raised
