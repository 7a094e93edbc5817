"""A multi-turn chat with an optional intervention and per-reply projections on the axis.

Each reply's projection is the mean, over the reply's content tokens, of ``⟨h, â_L⟩`` at the
bundle's target layer L, read in the generation pass itself: ``before`` at the block output
ahead of any intervention at L, ``after`` once the intervention at L has run (equal when L is
not intervened on; upstream interventions affect both). ``touched`` is the fraction of
(token, capped layer) pairs whose projection was below the floor and got raised.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from persona_axis.bundle import AxisBundle
from persona_axis.errors import PersonaAxisError
from persona_axis.generation import Reply, Sampling, generate_replies
from persona_axis.interventions import InterventionSpec, intervene, mean_residual_norms
from persona_axis.models.loading import LoadedModel
from persona_axis.telemetry import record_projections

MEAN_NORM_KEY = "stats/mean_norm"
# Short chats, ours, for estimating the mean residual norm when a bundle stores none.
NORM_SAMPLES = [
    [
        {"role": "user", "content": "What is a good way to start learning to cook?"},
        {
            "role": "assistant",
            "content": "Start with a few simple dishes you enjoy, like eggs, "
            "rice and a soup, and cook them until they feel easy.",
        },
    ],
    [
        {"role": "user", "content": "Can you explain what a prime number is?"},
        {
            "role": "assistant",
            "content": "A prime number is a whole number above one whose only "
            "divisors are one and itself, such as 2, 3, 5 and 7.",
        },
    ],
]


@dataclass(frozen=True)
class Turn:
    """One exchange: the reply, and its target-layer projections (None without a bundle)."""

    reply: Reply
    before: float | None
    after: float | None
    touched: float | None


def mean_norms(lm: LoadedModel, bundle: AxisBundle) -> torch.Tensor:
    """``[n_layers]`` mean residual norm: the bundle's stored one, else estimated on samples."""
    stored = bundle.vectors.get(MEAN_NORM_KEY)
    return stored if stored is not None else mean_residual_norms(lm, NORM_SAMPLES)


@dataclass
class ChatSession:
    """Keeps the history; :meth:`send` generates the next reply under ``spec``."""

    lm: LoadedModel
    bundle: AxisBundle | None = None
    spec: InterventionSpec = field(default_factory=InterventionSpec)
    sampling: Sampling = field(default_factory=Sampling)
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.system:
            self.history.append({"role": "system", "content": self.system})

    def send(self, text: str) -> Turn:
        if not text.strip():
            raise PersonaAxisError("Empty message; type something to send.")
        conversation = [*self.history, {"role": "user", "content": text}]
        if self.bundle is None:
            with intervene(self.lm, self.spec):
                reply = generate_replies(self.lm, [conversation], self.sampling)[0]
            self.history = [*conversation, {"role": "assistant", "content": reply.text}]
            return Turn(reply, None, None, None)
        axis, target = self.bundle.axis, self.bundle.target_layer
        caps = {item.layer: item for item in self.spec.interventions if item.floor is not None}
        cap_directions = axis.clone()
        for layer, item in caps.items():  # the last floor per layer is the one counted
            cap_directions[layer] = item.direction
        with ExitStack() as stack:
            before = stack.enter_context(record_projections(self.lm, axis, [target], stage="pre"))
            raised = None
            if caps:
                raised = stack.enter_context(
                    record_projections(self.lm, cap_directions, list(caps), stage="pre")
                )
            stack.enter_context(intervene(self.lm, self.spec))
            after = stack.enter_context(record_projections(self.lm, axis, [target]))
            reply = generate_replies(self.lm, [conversation], self.sampling)[0]
        self.history = [*conversation, {"role": "assistant", "content": reply.text}]
        n = len(reply.token_ids)  # content tokens, all fed back when the reply finished
        if before.generated().shape[1] == 0 or n == 0:
            return Turn(reply, None, None, None)  # nothing was generated past the prompt
        touched = None
        if raised is not None:
            values = raised.generated()[0, :n]  # [tokens, capped layers]
            floors = torch.tensor([caps[layer].floor for layer in raised.layers])
            touched = (values < floors).float().mean().item()
        return Turn(
            reply,
            before.generated()[0, :n, 0].mean().item(),
            after.generated()[0, :n, 0].mean().item(),
            touched,
        )
