"""Capture vs the plain approach (``output_hidden_states`` + masked mean) on 256 rollouts.

Prints throughput ratios (A/B alternating rounds, medians) for all layers and for the target
layer only, and activation-memory ratios (peak RSS minus the RSS after loading, each variant in
a fresh subprocess so peaks do not mix). Run alone: another torch process on the same cores
distorts every number.

    python benchmarks/bench_capture.py [--dtype bfloat16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, machine, peak_rss_mib, reset_peak_rss, rss_mib
from persona_axis.inference.capture import pool_spans
from persona_axis.models import LoadedModel, load_model

N_ROLLOUTS = 256
BATCH = 16
SENTENCES = [
    "The tide comes in twice a day, and every time it leaves something new on the sand.",
    "I keep a small notebook for the questions I cannot answer yet.",
    "Patience is mostly the habit of waiting without resentment.",
    "When a friend lets you down, ask first what they were carrying that day.",
    "There is no shame in changing your mind when the facts change.",
    "Good bread needs time, warmth and very little interference.",
    "A map is useful precisely because it leaves most of the world out.",
    "Some evenings call for a long walk and no conversation at all.",
]
SYSTEMS = [None, "You are an AI assistant.", "You are a lighthouse keeper.", "You are a ghost."]
QUESTIONS = [
    "Who are you?",
    "What matters to you?",
    "How do you handle a lie?",
    "Describe your day.",
]


def rollouts(lm: LoadedModel) -> tuple[list[list[int]], list[list]]:
    """256 rendered rollouts of mixed length (about 40-330 tokens), fixed by a seed."""
    rng = random.Random(0)
    sequences, spans = [], []
    for i in range(N_ROLLOUTS):
        system = SYSTEMS[i % len(SYSTEMS)]
        answer = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(2, 18)))
        messages = [{"role": "system", "content": system}] if system else []
        messages += [
            {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
            {"role": "assistant", "content": answer},
        ]
        rendered = lm.chat.render(messages)
        sequences.append(rendered.input_ids)
        spans.append([s.segments for s in rendered.role_spans("assistant")])
    return sequences, spans


@torch.no_grad()
def plain(lm: LoadedModel, sequences, spans, layers: list[int]) -> list[torch.Tensor]:
    """The usual way: full forward with all hidden states, then masked means per span."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    results: list[torch.Tensor] = [torch.empty(0)] * len(sequences)
    pad = lm.tokenizer.pad_token_id
    for first in range(0, len(order), BATCH):
        chunk = order[first : first + BATCH]
        width = max(len(sequences[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
            mask[row, : len(sequences[i])] = 1
        out = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        for row, i in enumerate(chunk):
            per_span = []
            for segments in spans[i]:
                keep = torch.zeros(width, dtype=torch.bool)
                for a, b in segments:
                    keep[a:b] = True
                per_span.append(
                    torch.stack(
                        [out.hidden_states[L + 1][row, keep].float().mean(0) for L in layers]
                    )
                )
            results[i] = torch.stack(per_span)
    return results


def variants(lm: LoadedModel, sequences, spans) -> dict[str, Callable[[], object]]:
    # every layer on both sides; HF's last hidden state comes after the final norm, which costs
    # the plain side nothing extra, and the parity check below skips that layer
    every = list(range(lm.shape.n_layers))
    target = [lm.shape.target_layer]
    return {
        "capture_all": lambda: pool_spans(lm, sequences, spans, every, batch_size=BATCH),
        "plain_all": lambda: plain(lm, sequences, spans, every),
        "capture_target": lambda: pool_spans(lm, sequences, spans, target, batch_size=BATCH),
        "plain_target": lambda: plain(lm, sequences, spans, target),
    }


def memory_of(variant: str, dtype: str) -> float:
    """Peak RSS minus the after-load RSS of one variant, MiB, in a fresh process."""
    out = subprocess.run(
        [sys.executable, __file__, "--dtype", dtype, "--memory", variant],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["activation_mib"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    parser.add_argument("--memory-only", action="store_true", help="skip the timing rounds")
    args = parser.parse_args()
    lm = load_model(dtype=args.dtype)
    sequences, spans = rollouts(lm)
    runs = variants(lm, sequences, spans)
    if args.memory:
        baseline = rss_mib()
        reset_peak_rss()
        runs[args.memory]()
        print(json.dumps({"activation_mib": peak_rss_mib() - baseline}))
        return
    n_tokens = sum(map(len, sequences))
    print(
        f"{machine()}; dtype {args.dtype}; {N_ROLLOUTS} rollouts, {n_tokens} tokens, batch {BATCH}"
    )
    memory = {name: memory_of(name, args.dtype) for name in runs}
    for scope in ("all", "target"):
        mine, theirs = memory[f"capture_{scope}"], memory[f"plain_{scope}"]
        print(
            f"{scope:6s} layers: activation memory {mine:.0f} MiB vs {theirs:.0f} MiB "
            f"= {mine / theirs:.3f}x (peak minus after-load RSS, fresh process each)"
        )
    if args.memory_only:
        return
    ours, plain_result = runs["capture_all"](), runs["plain_all"]()
    worst = max(
        (a[:, :-1] - b[:, :-1]).abs().max().item() / b[:, :-1].abs().max().item()
        for a, b in zip(ours, plain_result, strict=True)
    )
    print(f"max relative difference capture vs plain: {worst:.2e}")
    medians = alternate(runs, args.rounds)
    for name, seconds in medians.items():
        print(f"  {name:15s} {seconds:7.2f} s  {n_tokens / seconds:8.0f} tokens/s")
    for scope in ("all", "target"):
        speed = medians[f"plain_{scope}"] / medians[f"capture_{scope}"]
        print(f"{scope:6s} layers: throughput {speed:.2f}x plain (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
