"""Generation speed of the default model by dtype (docs/axis-quality.md, "quick").

One batch of ``BATCH`` chat prompts, ``TOKENS`` new tokens each, sampled as the build samples,
with the build's all-layer response pooling (``pool``) or without; prints seconds and tokens/s
for each of ``ROUNDS`` rounds. Timed, so run it alone:

    cpu exclusive python studies/dtype_speed.py float32 16 32 pool 1
    cpu exclusive python studies/dtype_speed.py bfloat16 16 32 pool 1
"""

from __future__ import annotations

import sys
import time

from persona_axis.inference.generation import Sampling, generate_replies
from persona_axis.models.loading import load_model


def main() -> None:
    dtype, batch, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pool = len(sys.argv) > 4 and sys.argv[4] == "pool"
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    lm = load_model(None, dtype=dtype)
    conversations = [
        [
            {"role": "system", "content": f"You are a pirate number {i}."},
            {"role": "user", "content": "What do you value most in life and why?"},
        ]
        for i in range(batch)
    ]
    layers = list(range(lm.shape.n_layers)) if pool else None
    for r in range(rounds):
        sampling = Sampling(max_new_tokens=tokens, temperature=0.7, top_p=0.9, seed=r)
        started = time.perf_counter()
        replies = generate_replies(lm, conversations, sampling, pool_layers=layers)
        seconds = time.perf_counter() - started
        n = sum(len(reply.token_ids) for reply in replies)
        print(dtype, batch, tokens, pool, f"{seconds:.1f}s", f"{n / seconds:.1f} tok/s", flush=True)


if __name__ == "__main__":
    main()
