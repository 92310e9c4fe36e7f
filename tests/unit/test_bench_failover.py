"""bench/failover.py's breakdown of a takeover reads the agents' logs as they are written.

The shape below is a crash trial of the lab (c. 1ede152): the victim sent a renewal (its v7) as it
was killed; the write landed, but the log line that follows the answer was never written. Its log
ends at v6, the taker read v7 at +0.126 s, and the expiry counts from that read (1.226 s), not from
v6's sighting (0.47 s): read from the victim's log alone, the takeover looked 0.8 s late.
"""

from __future__ import annotations

import pytest

from bench.failover import takeover_profile

FAULT = 1000.0
VICTIM, PEER, OTHER = "i-a", "i-b", "i-c"
RTB = "rtb-a"


def _at(rel: float, msg: str) -> tuple[float, str]:
    return FAULT + rel, msg


VICTIM_LOG = [
    _at(-0.952, f"trace read {VICTIM}=5,{PEER}=6,{OTHER}=6 rtt 0.0798 wait 0.0228"),
    _at(-0.666, "trace renewed v6 rtt 0.0405"),
    _at(-0.602, f"trace read {VICTIM}=6,{PEER}=7,{OTHER}=7 rtt 0.0634 wait 0.0409"),
]
TAKER_LOG = [
    _at(-0.630, f"trace read {VICTIM}=6,{PEER}=7,{OTHER}=7 rtt 0.0428 wait 0.0325"),
    _at(0.126, f"trace read {VICTIM}=7,{PEER}=8,{OTHER}=8 rtt 0.0472 wait 0.0815"),
    _at(0.660, f"holding rtb-b (term 1); peers healthy: {OTHER}; not healthy: {VICTIM}"),
    _at(1.310, f"trace read {VICTIM}=7,{PEER}=10,{OTHER}=10 rtt 0.0761 wait 0.0002"),
    _at(1.332, f"trace expired {VICTIM} rtt 0.0208"),
    _at(1.358, f"trace claimed {RTB} rtt 0.0267"),
    _at(1.379, f"trace routed {RTB} tag True took 0.0207"),
    _at(1.382, f"took over {RTB} from {VICTIM} (term 2): no probe replies for 1.4 s, heartbeat silent 1.2 s"),
    _at(1.494, f"trace read {VICTIM}=8,{PEER}=11,{OTHER}=11 rtt 0.0871 wait 0.0146"),
]
OTHER_LOG = [_at(0.703, f"holding rtb-c (term 1); peers healthy: {PEER}; not healthy: {VICTIM}")]


def test_the_expiry_counts_from_the_newest_renewal_the_taker_read_even_one_missing_from_the_victims_log() -> None:
    p = takeover_profile(VICTIM_LOG, [TAKER_LOG, OTHER_LOG], FAULT, VICTIM, RTB)
    assert p["sighted_s"] == pytest.approx(0.126)
    assert p["expiry_due_s"] == pytest.approx(1.226)
    assert p["expire_start_s"] - p["expiry_due_s"] == pytest.approx(0.0852, abs=1e-3)
    assert p["renewal_unlogged"] == 1.0
    assert "renewal_sent_s" not in p  # unknown: not v6's time
    assert p["detected_s"] == pytest.approx(0.660)
    assert p["takeover_s"] == pytest.approx(1.382)
    assert p["routed_s"] == pytest.approx(1.379)


def test_a_logged_last_renewal_gives_its_send_and_answer_times() -> None:
    victim = [*VICTIM_LOG, _at(0.05, "trace renewed v7 rtt 0.0400")]
    p = takeover_profile(victim, [TAKER_LOG, OTHER_LOG], FAULT, VICTIM, RTB)
    assert "renewal_unlogged" not in p
    assert p["renewal_sent_s"] == pytest.approx(0.01)
    assert p["renewal_written_s"] == pytest.approx(0.05)
    assert p["sighted_s"] == pytest.approx(0.126)


def test_reads_after_the_takeover_do_not_count() -> None:
    p = takeover_profile(VICTIM_LOG, [TAKER_LOG], FAULT, VICTIM, RTB)
    assert p["sighted_s"] == pytest.approx(0.126)  # v8 at +1.494, after the takeover, is not the last renewal
