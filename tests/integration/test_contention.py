"""Real OS processes race for two route tables on a real DynamoDB emulator.

Three workers (tests/integration/contention_worker.py) run for a bounded time
against dynalite and against a moto server process; their write histories are
checked by tests/integration/history.py: one owner per (route table, term), no
version written twice, no lost update, terms only go up, and no two workers
believed they might act on a route table at the same instant.

moto has no lock around check-then-write (its conditional writes are checked, then applied), so
a violation seen only on moto would be moto's race, not ours; the same strict
assertions are applied to both because none has been observed on moto: neither
in this test (8 s × 3 workers) nor in 20 s runs of 8 workers. (Those longer runs
did find a bug in an earlier version of the worker, on dynalite as on moto: it
forgot a peer after a failed expiry and claimed the peer's live route; see the
regression test in tests/unit/coordinator/test_lease_properties.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.dynamo import DynamoSettings, DynamoStore, init_table
from tests import servers
from tests.integration.history import check_history, summarize

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("contention_worker.py")
WORKERS = 3
SECONDS = 8.0
GROUP = "contention"


@pytest.fixture(params=["dynalite", "moto"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def endpoint(backend: str) -> Iterator[str]:
    if backend == "dynalite":
        if not servers.node_available():
            pytest.skip("dynalite needs node (>= 20) on PATH; apt-get install nodejs npm")
        with servers.dynalite_server() as url:
            yield url
    else:
        with servers.moto_server() as url:
            yield url


def test_contention_keeps_one_owner_per_term(backend: str, endpoint: str, tmp_path: Path) -> None:
    settings = DynamoSettings(table="nat-ha-contention", endpoint_url=endpoint)
    init_table(settings)
    env = servers.child_env()
    procs = []
    for i in range(WORKERS):
        out = tmp_path / f"w{i}.jsonl"
        argv = [sys.executable, str(WORKER), "--endpoint", endpoint, "--table", settings.table, "--group", GROUP,
                "--me", f"w{i}", "--seconds", str(SECONDS), "--seed", str(i), "--out", str(out)]  # fmt: skip
        procs.append(subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True))
    try:
        for p in procs:
            _, err = p.communicate(timeout=SECONDS + 20)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)

    records = [json.loads(line) for f in sorted(tmp_path.glob("w*.jsonl")) for line in f.read_text().splitlines()]
    final = {str(row["item"]): int(row["version"]) for row in DynamoStore(settings).query_group(GROUP)}
    counts = summarize(records)
    print(f"\n{endpoint}: {dict(sorted(counts.items()))}")

    problems = check_history(records, final)
    assert problems == [], "\n".join(problems[:20])

    # The run must have been a real race, or the checks above prove nothing. moto is
    # several times slower than dynalite and starves on a busy 2-core machine, so it
    # only has to show some activity; dynalite must show every kind of contention.
    assert counts.get("claim:ok", 0) >= 1 and counts.get("heartbeat:ok", 0) >= 5, counts
    if backend == "moto":
        return
    assert counts.get("heartbeat:ok", 0) >= 30, counts
    assert counts.get("takeover:ok", 0) >= 1, counts  # a paused owner's route was taken over
    assert counts.get("expire:ok", 0) >= 1, counts
    contended = sum(counts.get(k, 0) for k in ("claim:conflict", "expire:conflict", "heartbeat:session_lost"))
    assert contended >= 1, counts  # somebody lost a race or its session
    assert counts.get("hand_over:ok", 0) + counts.get("release:ok", 0) >= 1, counts
    acting: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r["op"] == "act":
            acting[r["route"]].add(r["worker"])
    assert len(acting) == 2 and any(len(w) >= 2 for w in acting.values()), acting  # ownership moved
