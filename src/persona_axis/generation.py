"""Batched chat replies with Hugging Face ``generate``: left padding, thinking off, seeds.

Prompts are rendered by :class:`~persona_axis.models.chat.ChatFormat` with the generation prompt
(thinking switched off where the template has the switch). Batches are left padded so every
prompt ends at the same position, which keeps "prompt" and "generated" positions aligned for
interventions and telemetry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from persona_axis.errors import PersonaAxisError
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
            eos_token_id=_stop_ids(lm),
        )


@dataclass(frozen=True)
class Reply:
    """One generated reply: text (special tokens removed), token ids, prompt length."""

    text: str
    token_ids: list[int]
    prompt_length: int
    finished: bool  # ended with an end-of-turn token rather than the length limit


def _stop_ids(lm: LoadedModel) -> list[int]:
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
) -> list[Reply]:
    """Generate the next assistant reply for each conversation, in one left-padded batch."""
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
    torch.manual_seed(sampling.seed)
    out = lm.model.generate(  # type: ignore[operator]  # transformers types it loosely
        input_ids=ids.to(lm.device),
        attention_mask=mask.to(lm.device),
        generation_config=sampling.config(lm),
    )
    stops = set(_stop_ids(lm))
    replies = []
    for row, prompt in enumerate(prompts):
        new = out[row, width:].tolist()
        cut = next((i for i, token in enumerate(new) if token in stops), None)
        tokens = new if cut is None else new[:cut]
        replies.append(
            Reply(
                text=str(lm.tokenizer.decode(tokens, skip_special_tokens=True)).strip(),
                token_ids=tokens,
                prompt_length=len(prompt),
                finished=cut is not None,
            )
        )
    return replies
