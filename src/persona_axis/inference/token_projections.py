"""Per-token projections on the axis of given replies, teacher-forced: each prompt plus the
reply's own tokens runs once through the decoder stack (never the LM head), and every reply
token's residual projection on the unit axis is read at every layer (``stage="pre"``: before
any intervention), float32.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.telemetry import record_projections
from persona_axis.models.chat import Message
from persona_axis.models.loading import LoadedModel


@torch.no_grad()
def token_projections(
    lm: LoadedModel,
    axis: Tensor,
    sample: list[tuple[list[Message], list[int]]],
    batch_size: int,
    progress: bool,
) -> Tensor:
    """``[n_tokens, n_layers]`` projections of every content token of the sampled rollouts,
    teacher-forced (prompt + the reply's own tokens) in right-padded batches: under a causal
    mask, padding after a sequence leaves its positions and activations untouched."""
    rows: list[Tensor] = []
    layers = list(range(lm.shape.n_layers))
    pad = lm.tokenizer.pad_token_id or 0
    prompts = [lm.chat.render(m, add_generation_prompt=True).input_ids for m, _ in sample]
    sequences = [p + reply for p, (_, reply) in zip(prompts, sample, strict=True)]
    with tqdm(total=len(sample), desc="calibrate", unit="rollout", disable=not progress) as bar:
        for first in range(0, len(sequences), batch_size):
            chunk = sequences[first : first + batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, sequence in enumerate(chunk):
                ids[row, : len(sequence)] = torch.tensor(sequence)
                mask[row, : len(sequence)] = 1
            with record_projections(lm, axis, layers, stage="pre") as log:
                lm.stack.module(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
            values = log.all_positions()
            for row, sequence in enumerate(chunk):
                rows.append(values[row, len(prompts[first + row]) : len(sequence)])
            bar.update(len(chunk))
    if not rows:
        raise PersonaAxisError("No rollout with a reply to calibrate on.")
    return torch.cat(rows)
