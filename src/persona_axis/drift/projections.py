"""Per-turn projections of conversations on the Assistant Axis, under the context policy.

A turn's **projection** is ``⟨mean h, â_L⟩``: the mean residual stream (output of decoder block
L) over the turn's content tokens, on the unit axis of layer L, float32, in residual-stream
units; higher = more Assistant-like. It is the number live telemetry reads while generating
(:func:`persona_axis.inference.telemetry.generate_with_telemetry`).

Conversations are planned into windows (:mod:`persona_axis.drift.context`). Short ones (one
window of at most ``chunk_tokens``) run batched, several per forward pass, padded on the right
and grouped by length; longer windows run one at a time in chunks with a KV cache
(:func:`persona_axis.inference.capture.pool_spans_chunked`). Either way the pass stops after
the deepest layer needed and never runs the LM head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from persona_axis.drift.context import ContextPolicy, ConversationPlan, Window, plan_conversation
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.capture import SpanPooler, pool_spans, pool_spans_chunked

if TYPE_CHECKING:
    from persona_axis.inference.capture import Segments
    from persona_axis.models.chat import Message
    from persona_axis.models.loading import LoadedModel

BATCH_TOKENS = 8192  # most (padded) tokens in one batched forward pass


def unit_rows(axis: Tensor, layers: Sequence[int]) -> Tensor:
    """``[len(layers), d]`` float32: the unit axis of each layer."""
    from persona_axis.axis.vectors import unit

    return unit(axis[list(layers)].float())


@dataclass(frozen=True)
class PlanReading:
    """One conversation read under its plan.

    ``projections``: ``[n_assistant_turns, len(layers)]`` float32 projections on the unit axis
    of each layer (``sorted(set(layers))``), NaN for turns without content tokens;
    ``requests``: ``[n_assistant_turns, d]`` float32 mean residual at the request layer over
    the user message each turn answers (NaN rows where the plan holds none), or None when no
    request layer was asked for.
    """

    projections: Tensor
    requests: Tensor | None = None


def project_plans(
    lm: LoadedModel,
    axis: Tensor,
    plans: Sequence[ConversationPlan],
    layers: Sequence[int],
    *,
    request_layer: int | None = None,
    batch_size: int = 8,
    batch_tokens: int = BATCH_TOKENS,
) -> list[PlanReading]:
    """Per plan its :class:`PlanReading`: turn projections at ``layers`` and, with a
    ``request_layer``, the requests' mean residuals there, from the same forward pass."""
    if batch_size < 1:
        raise PersonaAxisError(f"batch_size must be at least 1, not {batch_size}.")
    chosen = sorted(set(layers))
    pooled_layers = sorted({*chosen, *([] if request_layer is None else [request_layer])})
    columns = [pooled_layers.index(layer) for layer in chosen]
    units = unit_rows(axis, chosen)
    out = [torch.full((len(plan.contexts), len(chosen)), float("nan")) for plan in plans]
    hidden = lm.shape.hidden_size
    requests = [torch.full((len(plan.contexts), hidden), float("nan")) for plan in plans]

    def store(i: int, window: Window, acts: Tensor) -> None:
        """Split one window's pooled ``[n_spans, n_pooled_layers, d]`` into its readings."""
        turns = acts[: len(window.turns), columns]
        out[i][window.turns] = torch.einsum("tld,ld->tl", turns, units)
        if request_layer is not None and window.requests:
            numbers = [turn for turn, _ in window.requests]
            requests[i][numbers] = acts[len(window.turns) :, pooled_layers.index(request_layer)]

    def spans(window: Window) -> list[Segments]:
        extra = [segments for _, segments in window.requests] if request_layer is not None else []
        return [*window.spans, *extra]

    short = sorted(
        (i for i, plan in enumerate(plans) if plan.single_pass and plan.windows),
        key=lambda i: len(plans[i].windows[0].input_ids),
    )
    pooler = SpanPooler(lm, pooled_layers)
    with pooler.hooked():
        for batch in _batches(short, plans, batch_size, batch_tokens):
            windows = [plans[i].windows[0] for i in batch]
            pooled = pooler.run([w.input_ids for w in windows], [spans(w) for w in windows])
            for i, window, acts in zip(batch, windows, pooled, strict=True):
                store(i, window, acts)
        for i, plan in enumerate(plans):
            if plan.single_pass:
                continue
            for window in plan.windows:
                if not spans(window):
                    continue
                acts = pool_spans_chunked(
                    lm,
                    window.input_ids,
                    spans(window),
                    chunk_tokens=plan.policy.chunk_tokens,
                    pooler=pooler,
                )
                store(i, window, acts)
    return [
        PlanReading(values, None if request_layer is None else asked)
        for values, asked in zip(out, requests, strict=True)
    ]


def _batches(
    order: list[int], plans: Sequence[ConversationPlan], batch_size: int, batch_tokens: int
) -> list[list[int]]:
    """Consecutive groups (``order`` is sorted by length) of at most ``batch_size`` plans whose
    padded size ``rows × longest`` stays within ``batch_tokens`` (a longer one runs alone)."""
    batches: list[list[int]] = []
    for index in order:
        length = len(plans[index].windows[0].input_ids)
        current = batches[-1] if batches else None
        if (
            current is not None
            and len(current) < batch_size
            and ((len(current) + 1) * length <= batch_tokens)
        ):
            current.append(index)
        else:
            batches.append([index])
    return batches


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
    layer. One forward pass per sequence (batched by length), no LM head, no context policy."""
    chosen = sorted(set(layers))
    units = unit_rows(axis, chosen)
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
    policy: ContextPolicy | None = None,
    batch_size: int = 4,
) -> list[Tensor]:
    """Per conversation ``[n_assistant_turns, len(layers)]`` float32 projections of each
    assistant turn's content mean on the unit axis (layers ``sorted(set(layers))``), read under
    the context ``policy`` (default: :class:`ContextPolicy` for the model); turns with no
    content token are NaN. Raises :class:`PersonaAxisError` for a conversation the chat
    template refuses or one without an assistant turn with content."""
    resolved = (policy or ContextPolicy()).for_model(lm)
    plans = []
    for index, conversation in enumerate(conversations):
        plan = plan_conversation(lm.chat, conversation, resolved)
        if not any(window.turns for window in plan.windows):
            raise PersonaAxisError(
                f"Conversation {index} has no assistant message with content; nothing to monitor."
            )
        plans.append(plan)
    return [
        reading.projections
        for reading in project_plans(lm, axis, plans, layers, batch_size=batch_size)
    ]
