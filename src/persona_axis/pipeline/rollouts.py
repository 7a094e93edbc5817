"""One batch of rollouts: generated with their response activations pooled in the same pass,
then written to the build store. The unit of work of both the in-process and the Ray-sharded
generation stage."""

from __future__ import annotations

import torch

from persona_axis.inference.generation import Sampling, generate_replies
from persona_axis.models.loading import LoadedModel
from persona_axis.pipeline.config import BuildConfig
from persona_axis.pipeline.plan import RolloutSpec
from persona_axis.pipeline.store import BuildStore


def generate_batch(
    lm: LoadedModel, store: BuildStore, k: int, specs: list[RolloutSpec], config: BuildConfig
) -> None:
    """Generate batch ``k`` (seed ``config.seed + k``) with pooled activations; store it."""
    layers = list(range(lm.shape.n_layers))
    sampling = Sampling(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed + k,
    )
    replies = generate_replies(lm, [s.messages() for s in specs], sampling, pool_layers=layers)
    zeros = torch.zeros(len(layers), lm.shape.hidden_size)
    store.write_batch(
        k,
        [
            {**spec.__dict__, "reply": r.text, "n_tokens": len(r.token_ids), "finished": r.finished}
            for spec, r in zip(specs, replies, strict=True)
        ],
        torch.stack([zeros if r.activations is None else r.activations for r in replies]),
        torch.stack([zeros[:, 0] if r.norms is None else r.norms for r in replies]),
        [r.token_ids for r in replies],
        dtype=getattr(torch, config.activation_dtype),
    )
