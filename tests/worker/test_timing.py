"""The agent's timing: heartbeat spacing and reconnect backoff."""

from __future__ import annotations

from qubix_cli.worker.agent import BACKOFF_CAP_S, backoff_s, beat_interval_s


def test_heartbeats_drift_apart_within_a_tenth_of_the_interval() -> None:
    waits = [beat_interval_s(30) for _ in range(2000)]
    assert 27 <= min(waits) < 27.5 and 32.5 < max(waits) <= 33
    assert len({round(w, 3) for w in waits}) > 1000  # not in step


def test_backoff_is_full_jitter_capped_at_a_minute() -> None:
    assert all(0 <= backoff_s(1) <= 2 for _ in range(500))
    assert max(backoff_s(3) for _ in range(2000)) > 7  # up to 2^3 s
    assert all(0 <= backoff_s(50) <= BACKOFF_CAP_S for _ in range(500))
    assert max(backoff_s(50) for _ in range(2000)) > 0.9 * BACKOFF_CAP_S
