"""One batch of rollouts: generated with their response activations pooled in the same pass,
then written to the build store. The unit of work of both the in-process and the Ray-sharded
generation stage."""

from __future__ import annotations

from dataclasses import replace

import torch

from persona_axis.inference.engine import RowRequest, run_to_end
from persona_axis.inference.generation import Reply, Sampling, generate_replies
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
    if config.engine == "vllm":
        replies = vllm_replies(lm, specs, sampling, config.batch_size)
    else:
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


def vllm_replies(
    lm: LoadedModel, specs: list[RolloutSpec], sampling: Sampling, max_rows: int
) -> list[Reply]:
    """The batch's replies from the process's vLLM engine, every layer pooled in the same pass.
    Rollout i of the batch samples with seed ``sampling.seed * max_rows + i`` (vLLM seeds per
    request; there is no batch-wide generator)."""
    from persona_axis.inference.vllm.engine import shared_batch

    batch = shared_batch(lm, max_rows=max_rows)
    for index, spec in enumerate(specs):
        prompt = lm.chat.render(spec.messages(), add_generation_prompt=True).input_ids
        seeded = replace(sampling, seed=sampling.seed * max_rows + index)
        batch.add(RowRequest(index, prompt, seeded), pool=True)
    done = run_to_end(batch, [])
    return [done[index].reply for index in range(len(specs))]
