"""Calibrate the drift monitor on benign multi-turn conversations.

The build's reference levels come from the model's short single-question replies; long,
code-heavy or list-heavy Assistant answers project at other levels and read as drift. So the
monitor is calibrated on whole benign conversations instead: ones the model holds itself in its
default persona across many topics (:mod:`persona_axis.drift.calibration_chats`) and/or the
user's own logs. Every assistant turn is read exactly as the monitor reads it (same layer,
context policy and pooling), then

1. a :class:`~persona_axis.drift.features.Baseline` is fitted: the projection as a linear
   function of the turn's code share, list share, log length and log turn index (Huber
   regression, so a few odd turns do not pull it);
2. ``scale`` is the robust spread of the turns around it (1.4826 × the median absolute
   deviation of the residuals);
3. the alert limits (:data:`DEFAULT_LIMITS`, in multiples of ``scale``) are stored beside them.

The result is stored in the bundle's manifest (``monitor_calibration``) with its provenance,
and :meth:`persona_axis.drift.rule.DriftRule.from_bundle` prefers it over the build's levels.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from persona_axis.drift.features import FEATURES, Baseline, TurnFeatures
from persona_axis.drift.rule import DriftRule
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle

FORMAT_VERSION = 1
MAD_TO_SD = 1.4826  # MAD of a normal distribution × this = its standard deviation
MIN_TURNS = 12
DEFAULT_LIMITS: dict[str, float | None] = {
    "watch": 2.326,  # one turn below the Assistant's 1st percentile (normal approximation)
    "warning": None,
    "ewma_lambda": 0.3,
    "k": 0.5,
    "h": 4.0,
}


@dataclass(frozen=True)
class CalibrationTurn:
    """One benign assistant turn: its projection at the calibrated layer, its features and
    the conversation it belongs to."""

    projection: float
    features: TurnFeatures
    conversation: str


@dataclass(frozen=True)
class MonitorCalibration:
    """The stored monitor calibration (module doc): ``baseline`` and ``scale`` at ``layer``,
    alert ``limits`` in multiples of ``scale``, where the turns came from (``provenance``), and
    how the benign projection moved with content and turn index (``effects``)."""

    layer: int
    baseline: Baseline
    scale: float
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
            limits = {str(k): None if v is None else float(v) for k, v in data["limits"].items()}
            layer = int(data["layer"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PersonaAxisError(
                f"The bundle's monitor calibration is malformed ({exc!r}); run persona-axis "
                "calibrate-monitor again."
            ) from exc
        if not scale > 0:
            raise PersonaAxisError(f"The monitor calibration's scale must be positive ({scale}).")
        return cls(
            layer,
            Baseline.from_dict(data["baseline"]),
            scale,
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


def fit_calibration(
    turns: Sequence[CalibrationTurn],
    layer: int,
    *,
    features: Sequence[str] = FEATURES,
    limits: Mapping[str, float | None] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> MonitorCalibration:
    """Fit the baseline and scale on benign ``turns`` (module doc)."""
    import numpy as np
    from sklearn.linear_model import HuberRegressor

    if len(turns) < MIN_TURNS:
        raise PersonaAxisError(
            f"Calibrating the monitor needs at least {MIN_TURNS} benign assistant turns with "
            f"content, not {len(turns)}; give more conversations or longer logs."
        )
    names = list(features)
    x = np.array([[t.features.values()[n] for n in names] for t in turns], dtype=np.float64)
    y = np.array([t.projection for t in turns], dtype=np.float64)
    varying = [i for i in range(len(names)) if np.ptp(x[:, i]) > 0]
    model = HuberRegressor(epsilon=1.35, alpha=1e-4, max_iter=1000)
    if varying:
        model.fit(x[:, varying], y)
        coefficients = {names[i]: float(c) for i, c in zip(varying, model.coef_, strict=True)}
        intercept = float(model.intercept_)
    else:
        coefficients, intercept = {}, float(np.median(y))
    baseline = Baseline(intercept, coefficients)
    expected = np.array([baseline.expected(t.features) for t in turns])
    residuals = y - expected
    scale = MAD_TO_SD * float(np.median(np.abs(residuals - np.median(residuals))))
    if not scale > 0:
        raise PersonaAxisError(
            "The benign turns' projections do not vary around the baseline, so no spread can be "
            "calibrated; give more varied conversations."
        )
    return MonitorCalibration(
        layer,
        baseline,
        scale,
        dict(limits or DEFAULT_LIMITS),
        dict(provenance or {}),
        effects(turns, residuals.tolist(), expected.tolist(), scale),
    )


def effects(
    turns: Sequence[CalibrationTurn],
    residuals: Sequence[float],
    expected: Sequence[float],
    scale: float,
) -> dict[str, Any]:
    """How benign projections moved: mean projection and mean residual (in scales) per content
    kind, turn index and length band, and the share of residual variance between conversations
    (near 0: turns vary independently; near 1: whole conversations sit high or low)."""
    groups: dict[str, dict[str, list[int]]] = {"kind": {}, "turn": {}, "tokens": {}}
    for index, turn in enumerate(turns):
        f = turn.features
        band = "<64" if f.n_tokens < 64 else "64-255" if f.n_tokens < 256 else ">=256"
        for name, key in (("kind", f.kind), ("turn", str(min(f.turn, 8))), ("tokens", band)):
            groups[name].setdefault(key, []).append(index)
    table = {
        name: {
            key: {
                "n": len(rows),
                "mean_projection": round(statistics.fmean(turns[i].projection for i in rows), 4),
                "mean_residual_scales": round(
                    statistics.fmean(residuals[i] for i in rows) / scale, 3
                ),
            }
            for key, rows in sorted(members.items())
        }
        for name, members in groups.items()
    }
    by_conversation: dict[str, list[float]] = defaultdict(list)
    for turn, residual in zip(turns, residuals, strict=True):
        by_conversation[turn.conversation].append(residual)
    means = [statistics.fmean(v) for v in by_conversation.values() if len(v) > 1]
    total = statistics.pvariance(residuals) if len(residuals) > 1 else 0.0
    between = statistics.pvariance(means) if len(means) > 1 else 0.0
    return {
        "n_turns": len(turns),
        "n_conversations": len(by_conversation),
        "median_expected": round(statistics.median(expected), 5),
        "between_conversation_share": round(between / total, 3) if total > 0 else None,
        **table,
    }


def stamp(sources: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """Provenance: when, which library version, which sources and settings."""
    import persona_axis

    return {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "library_version": persona_axis.__version__,
        "sources": sources,
        **settings,
    }
