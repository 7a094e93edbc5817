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
:class:`MonitorResult`. The result types (turn, conversation, run) are in
:mod:`persona_axis.drift.readings`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from persona_axis.drift.context import (
    ContextPolicy,
    ConversationPlan,
    plan_conversation,
)
from persona_axis.drift.conversations import Conversation, ReadFailure
from persona_axis.drift.features import TurnFeatures, performed_replies
from persona_axis.drift.projections import (
    project_plans,
    projections_from_tokens,
    turn_projections,
)
from persona_axis.drift.readings import ConversationReading, MonitorResult, TurnReading, timing
from persona_axis.drift.request_probe import RequestProbe
from persona_axis.drift.rule import DriftRule, cusum_lower
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.models.chat import Message
    from persona_axis.models.loading import LoadedModel

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
    probe: RequestProbe | None = None
    """The bundle's request probe (None: performed turns come from phrase patterns only)."""

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
            RequestProbe.from_bundle(bundle),
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
            request_layer=None if self.probe is None else self.probe.layer,
            batch_size=self.batch_size,
        )
        for (slot, conversation, plan), value in zip(planned, values, strict=True):
            logits = None
            if self.probe is not None and value.requests is not None:
                logits = self.probe.logits(value.requests)
            out[slot] = self.reading(conversation, plan, value.projections.tolist(), logits)
        return [item for item in out if item is not None]

    def reading(
        self,
        conversation: Conversation,
        plan: ConversationPlan,
        table: list[list[float]],
        logits: Sequence[float | None] | None = None,
    ) -> ConversationReading:
        """Judge one conversation's projections ``table[turn][layer column]``; ``logits``: per
        assistant turn, the request probe's logit for its request (None: not read)."""
        layers = self.layers
        rows = [[_finite(x) for x in row] for row in table]
        target = [row[layers.index(self.rule.layer)] for row in rows]
        features = []
        by_message: list[bool | None] | None = None
        heard = None
        if logits is not None and self.probe is not None:
            heard = [self.probe.hears(logit) for logit in logits]
            by_message = [None] * len(conversation.messages)
            for context, verdict in zip(plan.contexts, heard, strict=True):
                by_message[context.message_index] = verdict
        performed = performed_replies(conversation.messages, by_message)
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
                verdict=verdict,
                features=feature,
                context=context,
                heard=None if heard is None else heard[number],
                request_logit=None if logits is None else logits[number],
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
