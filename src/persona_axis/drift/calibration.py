"""The monitor calibration stored in a bundle, and the rule the monitor takes from a bundle.

``persona-axis calibrate-monitor`` (:mod:`persona_axis.drift.calibrate_monitor`) fits, on
benign multi-turn conversations, the projection an Assistant turn is expected to have given its
content and turn index (a :class:`~persona_axis.drift.features.Baseline`), the spread of benign
turns around it (``scale``), and stores both with the alert limits and their provenance in the
bundle's manifest (``monitor_calibration``). :func:`drift_rule` prefers it over the build's
single-reply levels (:meth:`persona_axis.drift.rule.DriftRule.from_bundle`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from persona_axis._version import __version__
from persona_axis.drift.features import Baseline
from persona_axis.drift.rule import DriftRule
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle

FORMAT_VERSION = 1
DEFAULT_LIMITS: dict[str, float | None] = {
    "watch": 2.326,  # one turn below the Assistant's 1st percentile (normal approximation)
    "warning": 2.0,  # chosen on the dev split of evaldata/monitor (docs/monitoring.md)
    "ewma_lambda": 0.3,
    # k and h chosen together on the dev split (with performed turns skipped and a two-turn
    # anchor): the pair with the most dev detections at dev false alarms ≤ 5%
    "k": 2.0,
    "h": 2.0,
}


@dataclass(frozen=True)
class MonitorCalibration:
    """The stored monitor calibration (module doc) at ``layer``: ``baseline``, the spread of
    benign turns around it (``scale``) and of their change since their conversation's first
    turn (``change_scale``), alert ``limits`` in those units, where the turns came from
    (``provenance``), and how the benign projection moved with content and turn index
    (``effects``)."""

    layer: int
    baseline: Baseline
    scale: float
    change_scale: float
    limits: Mapping[str, float | None] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    provenance: Mapping[str, Any] = field(default_factory=dict)
    effects: Mapping[str, Any] = field(default_factory=dict)

    def rule(self, *, k: float | None = None, h: float | None = None) -> DriftRule:
        """The drift rule this calibration defines (``k``/``h`` override the stored ones)."""
        limits = {**DEFAULT_LIMITS, **self.limits}
        reference = self.effects.get("median_expected", self.baseline.intercept)
        sources = ", ".join(
            f"{s.get('conversations')} {s.get('kind')}" for s in self.provenance.get("sources", [])
        )
        return DriftRule(
            layer=self.layer,
            reference=float(reference),
            scale=self.scale,
            watch=limits["watch"],
            k=float(limits["k"] if k is None else k),  # type: ignore[arg-type]
            h=float(limits["h"] if h is None else h),  # type: ignore[arg-type]
            ewma_lambda=float(limits["ewma_lambda"]),  # type: ignore[arg-type]
            warning=limits["warning"],
            baseline=self.baseline,
            relative=True,
            change_scale=self.change_scale,
            source=f"monitor calibration on benign multi-turn conversations ({sources}): "
            "expected projection from code share, list share, length and turn index; scale "
            "= robust spread around it",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "layer": self.layer,
            "baseline": self.baseline.to_dict(),
            "scale": self.scale,
            "change_scale": self.change_scale,
            "limits": dict(self.limits),
            "provenance": dict(self.provenance),
            "effects": dict(self.effects),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MonitorCalibration:
        try:
            version = data["format_version"]
            if version != FORMAT_VERSION:
                raise PersonaAxisError(
                    f"Monitor calibration format {version} is not {FORMAT_VERSION}; run "
                    "persona-axis calibrate-monitor again."
                )
            scale = float(data["scale"])
            change_scale = float(data["change_scale"])
            limits = {str(k): None if v is None else float(v) for k, v in data["limits"].items()}
            layer = int(data["layer"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PersonaAxisError(
                f"The bundle's monitor calibration is malformed ({exc!r}); run persona-axis "
                "calibrate-monitor again."
            ) from exc
        if not (scale > 0 and change_scale > 0):
            raise PersonaAxisError(
                f"The monitor calibration's scales must be positive ({scale}, {change_scale})."
            )
        return cls(
            layer,
            Baseline.from_dict(data["baseline"]),
            scale,
            change_scale,
            limits,
            dict(data.get("provenance") or {}),
            dict(data.get("effects") or {}),
        )

    @classmethod
    def from_bundle(cls, bundle: AxisBundle) -> MonitorCalibration | None:
        data = bundle.monitor_calibration
        return None if data is None else cls.from_dict(data)


def drift_rule(
    bundle: AxisBundle,
    layer: int | None = None,
    *,
    percentile: float | None = None,
    k: float | None = None,
    h: float | None = None,
) -> DriftRule:
    """The monitor's rule for ``bundle`` at ``layer`` (default: its target layer): its monitor
    calibration when one is stored for that layer and no build ``percentile`` is asked for,
    else :meth:`DriftRule.from_bundle` (the build's default-reply levels)."""
    layer = bundle.target_layer if layer is None else layer
    stored = MonitorCalibration.from_bundle(bundle)
    if stored is not None and stored.layer == layer and percentile is None:
        return stored.rule(k=k, h=h)
    return DriftRule.from_bundle(bundle, layer, percentile=percentile, k=k, h=h)


def stamp(sources: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """Provenance: when, which library version, which sources and settings."""
    return {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "library_version": __version__,
        "sources": sources,
        **settings,
    }
