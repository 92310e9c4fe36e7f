"""The EC2 adapter's own transport: every call through awshttp under the fence's deadline.

A scripted EC2 on 127.0.0.1 (tests/scripted_http.py) shows what the issue asked for: a write
whose answer drips in slowly ends at its deadline, not when the server is done (botocore's
per-operation timeouts let it run 3.2 s past a 0.6 s timeout); a write refused by the fence
sends no byte, even though the connection was up; the deadline never passes the lease; a write
whose bytes left after its deadline is reported. Timing assertions are loose bounds that prove
the mechanism, not speed claims.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.aws.ec2 import Ec2, Ec2Error
from agent.aws.fence import Fence, FenceRefused, FenceTiming, Permit
from tests.scripted_http import Drip, PausingSocket, ScriptedServer, SlowTaker, scripted_servers

SLACK = 0.25
BODY = b'<ReplaceRouteResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><return>true</return></ReplaceRouteResponse>'


def ok(_request: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    with scripted_servers() as make:
        yield make


class Lease:
    def __init__(self, left: float) -> None:
        self.left = left

    def __call__(self) -> float:
        return self.left


def adapter(url: str, left: float = 10.0, timeout: float = 0.6) -> tuple[Ec2, Fence, list[Permit]]:
    overruns: list[Permit] = []
    fence = Fence(Lease(left), time.monotonic, FenceTiming(timeout), on_overrun=overruns.append)
    ec2 = Ec2("us-east-1", url, timeout=timeout, fence=fence)
    return ec2, fence, overruns


def test_a_write_goes_through_awshttp_on_one_kept_connection(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([ok, ok])
    ec2, _, _ = adapter(server.url)
    assert ec2.sender is not None
    assert ec2.point_route("rtb-1", "i-1") == "replaced"
    assert ec2.point_route("rtb-1", "i-2") == "replaced"
    assert server.connections == 1 and len(server.requests) == 2
    assert b"Action=ReplaceRoute" in server.requests[0]


def test_a_slow_answer_ends_the_write_at_its_deadline(scripted: Callable[..., ScriptedServer]) -> None:
    drip = Drip(ok(b""), every=0.2)  # ~15 s in all
    server = scripted([lambda _r: drip])
    ec2, _, _ = adapter(server.url, timeout=0.6)
    t0 = time.monotonic()
    with pytest.raises(Ec2Error) as err:
        ec2.point_route("rtb-1", "i-1")
    took = time.monotonic() - t0
    assert took <= 0.6 + SLACK, f"the call outlived its 0.6 s deadline: {took:.2f} s"
    assert "Timeout" in err.value.code


def test_the_deadline_never_passes_the_lease(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([lambda _r: None])  # never answers
    ec2, _, _ = adapter(server.url, left=0.3, timeout=0.6)
    t0 = time.monotonic()
    with pytest.raises(Ec2Error):
        ec2.point_route("rtb-1", "i-1")
    assert time.monotonic() - t0 <= 0.3 + SLACK


def test_a_write_the_fence_refuses_sends_no_byte(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([ok, ok])
    ec2, fence, _ = adapter(server.url)
    lease: Any = fence.remaining
    lease.left = 0.03  # shorter than the fence's minimum window
    with pytest.raises(FenceRefused):
        ec2.point_route("rtb-1", "i-1")
    with pytest.raises(FenceRefused):
        ec2.stop("i-1")
    assert server.requests == []


def test_the_lease_is_checked_again_once_the_connection_is_up(scripted: Callable[..., ScriptedServer]) -> None:
    # The lease runs out while the connection is being made: the pre-check passed, the final
    # check (right before the bytes) refuses, and nothing is written on the open connection.
    server = scripted([ok])
    ec2, fence, _ = adapter(server.url)
    lease: Any = fence.remaining
    real_connection = ec2.sender._connection  # type: ignore[union-attr]

    def slow_connect(deadline: float) -> Any:
        conn = real_connection(deadline)
        lease.left = 0.0
        return conn

    ec2.sender._connection = slow_connect  # type: ignore[union-attr,method-assign]
    with pytest.raises(FenceRefused):
        ec2.point_route("rtb-1", "i-1")
    time.sleep(0.2)
    assert server.connections == 1 and server.requests == []


def test_a_write_whose_bytes_left_after_its_deadline_is_reported(scripted: Callable[..., ScriptedServer]) -> None:
    # Frozen while handing the bytes to the kernel (SIGSTOP, a paused VM), after the last check:
    # they leave after the deadline. Simulated by a socket whose sendall pauses 0.7 s first.
    server = scripted([ok])
    ec2, _, overruns = adapter(server.url)
    assert ec2.sender is not None
    real_connection = ec2.sender._connection

    def connection(deadline: float) -> Any:
        conn = real_connection(deadline)
        conn.sock = PausingSocket(conn.sock)
        return conn

    ec2.sender._connection = connection  # type: ignore[method-assign]
    with contextlib.suppress(Ec2Error):  # the answer may come too late: what matters is what the fence saw
        ec2.point_route("rtb-1", "i-1")
    assert ec2.sender.last is not None and ec2.sender.last.sent_late
    assert [p.operation for p in overruns] == ["ReplaceRoute"], "the late write was not reported"
    assert overruns[0].sent_at > overruns[0].deadline


# ---------------------------------------------------------------- finding 3: sent means acknowledged
PAD = "x" * 3000  # more than the slow server's receive window (about 1.1 KB)


def padded(ec2: Ec2) -> Ec2:
    """Make every request longer than the server's window, as a request is on a lossy path or to a busy
    server: loopback's smallest window (1152 bytes) is larger than a signed ReplaceRoute (~0.8 KB), and
    slowing the kernel's ACKs would need root. The pad is an unsigned-for-AWS header the server ignores."""

    def pad(request: Any, **_: Any) -> None:
        request.headers["X-Pad"] = PAD

    ec2.client.meta.events.register("before-sign.ec2", pad)
    return ec2


@pytest.fixture
def slow_taker() -> Iterator[Callable[..., SlowTaker]]:
    made: list[SlowTaker] = []

    def make(**kw: Any) -> SlowTaker:
        made.append(SlowTaker(**kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_finding3_a_write_the_server_takes_late_never_reaches_it_after_the_client_gave_up(
    slow_taker: Callable[..., SlowTaker],
) -> None:
    """Issue 17, finding 3, on loopback through the real adapter, fence and sender: a ReplaceRoute with
    a 0.6 s deadline inside a 0.9 s lease, to a server that takes it only at 2.0 s. Before the fix the
    call ended at 0.6 s with a plain close, the kernel kept the request and delivered it whole at 2.0 s,
    and the write counted as sent on time (no overrun, no stray report). Now the connection is reset at
    the deadline: the server never gets the whole request, and the write is in doubt, not "sent".
    (Undo: close instead of abort in awshttp.Sender._send, and drop _bound_retransmission: the server
    gets the complete request at 2.0 s.)"""
    server = slow_taker(hold=2.0)
    ec2, fence, overruns = adapter(server.url, left=0.9, timeout=0.6)
    doubts: list[Permit] = []
    fence.on_doubt = doubts.append
    padded(ec2)
    t0 = time.monotonic()
    with pytest.raises(Ec2Error):
        ec2.point_route("rtb-1", "i-1")
    assert time.monotonic() - t0 <= 0.6 + SLACK
    assert server.done.wait(5.0)
    assert len(server.received) > 0, "the server got nothing at all: the test shows nothing"
    assert not server.complete, f"the request reached the server whole {server.read_at - t0:.3f} s after the call"
    assert ec2.sender is not None and ec2.sender.last is not None and ec2.sender.last.in_doubt
    assert [p.operation for p in doubts] == ["ReplaceRoute"], "a write not acknowledged must be in doubt"
    assert doubts[0].in_doubt and not overruns


def test_a_call_that_did_not_complete_resets_its_connection_at_once(slow_taker: Callable[..., SlowTaker]) -> None:
    """SO_LINGER 0: the server sees the reset while it still holds the connection (0.8 s: after the
    0.6 s deadline, before the kernel could give up on its own). Undo: close instead of abort."""
    server = slow_taker(hold=0.8)
    ec2, _, _ = adapter(server.url, left=10.0, timeout=0.6)
    padded(ec2)
    with pytest.raises(Ec2Error):
        ec2.point_route("rtb-1", "i-1")
    assert server.done.wait(4.0)
    assert server.error_at_hold == errno.ECONNRESET
    assert not server.complete


def test_a_process_frozen_after_sendall_cannot_deliver_its_request_late(slow_taker: Callable[..., SlowTaker]) -> None:
    """Frozen right after the bytes were handed to the kernel (SIGSTOP; simulated by a sendall that sleeps
    after writing): the kernel alone would keep offering the request to the slow server and deliver it
    at 2.0 s while the process sleeps. TCP_USER_TIMEOUT (the time left) makes the kernel give up by the
    deadline. Undo: drop _bound_retransmission in awshttp, and the server gets it whole at 2.0 s."""
    server = slow_taker(hold=2.0)
    ec2, _, _ = adapter(server.url, left=10.0, timeout=0.6)
    padded(ec2)
    assert ec2.sender is not None
    real_connection = ec2.sender._connection

    class FreezesAfterSend:
        def __init__(self, sock: Any) -> None:
            self.sock = sock

        def sendall(self, data: bytes) -> None:
            self.sock.sendall(data)
            time.sleep(2.6)  # frozen: the server takes the request (or not) meanwhile

        def __getattr__(self, name: str) -> Any:
            return getattr(self.sock, name)

    def connection(deadline: float) -> Any:
        conn = real_connection(deadline)
        conn.sock = FreezesAfterSend(conn.sock)
        return conn

    ec2.sender._connection = connection  # type: ignore[method-assign]
    with pytest.raises(Ec2Error):
        ec2.point_route("rtb-1", "i-1")
    assert server.done.wait(4.0)
    assert len(server.received) > 0 and not server.complete, "the kernel delivered the request after the deadline"


def test_a_write_counts_as_sent_when_the_server_acknowledged_it(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([ok])
    ec2, fence, overruns = adapter(server.url)
    doubts: list[Permit] = []
    fence.on_doubt = doubts.append
    assert ec2.point_route("rtb-1", "i-1") == "replaced"
    record = ec2.sender.last  # type: ignore[union-attr]
    assert record is not None and record.acked_at is not None and not record.in_doubt
    assert record.send_started is not None and record.send_started <= record.acked_at <= (record.ended or 1e18)
    assert not doubts and not overruns


def test_a_request_acknowledged_but_not_answered_is_sent_not_in_doubt(scripted: Callable[..., ScriptedServer]) -> None:
    # The server read the request (its kernel acknowledged every byte) and never answers: the call times
    # out, but the write reached AWS in time - it may be applied, within the horizon, like any other.
    server = scripted([lambda _r: None])
    ec2, fence, overruns = adapter(server.url, timeout=0.4)
    doubts: list[Permit] = []
    fence.on_doubt = doubts.append
    with pytest.raises(Ec2Error):
        ec2.point_route("rtb-1", "i-1")
    record = ec2.sender.last  # type: ignore[union-attr]
    assert record is not None and record.acked_at is not None and record.acked_at <= record.deadline
    assert not doubts and not overruns
