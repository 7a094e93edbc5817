"""Projections on the axis read during a forward pass or generation, with no extra pass.

:func:`record_projections` hooks decoder blocks and stores ``⟨h, â_L⟩`` (unit axis, float32)
for every token of every forward call. ``stage="pre"`` registers its hook ahead of any other
hook on the block, so it reads the block output *before* an intervention at that layer;
``stage="post"`` reads it after every hook registered before it (open it inside
:func:`~persona_axis.inference.interventions.intervene` to read capped values).

In ``model.generate`` the prompt call covers the prompt tokens; each later call covers the token
generated one step earlier. A reply's content activations are therefore the generated-position
records (the last sampled token is never fed back, which for a reply ended by an end-of-turn
token is exactly the content).

:func:`generate_with_telemetry` gives live telemetry: replies plus, per reply, the mean
projection at chosen layers before and after an intervention, with zero extra passes, read by
the generation engine (:mod:`~persona_axis.inference.rows`). It takes an axis tensor and layers;
the bundle-aware calls live in :mod:`persona_axis.application`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.engine import GenerationEngine, Reply, Sampling
from persona_axis.inference.generation import run_conversations
from persona_axis.inference.hooks import PositionTracker, block_output, removing
from persona_axis.inference.interventions import InterventionSpec
from persona_axis.inference.rows import Probe, ReplyTelemetry, unit_rows
from persona_axis.models.chat import Message
from persona_axis.models.loading import LoadedModel

__all__ = [
    "ProjectionLog",
    "ReplyTelemetry",
    "generate_with_telemetry",
    "record_projections",
]


@dataclass
class ProjectionLog:
    """Per-token projections at ``layers``; ``calls[i]`` is ``[batch, tokens_i, n_layers]``."""

    layers: list[int]
    tracker: PositionTracker
    calls: list[Tensor] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def all_positions(self) -> Tensor:
        """``[batch, positions, n_layers]`` of the most recent prompt and what followed it."""
        start = max((i for i, off in enumerate(self.offsets) if off == 0), default=0)
        if not self.calls:
            raise PersonaAxisError("No forward pass was recorded inside the context.")
        return torch.cat(self.calls[start:], dim=1)

    def generated(self) -> Tensor:
        """``[batch, n_fed_generated_tokens, n_layers]``: positions past the prompt."""
        return self.all_positions()[:, self.tracker.prompt_length :]

    def layer_index(self, layer: int) -> int:
        return self.layers.index(layer)


@contextmanager
def record_projections(
    lm: LoadedModel,
    axis: Tensor,
    layers: Sequence[int],
    *,
    stage: Literal["pre", "post"] = "post",
) -> Iterator[ProjectionLog]:
    """Record projections on the unit ``axis`` ``[n_layers, d]`` at ``layers`` (see module doc)."""
    chosen = sorted(set(layers))
    units = unit_rows(axis, chosen, lm.shape.n_layers)
    with ExitStack() as stack:
        tracker = stack.enter_context(PositionTracker().attached(lm.stack.module))
        log = ProjectionLog(layers=chosen, tracker=tracker)
        current: dict[int, Tensor] = {}

        def hook_for(slot: int) -> Any:
            def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
                h = block_output(output)
                projection = torch.matmul(h.float(), units[slot].to(h.device))
                current[slot] = projection.detach().cpu()
                if len(current) == len(chosen):
                    log.calls.append(torch.stack([current[i] for i in range(len(chosen))], -1))
                    log.offsets.append(tracker.offset)
                    current.clear()

            return hook

        handles = [
            lm.stack.layers[layer].register_forward_hook(hook_for(slot), prepend=stage == "pre")
            for slot, layer in enumerate(chosen)
        ]
        stack.enter_context(removing(handles))
        yield log


def generate_with_telemetry(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    axis: Tensor,
    layers: Sequence[int],
    *,
    spec: InterventionSpec | None = None,
    sampling: Sampling | None = None,
    engine: GenerationEngine | None = None,
) -> list[tuple[Reply, ReplyTelemetry | None]]:
    """Generate the next reply of each conversation under ``spec`` and read its projections on
    ``axis`` ``[n_layers, d]`` at ``layers`` in the same pass (a
    :class:`~persona_axis.inference.rows.Probe` per row, through the generation engine:
    :func:`~persona_axis.inference.generation.run_conversations`, ``engine`` as there).

    This layer knows nothing of bundles; :func:`persona_axis.application.generate.generate`
    (capped turns from a bundle) and :func:`persona_axis.generate_with_telemetry` take one.

    No extra forward pass is run: the engine reads while it decodes and feeds the last content
    token once more, so every content token has been read. A reply with no content tokens gets
    ``None``. The values equal a teacher-forced pass over the finished conversation
    (:func:`persona_axis.drift.monitor.turn_projections`) up to float rounding.
    """
    probe = Probe(axis, tuple(sorted(set(layers))))
    finished = run_conversations(lm, conversations, sampling, spec=spec, probe=probe, engine=engine)
    return [(item.reply, item.telemetry) for item in finished]
