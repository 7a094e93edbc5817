"""Generate the response-length data of the study: replies of up to 128 tokens whose response
activations are then read over their first 16, 32, 64 and 128 tokens (teacher-forced prefixes).

A causal model's activations over a reply's first T tokens do not depend on what follows, and a
reply sampled with a limit of T tokens is the first T tokens of one sampled with a larger limit,
so one generation gives every length. Design: 40 catalog roles (round-robin over categories, the
first prompt of each) × 6 questions, and the five default prompts × the same 6 questions; the
build's sampling (temperature 0.7, top-p 0.9). Writes OUT/length.safetensors (+ .json):
``acts`` [n, 4, n_layers, d] and per rollout kind/name/question/lengths.

Run (untimed):  cpu shared python studies/length_data.py --out /tmp/axis/length
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import save_tensors

LENGTHS = (16, 32, 64, 128)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--roles", type=int, default=40)
    parser.add_argument("--questions", type=int, default=6)
    args = parser.parse_args()

    from persona_axis.catalog import load_catalog
    from persona_axis.inference.capture import pool_spans
    from persona_axis.inference.generation import Sampling, generate_replies
    from persona_axis.models.loading import load_model
    from persona_axis.pipeline.plan import make_batches, make_plan

    lm = load_model(None, dtype="float32")
    catalog = load_catalog().subset(
        n_roles=args.roles, prompts_per_role=1, n_questions=args.questions, n_traits=0
    )
    specs = [s for batch in make_batches(make_plan(catalog, "SmolLM2", None), 32) for s in batch]
    rows, sequences, spans = [], [], []
    for k, first in enumerate(range(0, len(specs), 32)):
        batch = specs[first : first + 32]
        sampling = Sampling(max(LENGTHS), temperature=0.7, top_p=0.9, seed=3000 + k)
        replies = generate_replies(lm, [s.messages() for s in batch], sampling)
        for spec, reply in zip(batch, replies, strict=True):
            if not reply.token_ids:
                continue
            prompt = lm.chat.render(spec.messages(), add_generation_prompt=True).input_ids
            p = len(prompt)
            sequences.append(prompt + reply.token_ids)
            spans.append([[(p, p + min(t, len(reply.token_ids)))] for t in LENGTHS])
            rows.append(
                {
                    "kind": spec.kind,
                    "name": spec.name,
                    "question": spec.question_index,
                    "prompt": spec.prompt_index,
                    "n_tokens": len(reply.token_ids),
                    "reply": reply.text,
                }
            )
        print(f"generated {first + len(batch)}/{len(specs)}", flush=True)
    acts = pool_spans(lm, sequences, spans, batch_size=8)
    save_tensors(
        args.out / "length.safetensors",
        {"acts": torch.stack(acts)},
        {"rows": rows, "lengths": list(LENGTHS)},
    )


if __name__ == "__main__":
    main()
