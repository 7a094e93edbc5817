"""The library's generation: the next reply of each conversation, through a generation engine.

:func:`run_conversations` renders each conversation with the generation prompt (thinking
switched off where the template has the switch, :class:`~persona_axis.models.chat.ChatFormat`),
turns it into a :class:`~persona_axis.inference.engine.RowRequest` with the call's
intervention, probe and pooled layers, and runs them all to the end through one engine: by
default a fresh :class:`~persona_axis.inference.continuous.ContinuousBatch` holding every
conversation at once (one prefill, then decoding steps; rows leave as they end), or the engine
the caller passes (e.g. a :class:`~persona_axis.inference.vllm.engine.VllmBatch`). The server
drives the same engines step by step, so a request gives the same reply and telemetry either
way. :func:`generate_replies` returns just the replies;
:func:`~persona_axis.inference.telemetry.generate_with_telemetry` adds the projections.

Sampled rows draw from their own generators: row i of a call seeded s uses
:func:`~persona_axis.inference.engine.row_seed` ``(s, i)``, so a reply depends on its seed and
its place in the call, not on the other rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.continuous import ContinuousBatch
from persona_axis.inference.engine import (
    Finished,
    GenerationEngine,
    Reply,
    RowRequest,
    Sampling,
    row_seed,
    run_to_end,
    stop_ids,
)
from persona_axis.inference.interventions import InterventionSpec
from persona_axis.inference.rows import PoolSums, Probe
from persona_axis.models.chat import Message
from persona_axis.models.loading import LoadedModel

__all__ = ["Reply", "Sampling", "generate_replies", "run_conversations", "stop_ids"]


def run_conversations(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    sampling: Sampling | None = None,
    *,
    spec: InterventionSpec | None = None,
    probe: Probe | None = None,
    pool_layers: Sequence[int] | None = None,
    engine: GenerationEngine | None = None,
) -> list[Finished]:
    """The next reply of each conversation under ``spec`` (None or empty: no intervention),
    read with ``probe`` (None: no telemetry) and pooled at ``pool_layers`` (None: no pooling),
    in the order given (see the module docstring). ``engine`` must be idle; None runs a fresh
    :class:`~persona_axis.inference.continuous.ContinuousBatch` with a row per conversation."""
    sampling = sampling or Sampling()
    if not conversations:
        return []
    pool = None
    if pool_layers is not None:
        pool = PoolSums.start(lm, pool_layers).layers  # checked before anything runs
    chosen = spec if spec is not None and spec.interventions else None
    requests = [
        RowRequest(
            index,
            lm.chat.render(conversation, add_generation_prompt=True).input_ids,
            replace(sampling, seed=row_seed(sampling.seed, index)),
            chosen,
            probe,
            pool,
        )
        for index, conversation in enumerate(conversations)
    ]
    if engine is None:
        engine = ContinuousBatch(lm, max_rows=len(requests))
    elif not engine.idle:
        raise PersonaAxisError("The generation engine is busy; run one call at a time on it.")
    done = run_to_end(engine, requests)
    return [done[index] for index in range(len(requests))]


def generate_replies(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    sampling: Sampling | None = None,
    *,
    spec: InterventionSpec | None = None,
    pool_layers: Sequence[int] | None = None,
    engine: GenerationEngine | None = None,
) -> list[Reply]:
    """The next assistant reply of each conversation (see :func:`run_conversations`).

    With ``pool_layers``, each reply carries its response activation: the mean over its content
    tokens of the block output at those layers (ascending), float32 ``[n_layers_chosen, d]``,
    and the mean norm ``[n_layers_chosen]``, read in the generation pass itself (the last
    content token is fed once more; a reply without content tokens carries None).
    """
    finished = run_conversations(
        lm, conversations, sampling, spec=spec, pool_layers=pool_layers, engine=engine
    )
    return [item.reply for item in finished]
