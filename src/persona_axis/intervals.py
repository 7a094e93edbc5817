"""Confidence intervals for binomial rates: the one Wilson score interval of the package.

Rates are fractions in [0, 1]. The evaluations (:mod:`persona_axis.evals`) and the monitor's
accuracy (:mod:`persona_axis.drift.accuracy`) both report their rates with it.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054
"""The two-sided 95% normal quantile, Φ⁻¹(0.975)."""


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for the rate ``successes / total`` (default: 95%, ``z`` = Z_95).

    Returns ``(low, high)`` in [0, 1]; ``low`` is exactly 0 when ``successes`` is 0 and
    ``high`` exactly 1 when ``successes == total``; ``(0.0, 1.0)`` when ``total`` is 0.
    Raises ValueError unless ``0 <= successes <= total``.
    """
    if total < 0 or not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total, got {successes}/{total}")
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return low, high
