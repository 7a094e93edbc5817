"""Cap thresholds and named cap settings.

A cap setting is a floor along +axis at each layer of a band: at every token position,
``p = <h, â_L>`` and, where ``p < τ_L``, ``h ← h + (τ_L − p)·â_L`` (METHOD.md). Thresholds are in
the units of the residual stream projected on the *unit* axis.

Setting names read ``layers_{first}:{stop}-p{percentile}``: the layer band is half-open like a
Python slice, so ``layers_14:18-p75`` caps layers 14, 15, 16 and 17 at their 75th percentile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from persona_axis.errors import PersonaAxisError

CAP_RULE = "floor along +axis"


@dataclass(frozen=True)
class LayerThreshold:
    """Floor ``threshold`` (projection on the unit axis) applied at decoder block ``layer``."""

    layer: int
    threshold: float


@dataclass(frozen=True)
class CapSetting:
    """A named cap: per-layer floors plus how they were calibrated."""

    name: str
    thresholds: tuple[LayerThreshold, ...]
    percentile: float | None = None
    calibrated_on: str = ""
    rule: str = CAP_RULE
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return [t.layer for t in self.thresholds]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rule": self.rule,
            "percentile": self.percentile,
            "calibrated_on": self.calibrated_on,
            "thresholds": [{"layer": t.layer, "threshold": t.threshold} for t in self.thresholds],
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CapSetting:
        """Parse the ``caps.json`` form; unknown keys and a rule other than a floor are refused."""
        known = {"name", "rule", "percentile", "calibrated_on", "thresholds", "notes"}
        unknown = set(data) - known
        if unknown:
            raise PersonaAxisError(
                f"Cap setting has unknown keys {sorted(unknown)}; allowed: {sorted(known)}."
            )
        rule = data.get("rule", CAP_RULE)
        if rule != CAP_RULE:
            raise PersonaAxisError(
                f"Cap setting {data.get('name')!r} has rule {rule!r}; only {CAP_RULE!r} is "
                "understood (import reference ceilings with persona_axis.bundle importers)."
            )
        try:
            thresholds = tuple(
                LayerThreshold(layer=int(t["layer"]), threshold=float(t["threshold"]))
                for t in data["thresholds"]
            )
            name = str(data["name"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PersonaAxisError(
                f"Cap setting is malformed ({exc!r}); it needs 'name' and 'thresholds': "
                "[{'layer': int, 'threshold': float}, ...]."
            ) from exc
        percentile = data.get("percentile")
        return cls(
            name=name,
            thresholds=thresholds,
            percentile=None if percentile is None else float(percentile),
            calibrated_on=str(data.get("calibrated_on", "")),
            rule=rule,
            notes=dict(data.get("notes") or {}),
        )


def setting_name(first: int, stop: int, percentile: float) -> str:
    """``layers_{first}:{stop}-p{percentile}`` with a half-open layer band."""
    pct = f"{percentile:g}"
    return f"layers_{first}:{stop}-p{pct}"
