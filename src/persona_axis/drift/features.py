"""What an assistant turn looks like, and the projection an Assistant turn like it should have.

A benign Assistant's projection still moves with what it writes: replies full of code, long
lists or long prose sit at other levels than short chat answers, and the level can move with
the turn index. :class:`TurnFeatures` describes a turn by

- ``code``: share of the reply's characters inside fenced code blocks (```...```);
- ``lists``: share of its non-blank lines outside code that are list items (``-``, ``*``,
  ``•``, ``1.``, ``1)``);
- ``log_tokens``: natural log of its content tokens;
- ``log_turn``: natural log of its 1-based turn number,

and a :class:`Baseline` is a linear model of the projection on these features, fitted on
benign conversations (:mod:`persona_axis.drift.calibration`): ``expected = intercept +
Σ coefficient · feature``, in residual-stream units at one layer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from persona_axis.errors import PersonaAxisError

CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+\S")
FEATURES = ("code", "lists", "log_tokens", "log_turn")


@dataclass(frozen=True)
class TurnFeatures:
    """Content features of one assistant turn (module doc)."""

    turn: int
    n_tokens: int
    code: float
    lists: float

    @classmethod
    def of(cls, text: str, n_tokens: int, turn: int) -> TurnFeatures:
        """Features of reply ``text`` with ``n_tokens`` content tokens at 1-based ``turn``."""
        in_code = sum(match.end() - match.start() for match in CODE_BLOCK.finditer(text))
        prose = CODE_BLOCK.sub("\n", text)
        lines = [line for line in prose.splitlines() if line.strip()]
        items = sum(1 for line in lines if LIST_ITEM.match(line))
        return cls(
            turn=turn,
            n_tokens=n_tokens,
            code=in_code / len(text) if text else 0.0,
            lists=items / len(lines) if lines else 0.0,
        )

    @property
    def kind(self) -> str:
        """``code``, ``lists``, ``prose`` (≥ 100 tokens) or ``short``: the dominant content."""
        if self.code >= 0.3:
            return "code"
        if self.lists >= 0.3:
            return "lists"
        return "prose" if self.n_tokens >= 100 else "short"

    def values(self) -> dict[str, float]:
        """The model's inputs, by name (:data:`FEATURES`)."""
        return {
            "code": self.code,
            "lists": self.lists,
            "log_tokens": math.log(max(1, self.n_tokens)),
            "log_turn": math.log(max(1, self.turn)),
        }


@dataclass(frozen=True)
class Baseline:
    """``expected = intercept + Σ coefficients[f] · features[f]`` (module doc); features not
    named have coefficient 0. Residual-stream units on the unit axis of one layer."""

    intercept: float
    coefficients: Mapping[str, float]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.coefficients) - set(FEATURES))
        if unknown:
            raise PersonaAxisError(
                f"Unknown baseline features {unknown}; known: {', '.join(FEATURES)}."
            )
        values = [self.intercept, *self.coefficients.values()]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise PersonaAxisError("Baseline intercept and coefficients must be finite numbers.")

    def expected(self, features: TurnFeatures) -> float:
        values = features.values()
        return self.intercept + sum(c * values[name] for name, c in self.coefficients.items())

    def to_dict(self) -> dict[str, Any]:
        return {"intercept": self.intercept, "coefficients": dict(self.coefficients)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        try:
            return cls(
                float(data["intercept"]), {k: float(v) for k, v in data["coefficients"].items()}
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PersonaAxisError(
                f"The stored monitor baseline is malformed ({exc!r}); run persona-axis "
                "calibrate-monitor again."
            ) from exc
