"""The fence's rules, on a fake clock: one write per check, the deadline inside the lease,
reads bounded too, and a send that left after its deadline reported as a possible stray."""

from __future__ import annotations

import pytest

from agent.aws.fence import Fence, FenceRefused, FenceTiming, Permit
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
