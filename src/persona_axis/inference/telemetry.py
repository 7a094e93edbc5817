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
projection at chosen layers before and after an intervention, with zero extra passes. It takes
an axis tensor and layers; the bundle-aware calls live in :mod:`persona_axis.application`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.generation import Reply, Sampling, generate_replies
from persona_axis.inference.hooks import PositionTracker, block_output, removing
from persona_axis.inference.interventions import InterventionSpec, intervene
from persona_axis.models.chat import Message
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
    norms = units.norm(dim=-1, keepdim=True)
    if not bool((norms > 0).all()):
        empty = [
            layer
            for layer, norm in zip(chosen, norms.flatten().tolist(), strict=True)
            if not norm > 0
        ]
        raise PersonaAxisError(
            f"The axis is zero at layers {empty}, so nothing can be projected there; read it at "
            "layers where it is defined (an imported control vector covers only its own layers)."
        )
    units = units / norms
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


@dataclass(frozen=True)
class ReplyTelemetry:
    """Projections of one generated reply on the unit axis, read in its own generation pass.

    ``before[i]`` and ``after[i]`` are means over the reply's ``n_tokens`` content tokens of
    ``⟨h, â_L⟩`` at decoder block ``layers[i]`` (float32 sums, residual-stream units): ``before``
    reads the block output ahead of any intervention at that layer, ``after`` once it has run
    (equal where the layer is not intervened on; upstream interventions move both). ``touched``
    is the fraction of (token, capped layer) pairs whose projection on the cap direction was
    below the floor before capping; None when the spec caps nothing. ``touched_tokens`` counts
    the content tokens raised at one capped layer at least; ``cap_layers`` maps each capped
    layer to the mean projection on its cap direction before and after the floor.
    """

    layers: tuple[int, ...]
    before: tuple[float, ...]
    after: tuple[float, ...]
    n_tokens: int
    touched: float | None = None
    touched_tokens: int | None = None
    cap_layers: dict[int, tuple[float, float]] | None = None

    def at(self, layer: int) -> tuple[float, float]:
        """``(before, after)`` at ``layer``."""
        if layer not in self.layers:
            raise PersonaAxisError(
                f"Layer {layer} was not recorded; recorded layers: {list(self.layers)}."
            )
        index = self.layers.index(layer)
        return self.before[index], self.after[index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "before": list(self.before),
            "after": list(self.after),
            "n_tokens": self.n_tokens,
            "touched": self.touched,
            "touched_tokens": self.touched_tokens,
            "cap_layers": None
            if self.cap_layers is None
            else {str(layer): list(pair) for layer, pair in self.cap_layers.items()},
        }


def generate_with_telemetry(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    axis: Tensor,
    layers: Sequence[int],
    *,
    spec: InterventionSpec | None = None,
    sampling: Sampling | None = None,
) -> list[tuple[Reply, ReplyTelemetry | None]]:
    """Generate the next reply of each conversation (one left-padded batch) under ``spec`` and
    read its projections on ``axis`` ``[n_layers, d]`` at ``layers`` in the same pass.

    This layer knows nothing of bundles; :func:`persona_axis.application.generate.generate`
    (capped turns from a bundle) and :func:`persona_axis.generate_with_telemetry` take one.

    No extra forward pass is run: the hooks record while ``generate`` runs, and ``generate``
    takes one step past the last kept token so every content token has been fed (as when
    pooling, :func:`~persona_axis.inference.generation.generate_replies`). A reply with no content
    tokens gets ``None``. The values equal a teacher-forced pass over the finished conversation
    (:func:`persona_axis.drift.monitor.turn_projections`) up to float rounding.
    """
    spec = spec or InterventionSpec()
    chosen = sorted(set(layers))
    caps = {item.layer: item for item in spec.interventions if item.floor is not None}
    cap_directions = axis.detach().float().clone()
    for layer, item in caps.items():  # the last floor per layer is the one counted
        cap_directions[layer] = item.direction
    with ExitStack() as stack:
        before = stack.enter_context(record_projections(lm, axis, chosen, stage="pre"))
        raised = None
        if caps:
            raised = stack.enter_context(
                record_projections(lm, cap_directions, list(caps), stage="pre")
            )
        stack.enter_context(intervene(lm, spec))
        after = stack.enter_context(record_projections(lm, axis, chosen))
        replies = generate_replies(lm, conversations, sampling, pool_layers=chosen[:1])
    if not replies:
        return []
    has_generated = bool(before.calls) and before.generated().shape[1] > 0
    pre = before.generated() if has_generated else None
    post = after.generated() if has_generated else None
    lifted = raised.generated() if raised is not None and has_generated else None
    floors = torch.tensor([caps[layer].floor for layer in raised.layers]) if raised else None
    results: list[tuple[Reply, ReplyTelemetry | None]] = []
    for row, reply in enumerate(replies):
        n = len(reply.token_ids)
        if n == 0 or pre is None or post is None:
            results.append((reply, None))
            continue
        touched = touched_tokens = cap_layers = None
        if lifted is not None and floors is not None and raised is not None:
            values = lifted[row, :n]  # [tokens, capped layers]
            below = values < floors
            touched = float(below.float().mean())
            touched_tokens = int(below.any(dim=-1).sum())
            capped = torch.maximum(values, floors)
            cap_layers = {
                layer: (float(values[:, i].mean()), float(capped[:, i].mean()))
                for i, layer in enumerate(raised.layers)
            }
        telemetry = ReplyTelemetry(
            layers=tuple(chosen),
            before=tuple(float(x) for x in pre[row, :n].mean(dim=0)),
            after=tuple(float(x) for x in post[row, :n].mean(dim=0)),
            n_tokens=n,
            touched=touched,
            touched_tokens=touched_tokens,
            cap_layers=cap_layers,
        )
        results.append((reply, telemetry))
    return results
