"""Check the histories that contention workers wrote (pure functions, no I/O).

Every worker appends one JSON object per line:

* a confirmed write: ``{"op": "claim"|"hand_over"|"release"|"start"|"heartbeat"|
  "expire", "item": "route#rtb-1", "route": "rtb-1", "term": 3, "owner": "w1",
  "owner_session": "...", "version": 7, "token": "...", "t_start": ..., "t_end": ...,
  "worker": "w1", "outcome": "ok"}``;
* a write whose outcome stayed unknown (``"outcome": "unknown"``): it may or may
  not have been applied, so it is counted as possibly applied;
* an ``"act"`` record: ``{"op": "act", "route": ..., "term": ..., "from": t,
  "until": t'}``: the worker believed it alone may act on the route table from
  ``from`` until ``until`` (its session's end on its own clock), unless it starts
  handing the table over or releasing it earlier (which ends the belief).

Times are ``time.monotonic()`` of processes on one host (CLOCK_MONOTONIC is
system-wide on Linux), so they can be compared across workers.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

Record = dict[str, Any]
WRITE_OPS = frozenset({"claim", "hand_over", "release", "start", "heartbeat", "expire", "leave"})
ROUTE_OPS = frozenset({"claim", "hand_over", "release"})


def check_history(records: Iterable[Record], final_versions: Mapping[str, int]) -> list[str]:
    """Every violation found; an empty list means the history is safe.

    ``final_versions`` maps each item key to the version the store holds at the end.
    """
    problems: list[str] = []
    confirmed: dict[str, list[Record]] = defaultdict(list)
    unknown: dict[str, int] = defaultdict(int)
    acts: list[Record] = []
    ends: dict[tuple[str, str, int], float] = {}  # (worker, route, term) -> earliest hand-over/release start
    for rec in records:
        op = rec.get("op")
        if op == "act":
            acts.append(rec)
            continue
        if op not in WRITE_OPS:
            continue
        if op in ("hand_over", "release"):
            key = (rec["worker"], rec["route"], int(rec["from_term"]))
            ends[key] = min(ends.get(key, float("inf")), float(rec["t_start"]))
        if rec.get("outcome") == "ok":
            confirmed[rec["item"]].append(rec)
        else:
            unknown[rec["item"]] += 1

    # one owner per (route table, term); no version written twice; terms follow versions
    for item, writes in confirmed.items():
        by_version: dict[int, Record] = {}
        for w in writes:
            v = int(w["version"])
            if v in by_version:
                problems.append(f"{item}: version {v} written twice ({by_version[v]['token']}, {w['token']})")
            by_version[v] = w
        if item.startswith("route#"):
            owners: dict[int, set[str]] = defaultdict(set)
            for w in writes:
                owners[int(w["term"])].add(f"{w['owner']}/{w['owner_session']}")
            for term, who in sorted(owners.items()):
                if len(who) > 1:
                    problems.append(f"{item}: term {term} has {len(who)} owners {sorted(who)}")
            ordered = [by_version[v] for v in sorted(by_version)]
            for a, b in itertools.pairwise(ordered):
                if int(b["term"]) <= int(a["term"]):
                    problems.append(
                        f"{item}: term went from {a['term']} (v{a['version']}) to {b['term']} (v{b['version']})"
                    )
        # real-time order: a write that ended before another began has the smaller version
        by_end = sorted(writes, key=lambda w: float(w["t_end"]))
        latest_done: Record | None = None
        j = 0
        for w in sorted(writes, key=lambda w: float(w["t_start"])):
            while j < len(by_end) and float(by_end[j]["t_end"]) < float(w["t_start"]):
                if latest_done is None or int(by_end[j]["version"]) > int(latest_done["version"]):
                    latest_done = by_end[j]
                j += 1
            if latest_done is not None and int(latest_done["version"]) >= int(w["version"]):
                problems.append(
                    f"{item}: v{w['version']} began after v{latest_done['version']} was confirmed (a stale write won)"
                )

    # no lost update: every version up to the final one is a confirmed write, or one of the unknown ones
    for item in sorted(set(confirmed) | set(final_versions) | set(unknown)):
        final = int(final_versions.get(item, 0))
        versions = {int(w["version"]) for w in confirmed.get(item, [])}
        beyond = sorted(v for v in versions if v > final)
        if beyond:
            problems.append(f"{item}: confirmed versions {beyond} are above the final version {final} (lost update)")
        missing = final - len(versions & set(range(1, final + 1)))
        if missing > unknown.get(item, 0):
            problems.append(
                f"{item}: final version {final} but only {len(versions)} confirmed writes "
                f"and {unknown.get(item, 0)} unknown ones"
            )

    # at most one worker believes it may act on a route table at any instant
    spans: dict[str, dict[str, list[tuple[float, float, int]]]] = defaultdict(lambda: defaultdict(list))
    for a in acts:
        start, until = float(a["from"]), float(a["until"])
        until = min(until, ends.get((a["worker"], a["route"], int(a["term"])), until))
        if until > start:
            spans[a["route"]][a["worker"]].append((start, until, int(a["term"])))
    for route, per_worker in sorted(spans.items()):
        merged = {w: _merge(s) for w, s in per_worker.items()}
        workers = sorted(merged)
        for i, w1 in enumerate(workers):
            for w2 in workers[i + 1 :]:
                for s1, e1, t1 in merged[w1]:
                    for s2, e2, t2 in merged[w2]:
                        if s1 < e2 and s2 < e1:
                            problems.append(
                                f"{route}: {w1} (term {t1}, {s1:.3f}-{e1:.3f}) and {w2} (term {t2}, "
                                f"{s2:.3f}-{e2:.3f}) both believed they may act"
                            )
    return problems


def _merge(spans: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Union of one worker's belief intervals (the term shown is the first one's)."""
    out: list[tuple[float, float, int]] = []
    for start, until, term in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], until), out[-1][2])
        else:
            out.append((start, until, term))
    return out


def summarize(records: Iterable[Record]) -> dict[str, int]:
    """Counts per op and outcome (``claim:ok``, ``claim:conflict`` ...) to show a run had contention."""
    counts: dict[str, int] = defaultdict(int)
    for rec in records:
        counts[f"{rec.get('op')}:{rec.get('outcome', 'ok')}"] += 1
        if rec.get("op") == "claim" and rec.get("outcome") == "ok" and rec.get("from_owner"):
            counts["takeover:ok"] += 1
    return dict(counts)
