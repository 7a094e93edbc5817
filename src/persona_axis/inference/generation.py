"""Batched chat replies with Hugging Face ``generate``: left padding, thinking off, seeds.

Prompts are rendered by :class:`~persona_axis.models.chat.ChatFormat` with the generation prompt
(thinking switched off where the template has the switch). Batches are left padded so every
prompt ends at the same position, which keeps "prompt" and "generated" positions aligned for
interventions and telemetry.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessorList

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.capture import GenerationPooler
from persona_axis.models.chat import Message
from persona_axis.models.loading import LoadedModel


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; ``temperature`` 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise PersonaAxisError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}.")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise PersonaAxisError("temperature must be >= 0 and top_p in (0, 1].")

    def config(self, lm: LoadedModel) -> GenerationConfig:
        tokenizer = lm.tokenizer
        sample = self.temperature > 0
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=sample,
            temperature=self.temperature if sample else None,
            top_p=self.top_p if sample else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop_ids(lm),
        )


@dataclass(frozen=True)
class Reply:
    """One generated reply: text (special tokens removed), token ids, prompt length."""

    text: str
    token_ids: list[int]
    prompt_length: int
    finished: bool  # ended with an end-of-turn token rather than the length limit
    activations: Tensor | None = None
    """``[n_layers_chosen, d]`` float32 content-token mean when pooled during generation."""
    norms: Tensor | None = None
    """``[n_layers_chosen]`` mean ``‖h‖`` over the content tokens, pooled alongside."""


def stop_ids(lm: LoadedModel) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus the generation config's, deduplicated."""
    ids: list[int] = []
    configured = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    for candidate in (lm.tokenizer.eos_token_id, configured):
        if isinstance(candidate, int):
            ids.append(candidate)
        elif isinstance(candidate, list):
            ids.extend(candidate)
    return sorted(set(ids))


@torch.no_grad()
def generate_replies(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    sampling: Sampling | None = None,
    *,
    pool_layers: Sequence[int] | None = None,
) -> list[Reply]:
    """Generate the next assistant reply for each conversation, in one left-padded batch.

    With ``pool_layers``, each reply's response activation (mean over its content tokens at
    those layers, float32) is pooled in the same generation pass (see
    :class:`~persona_axis.inference.capture.GenerationPooler`). ``generate`` then runs one step
    further
    than ``max_new_tokens`` so that every kept token has been fed through the model; a reply cut
    by the limit keeps ``max_new_tokens`` tokens either way.
    """
    sampling = sampling or Sampling()
    prompts = [lm.chat.render(c, add_generation_prompt=True).input_ids for c in conversations]
    if not prompts:
        return []
    width = max(map(len, prompts))
    pad = lm.tokenizer.pad_token_id
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    stops = stop_ids(lm)
    pooler = None if pool_layers is None else GenerationPooler(lm, pool_layers, stops)
    extra = 0 if pooler is None else 1
    config = replace(sampling, max_new_tokens=sampling.max_new_tokens + extra).config(lm)
    with ExitStack() as stack:
        processors = LogitsProcessorList()
        if pooler is not None:
            processors.append(stack.enter_context(pooler.hooked(len(prompts))))
        torch.manual_seed(sampling.seed)
        out = lm.model.generate(  # type: ignore[operator]  # transformers types it loosely
            input_ids=ids.to(lm.device),
            attention_mask=mask.to(lm.device),
            generation_config=config,
            logits_processor=processors,
        )
    pooled, norms = (None, None) if pooler is None else pooler.means()
    replies = []
    for row, prompt in enumerate(prompts):
        new = out[row, width:].tolist()
        cut = next((i for i, token in enumerate(new) if token in stops), None)
        tokens = (new if cut is None else new[:cut])[: sampling.max_new_tokens]
        activations = token_norms = None
        if pooler is not None and pooled is not None and norms is not None:
            if int(pooler.counts[row]) != len(tokens):  # an internal invariant, not user error
                raise RuntimeError(
                    f"pooled {int(pooler.counts[row])} tokens for a {len(tokens)}-token reply"
                )
            if tokens:
                activations, token_norms = pooled[row], norms[row]
        replies.append(
            Reply(
                text=str(lm.tokenizer.decode(tokens, skip_special_tokens=True)).strip(),
                token_ids=tokens,
                prompt_length=len(prompt),
                finished=cut is not None and cut <= sampling.max_new_tokens,
                activations=activations,
                norms=token_norms,
            )
        )
    return replies
