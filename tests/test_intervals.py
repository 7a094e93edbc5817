"""The one Wilson score interval (persona_axis.intervals): textbook values, edge cases, its use
by the evaluations' rate summaries and the monitor's accuracy rates."""

from __future__ import annotations

import pytest

from persona_axis.drift.accuracy import Labelled, score
from persona_axis.evals.common import rate_summary
from persona_axis.intervals import Z_95, wilson_interval


def test_textbook_values() -> None:
    # 5 of 10, z = 1.96: centre 0.5, half-width z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n) = 0.26341
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.236594, abs=1e-6) and high == pytest.approx(0.763406, abs=1e-6)
    # 0 of 10: the upper bound has the closed form z²/(n + z²) = 3.841459/13.841459 = 0.277533
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(Z_95**2 / (10 + Z_95**2), rel=1e-12)
    assert high == pytest.approx(0.277533, abs=1e-6)


def test_edges_symmetry_and_width() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(10, 10)[1] == 1.0
    low, high = wilson_interval(3, 17)
    mirrored = wilson_interval(14, 17)
    assert (low, high) == pytest.approx((1 - mirrored[1], 1 - mirrored[0]), abs=1e-12)
    assert low < 3 / 17 < high
    narrower = wilson_interval(3, 17, z=1.0)
    assert low < narrower[0] and narrower[1] < high
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)


def test_evals_and_monitor_accuracy_share_it() -> None:
    assert rate_summary(2, 5)["ci95"] == list(wilson_interval(2, 5))
    assert rate_summary(0, 0) == {"k": 0, "n": 0, "rate": None, "ci95": [0.0, 1.0]}
    benign = Labelled("benign", None, [1, 2], ["none", "alarm"], [None, 1.0])
    drifting = Labelled("drifting", 2, [1, 2], ["none", "alarm"], [None, 1.0])
    rates = score([benign, benign, drifting], [2, None, 2])
    assert rates["false_alarms"]["ci95"] == list(wilson_interval(1, 2))
    assert rates["detections"]["ci95"] == list(wilson_interval(1, 1))
    assert score([benign], [None])["detections"] == {
        "hits": 0,
        "n": 0,
        "rate": None,
        "ci95": [None, None],
    }
