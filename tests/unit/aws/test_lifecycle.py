"""The termination hook (agent/aws/lifecycle.py): IMDS says Terminated, the NAT drains, the action is completed.

The lab IMDSv2 (agent.lab.imds) serves the target lifecycle state from a file the test writes; the
Auto Scaling API is the lab recorder (agent.lab.awsrecorder), which answers CompleteLifecycleAction
as AWS does and keeps what it was sent. The drain itself is the daemon's (agent/watches.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.aws import lifecycle
from agent.lab import imds
from agent.lab.awsrecorder import Recorder


def wait(cond: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture
def state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "target-lifecycle-state"
    server = ThreadingHTTPServer(("127.0.0.1", 0), imds.make_handler("i-0me", "us-east-1", "us-east-1a", str(path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


def test_the_target_state_from_imds(state_file: Path) -> None:
    assert lifecycle.target_state() == "", "not in an Auto Scaling group: IMDS answers 404"
    state_file.write_text("InService\n")
    assert lifecycle.target_state() == "InService"
    state_file.write_text("Terminated")
    assert lifecycle.target_state() == "Terminated"


def test_terminating_is_seen_and_the_action_completed_once_told(
    state_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_file.write_text("InService")
    with Recorder(tmp_path / "calls.jsonl") as rec:
        monkeypatch.setenv("AWS_ENDPOINT_URL_AUTO_SCALING", rec.url)
        for key, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "x")):
            monkeypatch.setenv(key, value)
        watch = lifecycle.LifecycleWatch(
            "i-0me", "nat-ha-asg-1", lambda: lifecycle.plain_client("autoscaling", "us-east-1"), poll=0.05
        )
        watch.start()
        try:
            time.sleep(0.3)
            assert not watch.terminating.is_set()
            state_file.write_text("Terminated")
            assert wait(watch.terminating.is_set), "Terminating:Wait not noticed"
            time.sleep(0.2)
            assert rec.calls() == [], "the action is completed only after the drain"
            watch.complete()
            assert wait(watch.completed.is_set)
        finally:
            watch.stop()
        (call,) = rec.calls()
    keys = ("Action", "AutoScalingGroupName", "InstanceId", "LifecycleHookName", "LifecycleActionResult")
    assert {k: call[k] for k in keys} == {
        "Action": "CompleteLifecycleAction",
        "AutoScalingGroupName": "nat-ha-asg-1",
        "InstanceId": "i-0me",
        "LifecycleHookName": "nat-ha-drain",
        "LifecycleActionResult": "CONTINUE",
    }


def test_the_drain_is_due_when_done_or_at_its_limit() -> None:
    assert not lifecycle.drain_due(None, True, 100.0), "no drain began: nothing to complete"
    assert lifecycle.drain_due(10.0, True, 11.0)
    assert not lifecycle.drain_due(10.0, False, 10.0 + lifecycle.DRAIN_LIMIT - 1)
    assert lifecycle.drain_due(10.0, False, 10.0 + lifecycle.DRAIN_LIMIT)
