"""Pauses the monotonic clock did not count (a paused VM), seen against the server's clock and reference clocks.

A VM pause cannot be made on this machine; the guest's clocks are played by fake functions: the
monotonic clock stops while "true" time (the server's, a reference's) runs on. What is real is
the arithmetic on real answers' Date headers (whole seconds) and the thresholds.
"""

from __future__ import annotations

import random

from coordinator.pauses import Pause, PauseWatch, references_of


class Guest:
    """True time runs; the guest's monotonic clock misses what a pause hides."""

    def __init__(self) -> None:
        self.true = 1_796_119_200.37  # epoch seconds
        self.hidden = 0.0  # seconds of pause the guest did not count

    def monotonic(self) -> float:
        return self.true - 1_796_000_000.0 - self.hidden

    def pause(self, seconds: float, *, counted: bool) -> None:
        self.true += seconds
        if not counted:
            self.hidden += seconds


def answers(watch: PauseWatch, guest: Guest, n: int, rng: random.Random, every: float = 0.35) -> None:
    """``n`` calls of 1-8 ms round trip, ``every`` seconds apart; the server stamps whole seconds."""
    for _ in range(n):
        sent = guest.monotonic()
        guest.true += rng.uniform(0.0005, 0.004)
        date = float(int(guest.true))  # the server's Date: its clock, to the second
        guest.true += rng.uniform(0.0005, 0.004)
        watch.server_date(sent, guest.monotonic(), date)
        guest.true += every


def test_a_hidden_pause_shows_in_the_first_answer_after_it() -> None:
    rng = random.Random(7)
    guest = Guest()
    watch = PauseWatch(guest.monotonic)
    answers(watch, guest, 60, rng)  # 21 s of calls: the bounds close in
    assert watch.poll() == []
    before = guest.monotonic()
    guest.pause(0.5, counted=False)
    answers(watch, guest, 1, rng)
    found = watch.poll()
    assert len(found) == 1 and found[0].source == "server time"
    assert 0.5 - 0.15 <= found[0].seconds <= 0.5 + 0.02
    assert found[0].since <= before <= found[0].until  # the interval holds the moment of the pause
    answers(watch, guest, 20, rng)
    assert watch.poll() == [], "reported once, and the new offset is learned"


def test_jitter_drift_and_a_counted_pause_are_not_pauses() -> None:
    rng = random.Random(3)
    guest = Guest()
    watch = PauseWatch(guest.monotonic)
    for _ in range(200):
        answers(watch, guest, 1, rng, every=rng.uniform(0.05, 0.7))
        guest.true += 0.00003  # 100 ppm of drift between the clocks
    guest.pause(3.0, counted=True)  # SIGSTOP: the monotonic clock counts it
    answers(watch, guest, 50, rng)
    assert watch.poll() == []


def test_pauses_shorter_than_the_tolerance_go_unseen() -> None:
    """What remains (README): a hidden pause under ``tolerance`` (0.15 s) is not seen."""
    rng = random.Random(11)
    guest = Guest()
    watch = PauseWatch(guest.monotonic)
    answers(watch, guest, 60, rng)
    guest.pause(0.1, counted=False)
    answers(watch, guest, 30, rng)
    assert watch.poll() == []


def test_a_reference_clock_that_counted_the_pause_shows_it_at_the_next_check() -> None:
    guest = Guest()
    watch = PauseWatch(guest.monotonic, {"reference": lambda: guest.true})
    guest.true += 1.0
    assert watch.poll() == []
    t0 = guest.monotonic()
    guest.pause(2.0, counted=False)
    found = watch.poll()
    assert found == [Pause(found[0].seconds, t0, guest.monotonic(), "reference")]
    assert abs(found[0].seconds - 2.0) < 1e-6
    guest.true -= 5.0  # a reference stepped back (NTP): not a pause, and the base follows it
    assert watch.poll() == []
    guest.pause(0.3, counted=False)
    assert [p.source for p in watch.poll()] == ["reference"]


def test_pause_overlap() -> None:
    p = Pause(1.0, 10.0, 12.0, "x")
    assert p.overlaps(11.0, 11.5) and p.overlaps(9.0, 10.5) and p.overlaps(11.9, 20.0)
    assert not p.overlaps(12.0, 13.0) and not p.overlaps(8.0, 10.0)


def test_which_clocks_count_a_pause() -> None:
    from coordinator.clock import FakeClock, SystemClock

    assert references_of(FakeClock()) == {}
    assert set(references_of(SystemClock())) >= {"realtime"}

    class Sim:
        def reference(self) -> float:
            return 1.0

    assert list(references_of(Sim())) == ["reference"]
