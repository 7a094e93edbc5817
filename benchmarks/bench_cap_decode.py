"""Greedy decoding with a floor cap on 8 layers vs plain decoding, batch 1 and 16.

Runs alternate (plain, capped, plain, ...) and the median time of each is compared. Every run
generates exactly ``--new-tokens`` tokens, so both sides do the same work but the hooks. The
floors sit at the median projection of the prompt tokens, so the cap binds on about half of
the values. Run alone: another torch process on the same cores distorts every number.

    python benchmarks/bench_cap_decode.py [--dtype bfloat16] [--rounds 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, machine
from persona_axis.inference.generation import Sampling
from persona_axis.inference.interventions import InterventionSpec, intervene
from persona_axis.inference.telemetry import record_projections
from persona_axis.models import LoadedModel, load_model

QUESTIONS = [
    "Who are you, and what do you care about?",
    "Describe a quiet morning by the sea.",
    "How do I apologise to a friend I hurt?",
    "What makes a good teacher?",
]


def batch(lm: LoadedModel, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and attention mask for ``size`` chats."""
    prompts = [
        lm.chat.render(
            [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], add_generation_prompt=True
        ).input_ids
        for i in range(size)
    ]
    width = max(map(len, prompts))
    ids = torch.full((size, width), lm.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def cap_spec(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> InterventionSpec:
    """Floors at layers centred on the target layer, at the median prompt projection."""
    axis = torch.randn(
        lm.shape.n_layers, lm.shape.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    band = list(range(lm.shape.target_layer - 4, lm.shape.target_layer + 4))
    with record_projections(lm, axis, band) as log, torch.no_grad():
        lm.model(input_ids=ids, attention_mask=mask)
    values = log.all_positions()[mask.bool()]  # [tokens, layers]
    floors = values.median(dim=0).values
    return InterventionSpec.floor_cap(axis, list(zip(band, floors.tolist(), strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    lm = load_model(dtype=args.dtype)
    print(f"{machine()}; dtype {args.dtype}; greedy, {args.new_tokens} new tokens, cap on 8 layers")
    config = Sampling(max_new_tokens=args.new_tokens).config(lm)
    config.min_new_tokens = args.new_tokens
    for size in (1, 16):
        ids, mask = batch(lm, size)
        spec = cap_spec(lm, ids, mask)

        @torch.no_grad()
        def plain(ids=ids, mask=mask) -> torch.Tensor:
            return lm.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

        def capped(spec=spec) -> torch.Tensor:
            with intervene(lm, spec):
                return plain()

        plain()  # warm-up
        capped()
        medians = alternate({"plain": plain, "capped": capped}, args.rounds)
        tokens = size * args.new_tokens
        print(
            f"batch {size:2d}: plain {medians['plain']:.3f} s "
            f"({tokens / medians['plain']:.1f} tok/s), "
            f"capped {medians['capped']:.3f} s; capped/plain = "
            f"{medians['capped'] / medians['plain']:.3f}x"
        )


if __name__ == "__main__":
    main()
