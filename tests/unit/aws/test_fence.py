"""The fence's rules, on a fake clock: one write per check, the deadline inside the lease,
reads bounded too, and a send that left after its deadline reported as a possible stray."""

from __future__ import annotations

import pytest

from agent.aws.fence import Confirmed, Fence, FenceRefused, FenceTiming, Permit
from coordinator.clock import FakeClock


def make(left: float = 5.0, timeout: float = 0.6) -> tuple[Fence, FakeClock, list[Permit], list[float]]:
    clock = FakeClock(start=100.0)
    lease = [left]
    overruns: list[Permit] = []
    fence = Fence(lambda: lease[0], clock.monotonic, FenceTiming(timeout), on_overrun=overruns.append)
    return fence, clock, overruns, lease


def test_a_write_gets_the_call_timeout_as_deadline_when_the_lease_is_long() -> None:
    fence, _, _, _ = make(left=5.0)
    with fence.write("ReplaceRoute", "rtb-1") as permit:
        deadline = fence.authorize("ReplaceRoute")
    assert deadline == pytest.approx(100.6)
    assert permit.checked_at == 100.0


def test_the_deadline_never_passes_the_lease() -> None:
    fence, _, _, _ = make(left=0.3)
    with fence.write("ReplaceRoute", "rtb-1"):
        deadline = fence.authorize("ReplaceRoute")
    assert deadline == pytest.approx(100.0 + 0.3 - fence.timing.slack)


def test_too_little_lease_left_sends_nothing() -> None:
    fence, _, _, _ = make(left=0.05)
    with pytest.raises(FenceRefused) as err, fence.write("StopInstances", "i-1"):
        fence.authorize("StopInstances")
    assert "lease" in str(err.value) and fence.refusals == 1


def test_one_write_per_check() -> None:
    fence, _, _, _ = make()
    with fence.write("CreateRoute", "rtb-1"):
        fence.authorize("CreateRoute")
        with pytest.raises(FenceRefused, match="already used"):
            fence.authorize("CreateRoute")  # a second send (a retry) under the same check


def test_a_write_without_an_armed_check_or_for_another_operation_is_refused() -> None:
    fence, _, _, _ = make()
    with pytest.raises(FenceRefused):
        fence.authorize("ReplaceRoute")
    with pytest.raises(FenceRefused), fence.write("CreateTags", "rtb-1"):
        fence.authorize("ReplaceRoute")


def test_reads_need_no_permit_but_get_a_deadline() -> None:
    fence, _, _, lease = make(left=0.0)
    lease[0] = -1.0  # no session at all: reads still go, bounded
    assert fence.authorize("DescribeRouteTables") == pytest.approx(100.6)


def test_a_send_after_the_deadline_is_reported_as_an_overrun() -> None:
    fence, clock, overruns, _ = make(left=1.0)
    with fence.write("ReplaceRoute", "rtb-9"):
        fence.authorize("ReplaceRoute")
        clock.advance(3.0)  # frozen between the check and the send
        fence.sent()
    assert len(overruns) == 1 and overruns[0].resource == "rtb-9" and fence.overruns == 1
    assert overruns[0].sent_at - overruns[0].deadline == pytest.approx(3.0 - 0.6)


def test_a_send_inside_the_deadline_is_not_an_overrun_even_if_the_reply_is_late() -> None:
    fence, clock, overruns, _ = make(left=1.0)
    with fence.write("ReplaceRoute", "rtb-9"):
        fence.authorize("ReplaceRoute")
        fence.sent()
        clock.advance(3.0)  # the reply was lost: the request left in time, it lands or not within the horizon
    assert overruns == []


def test_only_writes_can_be_armed_and_one_at_a_time() -> None:
    fence, _, _, _ = make()
    with pytest.raises(ValueError), fence.write("DescribeRouteTables", "rtb-1"):
        pass
    with pytest.raises(RuntimeError), fence.write("ReplaceRoute", "rtb-1"), fence.write("ReplaceRoute", "rtb-2"):
        pass


# ------------------------------------------------------------------ issue 17: confirmed, paused, in doubt
def test_a_framed_write_is_confirmed_right_before_the_lease_check_and_refused_when_not() -> None:
    fence, clock, _, _ = make()
    calls: list[str] = []

    def confirm(op: str) -> str:
        calls.append(op)
        clock.advance(0.002)  # the consistent read's round trip
        return "" if len(calls) == 1 else "rtb-1 is held by i-b in term 5"

    with fence.frame(confirm=confirm, note=("rtb-1", 4, "i-a")):
        with fence.write("ReplaceRoute", "rtb-1") as permit:
            deadline = fence.authorize("ReplaceRoute")
        assert permit.note == ("rtb-1", 4, "i-a") and permit.confirm_started == 100.0
        assert permit.checked_at == pytest.approx(100.002), "the lease is checked after the read, not before"
        assert deadline == pytest.approx(100.602)
        with pytest.raises(FenceRefused) as err, fence.write("CreateTags", "rtb-1"):
            fence.authorize("CreateTags")
    assert "not confirmed: rtb-1 is held by i-b" in str(err.value) and fence.unconfirmed == 1
    assert calls == ["ReplaceRoute", "CreateTags"]
    with fence.write("ReplaceRoute", "rtb-1") as outside:  # outside the frame: nothing to confirm
        fence.authorize("ReplaceRoute")
    assert outside.confirm is None


def test_a_write_whose_authority_cannot_be_read_is_not_sent() -> None:
    fence, _, _, _ = make()

    def confirm(_op: str) -> str:
        raise OSError("DynamoDB unreachable")

    with pytest.raises(FenceRefused) as err, fence.frame(confirm=confirm), fence.write("ReplaceRoute", "rtb-1"):
        fence.authorize("ReplaceRoute")
    assert "cannot confirm it in DynamoDB" in str(err.value)


class Watch:
    """A PauseWatch stand-in: the pauses it will report at the next poll."""

    def __init__(self) -> None:
        from coordinator.pauses import Pause

        self.Pause = Pause
        self.pending: list[object] = []

    def poll(self) -> list[object]:
        out, self.pending = self.pending, []
        return out


def paused_fence() -> tuple[Fence, FakeClock, list[Permit], Watch, list[object]]:
    fence, clock, overruns, _ = make()
    watch = Watch()
    seen: list[object] = []
    fence.pauses = watch  # type: ignore[assignment]
    fence.on_pause = seen.append
    return fence, clock, overruns, watch, seen


def test_a_pause_seen_before_the_send_refuses_the_write_and_drops_authority() -> None:
    fence, _, _, watch, seen = paused_fence()
    watch.pending = [watch.Pause(2.0, 90.0, 99.0, "server time")]
    with pytest.raises(FenceRefused) as err, fence.frame(confirm=lambda _op: ""), fence.write("ReplaceRoute", "rtb-1"):
        fence.authorize("ReplaceRoute")
    assert "paused for at least 2.00 s" in str(err.value) and len(seen) == 1


def test_a_pause_between_the_confirmation_and_the_bytes_makes_the_write_an_overrun() -> None:
    # Seen by the write's own answer (its server time): reported when the call ends.
    fence, clock, overruns, watch, _ = paused_fence()
    with fence.frame(confirm=lambda _op: "", note="n"), fence.write("ReplaceRoute", "rtb-1") as permit:
        fence.authorize("ReplaceRoute")
        clock.advance(0.01)
        fence.sent()
        watch.pending = [watch.Pause(1.5, 100.0, 100.01, "server time")]
    assert permit.paused and permit.overran and overruns == [permit]


def test_an_earlier_answer_confirms_a_write_and_a_pause_since_it_was_sent_is_that_writes() -> None:
    # A confirmation that needed no new read (coordinator.leases.Evidence): our authority is known
    # only as of the request that showed it, so the write is exposed to a pause from then on.
    fence, _, overruns, watch, _ = paused_fence()
    reads: list[str] = []

    def confirm(op: str) -> str | Confirmed:
        reads.append(op)
        return Confirmed(99.7)  # a renewal sent 0.3 s ago

    with fence.frame(confirm=confirm, note="n"), fence.write("ReplaceRoute", "rtb-1") as permit:
        deadline = fence.authorize("ReplaceRoute")
        fence.sent()
        watch.pending = [watch.Pause(0.5, 99.8, 99.9, "server time")]  # after the renewal, before this write
    assert reads == ["ReplaceRoute"] and deadline == pytest.approx(100.6)
    assert permit.confirm_started == 99.7 and permit.checked_at == 100.0
    assert permit.paused and overruns == [permit], "a pause between the confirming answer and the send is reported"


def test_a_pause_seen_later_reports_the_writes_it_may_have_delayed_once() -> None:
    fence, clock, overruns, watch, _ = paused_fence()
    with fence.write("ReplaceRoute", "rtb-1") as early:
        fence.authorize("ReplaceRoute")
        fence.sent()
    clock.advance(5.0)
    with fence.write("ReplaceRoute", "rtb-2") as late:
        fence.authorize("ReplaceRoute")
        clock.advance(0.02)
        fence.sent()
    clock.advance(0.3)
    assert overruns == []
    watch.pending = [watch.Pause(0.8, 104.9, 105.3, "server time")]  # the next heartbeat's answer shows it
    fence.check_pauses()
    assert overruns == [late] and not early.overran
    watch.pending = [watch.Pause(0.8, 104.9, 105.3, "reference")]
    fence.check_pauses()
    assert overruns == [late], "reported once"


def test_a_write_not_acknowledged_is_in_doubt() -> None:
    fence, _, overruns, _ = make()
    doubts: list[Permit] = []
    fence.on_doubt = doubts.append
    with fence.write("ReplaceRoute", "rtb-1") as permit:
        fence.authorize("ReplaceRoute")
        permit.in_doubt = True  # what the adapter records when awshttp saw no acknowledgement
        permit.sent_at = 100.0
    assert doubts == [permit] and overruns == []
