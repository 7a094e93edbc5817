"""The benign profile stored in a bundle, and the rule the monitor takes from a bundle.

``persona-axis calibrate-monitor`` (:mod:`persona_axis.drift.calibrate_monitor`) fits, on
benign multi-turn conversations, the projection an Assistant turn is expected to have given its
content and turn index (a :class:`~persona_axis.drift.features.Baseline`), the spread of benign
turns around it (``scale``), and stores both with the alert limits and their provenance in the
bundle's manifest (``benign_profile``). :func:`drift_rule` prefers it over the build's
single-reply levels (:meth:`persona_axis.drift.rule.DriftRule.from_bundle`).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from persona_axis._version import __version__
from persona_axis.drift.features import Baseline
from persona_axis.drift.rule import (
    DEFAULT_ANCHOR_FLOOR,
    DEFAULT_H,
    DEFAULT_K,
    DEFAULT_LAMBDA,
    DEFAULT_WARNING,
    DEFAULT_WATCH,
    DriftRule,
)
from persona_axis.errors import PersonaAxisError
from persona_axis.pipeline.monitor_sample import SAMPLE_KEY

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle

FORMAT_VERSION = 1
MAD_TO_SD = 1.4826  # MAD of a normal distribution × this = its standard deviation
DEFAULT_LIMITS: dict[str, float | None] = {  # the rule's one set of defaults (drift/rule.py)
    "watch": DEFAULT_WATCH,
    "warning": DEFAULT_WARNING,
    "ewma_lambda": DEFAULT_LAMBDA,
    "k": DEFAULT_K,
    "h": DEFAULT_H,
    "anchor_floor": DEFAULT_ANCHOR_FLOOR,
}
CHANGE_LIMITS: dict[str, float | None] = {**DEFAULT_LIMITS, "k": 2.0, "h": 2.0}
"""The limits ``calibrate-monitor`` stores with the rule it fits, which alarms on the change
since the conversation's first turns (``relative``): k and h chosen together on the dev split
of evaldata/monitor (performed turns skipped, a two-turn anchor) as the pair with the most dev
detections at dev false alarms <= 5%, the anchor floor then in the middle of the range of
floors that detected every dev drift at that rate (docs/monitoring.md). A benign profile shipped
by the build alarms on the shortfall and keeps :data:`DEFAULT_LIMITS` (k and h chosen for the
shortfall on the same dev split; the anchor floor does not enter a rule on the shortfall)."""


@dataclass(frozen=True)
class BenignProfile:
    """The drift monitor's benign profile (module doc) at ``layer``: ``baseline``, the spread of
    benign turns around it (``scale``) and of their change since their conversation's first
    turn (``change_scale``), alert ``limits`` in those units, where the turns came from
    (``provenance``), how the benign projection moved with content and turn index
    (``effects``), and whether the alarm statistics run on the change (``relative``, the
    default) or on the shortfall."""

    layer: int
    baseline: Baseline
    scale: float
    change_scale: float
    limits: Mapping[str, float | None] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    provenance: Mapping[str, Any] = field(default_factory=dict)
    effects: Mapping[str, Any] = field(default_factory=dict)
    relative: bool = True

    def rule(self, *, k: float | None = None, h: float | None = None) -> DriftRule:
        """The drift rule this profile defines (``k``/``h`` override the stored ones)."""
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
            anchor_floor=limits.get("anchor_floor", DEFAULT_ANCHOR_FLOOR),
            baseline=self.baseline,
            relative=self.relative,
            change_scale=self.change_scale,
            source=f"benign profile from {sources}: expected projection "
            + (
                "from code share, list share, length and turn index"
                if self.baseline.coefficients
                else "= their median"
            )
            + "; scale = robust spread around it",
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
            "relative": self.relative,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenignProfile:
        try:
            version = data["format_version"]
            if version != FORMAT_VERSION:
                raise PersonaAxisError(
                    f"Benign profile format {version} is not {FORMAT_VERSION}; run "
                    "persona-axis calibrate-monitor again."
                )
            scale = float(data["scale"])
            change_scale = float(data["change_scale"])
            limits = {str(k): None if v is None else float(v) for k, v in data["limits"].items()}
            layer = int(data["layer"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PersonaAxisError(
                f"The bundle's benign profile is malformed ({exc!r}); run persona-axis "
                "calibrate-monitor again."
            ) from exc
        if not (scale > 0 and change_scale > 0):
            raise PersonaAxisError(
                f"The benign profile's scales must be positive ({scale}, {change_scale})."
            )
        return cls(
            layer,
            Baseline.from_dict(data["baseline"]),
            scale,
            change_scale,
            limits,
            dict(data.get("provenance") or {}),
            dict(data.get("effects") or {}),
            bool(data.get("relative", True)),
        )

    @classmethod
    def from_bundle(cls, bundle: AxisBundle) -> BenignProfile | None:
        """The profile stored by ``persona-axis calibrate-monitor`` (None: none stored)."""
        data = bundle.benign_profile
        return None if data is None else cls.from_dict(data)

    @classmethod
    def from_build(cls, bundle: AxisBundle) -> BenignProfile | None:
        """The profile every build ships with, from its default replies
        (:mod:`persona_axis.pipeline.monitor_sample`; None for bundles without the sample).

        The replies are single-turn and of one length, so the baseline is a constant (their
        median; content effects cannot be told apart in them) and ``scale`` is the robust
        spread of the replies around it. The alarm statistics run on the **shortfall** from
        that level (``relative`` False): on the dev split of evaldata/monitor this alarmed on
        1/30 benign and 10/12 drifting conversations at the default limits, while the change
        since the first turn, in units of the spread of differences between two replies under
        the same default prompt (``change_scale``, stored too), alarmed on none of either:
        single replies to different questions differ far more than turns of one conversation
        (docs/monitoring.md, "A benign profile from the default replies (before)").
        """
        sample: Any = bundle.manifest.get(SAMPLE_KEY)
        try:
            layer = int(sample["layer"])
            groups = [[float(x) for x in group] for group in sample["projections"]]
        except (TypeError, KeyError, ValueError):
            return None
        values = [x for group in groups for x in group]
        if len(values) < 2:
            return None
        center = statistics.median(values)
        differences = [
            a - b
            for group in groups
            for i, a in enumerate(group)
            for j, b in enumerate(group)
            if i != j
        ]
        scale = robust_spread([x - center for x in values])
        change_scale = robust_spread(differences)
        if not (scale > 0 and change_scale > 0):
            return None
        sources = [{"kind": "build default replies", "conversations": len(values)}]
        return cls(
            layer,
            Baseline(center, {}),
            scale,
            change_scale,
            dict(DEFAULT_LIMITS),
            {"sources": sources, "prompts": len(groups)},
            {"median_expected": center, "n_turns": len(values), "n_conversations": len(values)},
            relative=False,
        )


def drift_rule(
    bundle: AxisBundle,
    layer: int | None = None,
    *,
    percentile: float | None = None,
    k: float | None = None,
    h: float | None = None,
) -> DriftRule:
    """The drift rule for ``bundle`` at ``layer`` (default: its target layer): the one function
    ``monitor``, ``simulate``, the server, the web page and the Python API take it from.

    In order, when no build ``percentile`` is asked for: the benign profile stored by
    ``persona-axis calibrate-monitor`` for that layer; the one every build ships with (from its
    default replies, :meth:`BenignProfile.from_build`); else
    :meth:`DriftRule.from_bundle` (the build's default-reply percentiles, or its default
    vector). Limits not given (``k``, ``h``) take the one default of
    :mod:`persona_axis.drift.rule`."""
    layer = bundle.target_layer if layer is None else layer
    if percentile is None:
        stored, shipped = (
            BenignProfile.from_bundle(bundle),
            BenignProfile.from_build(bundle),
        )
        for found in (stored, shipped):
            if found is not None and found.layer == layer:
                return found.rule(k=k, h=h)
    return DriftRule.from_bundle(bundle, layer, percentile=percentile, k=k, h=h)


def robust_spread(values: Any) -> float:
    """1.4826 × the median absolute deviation (the standard deviation for normal data); 0 for
    fewer than two values."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return 0.0
    return MAD_TO_SD * float(np.median(np.abs(values - np.median(values))))


def stamp(sources: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """Provenance: when, which library version, which sources and settings."""
    return {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "library_version": __version__,
        "sources": sources,
        **settings,
    }
