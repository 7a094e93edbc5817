"""Build throughput (rollouts/s of the generate stage) with 1 process vs N local Ray workers.

A small quick-style build on the default model (SmolLM2-135M-Instruct, bfloat16): ``--roles``
roles × 1 prompt × ``--questions`` questions plus the 5 default prompts × the same questions,
no traits, ``--max-new-tokens`` new tokens, batch ``--batch-size``. Each variant builds into a
fresh directory; variants alternate per round and medians are reported. The sharded time
includes starting Ray and the actors (each loads the model): that is what a user waits for.
Run alone: another torch process on the same cores distorts every number.

    python benchmarks/bench_build_workers.py [--workers 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine
from persona_axis.models import load_model
from persona_axis.pipeline import BuildConfig, build
from persona_axis.pipeline.sharding import threads_per_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--roles", type=int, default=8)
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    config = BuildConfig(
        dtype="bfloat16",
        n_roles=args.roles,
        prompts_per_role=1,
        n_questions=args.questions,
        n_traits=0,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        judge={"backend": "heuristic"},
        min_role_rollouts=1,
        role_scores=(1, 2, 3),
        token_percentile_rollouts=16,
        progress=False,
    )
    lm = load_model(dtype="bfloat16")
    n_rollouts = (5 + args.roles) * args.questions
    variants = {
        "1 process": config,
        f"{args.workers} Ray workers": config.with_overrides(workers=args.workers),
    }
    generate: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            names = list(variants)
            order = names[round_index % 2 :] + names[: round_index % 2]
            for name in order:
                out = Path(tmp) / f"{round_index}-{len(generate[name])}-{name.split()[0]}"
                started = time.perf_counter()
                result = build(variants[name], out, lm=lm)
                wall[name].append(time.perf_counter() - started)
                generate[name].append(result.timings["generate"])
    print(machine())
    print(
        f"{n_rollouts} rollouts, {args.max_new_tokens} new tokens, batch {args.batch_size}, "
        f"bfloat16; driver {torch.get_num_threads()} threads, each worker "
        f"{threads_per_worker(args.workers)}; medians of {args.rounds} round(s)"
    )
    print("| variant | generate | rollouts/s | build wall time |")
    print("| --- | --- | --- | --- |")
    for name in variants:
        seconds = statistics.median(generate[name])
        print(
            f"| {name} | {seconds:.1f} s | {n_rollouts / seconds:.2f} | "
            f"{statistics.median(wall[name]):.1f} s |"
        )


if __name__ == "__main__":
    main()
