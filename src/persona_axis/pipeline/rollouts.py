"""One batch of rollouts: generated with their response activations pooled in the same pass,
then written to the build store. The unit of work of both the in-process and the Ray-sharded
generation stage."""

from __future__ import annotations

import torch

from persona_axis.inference.engine import GenerationEngine
from persona_axis.inference.generation import Sampling, generate_replies
from persona_axis.models.loading import LoadedModel
from persona_axis.pipeline.config import BuildConfig
from persona_axis.pipeline.plan import RolloutSpec
from persona_axis.pipeline.store import BuildStore


def generate_batch(
    lm: LoadedModel, store: BuildStore, k: int, specs: list[RolloutSpec], config: BuildConfig
) -> None:
    """Generate batch ``k`` (seed ``config.seed + k``; rollout i of the batch samples with
    :func:`~persona_axis.inference.engine.row_seed` ``(seed, i)``) with every layer pooled in
    the same pass, on ``config.engine``; store it."""
    layers = list(range(lm.shape.n_layers))
    sampling = Sampling(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed + k,
    )
    messages = [s.messages() for s in specs]
    replies = generate_replies(
        lm, messages, sampling, pool_layers=layers, engine=build_engine(lm, config)
    )
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


def build_engine(lm: LoadedModel, config: BuildConfig) -> GenerationEngine | None:
    """The engine the build generates on: None (a fresh HF continuous batch per batch) for
    ``engine="hf"``; the process's vLLM engine for ``"vllm"`` (started once, then reused)."""
    if config.engine != "vllm":
        return None
    from persona_axis.inference.vllm.engine import shared_batch

    return shared_batch(lm, max_rows=config.batch_size)
