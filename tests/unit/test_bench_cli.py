"""The benchmark scripts refuse bad arguments with one line and exit code 2 (bench/cli.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BAD = [
    ("cycle", ["--cycles", "0"], "--cycles and --repeats must be at least 1"),
    ("ec2_failures", ["--seeds", "0"], "--seeds must be between 1 and 1000"),
    ("coordinator", ["--bogus"], "unrecognized arguments: --bogus"),
    ("failover", ["--trials", "0"], "--trials must be between 1 and 1000"),
    (
        "failover",
        ["--egress-ip", "follow", "--systemd"],
        "--egress-ip follow runs in the process lab (the systemd lab has no internet gateway)",
    ),
    (
        "failover",
        ["--egress-order", "later"],
        "argument --egress-order: invalid choice: 'later' (choose from 'route-first', 'address-first', 'both')",
    ),
    (
        "failover",
        ["--faults", "crash,agent_restart"],
        "--faults: agent_restart: only with --systemd (a unit restarts the agent)",
    ),
    ("restart", ["--trials", "0"], "--trials must be between 1 and 200"),
    ("restart", ["--scenarios", "reboot"], "--scenarios: unknown reboot; choose from kill, restart, cold, cold_kill"),
    ("sim", ["--bogus"], "unrecognized arguments: --bogus"),
    ("soak", ["--minutes", "0"], "--minutes must be in (0, 600]"),
    ("takeover", ["--trials", "0"], "--trials must be between 1 and 1000"),
    ("footprint", ["--seconds", "1"], "--seconds must be at least 4"),
    ("probes", ["--targets", "0"], "--targets must be between 1 and 254"),
    ("store_calls", ["--calls", "5"], "--calls must be between 10 and 100000"),
    ("store_calls", ["--cadence", "-1"], "--cadence must be between 0 and 600 seconds"),
    ("wakeup", ["--wakes", "5"], "--wakes must be between 10 and 100000"),
]


@pytest.mark.parametrize(("script", "argv", "message"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_arguments_are_one_line_and_exit_2(script: str, argv: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{script}.py"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"{script}: error: {message}\n"
    assert done.stdout == ""


def test_footprint_counts_calls_from_the_agents_own_metrics() -> None:
    """bench/footprint.py counts AWS calls from the exposition, so the measured agent records nothing."""
    from prometheus_client import generate_latest

    from agent.metrics import Metrics
    from bench.footprint import count_calls

    m = Metrics()
    for _ in range(3):
        m.observe_aws_call("dynamodb", "Query", 0.002, None)
    m.observe_aws_call("dynamodb", "PutItem", 0.002, "ConditionalCheckFailedException")
    m.observe_aws_call("ec2", "DescribeRouteTables", 0.01, None)
    assert count_calls(generate_latest(m.registry).decode()) == {
        ("dynamodb", "Query"): 3,
        ("dynamodb", "PutItem"): 1,
        ("ec2", "DescribeRouteTables"): 1,
    }
