"""Cap thresholds and named cap settings.

A cap setting is a floor along +axis at each layer of a layer range: at every token position,
``p = <h, â_L>`` and, where ``p < τ_L``, ``h ← h + (τ_L − p)·â_L`` (docs/method.md). Thresholds
are in the units of the residual stream projected on the *unit* axis.

Setting names read ``layers_{first}:{stop}-p{percentile}``: the layer range is half-open like a
Python slice, so ``layers_14:18-p75`` caps layers 14, 15, 16 and 17 at their 75th percentile.

Thresholds are percentiles, per layer, of the projections (on the unit axis) of per-response
activations over all rollouts, counted along +axis. The paper's best setting is the 25th percentile
along role−default (the negated axis), which is the 75th percentile along +axis used here: roughly
the typical Assistant response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np
from torch import Tensor

from persona_axis.errors import PersonaAxisError

CAP_RULE = "floor along +axis"
PERCENTILES_KEY = (
    "projection_percentiles"  # the manifest entry :class:`ProjectionPercentiles` reads
)


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
                "understood (import reference ceilings with persona_axis.axis.bundle importers)."
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
    """``layers_{first}:{stop}-p{percentile}`` with a half-open layer range."""
    pct = f"{percentile:g}"
    return f"layers_{first}:{stop}-p{pct}"


def _layer_range(layers: tuple[int, int] | range, n_layers: int) -> range:
    """The half-open layer range ``layers`` as a step-1 range inside ``[0, n_layers)``."""
    if isinstance(layers, range):
        chosen = layers
    elif (
        isinstance(layers, tuple)
        and len(layers) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
    ):
        chosen = range(layers[0], layers[1])
    else:
        raise PersonaAxisError(
            f"Layers {layers!r} must be a half-open range (first, stop) or a range, e.g. (14, 18) "
            "for layers 14-17."
        )
    if chosen.step != 1 or len(chosen) == 0 or chosen.start < 0 or chosen.stop > n_layers:
        raise PersonaAxisError(
            f"Layer range {chosen.start}:{chosen.stop} (step {chosen.step}) is not a non-empty, "
            f"contiguous range inside 0:{n_layers}; use (first, stop) with "
            f"0 <= first < stop <= {n_layers}."
        )
    return chosen


def calibrate_cap(
    projections: Tensor,
    layers: tuple[int, int] | range,
    percentile: float,
    calibrated_on: str,
) -> CapSetting:
    """One cap setting: at each layer of the range, the ``percentile`` of the projections.

    ``projections`` is ``[n_rollouts, n_layers]``: per-response activations projected on the unit
    axis at every layer (residual-stream units). ``layers`` is the half-open range
    ``(first, stop)`` (or ``range(first, stop)``). ``percentile`` in [0, 100] is counted along
    +axis (75 = the paper's best, see the module docstring) and computed with
    ``numpy.percentile(..., method="linear")`` in float64, i.e. linear interpolation between
    order statistics. ``calibrated_on`` says which rollouts the distribution came from.
    """
    if projections.ndim != 2 or projections.shape[0] == 0:
        raise PersonaAxisError(
            f"Projections must be [n_rollouts, n_layers] with at least one rollout; got "
            f"{tuple(projections.shape)}."
        )
    is_number = isinstance(percentile, Real) and not isinstance(percentile, bool)
    pct = float(percentile) if is_number else float("nan")
    if not 0 <= pct <= 100:
        raise PersonaAxisError(f"Percentile must be a number in [0, 100]; got {percentile!r}.")
    chosen = _layer_range(layers, projections.shape[1])
    values = projections[:, chosen.start : chosen.stop].detach().double().cpu().numpy()
    if not np.isfinite(values).all():
        raise PersonaAxisError(
            f"Projections at layers {chosen.start}:{chosen.stop} contain NaN or inf; drop those "
            "rollouts before calibrating."
        )
    thresholds = np.percentile(values, pct, axis=0, method="linear")
    return CapSetting(
        name=setting_name(chosen.start, chosen.stop, pct),
        thresholds=tuple(
            LayerThreshold(layer=layer, threshold=float(t))
            for layer, t in zip(chosen, thresholds, strict=True)
        ),
        percentile=pct,
        calibrated_on=calibrated_on,
        notes={"n_rollouts": int(values.shape[0]), "percentile_method": "numpy linear"},
    )


def calibrate_grid(
    projections: Tensor,
    layer_ranges: Sequence[tuple[int, int] | range],
    percentiles: Sequence[float],
    calibrated_on: str,
) -> dict[str, CapSetting]:
    """Every layer range × percentile setting (see :func:`calibrate_cap`), keyed by setting name.

    Layer ranges come first in iteration order, then percentiles. Two grid points with the same name
    (e.g. a layer range given twice) are refused.
    """
    if not layer_ranges or not percentiles:
        raise PersonaAxisError("The grid needs at least one layer range and one percentile.")
    settings: dict[str, CapSetting] = {}
    for layers in layer_ranges:
        for percentile in percentiles:
            setting = calibrate_cap(projections, layers, percentile, calibrated_on)
            if setting.name in settings:
                raise PersonaAxisError(
                    f"Grid point {setting.name!r} appears twice; list each layer range and "
                    "percentile once."
                )
            settings[setting.name] = setting
    return settings


RECOMMENDED_PERCENTILE = 75.0
RECOMMENDED_DEPTH = 0.7


def default_recommendation(settings: Sequence[CapSetting], n_layers: int) -> str | None:
    """The one fallback for a bundle that records no recommended cap (docs/method.md).

    Among ``settings``, the one closest to the paper's best kind of setting: percentile nearest
    75 along +axis first, then the layer range starting nearest 70% of the depth, then the
    narrower range, then the name. None when there are no settings.
    """

    def key(setting: CapSetting) -> tuple[float, float, int, str]:
        layers = setting.layers or [0]
        percentile = RECOMMENDED_PERCENTILE if setting.percentile is None else setting.percentile
        return (
            abs(percentile - RECOMMENDED_PERCENTILE),
            abs(min(layers) - RECOMMENDED_DEPTH * n_layers),
            len(layers),
            setting.name,
        )

    return min(settings, key=key).name if settings else None


@dataclass(frozen=True)
class ProjectionPercentiles:
    """The build's projection percentiles (manifest ``projection_percentiles``), read in one
    typed place.

    ``percentiles`` are the levels (e.g. 1, 25, 50, 75); ``by_kind[kind][L]`` holds, at layer L,
    the values at those levels of the per-response projections (unit axis, residual-stream
    units) of rollouts of ``kind`` (``default``, ``role``); ``all_rollouts[L]`` the same over all
    rollouts; ``n_rollouts`` how many rollouts they came from.
    """

    percentiles: tuple[float, ...]
    by_kind: dict[str, list[list[float]]]
    all_rollouts: list[list[float]]
    n_rollouts: int | None

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ProjectionPercentiles | None:
        """The percentiles a bundle's manifest records, or None when it has none (imported
        axes) or a malformed one."""
        data = manifest.get(PERCENTILES_KEY)
        if not isinstance(data, dict):
            return None
        try:
            levels = tuple(float(p) for p in data["percentiles"])
            by_kind = {
                str(kind): [[float(v) for v in row] for row in table]
                for kind, table in (data.get("per_response_by_kind") or {}).items()
            }
            overall = [[float(v) for v in row] for row in data.get("per_response") or []]
        except (KeyError, TypeError, ValueError):
            return None
        rows = [row for table in [*by_kind.values(), overall] for row in table]
        if not levels or any(len(row) != len(levels) for row in rows):
            return None
        n = data.get("n_rollouts")
        return cls(levels, by_kind, overall, n if isinstance(n, int) else None)

    def levels_at(self, kind: str, layer: int) -> dict[float, float] | None:
        """``{percentile: value}`` of ``kind``'s projections at ``layer``; None when the
        manifest holds no such table or layer."""
        table = self.by_kind.get(kind)
        if table is None or not 0 <= layer < len(table):
            return None
        return dict(zip(self.percentiles, table[layer], strict=True))
