"""Serving throughput and latency: 1, 4 and 8 concurrent clients, with and without a cap.

A real server (uvicorn in a background thread of this process) with the default model; each
client is a thread sending greedy, non-streaming chat completions back to back over HTTP
(closed loop). Per round, each client count runs the uncapped and the capped variant in
alternating order; aggregate tokens/s (content tokens of all replies / wall time) is the median
over rounds, latencies (arrival to last byte) are pooled over rounds.

    .venv/bin/python benchmarks/bench_serve.py --bundle /tmp/serve-bundle/bundle

Targets (issue 5): aggregate tokens/s at 8 clients ≥ 4× one client; capped ≥ 0.95× uncapped.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import torch
import transformers

from common import machine
from persona_axis.axis.bundle import AxisBundle
from persona_axis.models import load_model
from persona_axis.serve.app import create_app
from persona_axis.serve.runner import background_server

PROMPTS = [
    "Write a detailed guide to planting a vegetable garden in spring.",
    "Explain in detail how a bicycle gear system works.",
    "Describe the water cycle step by step, with examples.",
    "Give me a long list of tips for learning a new language.",
    "Tell me a long story about a fox who learns to fly.",
    "Explain how to bake bread at home, from flour to loaf.",
    "Describe the history of the printing press in detail.",
    "Write a thorough explanation of how vaccines train the immune system.",
    "Explain the rules of chess to a complete beginner.",
    "Describe a typical day in the life of a lighthouse keeper.",
    "Give a detailed overview of how computers store numbers.",
    "Explain how to prepare for a job interview, in detail.",
    "Describe how volcanoes form and why they erupt.",
    "Write a detailed plan for a week of healthy meals.",
    "Explain what photosynthesis is and why it matters.",
    "Describe the main causes of the seasons on Earth.",
]


@dataclass
class Run:
    """One (client count, variant) run: wall seconds, tokens, per-request latencies."""

    wall: float
    tokens: int
    latencies: list[float] = field(default_factory=list)
    at_limit: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall


def run_clients(url: str, clients: int, per_client: int, options: dict, max_tokens: int) -> Run:
    """``clients`` threads, each sending ``per_client`` requests back to back; connections are
    opened first and the threads start together, so the clock covers only the requests."""
    lock = threading.Lock()
    run = Run(0.0, 0)
    https = [httpx.Client(base_url=url, timeout=600) for _ in range(clients)]
    start_line = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        http = https[index]
        http.get("/health").raise_for_status()  # connect before the clock starts
        start_line.wait()
        for j in range(per_client):
            prompt = PROMPTS[(index * per_client + j) % len(PROMPTS)]
            body = {
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "persona_axis": options,
            }
            start = time.perf_counter()
            response = http.post("/v1/chat/completions", json=body)
            latency = time.perf_counter() - start
            response.raise_for_status()
            data = response.json()
            with lock:
                run.latencies.append(latency)
                run.tokens += data["usage"]["completion_tokens"]
                run.at_limit += data["choices"][0]["finish_reason"] == "length"
                run.batch_sizes.append(data["persona_axis"]["batch_size"])

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, index) for index in range(clients)]
        start_line.wait()
        start = time.perf_counter()
        for future in futures:
            future.result()
        run.wall = time.perf_counter() - start
    for http in https:
        http.close()
    return run


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="/tmp/serve-bundle/bundle")
    parser.add_argument("--cap", default=None, help="cap setting; default: the recommended one")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--per-client", type=int, default=3, help="requests per client per run")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-wait-ms", type=float, default=100.0)
    parser.add_argument("--verbose", action="store_true", help="log every batch")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    if args.verbose:
        logging.basicConfig(format="%(relativeCreated)8.0f ms %(message)s")
        logging.getLogger("persona_axis.serve").setLevel(logging.DEBUG)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    lm = load_model(dtype=args.dtype)
    bundle = AxisBundle.load(args.bundle)
    cap = args.cap or bundle.manifest["recommended_cap"]
    counts = [int(c) for c in args.clients.split(",")]
    app = create_app(
        lm,
        bundle,
        default_cap="none",
        max_batch=max(counts),
        max_queue=4 * max(counts),
        batch_wait_ms=args.batch_wait_ms,
        max_tokens_limit=max(512, args.max_tokens),
    )
    variants = {"uncapped": {"cap": "none"}, f"capped ({cap})": {"cap": cap}}
    print(machine())
    print(
        f"{lm.name} {args.dtype}, greedy, max_tokens {args.max_tokens}, {args.per_client} "
        f"requests per client per run, {args.rounds} rounds, batch window {args.batch_wait_ms} ms"
    )
    results: dict[tuple[int, str], list[Run]] = {}
    with background_server(app) as url:
        for options in variants.values():  # warm-up
            run_clients(url, 2, 1, options, 8)
        for round_index in range(args.rounds):
            for clients in counts:
                names = list(variants)
                if round_index % 2:
                    names.reverse()
                for name in names:
                    run = run_clients(
                        url, clients, args.per_client, variants[name], args.max_tokens
                    )
                    results.setdefault((clients, name), []).append(run)
                    print(
                        f"  round {round_index + 1} clients {clients} {name}: "
                        f"{run.tokens_per_s:.1f} tok/s, mean batch "
                        f"{statistics.mean(run.batch_sizes):.1f}",
                        flush=True,
                    )

    print(
        "\n| clients | variant | tokens/s (median) | p50 latency | p99 latency | mean batch "
        "| replies at max_tokens |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rate: dict[tuple[int, str], float] = {}
    for (clients, name), runs in results.items():
        rate[(clients, name)] = statistics.median(r.tokens_per_s for r in runs)
        latencies = [x for r in runs for x in r.latencies]
        batches = [x for r in runs for x in r.batch_sizes]
        at_limit = sum(r.at_limit for r in runs) / len(latencies)
        print(
            f"| {clients} | {name} | {rate[(clients, name)]:.1f} | "
            f"{percentile(latencies, 50):.2f} s | {percentile(latencies, 99):.2f} s | "
            f"{statistics.mean(batches):.1f} | {at_limit:.0%} |"
        )
    print()
    low, high = min(counts), max(counts)
    for name in variants:
        print(
            f"{name}: {high} clients / {low} client = {rate[(high, name)] / rate[(low, name)]:.2f}×"
        )
    uncapped, capped = variants
    for clients in counts:
        ratio = rate[(clients, capped)] / rate[(clients, uncapped)]
        print(f"{clients} clients: capped / uncapped = {ratio:.3f}×")


if __name__ == "__main__":
    main()
