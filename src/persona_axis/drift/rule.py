"""The drift rule: how a conversation's per-turn projections become alert levels.

Each assistant turn with content has a projection ``x_t`` at the rule's layer (unit axis,
residual-stream units, higher = more Assistant-like). The rule compares it with the projection
an Assistant turn like it is **expected** to have, ``e_t``: a constant ``reference`` or, with a
:class:`~persona_axis.drift.features.Baseline` from ``persona-axis calibrate-monitor``, a
value that depends on the turn's content (code, lists, length) and turn index. Two
standardised readings per turn:

- the **shortfall** ``u_t = (e_t − x_t) / scale``: how far below an Assistant turn like it, in
  units of the Assistant's spread ``scale``;
- the **change** ``c_t = (r_a − r_t) / change_scale`` with residuals ``r = x − e``: how far the
  turn fell since the conversation's first turn with content (``a``, the anchor), in units of
  the spread of such changes in benign conversations. It needs no absolute level, so text
  written by another assistant (which projects at its own level) does not read as drift, only
  a fall within the conversation does.

The alarm statistics run on ``z_t`` = the change (``relative`` rules, the default of a fitted
benign profile) or the shortfall (rules without one). Three alert levels, each a standard
control-chart statistic:

- **watch**: one turn with shortfall ``u_t ≥ watch`` (unusually low on its own; this is the
  ``below_threshold`` flag);
- **warning**: the exponentially weighted mean ``E_t = λ z_t + (1 − λ) E_{t−1}``, ``E_0 = 0``,
  reaches ``warning`` (a drop that has lasted a few turns);
- **alarm**: the one-sided CUSUM ``S_t = max(0, S_{t−1} + z_t − k)``, ``S_0 = 0``, reaches ``h``
  (a sustained fall; with ``k = 1.5, h = 2`` one turn with ``z ≥ 3.5`` alarms at once, two
  successive turns with ``z ≥ 2.5`` do, a conversation at its level never does).

Turns without content tokens, and the anchor itself, are skipped (every statistic unchanged).
So are **performed** turns (:func:`persona_axis.drift.features.performed_replies`): replies the
user asked to be in another voice, a story, a poem, a script, a character in a role-play the
user set up and has not stepped out of. Their level says what the content is, not who is
speaking, so they are reported but neither flagged nor counted; the turns where the user
steps out, or asks who it is talking to, are judged as usual, against the same anchor.
The anchor's residual is the mean over the conversation's first ``anchor_turns`` turns with
content that are not performed (default 2: one turn alone is a noisy reference, and benign
conversations often open higher than they go on; a performed turn is not the Assistant's voice,
so it is no reference for it), and it is never taken lower than ``−anchor_floor · scale``
(default 2): a conversation that opens already far below a benign turn like it, a role-play
that turned into another character before the user stepped out, is judged against the bottom
of the benign range instead of against its own low start, so its fall is not hidden.
Where the numbers come from: :meth:`DriftRule.from_bundle`,
:func:`persona_axis.drift.profile.drift_rule` and docs/monitoring.md.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from persona_axis.drift.features import Baseline, TurnFeatures
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle

Level = Literal["none", "watch", "warning", "alarm"]
LEVELS: tuple[Level, ...] = ("none", "watch", "warning", "alarm")
NORMAL_IQR = 1.349  # (p75 - p25) of a standard normal distribution
# The one default of each limit, in the units of the statistic it bounds (module doc); every
# rule starts from these. k and h were chosen for the shortfall from the build's default
# replies (the benign profile every build ships) as the pair with the most detections at <= 5%
# false alarms on the dev split of evaldata/monitor (docs/monitoring.md; they were 0.5 and 8
# before); the warning limit on the same split; watch is one turn below the Assistant's 1st
# percentile under a normal approximation. A fitted benign profile that alarms on the change
# since the first turns stores its own k and h (drift/profile.py CHANGE_LIMITS): the
# change is another statistic, with limits chosen for it on the same dev split.
DEFAULT_K = 1.5
DEFAULT_H = 2.0
DEFAULT_LAMBDA = 0.3
DEFAULT_WARNING = 2.0
DEFAULT_WATCH = 2.326
DEFAULT_PERCENTILE = 1.0
DEFAULT_ANCHOR_TURNS = 2  # chosen on the dev split of evaldata/monitor (docs/monitoring.md)
DEFAULT_ANCHOR_FLOOR = 2.0  # lowest anchor residual (units of scale), chosen on the same dev split


def cusum_lower(
    values: Sequence[float | None], reference: float, scale: float, k: float = DEFAULT_K
) -> list[float | None]:
    """One-sided (downward) CUSUM statistics ``S_t`` of ``values`` (module doc).

    ``S_t = max(0, S_{t−1} + (reference − x_t) / scale − k)``, ``S_0 = 0``; a None value (a turn
    without content) gives None and leaves ``S`` unchanged. Unitless (multiples of ``scale``).
    """
    _check_scale(scale)
    shortfalls = [None if v is None else (reference - v) / scale for v in values]
    return cusum(shortfalls, k)


def cusum(shortfalls: Sequence[float | None], k: float = DEFAULT_K) -> list[float | None]:
    """``S_t = max(0, S_{t−1} + z_t − k)`` over standardised shortfalls ``z`` (None: skipped)."""
    if k < 0:
        raise PersonaAxisError(f"The CUSUM allowance k must be >= 0, not {k!r}.")
    return _recurse(shortfalls, lambda state, z: max(0.0, state + z - k))


def ewma(shortfalls: Sequence[float | None], weight: float = DEFAULT_LAMBDA) -> list[float | None]:
    """``E_t = λ z_t + (1 − λ) E_{t−1}``, ``E_0 = 0``, over shortfalls ``z`` (None: skipped)."""
    if not 0 < weight <= 1:
        raise PersonaAxisError(f"The EWMA weight must be in (0, 1], not {weight!r}.")
    return _recurse(shortfalls, lambda state, z: weight * z + (1 - weight) * state)


def _recurse(
    shortfalls: Sequence[float | None], step: Callable[[float, float], float]
) -> list[float | None]:
    """``state_t = step(state_{t−1}, z_t)`` from 0; a missing or non-finite ``z`` gives None
    and leaves the state unchanged."""
    state = 0.0
    out: list[float | None] = []
    for z in shortfalls:
        if z is None or not math.isfinite(z):
            out.append(None)
            continue
        state = step(state, z)
        out.append(state)
    return out


def _check_scale(scale: float) -> None:
    if not (isinstance(scale, int | float) and scale > 0 and math.isfinite(scale)):
        raise PersonaAxisError(f"The CUSUM scale must be a positive number, not {scale!r}.")


@dataclass(frozen=True)
class TurnVerdict:
    """The rule's reading of one turn (None where the turn has no projection, the rule has no
    reference, or the statistic skips the turn): expected projection, shortfall, change, the
    alarm statistics' input ``z``, EWMA, CUSUM, the one-turn flag and the alert level."""

    expected: float | None
    shortfall: float | None
    change: float | None
    z: float | None
    ewma: float | None
    cusum: float | None
    below_threshold: bool | None
    level: Level


@dataclass(frozen=True)
class DriftRule:
    """How per-turn projections at ``layer`` are judged (module doc).

    ``reference`` and ``scale``: the expected Assistant projection and its spread (None: no
    rule, projections are still reported); ``baseline``, when given, replaces the constant
    reference by a per-turn expectation. ``relative``: the alarm statistics run on the change
    since the conversation's first turn, in units of ``change_scale`` (default
    ``scale · √2``), else on the shortfall. ``watch`` (shortfall of one low turn), ``warning``
    (EWMA limit, None: no warning level; default :data:`DEFAULT_WARNING`), ``ewma_lambda``,
    ``k`` and ``h`` (CUSUM) are in those units. ``source`` says where the numbers came from.
    """

    layer: int
    reference: float | None
    scale: float | None
    watch: float | None = None
    k: float = DEFAULT_K
    h: float = DEFAULT_H
    ewma_lambda: float = DEFAULT_LAMBDA
    warning: float | None = DEFAULT_WARNING
    baseline: Baseline | None = None
    relative: bool = False
    change_scale: float | None = None
    source: str = ""
    anchor_turns: int = DEFAULT_ANCHOR_TURNS
    anchor_floor: float | None = DEFAULT_ANCHOR_FLOOR

    def __post_init__(self) -> None:
        if (self.reference is None) != (self.scale is None):
            raise PersonaAxisError("Give both the CUSUM reference and scale, or neither.")
        if self.scale is not None and not self.scale > 0:
            raise PersonaAxisError(f"The CUSUM scale must be positive, not {self.scale}.")
        if self.k < 0 or self.h <= 0:
            raise PersonaAxisError(f"CUSUM needs k >= 0 and h > 0, not k={self.k}, h={self.h}.")
        if not 0 < self.ewma_lambda <= 1:
            raise PersonaAxisError(f"The EWMA weight must be in (0, 1], not {self.ewma_lambda}.")
        if self.baseline is not None and self.reference is None:
            raise PersonaAxisError("A baseline needs a scale: give reference and scale too.")
        if self.change_scale is not None and not self.change_scale > 0:
            raise PersonaAxisError(f"The change scale must be positive, not {self.change_scale}.")
        if self.anchor_turns < 1:
            raise PersonaAxisError(f"anchor_turns must be at least 1, not {self.anchor_turns}.")
        if self.anchor_floor is not None and not self.anchor_floor >= 0:
            raise PersonaAxisError(f"anchor_floor must be >= 0 or None, not {self.anchor_floor}.")

    @property
    def has_cusum(self) -> bool:
        return self.reference is not None and self.scale is not None

    @property
    def threshold(self) -> float | None:
        """The flag threshold as a projection, for a constant reference (None otherwise)."""
        if self.watch is None or self.scale is None or self.reference is None:
            return None
        return self.reference - self.watch * self.scale

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_bundle(
        cls,
        bundle: AxisBundle,
        layer: int | None = None,
        *,
        percentile: float | None = None,
        k: float | None = None,
        h: float | None = None,
    ) -> DriftRule:
        """The rule from ``bundle``'s build percentiles at ``layer`` (default: its target
        layer), from, in order:

        1. its projection percentiles of default replies: reference = their median, scale =
           ``(p75 − p25) / 1.349``, flag threshold = their ``percentile`` (default p1);
        2. its default vector: reference = its projection, flag threshold halfway to the mean
           role (``reference − ‖a_L‖ / 2``; the axis is default − mean role), scale ``‖a_L‖/4``;
        3. nothing: no rule, projections are still reported.

        The monitor prefers a stored benign profile
        (:func:`persona_axis.drift.profile.drift_rule`).
        """
        layer = bundle.target_layer if layer is None else layer
        k = DEFAULT_K if k is None else k
        h = DEFAULT_H if h is None else h
        percentile = DEFAULT_PERCENTILE if percentile is None else percentile
        percentiles = bundle.projection_percentiles
        row = None if percentiles is None else percentiles.levels_at("default", layer)
        if percentiles is not None and row is not None:
            if float(percentile) not in row:
                raise PersonaAxisError(
                    f"The bundle stores default-reply percentiles {list(row)}, not "
                    f"{percentile:g}; pick one of them (--threshold-percentile) or give "
                    "--threshold."
                )
            threshold = row[float(percentile)]
            reference = row.get(50.0)
            scale = None
            if 25.0 in row and 75.0 in row:
                scale = (row[75.0] - row[25.0]) / NORMAL_IQR
            elif reference is not None and 0 < percentile < 50:
                scale = (reference - threshold) / -statistics.NormalDist().inv_cdf(percentile / 100)
            if reference is not None and scale is not None and scale > 0:
                return cls(
                    layer,
                    reference,
                    scale,
                    watch=(reference - threshold) / scale,
                    k=k,
                    h=h,
                    source=f"bundle percentiles: default replies' p{percentile:g} (threshold), "
                    f"median (reference), IQR/1.349 (scale); {percentiles.n_rollouts} rollouts "
                    "in the build; no benign profile (persona-axis calibrate-monitor)",
                )
        if "default" in bundle.vectors:
            from persona_axis.axis.vectors import project

            reference = float(project(bundle.default[layer], bundle.axis, layer))
            length = float(bundle.axis[layer].norm())
            return cls(
                layer,
                reference,
                length / 4,
                watch=2.0,  # halfway to the mean role (a data-derived threshold)
                k=k,
                h=h,
                source="bundle without percentiles: default vector's projection (reference), "
                "halfway to the mean role (threshold), |axis|/4 (scale)",
            )
        return cls(layer, None, None, k=k, h=h, source="no percentiles and no default vector")

    def with_overrides(
        self,
        *,
        threshold: float | None = None,
        reference: float | None = None,
        scale: float | None = None,
        k: float | None = None,
        h: float | None = None,
        watch: float | None = None,
        warning: float | None = None,
    ) -> DriftRule:
        """This rule with user-given values (None keeps the rule's own). A ``threshold`` is a
        projection; it sets the one-turn flag relative to the reference. ``watch`` (shortfall)
        and ``warning`` (EWMA limit) are in the rule's units, like ``k`` and ``h``."""
        if threshold is not None and watch is not None:
            raise PersonaAxisError("Give the one-turn flag as --threshold or --watch, not both.")
        given = dict(reference=reference, scale=scale, k=k, h=h, watch=watch, warning=warning)
        changes: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
        told = {"threshold": threshold, "reference": reference, "scale": scale}
        named = ", ".join(f"{key} {value:g}" for key, value in told.items() if value is not None)
        if named:
            changes["source"] = f"{named} given by the user; {self.source}"
        rule = replace(self, **changes)
        if reference is not None and self.baseline is not None:
            rule = replace(rule, baseline=None)
        if threshold is not None:
            if rule.reference is None or rule.scale is None:
                raise PersonaAxisError(
                    "This bundle has no projection percentiles to set a threshold against; give "
                    "--reference and --scale too (or run persona-axis calibrate-monitor)."
                )
            rule = replace(rule, watch=(rule.reference - threshold) / rule.scale)
        return rule

    # -- judging ------------------------------------------------------------------------------

    def expected(self, features: TurnFeatures | None) -> float | None:
        """The projection an Assistant turn like this should have."""
        if self.baseline is not None and features is not None:
            return self.baseline.expected(features)
        return self.reference

    def judge(
        self,
        values: Sequence[float | None],
        features: Sequence[TurnFeatures | None] | None = None,
    ) -> list[TurnVerdict]:
        """Per turn, its :class:`TurnVerdict` (module doc)."""
        features = features if features is not None else [None] * len(values)
        if self.scale is None:
            return [TurnVerdict(None, None, None, None, None, None, None, "none") for _ in values]
        expected = [self.expected(f) for f in features]
        residuals = [
            None if v is None or e is None or not math.isfinite(v) else v - e
            for v, e in zip(values, expected, strict=True)
        ]
        shortfalls = [None if r is None else -r / self.scale for r in residuals]
        performed = [f is not None and f.performed for f in features]
        changes = self._changes(residuals, performed)
        inputs = [
            None if acted else z
            for z, acted in zip(changes if self.relative else shortfalls, performed, strict=True)
        ]
        sums = cusum(inputs, self.k)
        means = ewma(inputs, self.ewma_lambda)
        verdicts = []
        for e, r, u, c, z, s, m, acted in zip(
            expected, residuals, shortfalls, changes, inputs, sums, means, performed, strict=True
        ):
            flag = None if u is None or self.watch is None or acted else u >= self.watch
            level: Level = "none"
            if s is not None and s >= self.h:
                level = "alarm"
            elif m is not None and self.warning is not None and m >= self.warning:
                level = "warning"
            elif flag:
                level = "watch"
            verdicts.append(TurnVerdict(None if r is None else e, u, c, z, m, s, flag, level))
        return verdicts

    def _changes(
        self, residuals: Sequence[float | None], performed: Sequence[bool]
    ) -> list[float | None]:
        """``(r_a − r_t) / change_scale`` after the anchor ``a``: the first turn with a value
        that is not performed; ``r_a`` = the mean of the first :attr:`anchor_turns` such values,
        at least ``−anchor_floor · scale`` (module doc). Turns before ``a`` and ``a`` itself
        get None."""
        assert self.scale is not None
        unit = self.change_scale or self.scale * math.sqrt(2)
        own = [r for r, acted in zip(residuals, performed, strict=True) if not acted]
        known = [r for r in own if r is not None][: self.anchor_turns]
        anchor = sum(known) / len(known) if known else None
        if anchor is not None and self.anchor_floor is not None:
            anchor = max(anchor, -self.anchor_floor * self.scale)
        out: list[float | None] = []
        seen = False
        for r, acted in zip(residuals, performed, strict=True):
            if r is None or anchor is None or not seen:
                out.append(None)
                seen = seen or (r is not None and not acted)
                continue
            out.append((anchor - r) / unit)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "threshold": self.threshold,
            "reference": self.reference,
            "scale": self.scale,
            "watch": self.watch,
            "k": self.k,
            "h": self.h,
            "ewma_lambda": self.ewma_lambda,
            "warning": self.warning,
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "relative": self.relative,
            "change_scale": self.change_scale,
            "anchor_turns": self.anchor_turns,
            "anchor_floor": self.anchor_floor,
            "source": self.source,
        }
