"""The drift rule on a live conversation: its earlier assistant turns, then the reply just made.

The server is stateless and a chat session may be resumed from any history, so the rule's
state is always recomputed from the conversation itself: :meth:`LiveDrift.read` reads every
earlier assistant turn exactly as ``persona-axis monitor`` does (same layer, context policy,
content pooling and features; one pass per context window stopped at the rule's layer, no
intervention), and :meth:`LiveDrift.with_reply` adds the new reply with the projection its
generation pass measured (content-token mean at the rule's layer, ``before`` any intervention
there). :meth:`LiveDrift.verdicts` then runs the one rule
(:func:`persona_axis.drift.profile.drift_rule`) over all of them, so the level reported for a
reply is the level ``monitor`` reports for that turn of the logged conversation (up to float
rounding, and up to the cap's effect on the reply's own projection when it was generated
capped: ``monitor`` reads the text uncapped).

Cost: reading the history is one forward pass over the prompt up to the rule's layer, ahead of
generation (it must come first, since the on-drift cap is decided from it; the generation's own
prefill may be capped, so it cannot stand in). With the bundle's request probe
(:mod:`persona_axis.drift.request_probe`) the same pass also reads the trailing user message,
so that the reply is marked performed as ``monitor`` will mark it; without a probe,
conversations without an earlier assistant turn need no pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from persona_axis.drift.conversations import Conversation, ReadFailure
from persona_axis.drift.features import TurnFeatures, performed_replies
from persona_axis.drift.request_probe import RequestProbe, read_requests
from persona_axis.drift.rule import DriftRule, Level, TurnVerdict
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.context import ContextPolicy
    from persona_axis.models.chat import Message
    from persona_axis.models.loading import LoadedModel


def reply_text(text: str) -> str:
    """The part of a reply the rule's content features read (after any ``</think>``)."""
    return text.rpartition("</think>")[2]


@dataclass(frozen=True)
class LiveDrift:
    """A conversation's assistant turns as the rule sees them: projection at ``rule.layer``
    (None: no content) and content features, oldest first."""

    rule: DriftRule
    projections: tuple[float | None, ...] = ()
    features: tuple[TurnFeatures | None, ...] = ()
    asking: tuple[Message, ...] = ()
    """The conversation up to the request's trailing user message (empty: none), so that the
    reply to it is marked performed or not
    (:func:`persona_axis.drift.features.performed_replies`, which also reads the reply's own
    text) as ``monitor`` will mark it once it is logged."""
    pending: bool | None = None
    """The bundle's request probe's verdict on that trailing user message
    (:mod:`persona_axis.drift.request_probe`; None: no probe or no such message)."""

    @classmethod
    def read(
        cls,
        lm: LoadedModel,
        bundle: AxisBundle,
        messages: Sequence[Message],
        *,
        rule: DriftRule | None = None,
        policy: ContextPolicy | None = None,
    ) -> LiveDrift:
        """The assistant turns of ``messages`` read as the monitor reads them, under ``rule``
        (default: the bundle's one rule), and a trailing user message as the request probe
        reads it (:attr:`pending`)."""
        from persona_axis.drift.monitor import Monitor
        from persona_axis.drift.profile import drift_rule

        rule = rule or drift_rule(bundle)
        history = list(messages)
        asking = tuple(history) if history and history[-1]["role"] == "user" else ()
        while history and history[-1]["role"] != "assistant":
            history.pop()
        probe = RequestProbe.from_bundle(bundle) if asking else None
        if rule.scale is None or not (history or probe):
            return cls(rule, asking=asking)
        if probe is not None:  # the trailing request is read in the same pass, as a turn's is
            history = [*asking, {"role": "assistant", "content": ""}]
        runner = Monitor.create(lm, bundle, extra_layers=[], rule=rule, policy=policy, batch_size=1)
        found = next(iter(runner.run([Conversation(tuple(map(dict, history)))])))
        if isinstance(found, ReadFailure):  # no earlier turn with content, or unreadable
            if probe is None:
                return cls(rule, asking=asking)
            try:
                (requests,) = read_requests(lm, bundle, [history], probe.layer, policy=policy)
            except PersonaAxisError:  # the template refuses it: judged without the probe
                return cls(rule, asking=asking)
            return cls(rule, asking=asking, pending=probe.heard(requests[-1:])[0])
        if probe is None:
            turns, pending = found.turns, None
        else:
            turns, pending = found.turns[:-1], found.turns[-1].heard
        return cls(
            rule,
            tuple(turn.projection for turn in turns),
            tuple(turn.features for turn in turns),
            asking,
            pending,
        )

    @property
    def n_turns(self) -> int:
        return len(self.projections)

    def with_reply(self, text: str, n_tokens: int, projection: float | None) -> LiveDrift:
        """These turns and the reply ``text`` with ``n_tokens`` content tokens, whose projection
        at the rule's layer is ``projection`` (None: no content)."""
        turn = self.n_turns + 1
        reply: Message = {"role": "assistant", "content": text}
        heard = [*([None] * len(self.asking)), self.pending]
        performed = bool(self.asking) and performed_replies([*self.asking, reply], heard)[-1]
        features = (
            TurnFeatures.of(reply_text(text), n_tokens, turn, performed=performed)
            if n_tokens
            else None
        )
        return LiveDrift(self.rule, (*self.projections, projection), (*self.features, features))

    def verdicts(self) -> list[TurnVerdict]:
        """The rule's verdict on every turn (as ``monitor`` gives them)."""
        return self.rule.judge(list(self.projections), list(self.features))

    @property
    def level(self) -> Level:
        """The level of the latest turn ("none" without turns)."""
        verdicts = self.verdicts()
        return verdicts[-1].level if verdicts else "none"

    def telemetry(self) -> dict[str, Any]:
        """The latest turn's reading for a response: turn number, level, whether it counts as
        performed (reported, not judged) and the statistics (expected projection, shortfall,
        change, EWMA, CUSUM; None where the rule skips it)."""
        verdicts = self.verdicts()
        last = verdicts[-1] if verdicts else None

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        latest = self.features[-1] if self.features else None
        return {
            "turn": self.n_turns,
            "level": "none" if last is None else last.level,
            "performed": latest is not None and latest.performed,
            "levels": [v.level for v in verdicts],
            "expected": None if last is None else rounded(last.expected),
            "shortfall": None if last is None else rounded(last.shortfall),
            "change": None if last is None else rounded(last.change),
            "ewma": None if last is None else rounded(last.ewma),
            "cusum": None if last is None else rounded(last.cusum),
        }
