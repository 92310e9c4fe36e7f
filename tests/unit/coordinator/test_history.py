"""The contention history checker finds each kind of violation (and passes a clean history)."""

from __future__ import annotations

from typing import Any

from tests.integration.history import check_history, summarize


def w(
    op: str, version: int, t: float, *, term: int = 0, owner: str = "w0", outcome: str = "ok", **kw: Any
) -> dict[str, Any]:
    route = op in ("claim", "hand_over", "release")
    rec = {
        "op": op, "item": "route#rtb-1" if route else "member#w0", "version": version, "token": f"t{version}{owner}",
        "t_start": t, "t_end": t + 0.01, "worker": kw.pop("worker", owner), "outcome": outcome,
    }  # fmt: skip
    if route:
        rec.update(route="rtb-1", term=term, owner=owner, owner_session=f"s-{owner}")
    rec.update(kw)
    return rec


def act(worker: str, start: float, until: float, term: int) -> dict[str, Any]:
    return {"op": "act", "worker": worker, "route": "rtb-1", "term": term, "from": start, "until": until}


CLEAN = [
    w("start", 1, 0.0),
    w("claim", 1, 0.1, term=1, owner="w0"),
    act("w0", 0.2, 1.0, 1),
    w("heartbeat", 2, 0.5),
    act("w0", 0.6, 1.5, 1),
    w("hand_over", 2, 0.9, term=2, owner="w1", worker="w0", from_term=1),  # ends w0's belief at 0.9
    act("w1", 1.0, 2.0, 2),
    w("claim", 3, 3.0, term=3, owner="w2", from_owner="w1", worker="w2"),
    w("heartbeat", 3, 2.0, outcome="unknown"),  # may have landed: final version 3 is fine
]


def test_clean_history_passes() -> None:
    assert check_history(CLEAN, {"route#rtb-1": 3, "member#w0": 3}) == []
    assert check_history(CLEAN, {"route#rtb-1": 3, "member#w0": 2}) == []
    counts = summarize(CLEAN)
    assert counts["takeover:ok"] == 1 and counts["heartbeat:unknown"] == 1


def test_two_owners_in_one_term() -> None:
    bad = [*CLEAN, w("claim", 4, 4.0, term=3, owner="w1")]
    assert any("term 3 has 2 owners" in p for p in check_history(bad, {"route#rtb-1": 4, "member#w0": 3}))


def test_duplicate_version_and_lost_update() -> None:
    bad = [*CLEAN, w("heartbeat", 2, 0.7, owner="w0")]
    problems = check_history(bad, {"route#rtb-1": 3, "member#w0": 3})
    assert any("version 2 written twice" in p for p in problems)
    problems = check_history(CLEAN, {"route#rtb-1": 2, "member#w0": 3})
    assert any("above the final version" in p for p in problems)
    problems = check_history(CLEAN, {"route#rtb-1": 5, "member#w0": 3})
    assert any("final version 5" in p for p in problems)


def test_term_going_back_and_stale_write() -> None:
    bad = [r for r in CLEAN if r.get("version") != 3 or r["op"] != "claim"]
    bad.append(w("claim", 3, 3.0, term=1, owner="w2"))
    problems = check_history(bad, {"route#rtb-1": 3, "member#w0": 3})
    assert any("term went from 2" in p for p in problems)
    stale = [*CLEAN, w("release", 2, 5.0, term=4, owner="", from_term=3)]
    assert any("began after v3" in p for p in check_history(stale, {"route#rtb-1": 3, "member#w0": 3}))


def test_overlapping_beliefs() -> None:
    bad = [*CLEAN, act("w2", 1.5, 2.5, 3)]
    problems = check_history(bad, {"route#rtb-1": 3, "member#w0": 3})
    assert any("both believed they may act" in p and "w1" in p and "w2" in p for p in problems)
    no_handover = [r for r in CLEAN if r["op"] != "hand_over"]
    problems = check_history(
        no_handover,
        {"route#rtb-1": 3, "member#w0": 3},
    )
    assert any("w0" in p and "w1" in p and "both believed" in p for p in problems)
