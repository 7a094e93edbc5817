"""Drift monitoring: per-turn projections of logged conversations on the Assistant Axis.

For each conversation one teacher-forced forward pass (no LM head, stopped after the deepest
layer needed) pools every assistant turn's content tokens at the target layer and a layer band;
the turn's **projection** is ``⟨mean h, â_L⟩`` on the unit axis (float32, residual-stream units,
higher = more Assistant-like), the same number live telemetry reads during generation
(:func:`persona_axis.inference.telemetry.generate_with_telemetry`).

Each turn is then judged by a :class:`DriftRule` at the target layer:

- **flag**: the turn's projection is below ``threshold``, by default the 1st percentile of the
  bundle's *default* replies (``calibration.per_response_by_kind.default``), i.e. lower than
  nearly every reply the model gives as itself;
- **CUSUM alarm** on a sustained fall: with ``z_t = (reference − x_t) / scale`` (how far below
  the typical Assistant reply, in units of its spread),
  ``S_0 = 0, S_t = max(0, S_{t−1} + z_t − k)``, and the alarm is raised at the first turn with
  ``S_t ≥ h``. ``reference`` is the default replies' median and ``scale`` their spread
  (``(p75 − p25) / 1.349``, the standard deviation for normal data). With ``k = 0.5`` and
  ``h = 4`` (the textbook choice for detecting a one-standard-deviation shift) a conversation
  sitting 1.5 scales below the reference alarms at turn 4, one sitting at the reference never
  does, and a single very low turn (``z > 4.5``) alarms at once. Turns without content tokens
  are skipped (``S`` unchanged).

Bundles without per-kind calibration (older builds) fall back to the default vector: its
projection is the reference (the mean default reply), the threshold lies halfway to the mean
role (``reference − ‖a_L‖ / 2``: the axis is default − mean role) and the scale is
``‖a_L‖ / 4``. Bundles with neither (imported axes) have no rule unless a threshold is given;
projections are still reported.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_axis.drift.conversations import Conversation, ReadFailure
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from torch import Tensor

    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.inference.capture import Segments
    from persona_axis.models.chat import Message
    from persona_axis.models.loading import LoadedModel

RESULT_FORMAT = "persona-axis monitor"
RESULT_VERSION = 1
NORMAL_IQR = 1.349  # (p75 - p25) of a standard normal distribution
DEFAULT_K = 0.5
DEFAULT_H = 4.0
DEFAULT_PERCENTILE = 1.0
BAND_HALF_WIDTH = 2


# -- the drift rule -----------------------------------------------------------------------------


def cusum_lower(
    values: Sequence[float | None], reference: float, scale: float, k: float = DEFAULT_K
) -> list[float | None]:
    """One-sided (downward) CUSUM statistics ``S_t`` of ``values`` (module doc).

    ``S_t = max(0, S_{t−1} + (reference − x_t) / scale − k)``, ``S_0 = 0``; a None value (a turn
    without content) gives None and leaves ``S`` unchanged. Unitless (multiples of ``scale``).
    """
    if not scale > 0 or not math.isfinite(scale):
        raise PersonaAxisError(f"The CUSUM scale must be a positive number, not {scale!r}.")
    if k < 0:
        raise PersonaAxisError(f"The CUSUM allowance k must be >= 0, not {k!r}.")
    total = 0.0
    out: list[float | None] = []
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(None)
            continue
        total = max(0.0, total + (reference - value) / scale - k)
        out.append(total)
    return out


@dataclass(frozen=True)
class DriftRule:
    """How per-turn projections at one layer are judged (module doc).

    ``threshold``: flag a turn whose projection is below it (None: no flag). ``reference`` and
    ``scale``: the CUSUM's in-control level and unit (None: no CUSUM). ``k``: allowance per turn,
    ``h``: decision limit, both in multiples of ``scale``. ``source`` says where the numbers came
    from. All values are projections on the unit axis at ``layer``.
    """

    layer: int
    threshold: float | None
    reference: float | None
    scale: float | None
    k: float = DEFAULT_K
    h: float = DEFAULT_H
    source: str = ""

    def __post_init__(self) -> None:
        if (self.reference is None) != (self.scale is None):
            raise PersonaAxisError("Give both the CUSUM reference and scale, or neither.")
        if self.scale is not None and not self.scale > 0:
            raise PersonaAxisError(f"The CUSUM scale must be positive, not {self.scale}.")
        if self.k < 0 or self.h <= 0:
            raise PersonaAxisError(f"CUSUM needs k >= 0 and h > 0, not k={self.k}, h={self.h}.")

    @property
    def has_cusum(self) -> bool:
        return self.reference is not None and self.scale is not None

    @classmethod
    def from_bundle(
        cls,
        bundle: AxisBundle,
        layer: int | None = None,
        *,
        percentile: float = DEFAULT_PERCENTILE,
        k: float = DEFAULT_K,
        h: float = DEFAULT_H,
    ) -> DriftRule:
        """The rule calibrated from ``bundle`` at ``layer`` (default: its target layer).

        ``percentile`` picks the flag threshold among the default replies' stored percentiles.
        """
        layer = bundle.target_layer if layer is None else layer
        calibration = bundle.calibration
        row = None if calibration is None else calibration.levels_at("default", layer)
        if calibration is not None and row is not None:
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
                    threshold,
                    reference,
                    scale,
                    k,
                    h,
                    f"bundle calibration: default replies' p{percentile:g} (threshold), median "
                    f"(reference), IQR/1.349 (scale); {calibration.n_rollouts} rollouts in the "
                    "build",
                )
        if "default" in bundle.vectors:
            from persona_axis.axis.vectors import project

            reference = float(project(bundle.default[layer], bundle.axis, layer))
            length = float(bundle.axis[layer].norm())
            return cls(
                layer,
                reference - length / 2,
                reference,
                length / 4,
                k,
                h,
                "bundle without per-kind calibration: default vector's projection (reference), "
                "halfway to the mean role (threshold), |axis|/4 (scale)",
            )
        return cls(layer, None, None, None, k, h, "no calibration and no default vector: no rule")

    def judge(self, values: Sequence[float | None]) -> tuple[list[bool | None], list[float | None]]:
        """Per turn: below the threshold (None without one or without a value), and ``S_t``."""
        flags = [
            None if self.threshold is None or v is None else v < self.threshold for v in values
        ]
        if not self.has_cusum:
            return flags, [None] * len(values)
        assert self.reference is not None and self.scale is not None
        return flags, cusum_lower(values, self.reference, self.scale, self.k)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "threshold": self.threshold,
            "reference": self.reference,
            "scale": self.scale,
            "k": self.k,
            "h": self.h,
            "source": self.source,
        }


# -- projections --------------------------------------------------------------------------------


def default_band(bundle: AxisBundle) -> list[int]:
    """Layers to report beside the target: the recommended cap's band
    (:attr:`~persona_axis.axis.bundle.AxisBundle.recommended_cap`), else the target ± 2
    (clipped to the model and to the layers where the axis is defined)."""
    name = bundle.recommended_cap
    if name is not None:
        return sorted(bundle.caps[name].layers)
    target = bundle.target_layer
    return [layer for layer in bundle.axis_layers if abs(layer - target) <= BAND_HALF_WIDTH]


def parse_layers(text: str, n_layers: int) -> list[int]:
    """``"12:16"`` (half-open band) or ``"12,14,15"`` → layer list, checked against the model."""
    try:
        if ":" in text:
            first, stop = (int(part) for part in text.split(":"))
            layers = list(range(first, stop))
        else:
            layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise PersonaAxisError(
            f"Layers {text!r} must be a band like 12:16 (layers 12-15) or a list like 12,14."
        ) from exc
    if not layers or not all(0 <= layer < n_layers for layer in layers):
        raise PersonaAxisError(
            f"Layers {text!r} must be non-empty and within 0..{n_layers - 1} for this bundle."
        )
    return sorted(set(layers))


def projections_from_tokens(
    lm: LoadedModel,
    axis: Tensor,
    sequences: Sequence[Sequence[int]],
    spans: Sequence[Sequence[Segments]],
    layers: Sequence[int],
    *,
    batch_size: int = 4,
    progress: bool = False,
) -> list[Tensor]:
    """Per sequence ``[n_spans, len(layers)]`` float32: each span's mean hidden state at each
    layer (``sorted(set(layers))``) projected on the unit ``axis`` ``[n_layers, d]`` of that
    layer. One forward pass per sequence (batched by length), no LM head."""
    import torch

    from persona_axis.axis.vectors import unit
    from persona_axis.inference.capture import pool_spans

    chosen = sorted(set(layers))
    units = unit(axis[chosen].float())  # [n_chosen, d]
    pooled = pool_spans(
        lm, sequences, spans, chosen, batch_size=batch_size, padding_side="right", progress=progress
    )
    return [torch.einsum("tld,ld->tl", acts, units) for acts in pooled]


def turn_projections(
    lm: LoadedModel,
    axis: Tensor,
    conversations: Sequence[Sequence[Message]],
    layers: Sequence[int],
    *,
    batch_size: int = 4,
    progress: bool = False,
) -> list[Tensor]:
    """Per conversation ``[n_assistant_turns, len(layers)]`` float32 projections of each
    assistant turn's content mean on the unit axis (layers ``sorted(set(layers))``); turns with
    no content token are NaN. Raises :class:`PersonaAxisError` for a conversation the chat
    template refuses or one without an assistant turn."""
    import torch

    chosen = sorted(set(layers))
    sequences, spans, kept = [], [], []
    for index, conversation in enumerate(conversations):
        rendered = lm.chat.render(conversation)
        turns = rendered.role_spans("assistant")
        usable = [i for i, span in enumerate(turns) if span.segments]
        if not usable:
            raise PersonaAxisError(
                f"Conversation {index} has no assistant message with content; nothing to monitor."
            )
        sequences.append(rendered.input_ids)
        spans.append([turns[i].segments for i in usable])
        kept.append((len(turns), usable))
    values = projections_from_tokens(
        lm, axis, sequences, spans, chosen, batch_size=batch_size, progress=progress
    )
    out = []
    for (n_turns, usable), projected in zip(kept, values, strict=True):
        full = torch.full((n_turns, len(chosen)), float("nan"))
        full[usable] = projected
        out.append(full)
    return out


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnReading:
    """One assistant turn: ``turn`` (1-based), its message index (0-based), content tokens,
    projection at the rule's layer and per band layer (None without content), flag and CUSUM."""

    turn: int
    message_index: int
    n_tokens: int
    projection: float | None
    band: dict[int, float | None]
    below_threshold: bool | None
    cusum: float | None
    alarm: bool | None

    @property
    def band_mean(self) -> float | None:
        values = [v for v in self.band.values() if v is not None]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "message_index": self.message_index,
            "n_tokens": self.n_tokens,
            "projection": self.projection,
            "band": {str(layer): value for layer, value in self.band.items()},
            "band_mean": self.band_mean,
            "below_threshold": self.below_threshold,
            "cusum": self.cusum,
            "alarm": self.alarm,
        }


@dataclass(frozen=True)
class ConversationReading:
    """The monitored turns of one conversation."""

    conversation: Conversation
    turns: list[TurnReading]

    @property
    def projections(self) -> list[float | None]:
        return [turn.projection for turn in self.turns]

    @property
    def first_flag_turn(self) -> int | None:
        return next((t.turn for t in self.turns if t.below_threshold), None)

    @property
    def alarm_turn(self) -> int | None:
        return next((t.turn for t in self.turns if t.alarm), None)

    def to_dict(self) -> dict[str, Any]:
        values = [v for v in self.projections if v is not None]
        return {
            "source": self.conversation.source,
            "position": self.conversation.position,
            "id": self.conversation.id,
            "layout": self.conversation.layout,
            "n_turns": len(self.turns),
            "min_projection": min(values) if values else None,
            "first_flag_turn": self.first_flag_turn,
            "alarm_turn": self.alarm_turn,
            "turns": [turn.to_dict() for turn in self.turns],
        }


@dataclass
class MonitorResult:
    """Readings, failures (with file and position) and the settings they were made with."""

    model: str
    bundle: str
    rule: DriftRule
    band: list[int]
    readings: list[ConversationReading] = field(default_factory=list)
    failures: list[ReadFailure] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def alarms(self) -> list[ConversationReading]:
        return [r for r in self.readings if r.alarm_turn is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RESULT_FORMAT,
            "format_version": RESULT_VERSION,
            "model": self.model,
            "bundle": self.bundle,
            "layer": self.rule.layer,
            "band": self.band,
            "rule": self.rule.to_dict(),
            "conversations": [reading.to_dict() for reading in self.readings],
            "failures": [
                {"source": f.source, "position": f.position, "error": f.error}
                for f in self.failures
            ],
            "timing": self.timing,
        }

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return target


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def monitor(
    lm: LoadedModel,
    bundle: AxisBundle,
    conversations: Sequence[Conversation | Sequence[Message]],
    *,
    band: Sequence[int] | None = None,
    rule: DriftRule | None = None,
    batch_size: int = 4,
    progress: bool = False,
    bundle_label: str = "",
) -> MonitorResult:
    """Monitor ``conversations``: one forward pass each, readings at ``rule.layer`` (default:
    the bundle's target layer) and ``band`` (default :func:`default_band`).

    ``conversations`` are :class:`Conversation` records (from the readers) or plain message
    lists. A conversation the chat template refuses, or one with no assistant content, becomes a
    :class:`ReadFailure` naming its file and position; the others are still monitored.
    """
    records = [
        c
        if isinstance(c, Conversation)
        else Conversation(tuple(map(dict, c)), position=f"index {i}")
        for i, c in enumerate(conversations)
    ]
    rule = rule or DriftRule.from_bundle(bundle)
    band_layers = sorted(set(default_band(bundle) if band is None else band))
    layers = sorted({rule.layer, *band_layers})
    result = MonitorResult(model=lm.name, bundle=bundle_label, rule=rule, band=band_layers)
    prepared = []
    started = time.perf_counter()
    for conversation in records:
        try:
            rendered = lm.chat.render(conversation.messages)
        except PersonaAxisError as exc:
            failure = ReadFailure(conversation.source, conversation.position, str(exc))
            result.failures.append(failure)
            continue
        turns = rendered.role_spans("assistant")
        if not any(span.segments for span in turns):
            result.failures.append(
                ReadFailure(
                    conversation.source,
                    conversation.position,
                    "no assistant message with content; nothing to monitor.",
                )
            )
            continue
        prepared.append((conversation, rendered, turns))
    usable = [[i for i, s in enumerate(turns) if s.segments] for _, _, turns in prepared]
    values = projections_from_tokens(
        lm,
        bundle.axis,
        [rendered.input_ids for _, rendered, _ in prepared],
        [
            [turns[i].segments for i in keep]
            for (_, _, turns), keep in zip(prepared, usable, strict=True)
        ],
        layers,
        batch_size=batch_size,
        progress=progress,
    )
    elapsed = time.perf_counter() - started
    roles = [
        [i for i, m in enumerate(c.messages) if m["role"] == "assistant"] for c, _, _ in prepared
    ]
    for (conversation, _, turns), keep, projected, indices in zip(
        prepared, usable, values, roles, strict=True
    ):
        table: list[list[float | None]] = [[None] * len(layers) for _ in turns]
        for row, turn in zip(projected.tolist(), keep, strict=True):
            table[turn] = [_finite(float(x)) for x in row]
        target = [row[layers.index(rule.layer)] for row in table]
        flags, sums = rule.judge(target)
        alarms = [None if value is None else value >= rule.h for value in sums]
        readings = [
            TurnReading(
                turn=number + 1,
                message_index=indices[number],
                n_tokens=span.n_tokens,
                projection=target[number],
                band={layer: table[number][layers.index(layer)] for layer in band_layers},
                below_threshold=flags[number],
                cusum=sums[number],
                alarm=alarms[number],
            )
            for number, span in enumerate(turns)
        ]
        result.readings.append(ConversationReading(conversation, readings))
    n = max(1, len(prepared))
    result.timing = {
        "seconds": round(elapsed, 3),
        "conversations": len(prepared),
        "seconds_per_conversation": round(elapsed / n, 4),
        "assistant_turns": sum(len(r.turns) for r in result.readings),
    }
    return result


def with_overrides(
    rule: DriftRule,
    *,
    threshold: float | None = None,
    reference: float | None = None,
    scale: float | None = None,
    k: float | None = None,
    h: float | None = None,
) -> DriftRule:
    """``rule`` with user-given values (None keeps the rule's own)."""
    changes: dict[str, Any] = {}
    given = {"threshold": threshold, "reference": reference, "scale": scale}
    for key, value in given.items():
        if value is not None:
            changes[key] = value
    if changes:
        told = ", ".join(f"{key} {value:g}" for key, value in changes.items())
        changes["source"] = f"{told} given by the user; {rule.source}"
    if k is not None:
        changes["k"] = k
    if h is not None:
        changes["h"] = h
    return replace(rule, **changes)
