"""The library's generation on one code version: ``generate_replies`` as the build calls it
(sampled, every layer pooled) and ``generate_with_telemetry`` as ``pa.generate`` calls it (greedy,
a floor cap, telemetry at one layer), on the default model.

Run it once per code version, alternating, to compare versions (the library moved from HF
``generate`` onto the generation engine in issue 18):

    for round in 1 2; do for src in OLD/src NEW/src; do
      PYTHONPATH=$src:benchmarks flock /tmp/torch.lock .venv/bin/python benchmarks/bench_generate.py
    done; done

Prints one JSON line: seconds per workload (median of ``--repeats``), the code's location.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

import persona_axis
from common import machine
from persona_axis.catalog import load_catalog
from persona_axis.inference.generation import Sampling, generate_replies
from persona_axis.inference.interventions import InterventionSpec
from persona_axis.inference.telemetry import generate_with_telemetry
from persona_axis.models import load_model
from persona_axis.pipeline.plan import make_plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    lm = load_model(dtype="float32")
    plan = make_plan(load_catalog(None), "SmolLM2", None)
    chats = [spec.messages() for spec in plan if spec.kind == "role"][: args.rollouts]
    layers = list(range(lm.shape.n_layers))
    axis = torch.randn(lm.shape.n_layers, lm.shape.hidden_size, generator=torch.Generator())
    spec = InterventionSpec.floor_cap(axis, [(layer, 0.0) for layer in range(15, 19)])
    sampled = Sampling(max_new_tokens=args.tokens, temperature=0.7, top_p=0.9, seed=1)
    greedy = Sampling(max_new_tokens=args.tokens)

    def build() -> None:
        generate_replies(lm, chats, sampled, pool_layers=layers)

    def capped() -> None:
        generate_with_telemetry(lm, chats, axis, [17], spec=spec, sampling=greedy)

    build()  # warm-up
    seconds = {}
    for name, work in (("build_pooled", build), ("capped_telemetry", capped)):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times)
    print(machine())
    print(
        json.dumps(
            {
                "code": str(Path(persona_axis.__file__).parent),
                "rollouts": len(chats),
                "tokens": args.tokens,
                "seconds": seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
