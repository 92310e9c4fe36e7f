"""One contention worker: a member racing its peers for route tables on a real server.

Run as its own OS process (``python tests/integration/contention_worker.py ...``).
Every cycle it reads its group, renews (or starts) its session, expires peers it
watched stand still for their lease plus a margin, claims route tables without a
live owner, and now and then hands one over, releases it, or pauses long enough
for its session to lapse. It appends one JSON line per write (confirmed or of
unknown outcome) and per "I may act" belief to ``--out`` (see history.py).
Bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from typing import IO, Any

from coordinator import (
    ChangeObserver,
    Conflict,
    Coordinator,
    Health,
    MemberItem,
    RouteItem,
    SessionLost,
    StoreUnavailable,
    SystemClock,
)
from coordinator.dynamo import DynamoSettings, DynamoStore
from coordinator.items import MEMBER_ALIVE

LEASE_S = 1.0
MARGIN_S = 0.3
OK = Health(True)


class Worker:
    def __init__(self, args: argparse.Namespace, out: IO[str]) -> None:
        settings = DynamoSettings(table=args.table, endpoint_url=args.endpoint)
        self.me: str = args.me
        self.coord = Coordinator(DynamoStore(settings), args.group, self.me, SystemClock(), LEASE_S)
        self.routes: list[str] = args.routes.split(",")
        self.observer = ChangeObserver()
        self.rng = random.Random(args.seed)
        self.out = out
        self.members: dict[str, MemberItem] = {}
        self.view: dict[str, RouteItem] = {}

    def log(self, **rec: Any) -> None:
        rec["worker"] = self.me
        self.out.write(json.dumps(rec, sort_keys=True) + "\n")

    def write(self, op: str, fn: Callable[[], MemberItem | RouteItem], **extra: Any) -> MemberItem | RouteItem | None:
        """Run one coordinator write; log it if confirmed or of unknown outcome."""
        t_start = time.monotonic()
        item_key = extra.pop("item")
        try:
            result = fn()
        except (Conflict, SessionLost) as exc:
            self.log(op=op, item=item_key, outcome="conflict" if isinstance(exc, Conflict) else "session_lost",
                     t_start=t_start, t_end=time.monotonic(), **extra)  # fmt: skip
            return None
        except StoreUnavailable as exc:
            # Not applied for sure only if the re-read said so; otherwise it may have landed.
            self.log(op=op, item=item_key, outcome="unknown" if exc.outcome_unknown else "not_applied",
                     t_start=t_start, t_end=time.monotonic(), **extra)  # fmt: skip
            return None
        t_end = time.monotonic()
        rec: dict[str, Any] = dict(op=op, item=result.key, version=result.version, token=result.token,
                                   t_start=t_start, t_end=t_end, outcome="ok", **extra)  # fmt: skip
        if isinstance(result, RouteItem):
            rec.update(
                route=result.route_table, term=result.term, owner=result.owner, owner_session=result.owner_session
            )
        else:
            rec.update(member=result.instance, session=result.session, state=result.state)
        self.log(**rec)
        return result

    def owner_dead(self, route: RouteItem) -> bool:
        if not route.owner:
            return True
        m = self.members.get(route.owner)
        return m is None or m.state != MEMBER_ALIVE or m.session != route.owner_session

    def can_act(self, rtb: str) -> bool:
        r, s = self.view.get(rtb), self.coord.session
        return r is not None and s is not None and r.owner == self.me and r.owner_session == s.session

    def cycle(self) -> None:
        try:
            snap = self.coord.read_group()
        except StoreUnavailable:
            return
        now = time.monotonic()
        self.members, self.view = dict(snap.members), dict(snap.routes)
        for m in snap.members.values():
            self.observer.observe(m.key, (m.session, m.version), now)

        mine = self.members.get(self.me)
        if self.coord.session is None:
            item = self.write("start", lambda: self.coord.start_session(OK, observed=mine), item=f"member#{self.me}")
        else:
            item = self.write("heartbeat", lambda: self.coord.heartbeat(OK), item=f"member#{self.me}")
        if isinstance(item, MemberItem):
            self.members[self.me] = item
        if self.coord.remaining() <= 0:
            return

        for peer in list(self.members.values()):
            if peer.instance == self.me or peer.state != MEMBER_ALIVE:
                continue
            if self.observer.is_stale(peer.key, peer.lease_ms / 1000, MARGIN_S, time.monotonic()):
                done = self.write("expire", lambda p=peer: self.coord.expire_member(p), item=peer.key)  # type: ignore[misc]
                if isinstance(done, MemberItem):
                    self.members[peer.instance] = done
                # otherwise the peer stays as read (alive): a failed expiry proves nothing about it

        for rtb in self.routes:
            route = self.view.get(rtb)
            if route is None or self.owner_dead(route):
                got = self.write(
                    "claim",
                    lambda r=route, t=rtb: self.coord.claim_route(t, r),  # type: ignore[misc]
                    item=f"route#{rtb}",
                    from_owner=route.owner if route is not None else "",
                )
                if isinstance(got, RouteItem):
                    self.view[rtb] = got
                else:
                    self.view.pop(rtb, None)
            if not self.can_act(rtb) or self.coord.remaining() <= 0:
                continue
            s = self.coord.session
            assert s is not None
            held = self.view[rtb]
            self.log(op="act", route=rtb, term=held.term, **{"from": time.monotonic()}, until=s.valid_until)
            dice = self.rng.random()
            peers = [m for m in self.members.values() if m.instance != self.me and m.state == MEMBER_ALIVE]
            if dice < 0.05 and peers:
                successor = self.rng.choice(peers)
                self.view.pop(rtb)  # from here on this worker must not act on it
                self.write(
                    "hand_over",
                    lambda r=held, m=successor: self.coord.hand_over_route(r, m),  # type: ignore[misc]
                    item=f"route#{rtb}",
                    from_term=held.term,
                )
            elif dice < 0.08:
                self.view.pop(rtb)
                self.write(
                    "release",
                    lambda r=held: self.coord.release_route(r),  # type: ignore[misc]
                    item=f"route#{rtb}",
                    from_term=held.term,
                )

    def run(self, seconds: float, pause_p: float) -> None:
        deadline = time.monotonic() + seconds
        for _ in range(100_000):  # bounded twice: by count and by time
            if time.monotonic() >= deadline:
                break
            self.cycle()
            holding = any(self.can_act(rtb) for rtb in self.routes)
            # owners hang more often than others, so that take-overs happen in a short run
            if self.rng.random() < (3 * pause_p if holding else pause_p / 2):
                time.sleep(self.rng.uniform(1.4, 2.2))  # hang long enough for the session to lapse
            else:
                time.sleep(self.rng.uniform(0.02, 0.12))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--group", default="contention")
    p.add_argument("--routes", default="rtb-1,rtb-2")
    p.add_argument("--me", required=True)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--pause-p", type=float, default=0.06)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    with open(args.out, "a", encoding="utf-8", buffering=1) as out:
        Worker(args, out).run(args.seconds, args.pause_p)


if __name__ == "__main__":
    main()
