"""Drift monitoring: per-turn projections of logged conversations, alert levels and alarms.

Every assistant turn is projected on the Assistant Axis at the rule's layer (and at extra
layers for display) under the context policy (:mod:`persona_axis.drift.context`: at most a
window of context per turn, KV cache reused from turn to turn, batched when short;
:mod:`persona_axis.drift.projections`). Each turn records the context it was read with; a
conversation where context was cut carries one warning. The rule
(:mod:`persona_axis.drift.rule`) turns the projections into alert levels (watch / warning /
alarm); :func:`persona_axis.drift.profile.drift_rule` picks it from the bundle.

:func:`iter_monitor` streams: it takes conversations (and read failures) one by one, runs them
in small buffers and yields each result as soon as its buffer is done, in input order, so huge
logs never sit in memory whole. :func:`monitor` collects everything into a
:class:`MonitorResult`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_axis.drift.context import (
    ContextPolicy,
    ConversationPlan,
    TurnContext,
    plan_conversation,
)
from persona_axis.drift.conversations import Conversation, ReadFailure
from persona_axis.drift.features import TurnFeatures, performed_replies
from persona_axis.drift.projections import (
    project_plans,
    projections_from_tokens,
    turn_projections,
)
from persona_axis.drift.rule import LEVELS, DriftRule, Level, cusum_lower
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.models.chat import Message
    from persona_axis.models.loading import LoadedModel

RESULT_FORMAT = "persona-axis monitor"
RESULT_VERSION = 3  # 3: "band" and "band_mean" renamed "extra_layers" and "extra_layers_mean"
EXTRA_LAYERS_HALF_WIDTH = 2
NO_CONTENT = "no assistant message with content; nothing to monitor."

__all__ = [
    "ConversationReading",
    "DriftRule",
    "MonitorResult",
    "TurnReading",
    "cusum_lower",
    "default_extra_layers",
    "iter_monitor",
    "monitor",
    "parse_layers",
    "projections_from_tokens",
    "turn_projections",
]


def default_extra_layers(bundle: AxisBundle) -> list[int]:
    """Extra layers to report beside the target: the recommended cap's layers
    (:attr:`~persona_axis.axis.bundle.AxisBundle.recommended_cap`), else the target ± 2
    (clipped to the model and to the layers where the axis is defined)."""
    name = bundle.recommended_cap
    if name is not None:
        return sorted(bundle.caps[name].layers)
    target = bundle.target_layer
    return [layer for layer in bundle.axis_layers if abs(layer - target) <= EXTRA_LAYERS_HALF_WIDTH]


def parse_layers(text: str, n_layers: int) -> list[int]:
    """``"12:16"`` (half-open range), ``"12,14,15"`` or ``""`` (none) → layer list, checked
    against the model."""
    if not text.strip():
        return []
    try:
        if ":" in text:
            first, stop = (int(part) for part in text.split(":"))
            layers = list(range(first, stop))
        else:
            layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise PersonaAxisError(
            f"Layers {text!r} must be a range like 12:16 (layers 12-15) or a list like 12,14."
        ) from exc
    if not layers or not all(0 <= layer < n_layers for layer in layers):
        raise PersonaAxisError(
            f"Layers {text!r} must be non-empty and within 0..{n_layers - 1} for this bundle."
        )
    return sorted(set(layers))


# -- results ------------------------------------------------------------------------------------


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


@dataclass(frozen=True)
class TurnReading:
    """One assistant turn: ``turn`` (1-based), its message index (0-based), content tokens,
    content features, projection at the rule's layer and per extra layer (None without content),
    the rule's verdict (expected projection, shortfall and change in scales, the alarm
    statistics' input ``z``, EWMA, CUSUM, flag, level) and the context it was read with."""

    turn: int
    message_index: int
    n_tokens: int
    projection: float | None
    extra_layers: dict[int, float | None]
    below_threshold: bool | None
    cusum: float | None
    level: Level = "none"
    expected: float | None = None
    shortfall: float | None = None
    change: float | None = None
    z: float | None = None
    ewma: float | None = None
    features: TurnFeatures | None = None
    context: TurnContext | None = None

    @property
    def kind(self) -> str:
        return "" if self.features is None else self.features.kind

    @property
    def alarm(self) -> bool | None:
        return None if self.cusum is None else self.level == "alarm"

    @property
    def extra_layers_mean(self) -> float | None:
        values = [v for v in self.extra_layers.values() if v is not None]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "message_index": self.message_index,
            "n_tokens": self.n_tokens,
            "kind": self.kind,
            "performed": self.features is not None and self.features.performed,
            "projection": _rounded(self.projection),
            "extra_layers": {
                str(layer): _rounded(value) for layer, value in self.extra_layers.items()
            },
            "extra_layers_mean": _rounded(self.extra_layers_mean),
            "expected": _rounded(self.expected),
            "shortfall": _rounded(self.shortfall, 4),
            "change": _rounded(self.change, 4),
            "z": _rounded(self.z, 4),
            "ewma": _rounded(self.ewma, 4),
            "cusum": _rounded(self.cusum, 4),
            "below_threshold": self.below_threshold,
            "level": self.level,
            "alarm": self.alarm,
            "context": None if self.context is None else self.context.to_dict(),
        }


@dataclass(frozen=True)
class ConversationReading:
    """The monitored turns of one conversation, and its context warning (None: no cut)."""

    conversation: Conversation
    turns: list[TurnReading]
    warning: str | None = None
    n_tokens: int = 0

    @property
    def projections(self) -> list[float | None]:
        return [turn.projection for turn in self.turns]

    @property
    def first_flag_turn(self) -> int | None:
        return next((t.turn for t in self.turns if t.below_threshold), None)

    def first_turn_at(self, level: Level) -> int | None:
        """First turn at ``level`` or above."""
        rank = LEVELS.index(level)
        return next((t.turn for t in self.turns if LEVELS.index(t.level) >= rank), None)

    @property
    def alarm_turn(self) -> int | None:
        return self.first_turn_at("alarm")

    @property
    def level(self) -> Level:
        """The highest level any turn reached."""
        return max((t.level for t in self.turns), key=LEVELS.index, default="none")

    def to_dict(self) -> dict[str, Any]:
        values = [v for v in self.projections if v is not None]
        labels = {
            key: value
            for key, value in self.conversation.meta.items()
            if isinstance(value, str | int | float | bool) or value is None
        }
        return {
            "source": self.conversation.source,
            "position": self.conversation.position,
            "id": self.conversation.id,
            "layout": self.conversation.layout,
            "meta": labels,
            "n_turns": len(self.turns),
            "n_tokens": self.n_tokens,
            "min_projection": _rounded(min(values)) if values else None,
            "level": self.level,
            "first_flag_turn": self.first_flag_turn,
            "first_watch_turn": self.first_turn_at("watch"),
            "first_warning_turn": self.first_turn_at("warning"),
            "alarm_turn": self.alarm_turn,
            "warning": self.warning,
            "turns": [turn.to_dict() for turn in self.turns],
        }


@dataclass
class MonitorResult:
    """Readings, failures (with file and position) and the settings they were made with."""

    model: str
    bundle: str
    rule: DriftRule
    extra_layers: list[int]
    policy: ContextPolicy = field(default_factory=ContextPolicy)
    readings: list[ConversationReading] = field(default_factory=list)
    failures: list[ReadFailure] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def alarms(self) -> list[ConversationReading]:
        return [r for r in self.readings if r.alarm_turn is not None]

    def header(self) -> dict[str, Any]:
        """Everything but the per-conversation entries (the settings of the run)."""
        return {
            "format": RESULT_FORMAT,
            "format_version": RESULT_VERSION,
            "model": self.model,
            "bundle": self.bundle,
            "layer": self.rule.layer,
            "extra_layers": self.extra_layers,
            "rule": self.rule.to_dict(),
            "context": self.policy.to_dict(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.header(),
            "conversations": [reading.to_dict() for reading in self.readings],
            "failures": [failure_dict(f) for f in self.failures],
            "timing": self.timing,
        }

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return target


def failure_dict(failure: ReadFailure) -> dict[str, str]:
    return {"source": failure.source, "position": failure.position, "error": failure.error}


# -- running ------------------------------------------------------------------------------------


@dataclass
class Monitor:
    """The settings of a monitoring run, resolved for one model and bundle."""

    lm: LoadedModel
    bundle: AxisBundle
    rule: DriftRule
    extra_layers: list[int]
    policy: ContextPolicy
    batch_size: int = 8

    @classmethod
    def create(
        cls,
        lm: LoadedModel,
        bundle: AxisBundle,
        *,
        extra_layers: Sequence[int] | None = None,
        rule: DriftRule | None = None,
        policy: ContextPolicy | None = None,
        batch_size: int = 8,
    ) -> Monitor:
        from persona_axis.drift.profile import drift_rule

        if batch_size < 1:
            raise PersonaAxisError(f"batch_size must be at least 1, not {batch_size}.")
        return cls(
            lm,
            bundle,
            rule or drift_rule(bundle),
            sorted(set(default_extra_layers(bundle) if extra_layers is None else extra_layers)),
            (policy or ContextPolicy()).for_model(lm),
            batch_size,
        )

    @property
    def layers(self) -> list[int]:
        return sorted({self.rule.layer, *self.extra_layers})

    def result(self, bundle_label: str = "") -> MonitorResult:
        return MonitorResult(self.lm.name, bundle_label, self.rule, self.extra_layers, self.policy)

    def run(
        self, items: Iterable[Conversation | ReadFailure]
    ) -> Iterator[ConversationReading | ReadFailure]:
        """Readings (and failures, passed through) in input order, a buffer at a time."""
        buffer: list[Conversation | ReadFailure] = []
        size = 2 * self.batch_size  # enough to group short conversations by length
        for item in items:
            buffer.append(item)
            if len(buffer) >= size:
                yield from self._run_buffer(buffer)
                buffer = []
        if buffer:
            yield from self._run_buffer(buffer)

    def _run_buffer(
        self, items: list[Conversation | ReadFailure]
    ) -> list[ConversationReading | ReadFailure]:
        out: list[ConversationReading | ReadFailure | None] = []
        planned: list[tuple[int, Conversation, ConversationPlan]] = []
        for item in items:
            if isinstance(item, ReadFailure):
                out.append(item)
                continue
            try:
                plan = plan_conversation(self.lm.chat, item.messages, self.policy)
            except PersonaAxisError as exc:
                out.append(ReadFailure(item.source, item.position, str(exc)))
                continue
            if not any(window.turns for window in plan.windows):
                out.append(ReadFailure(item.source, item.position, NO_CONTENT))
                continue
            planned.append((len(out), item, plan))
            out.append(None)
        values = project_plans(
            self.lm,
            self.bundle.axis,
            [plan for _, _, plan in planned],
            self.layers,
            batch_size=self.batch_size,
        )
        for (slot, conversation, plan), table in zip(planned, values, strict=True):
            out[slot] = self.reading(conversation, plan, table.tolist())
        return [item for item in out if item is not None]

    def reading(
        self, conversation: Conversation, plan: ConversationPlan, table: list[list[float]]
    ) -> ConversationReading:
        """Judge one conversation's projections ``table[turn][layer column]``."""
        layers = self.layers
        rows = [[_finite(x) for x in row] for row in table]
        target = [row[layers.index(self.rule.layer)] for row in rows]
        features = []
        performed = performed_replies(conversation.messages)
        for number, context in enumerate(plan.contexts):
            content = str(conversation.messages[context.message_index]["content"])
            text = content.rpartition("</think>")[2]
            features.append(
                TurnFeatures.of(
                    text,
                    plan.n_turn_tokens[number],
                    number + 1,
                    performed=performed[context.message_index],
                )
            )
        verdicts = self.rule.judge(target, features)
        turns = [
            TurnReading(
                turn=number + 1,
                message_index=context.message_index,
                n_tokens=plan.n_turn_tokens[number],
                projection=target[number],
                extra_layers={
                    layer: rows[number][layers.index(layer)] for layer in self.extra_layers
                },
                below_threshold=verdict.below_threshold,
                cusum=verdict.cusum,
                level=verdict.level,
                expected=verdict.expected,
                shortfall=verdict.shortfall,
                change=verdict.change,
                z=verdict.z,
                ewma=verdict.ewma,
                features=feature,
                context=context,
            )
            for number, (context, verdict, feature) in enumerate(
                zip(plan.contexts, verdicts, features, strict=True)
            )
        ]
        return ConversationReading(conversation, turns, plan.warning, plan.n_tokens)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def as_records(
    conversations: Iterable[Conversation | ReadFailure | Sequence[Message]],
) -> Iterator[Conversation | ReadFailure]:
    """Records from plain message lists too (positions ``index N``)."""
    for index, item in enumerate(conversations):
        if isinstance(item, Conversation | ReadFailure):
            yield item
        else:
            yield Conversation(tuple(map(dict, item)), position=f"index {index}")


def iter_monitor(
    lm: LoadedModel,
    bundle: AxisBundle,
    conversations: Iterable[Conversation | ReadFailure | Sequence[Message]],
    *,
    extra_layers: Sequence[int] | None = None,
    rule: DriftRule | None = None,
    policy: ContextPolicy | None = None,
    batch_size: int = 8,
) -> Iterator[ConversationReading | ReadFailure]:
    """Stream :class:`ConversationReading` results (and :class:`ReadFailure` for records that
    cannot be monitored) in input order (module doc)."""
    runner = Monitor.create(
        lm, bundle, extra_layers=extra_layers, rule=rule, policy=policy, batch_size=batch_size
    )
    return runner.run(as_records(conversations))


def monitor(
    lm: LoadedModel,
    bundle: AxisBundle,
    conversations: Iterable[Conversation | ReadFailure | Sequence[Message]],
    *,
    extra_layers: Sequence[int] | None = None,
    rule: DriftRule | None = None,
    policy: ContextPolicy | None = None,
    batch_size: int = 8,
    bundle_label: str = "",
) -> MonitorResult:
    """Monitor ``conversations`` (module doc): readings at ``rule.layer`` (default: the rule of
    :func:`~persona_axis.drift.profile.drift_rule`) and ``extra_layers`` (default
    :func:`default_extra_layers`), every turn read under the context ``policy``.

    ``conversations`` are :class:`Conversation` records (from the readers) or plain message
    lists. A conversation the chat template refuses, or one with no assistant content, becomes a
    :class:`ReadFailure` naming its file and position; the others are still monitored.
    """
    runner = Monitor.create(
        lm, bundle, extra_layers=extra_layers, rule=rule, policy=policy, batch_size=batch_size
    )
    result = runner.result(bundle_label)
    started = time.perf_counter()
    for item in runner.run(as_records(conversations)):
        if isinstance(item, ReadFailure):
            result.failures.append(item)
        else:
            result.readings.append(item)
    result.timing = timing(time.perf_counter() - started, result.readings)
    return result


def timing(seconds: float, readings: Sequence[ConversationReading]) -> dict[str, float]:
    """Seconds, conversations, seconds per conversation, assistant turns and tokens read."""
    n = len(readings)
    return {
        "seconds": round(seconds, 3),
        "conversations": n,
        "seconds_per_conversation": round(seconds / max(1, n), 4),
        "assistant_turns": sum(len(r.turns) for r in readings),
        "tokens": sum(r.n_tokens for r in readings),
    }
