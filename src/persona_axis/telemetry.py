"""Projections on the axis read during a forward pass or generation, with no extra pass.

:func:`record_projections` hooks decoder blocks and stores ``⟨h, â_L⟩`` (unit axis, float32)
for every token of every forward call. ``stage="pre"`` registers its hook ahead of any other
hook on the block, so it reads the block output *before* an intervention at that layer;
``stage="post"`` reads it after every hook registered before it (open it inside
:func:`~persona_axis.interventions.intervene` to read capped values).

In ``model.generate`` the prompt call covers the prompt tokens; each later call covers the token
generated one step earlier. A reply's content activations are therefore the generated-position
records (the last sampled token is never fed back, which for a reply ended by an end-of-turn
token is exactly the content).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from persona_axis.errors import PersonaAxisError
from persona_axis.hooks import PositionTracker, block_output, removing
from persona_axis.models.loading import LoadedModel


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
    if not chosen or not all(0 <= layer < lm.shape.n_layers for layer in chosen):
        raise PersonaAxisError(
            f"Layers {list(layers)} must be within 0..{lm.shape.n_layers - 1} and not empty."
        )
    units = axis[chosen].float()
    units = units / units.norm(dim=-1, keepdim=True)
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
