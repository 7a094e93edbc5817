"""What the monitor reports: per-turn readings, per-conversation readings and a run's result.

A :class:`TurnReading` is one assistant turn's projection at the rule's layer (and at the extra
layers), its content features and the context it was read with, beside the rule's
:class:`~persona_axis.drift.rule.TurnVerdict` on it. A :class:`ConversationReading` holds a
conversation's turns and its context warning; a :class:`MonitorResult` a whole run with its
settings. Their ``to_dict`` forms are the monitor's JSON (``monitor.json``, ``monitor.jsonl``).
Projections are on the unit axis, residual-stream units; layers are decoder block outputs,
0-based.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_axis.drift.context import ContextPolicy, TurnContext
from persona_axis.drift.conversations import Conversation, ReadFailure
from persona_axis.drift.features import TurnFeatures
from persona_axis.drift.rule import LEVELS, DriftRule, Level, TurnVerdict

RESULT_FORMAT = "persona-axis monitor"
RESULT_VERSION = 3  # 3: "band" and "band_mean" renamed "extra_layers" and "extra_layers_mean"
UNJUDGED = TurnVerdict(None, None, None, None, None, None, None, "none")
"""The verdict of a turn the rule did not judge (no rule, or no projection)."""


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


@dataclass(frozen=True)
class TurnReading:
    """One assistant turn: ``turn`` (1-based), its message index (0-based), content tokens,
    projection at the rule's layer and per extra layer (None without content), the rule's
    ``verdict`` (expected projection, shortfall and change in scales, the alarm statistics'
    input ``z``, EWMA, CUSUM, flag, level), content features and the context it was read
    with; ``heard``: whether the request probe read the user message it answers as asking for
    a performed reply, and its logit (None: no probe, or that message was not read)."""

    turn: int
    message_index: int
    n_tokens: int
    projection: float | None
    extra_layers: dict[int, float | None]
    verdict: TurnVerdict = UNJUDGED
    features: TurnFeatures | None = None
    context: TurnContext | None = None
    heard: bool | None = None
    request_logit: float | None = None

    @property
    def level(self) -> Level:
        return self.verdict.level

    @property
    def kind(self) -> str:
        return "" if self.features is None else self.features.kind

    @property
    def alarm(self) -> bool | None:
        return None if self.verdict.cusum is None else self.level == "alarm"

    @property
    def extra_layers_mean(self) -> float | None:
        values = [v for v in self.extra_layers.values() if v is not None]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        verdict = self.verdict
        return {
            "turn": self.turn,
            "message_index": self.message_index,
            "n_tokens": self.n_tokens,
            "kind": self.kind,
            "performed": self.features is not None and self.features.performed,
            "heard": self.heard,
            "request_logit": _rounded(self.request_logit, 4),
            "projection": _rounded(self.projection),
            "extra_layers": {
                str(layer): _rounded(value) for layer, value in self.extra_layers.items()
            },
            "extra_layers_mean": _rounded(self.extra_layers_mean),
            "expected": _rounded(verdict.expected),
            "shortfall": _rounded(verdict.shortfall, 4),
            "change": _rounded(verdict.change, 4),
            "z": _rounded(verdict.z, 4),
            "ewma": _rounded(verdict.ewma, 4),
            "cusum": _rounded(verdict.cusum, 4),
            "below_threshold": verdict.below_threshold,
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
        return next((t.turn for t in self.turns if t.verdict.below_threshold), None)

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
