"""The vLLM engine vs our HF continuous batch, side by side in one run: serving on uniform and
mixed traffic (the bench_serve setup), and the build's rollouts/s with pooled activations.

Run it from the vLLM environment (``make install-vllm``), one model shared by both engines:

    OMP_NUM_THREADS=2 .venv-vllm/bin/python benchmarks/bench_vllm.py --bundle DIR

Serving: two servers in this process (``--engine hf`` and ``--engine vllm``, both with the
continuous scheduler); each phase lets ``--clients`` closed-loop clients stream greedy chat
completions for ``--seconds`` (bench_serve.py's traffic: uniform = the recommended cap at 72
tokens; mixed = no cap, three caps and steering over 16-128 tokens). Phases alternate their
order every round; tokens/s is the median over rounds.

Build: the same rollouts (the build's prompts for ``--rollouts`` role/question pairs, sampled at
temperature 0.7, top-p 0.9, ``--build-tokens`` new tokens, every layer pooled) generated in
batches of ``--batch`` by :func:`~persona_axis.inference.generation.generate_replies`, as the
build does (:func:`~persona_axis.pipeline.rollouts.generate_batch`): on a fresh HF continuous
batch, and on the process's vLLM engine (:func:`~persona_axis.pipeline.rollouts.build_engine`),
A/B alternated, median seconds per variant.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

from bench_serve import alternate_phases, percentile, server_options, settings
from common import alternate, machine
from persona_axis.axis.bundle import AxisBundle
from persona_axis.catalog import load_catalog
from persona_axis.inference.generation import Sampling, generate_replies
from persona_axis.models import load_model
from persona_axis.pipeline.config import BuildConfig
from persona_axis.pipeline.plan import make_plan
from persona_axis.pipeline.rollouts import build_engine
from persona_axis.serve.app import create_app
from persona_axis.serve.runner import background_server


def serving(lm, bundle: AxisBundle, args: argparse.Namespace) -> None:
    mix = settings(bundle)
    common = server_options(args.clients)
    apps = {name: create_app(lm, bundle, backend=name, **common) for name in ("hf", "vllm")}
    with background_server(apps["hf"]) as hf_url, background_server(apps["vllm"]) as vllm_url:
        urls = {"hf": hf_url, "vllm": vllm_url}
        results = alternate_phases(urls, mix, args.clients, args.seconds, args.rounds)
    print("\n| engine | traffic | tokens/s (median) | TTFT p50 | latency p50 | latency p95 |")
    print("| --- | --- | --- | --- | --- | --- |")
    rate = {}
    for (engine, traffic), runs in sorted(results.items()):
        rate[(engine, traffic)] = statistics.median(r.tokens_per_s for r in runs)
        ttft = [x for r in runs for x in r.ttft]
        latency = [x for r in runs for x in r.latencies]
        print(
            f"| {engine} | {traffic} | {rate[(engine, traffic)]:.1f} | "
            f"{percentile(ttft, 50):.2f} s | {percentile(latency, 50):.2f} s | "
            f"{percentile(latency, 95):.2f} s |"
        )
    for traffic in ("uniform", "mixed"):
        ratio = rate[("vllm", traffic)] / rate[("hf", traffic)]
        print(f"serving {traffic}: vLLM / HF = {ratio:.2f}×")


def build_rollouts(lm, args: argparse.Namespace) -> None:
    plan = make_plan(load_catalog(None), "SmolLM2", None)
    specs = [spec for spec in plan if spec.kind == "role"][: args.rollouts]
    batches = [specs[i : i + args.batch] for i in range(0, len(specs), args.batch)]
    layers = list(range(lm.shape.n_layers))

    def sampling(k: int) -> Sampling:
        return Sampling(max_new_tokens=args.build_tokens, temperature=0.7, top_p=0.9, seed=k)

    engine = build_engine(lm, BuildConfig(engine="vllm", batch_size=args.batch))

    def run(on_vllm: bool) -> None:
        for k, batch in enumerate(batches):
            messages = [spec.messages() for spec in batch]
            chosen = engine if on_vllm else None
            generate_replies(lm, messages, sampling(k), pool_layers=layers, engine=chosen)

    def hf() -> None:
        run(False)

    def vllm() -> None:
        run(True)

    warm = [spec.messages() for spec in batches[0][:2]]
    generate_replies(lm, warm, sampling(0), pool_layers=layers, engine=engine)  # warm up
    seconds = alternate({"hf": hf, "vllm": vllm}, args.rounds)
    for name, value in seconds.items():
        print(f"build {name}: {len(specs) / value:.2f} rollouts/s ({value:.1f} s median)")
    print(f"build: vLLM / HF = {seconds['hf'] / seconds['vllm']:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else None, help="HF engine's"
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0, help="sending time per phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rollouts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--build-tokens", type=int, default=32)
    parser.add_argument("--skip", choices=("serving", "build"), default=None)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    lm = load_model(dtype=args.dtype, device=args.device)
    print(machine())
    print(f"{lm.name} {args.dtype}; {args}")
    if args.skip != "build":
        build_rollouts(lm, args)
    if args.skip != "serving":
        serving(lm, AxisBundle.load(args.bundle), args)


if __name__ == "__main__":
    main()
