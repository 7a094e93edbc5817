"""A chat session watched by the drift rule: each reply's level, the on-drift cap, compare mode.

:class:`DriftChat` keeps the history like
:class:`~persona_axis.application.session.ChatSession` and, before each reply, reads the
earlier turns with the one drift rule (:class:`~persona_axis.drift.live.LiveDrift`, as the
server does for a request), so:

- every reply carries the rule's level for it (what ``persona-axis monitor`` would report for
  that turn of the saved conversation);
- ``cap="on-drift"`` caps a reply with the bundle's recommended cap only while the gate
  (:mod:`persona_axis.drift.gate`) is armed; the state is recomputed from the history each
  time, never kept in the session, so a session restored from a saved history behaves the same;
- ``compare=True`` also answers every message the other way (uncapped when the reply was
  capped, else with the cap: the chosen one or the recommended one), side by side; the
  conversation goes on with the session's own reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from persona_axis.application.session import Turn, generate_turns
from persona_axis.drift.gate import ON_DRIFT, arming
from persona_axis.drift.live import LiveDrift
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.generation import Sampling

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.rule import DriftRule, Level
    from persona_axis.inference.interventions import InterventionSpec
    from persona_axis.models.loading import LoadedModel


@dataclass(frozen=True)
class DriftReply:
    """One reply: its turn (projections before/after the cap), the rule's ``level`` and
    reading of it, whether the cap applied (``capped``; for on-drift, whether the gate was
    armed), and in compare mode the same message answered the other way (``other``)."""

    turn: Turn
    level: Level
    reading: dict[str, Any]
    capped: bool
    other: Turn | None = None


@dataclass
class DriftChat:
    """See the module doc. ``capped``/``free``: the specs with and without the cap (both with
    the steering, if any); ``cap``: the cap name, ``"on-drift"`` or None."""

    lm: LoadedModel
    bundle: AxisBundle
    rule: DriftRule
    capped: InterventionSpec
    free: InterventionSpec
    cap: str | None = None
    compare: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    history: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        lm: LoadedModel,
        bundle: AxisBundle,
        *,
        cap: str | None = None,
        steer: float | None = None,
        compare: bool = False,
        sampling: Sampling | None = None,
        system: str | None = None,
        allow_mismatch: bool = False,
    ) -> DriftChat:
        """A session on ``lm`` with ``bundle`` (checked against the weights); ``cap`` a cap
        setting, ``"recommended"``, ``"none"`` or ``"on-drift"``."""
        from persona_axis.drift.profile import drift_rule

        name = None if cap in (None, "none") else cap
        chosen: str | None = "recommended" if name in (None, ON_DRIFT) else name
        if name is None and not compare:
            chosen = None
        capped = bundle.checked_intervention(lm, chosen, steer, allow_mismatch=allow_mismatch)
        free = bundle.checked_intervention(lm, None, steer, allow_mismatch=allow_mismatch)
        history = [{"role": "system", "content": system}] if system else []
        return cls(
            lm,
            bundle,
            drift_rule(bundle),
            capped,
            free,
            name,
            compare,
            sampling or Sampling(),
            history,
        )

    def send(self, text: str) -> DriftReply:
        """Answer ``text`` (module doc)."""
        if not text.strip():
            raise PersonaAxisError("Empty message; type something to send.")
        conversation = [*self.history, {"role": "user", "content": text}]
        history = LiveDrift.read(self.lm, self.bundle, conversation, rule=self.rule)
        gated = self.cap == ON_DRIFT
        capped = arming(history.verdicts()).armed if gated else self.cap is not None
        turn = self._reply(conversation, self.capped if capped else self.free)
        other = None
        if self.compare:
            other = self._reply(conversation, self.free if capped else self.capped)
        reading = history.with_reply(turn.reply.text, len(turn.reply.token_ids), turn.before)
        self.history = [*conversation, {"role": "assistant", "content": turn.reply.text}]
        return DriftReply(turn, reading.level, reading.telemetry(), capped, other)

    def _reply(self, conversation: list[dict[str, str]], spec: InterventionSpec) -> Turn:
        return generate_turns(self.lm, [conversation], spec, self.sampling, self.bundle)[0]
