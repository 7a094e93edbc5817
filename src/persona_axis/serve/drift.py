"""Drift telemetry and the on-drift cap of a served request, decided from the request alone.

The server keeps no conversation state: a request carries the earlier turns, so the drift rule
(:func:`persona_axis.drift.profile.drift_rule`, the one rule ``monitor``, ``simulate`` and
``chat`` use) is run over them (:class:`~persona_axis.drift.live.LiveDrift`: one pass over the
prompt up to the rule's layer, ahead of generation, when there is an earlier assistant turn or
the bundle has a request probe) and then over the new reply, whose projection comes from its
generation pass; ``drift_reading.performed`` says whether the reply counts as a requested piece
(reported, not judged). The response's
``persona_axis.drift_reading`` object holds the reply's level (none / watch / warning / alarm)
and the rule's statistics; ``persona_axis.drift`` is True when the level is ``alarm`` (None
when the bundle has no rule: no benign profile, no projection percentiles and no default
vector).

With ``cap: "on-drift"`` the gate (:mod:`persona_axis.drift.gate`) is read from the same
history: the reply is capped with the bundle's recommended cap when the gate is armed, and
``persona_axis.on_drift`` says whether it was and since which turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from persona_axis.drift.gate import ON_DRIFT, Arming, arming
from persona_axis.drift.live import LiveDrift

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.rule import DriftRule
    from persona_axis.models.chat import Message
    from persona_axis.models.loading import LoadedModel

__all__ = ["ON_DRIFT", "RequestDrift", "describe_rule"]


@dataclass(frozen=True)
class RequestDrift:
    """What the rule made of a request's history: the turns read, the gate after them, and
    whether this request asked for the on-drift cap."""

    history: LiveDrift
    gate: Arming
    on_drift: bool = False

    @classmethod
    def read(
        cls,
        lm: LoadedModel,
        bundle: AxisBundle,
        rule: DriftRule,
        conversation: list[Message],
        *,
        on_drift: bool,
    ) -> RequestDrift:
        """Read the assistant turns of ``conversation`` (the request's messages)."""
        history = LiveDrift.read(lm, bundle, conversation, rule=rule)
        return cls(history, arming(history.verdicts()), on_drift)

    def telemetry(self, text: str, n_tokens: int, projection: float | None) -> dict[str, Any]:
        """The response's drift fields for the reply ``text`` (``projection``: its content-token
        mean at the rule's layer from the generation pass)."""
        reading = self.history.with_reply(text, n_tokens, projection)
        drift = reading.telemetry()
        alarm = drift["level"] == "alarm" if self.history.rule.has_cusum else None
        out: dict[str, Any] = {"drift": alarm, "drift_reading": drift}
        if self.on_drift:
            after = arming(reading.verdicts())
            out["on_drift"] = {
                "armed": self.gate.armed,
                "since_turn": self.gate.since,
                "armed_next": after.armed,
            }
        return out


def describe_rule(rule: DriftRule) -> dict[str, Any]:
    """The rule as a client sees it: layer, limits and where the numbers came from."""
    return {
        "layer": rule.layer,
        "has_levels": rule.has_cusum,
        "relative": rule.relative,
        "watch": rule.watch,
        "warning": rule.warning,
        "k": rule.k,
        "h": rule.h,
        "ewma_lambda": rule.ewma_lambda,
        "reference": rule.reference,
        "scale": rule.scale,
        "source": rule.source,
    }
