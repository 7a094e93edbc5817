"""The drift rule: a reply's target-layer projection against the calibrated Assistant band.

The band comes from the bundle's calibration, ``manifest["calibration"]["per_response_by_kind"]
["default"]``: per layer, percentiles (levels in ``calibration["percentiles"]``, e.g. 1, 25, 50,
75) of the per-response projections (unit axis, residual-stream units) of the replies the model
gave under the *default* prompts while the bundle was built. A served reply's ``before``
projection (content-token mean at the target layer, ahead of any intervention there) is the same
quantity, so it is compared against the same layer's row:

- ``"drift"``   below the lowest tabulated percentile (p1 in our builds): further from the
  Assistant than 99% of the model's own default replies. This sets the boolean drift flag.
- ``"low"``     between the lowest and the second-lowest percentile (p1–p25): unusual, watch it.
- ``"typical"`` at or above the second-lowest percentile.

Bundles without that table (imported axes, older builds) give no band and no flag (``None``).
Calibration replies were short (the quick preset: 32 tokens), so the band is a reference point,
not a significance test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from persona_axis.axis.bundle import AxisBundle

Zone = Literal["typical", "low", "drift"]
RULE = (
    "drift if the reply's projection before capping at the target layer is below the lowest "
    "calibrated percentile (p1) of the model's default-prompt replies at that layer; 'low' if "
    "below the second-lowest (p25)"
)


@dataclass(frozen=True)
class DriftBand:
    """Percentiles of default replies' projections at ``layer``: ``values[i]`` at level
    ``percentiles[i]`` (ascending), in units of the residual stream on the unit axis."""

    layer: int
    percentiles: tuple[float, ...]
    values: tuple[float, ...]

    @classmethod
    def from_bundle(cls, bundle: AxisBundle) -> DriftBand | None:
        """The band at the bundle's target layer, or None when the bundle has no calibration
        of default replies (or a malformed one)."""
        calibration = bundle.calibration
        layer = bundle.target_layer
        levels = None if calibration is None else calibration.levels_at("default", layer)
        if not levels:
            return None
        pairs = sorted(levels.items())
        return cls(layer, tuple(p for p, _ in pairs), tuple(v for _, v in pairs))

    @property
    def floor(self) -> float:
        """Below this a reply counts as drifted (value at the lowest percentile)."""
        return self.values[0]

    @property
    def watch(self) -> float:
        """Below this (and above :attr:`floor`) a reply is 'low'."""
        return self.values[1] if len(self.values) > 1 else self.values[0]

    def zone(self, projection: float) -> Zone:
        if projection < self.floor:
            return "drift"
        return "low" if projection < self.watch else "typical"

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "percentiles": list(self.percentiles),
            "values": list(self.values),
            "drift_below": self.floor,
            "low_below": self.watch,
            "rule": RULE,
        }
