"""Taking the previous process's session over (agent/handoff.py): which record fits, the keeper."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.aws.models import models_ready
from agent.config import Config, Member, StoreConfig
from agent.handoff import Keeper, NextProcess, mismatch
from agent.host.runstate import Recorded
from coordinator.clock import SystemClock
from coordinator.errors import SessionLost
from coordinator.items import Health
from coordinator.leases import Coordinator
from coordinator.memory import MemoryStore
from coordinator.store import OutcomeUnknown

OK = Health(True, {}, ("i-b",))


def config() -> Config:
    members = (Member("i-a", "10.0.1.10", ("rtb-a",)), Member("i-b", "10.0.2.10", ("rtb-b",)))
    return Config(group="lab", instance_id="i-a", region="us-east-1", members=members, store=StoreConfig("nat-ha"))


@pytest.mark.parametrize(
    ("recorded", "why"),
    [
        (None, "no session was recorded"),
        (Recorded("lab", "i-a", "nat-ha", "s-1", 7), ""),
        (Recorded("other", "i-a", "nat-ha", "s-1", 7), "it was of group 'other', this agent's is 'lab'"),
        (Recorded("lab", "i-b", "nat-ha", "s-1", 7), "it was of instance 'i-b'"),
        (Recorded("lab", "i-a", "old-table", "s-1", 7), "it was of table 'old-table'"),
    ],
)
def test_only_a_record_of_this_member_is_taken_over(recorded: Recorded | None, why: str) -> None:
    got = mismatch(recorded, config())
    assert got.startswith(why) if why else got == ""


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail_puts = 0

    def put_item(self, group, attrs, expect, *, gc_after_s=None, timeout=None):  # type: ignore[no-untyped-def]
        if self.fail_puts:
            self.fail_puts -= 1
            raise OutcomeUnknown("injected: not applied")
        super().put_item(group, attrs, expect, gc_after_s=gc_after_s, timeout=timeout)


def test_the_keeper_renews_until_stopped_and_rides_out_a_failed_renewal() -> None:
    store = FlakyStore()
    c = Coordinator(store, "lab", "i-a", SystemClock(), 3.0)  # a lease long enough for a loaded CI machine
    c.start_session(OK)
    keeper = Keeper(c, OK, False, interval=0.05, retry=0.02)
    store.fail_puts = 1
    keeper.start()
    deadline = time.monotonic() + 10
    while keeper.renewals < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    keeper.stop()
    assert store.fail_puts == 0  # the failing renewal happened
    renewals = keeper.renewals
    version = c.session.version  # type: ignore[union-attr]
    # the failed renewal was retried: it went on renewing after it, and only the accepted ones count
    assert renewals >= 5 and version == 1 + renewals
    time.sleep(0.15)
    assert keeper.renewals == renewals and c.session.version == version  # type: ignore[union-attr]


def test_the_keeper_stops_when_a_peer_expired_the_session() -> None:
    store = MemoryStore()
    c = Coordinator(store, "lab", "i-a", SystemClock(), 0.3)
    c.start_session(OK)
    peer = Coordinator(store, "lab", "i-b", SystemClock(), 0.3)
    peer.start_session(OK)
    peer.expire_member(peer.read_group().members["i-a"])
    keeper = Keeper(c, OK, False, interval=0.05, retry=0.02)
    keeper.start()
    keeper._thread.join(2)
    assert not keeper._thread.is_alive() and c.session is None
    with pytest.raises(SessionLost):
        c.heartbeat(OK)
    keeper.stop()


def test_the_next_process_models_are_made_by_a_child_running_the_installed_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAT_HA_MODEL_CACHE", str(tmp_path))
    monkeypatch.delenv("NAT_HA_FULL_AWS_MODELS", raising=False)
    nxt = NextProcess(timeout=120)
    deadline = time.monotonic() + 120
    while not nxt.ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert nxt.proc is not None and nxt.proc.returncode == 0
    assert models_ready()  # what the next process checks first


def test_the_next_process_is_not_waited_for_beyond_its_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAT_HA_MODEL_CACHE", str(tmp_path / "cold"))
    nxt = NextProcess(timeout=0.0)
    assert nxt.ready() and nxt.proc is not None and nxt.proc.returncode is not None
