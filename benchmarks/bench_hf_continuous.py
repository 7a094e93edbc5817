"""transformers' own continuous batching (``generate_batch``) vs ``generate`` on this machine.

Why persona-axis has its own continuous-batching loop (persona_axis.inference.continuous): the
same 8 chat prompts, 32 greedy tokens each, through ``model.generate_batch`` (paged KV cache,
ragged batches) and through one left-padded ``model.generate`` call; alternating, medians.
It also reports what a forward hook on a decoder block sees under ``generate_batch`` (one
flattened sequence holding every request's tokens) and whether the greedy tokens agree.

    cpu exclusive .venv/bin/python benchmarks/bench_hf_continuous.py
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from transformers import GenerationConfig

from common import machine
from persona_axis.inference.hooks import block_output
from persona_axis.models import load_model

TEXTS = [
    "Write a detailed guide to planting a vegetable garden in spring.",
    "Explain how a bicycle gear system works.",
    "Describe the water cycle.",
    "Tell me a long story about a fox who learns to fly.",
] * 2


def main(rounds: int = 2) -> None:
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    lm = load_model(dtype="float32")
    model, tokenizer = lm.model, lm.tokenizer
    chats = [[{"role": "user", "content": text}] for text in TEXTS]
    prompts = [lm.chat.render(c, add_generation_prompt=True).input_ids for c in chats]
    config = GenerationConfig(
        max_new_tokens=32,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    shapes: list[tuple[int, ...]] = []
    handle = lm.stack.layers[1].register_forward_hook(
        lambda module, args, out: shapes.append(tuple(block_output(out).shape))
    )
    times: dict[str, list[float]] = {"generate_batch": [], "generate": []}
    batched = plain = None
    for _ in range(rounds):
        start = time.perf_counter()
        batched = model.generate_batch(prompts, generation_config=config, progress_bar=False)
        times["generate_batch"].append(time.perf_counter() - start)
        model.set_attn_implementation("sdpa")
        start = time.perf_counter()
        plain = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        times["generate"].append(time.perf_counter() - start)
    handle.remove()
    assert batched is not None and plain is not None
    same = sum(
        plain[row, width:].tolist()[: len(batched[f"req_{row}"].generated_tokens)]
        == batched[f"req_{row}"].generated_tokens
        for row in range(len(prompts))
    )
    print(machine())
    for name, values in times.items():
        print(f"{name}: {statistics.median(values):.1f} s (median of {rounds})")
    print(f"hook shapes under generate_batch (first calls): {sorted(set(shapes))[:4]}")
    print(f"greedy tokens equal in {same} of {len(prompts)} rows")


if __name__ == "__main__":
    main()
