"""Serving throughput and latency of continuous batching on uniform and on mixed traffic.

A real server (uvicorn in a background thread of this process). Each phase lets ``--clients``
closed-loop client threads send greedy, streaming chat completions back to back for
``--seconds``; requests in flight at the deadline finish and count. Traffic:

- **uniform**: every request with the bundle's recommended cap and ``max_tokens`` 72;
- **mixed**: requests cycle over no cap, three cap settings and steering (+1.0), and over
  ``max_tokens`` 16, 32, 64, 96, 128 (coprime cycles, so every pair occurs).

Per phase: aggregate tokens/s (content tokens of finished replies / wall time from the start
to the last reply), time to first token (request sent → first content delta), latency p50/p95
(request sent → last byte). Rounds alternate the order of the phases; tokens/s is the median
over rounds, times are pooled over rounds.

    PYTHONPATH=src:benchmarks flock /tmp/torch.lock .venv/bin/python benchmarks/bench_serve.py \
        --bundle /tmp/serve-bundle/bundle

Until the static scheduler was removed (issue 18), this script ran it side by side with the
continuous one; that A/B is ``git show 955d015:benchmarks/bench_serve.py``, its last figures
are in docs/benchmarks.md and benchmarks/results/. Target (issue 13): mixed ≥ 0.8× uniform.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

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
MIXED_TOKENS = (16, 32, 64, 96, 128)
UNIFORM_TOKENS = 72


@dataclass
class Phase:
    """One phase: wall seconds, tokens, per-request first-token times and latencies."""

    wall: float = 0.0
    tokens: int = 0
    window: float = 0.0
    in_window: float = 0.0  # tokens streamed while clients were still sending (estimated)
    ttft: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    batch: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall

    @property
    def steady_tokens_per_s(self) -> float:
        """Tokens streamed inside the sending window per second: each reply's tokens spread
        evenly between its first and last token, the part inside the window counted; this
        leaves out the drain after the deadline, where batches shrink."""
        return self.in_window / self.window


def settings(bundle: AxisBundle) -> list[dict[str, Any]]:
    """No cap, three cap settings (the recommended one first), steering."""
    recommended = bundle.recommended_cap
    others = [name for name in sorted(bundle.caps) if name != recommended]
    caps = [recommended, *others[:2]]
    return [{"cap": "none"}, *({"cap": cap} for cap in caps), {"cap": "none", "steer": 1.0}]


def request_body(traffic: str, mix: list[dict[str, Any]], client: int, j: int) -> dict[str, Any]:
    k = client * 7 + j
    if traffic == "uniform":
        options, max_tokens = mix[1], UNIFORM_TOKENS
    else:
        options, max_tokens = mix[k % len(mix)], MIXED_TOKENS[k % len(MIXED_TOKENS)]
    return {
        "messages": [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "persona_axis": options,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def stream_events(http: httpx.Client, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The parsed server-sent events of one streamed chat completion (an error event raises)."""
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            yield event


def one_request(http: httpx.Client, body: dict[str, Any]) -> tuple[float, float, int, float]:
    """(time to first content, latency, completion tokens, batch size) of one request, times
    in seconds from sending it."""
    start = time.perf_counter()
    first = None
    tokens, batch = 0, 0.0
    for event in stream_events(http, body):
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        if event.get("persona_axis"):
            batch = event["persona_axis"]["batch_size"]
        choices = event.get("choices") or []
        if first is None and choices and choices[0]["delta"].get("content"):
            first = time.perf_counter() - start
    latency = time.perf_counter() - start
    return (latency if first is None else first), latency, tokens, batch


def run_phase(url: str, traffic: str, mix: list[dict[str, Any]], clients: int, seconds: float):
    """``clients`` closed-loop threads sending until ``seconds`` have passed."""
    lock = threading.Lock()
    phase = Phase()
    https = [httpx.Client(base_url=url, timeout=600) for _ in range(clients)]
    start_line = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        http = https[index]
        http.get("/health").raise_for_status()  # connect before the clock starts
        start_line.wait()
        deadline = time.perf_counter() + seconds
        j = 0
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                ttft, latency, tokens, batch = one_request(
                    http, request_body(traffic, mix, index, j)
                )
            except (httpx.HTTPError, RuntimeError):
                with lock:
                    phase.errors += 1
                continue
            finally:
                j += 1
            first, last = sent + ttft, sent + latency
            inside = max(0.0, min(last, deadline) - first) / max(last - first, 1e-9)
            with lock:
                phase.ttft.append(ttft)
                phase.latencies.append(latency)
                phase.tokens += tokens
                phase.in_window += tokens * inside
                phase.batch.append(batch)

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, index) for index in range(clients)]
        start_line.wait()
        start = time.perf_counter()
        for future in futures:
            future.result()
        phase.wall = time.perf_counter() - start
    phase.window = seconds
    for http in https:
        http.close()
    return phase


def server_options(clients: int) -> dict[str, Any]:
    """``create_app`` options of every benchmarked server: no default cap, one row per client."""
    return {
        "default_cap": "none",
        "max_batch": clients,
        "max_queue": 4 * clients,
        "max_tokens_limit": max(MIXED_TOKENS),
    }


def alternate_phases(
    urls: dict[str, str], mix: list[dict[str, Any]], clients: int, seconds: float, rounds: int
) -> dict[tuple[str, str], list[Phase]]:
    """Every (server, traffic) phase once per round, the order reversed every other round,
    after a short warm-up of each server; the phases by (server name, traffic)."""
    for url in urls.values():  # warm-up
        run_phase(url, "mixed", mix, 2, 0.1)
    phases = [(name, traffic) for traffic in ("uniform", "mixed") for name in urls]
    results: dict[tuple[str, str], list[Phase]] = {}
    for round_index in range(rounds):
        order = phases if round_index % 2 == 0 else phases[::-1]
        for name, traffic in order:
            phase = run_phase(urls[name], traffic, mix, clients, seconds)
            results.setdefault((name, traffic), []).append(phase)
            print(
                f"  round {round_index + 1} {name:10s} {traffic:7s}: "
                f"{phase.tokens_per_s:6.1f} tok/s ({phase.steady_tokens_per_s:6.1f} in the "
                f"window), {len(phase.latencies)} replies, "
                f"mean batch {statistics.mean(phase.batch or [0]):.1f}, "
                f"{phase.errors} errors",
                flush=True,
            )
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="/tmp/serve-bundle/bundle")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=45.0, help="sending time per phase")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    lm = load_model(dtype=args.dtype)
    bundle = AxisBundle.load(args.bundle)
    mix = settings(bundle)
    common = server_options(args.clients)
    continuous = create_app(lm, bundle, **common)
    print(machine())
    print(
        f"{lm.name} {args.dtype}, greedy, streaming, {args.clients} closed-loop clients, "
        f"{args.seconds:g} s per phase, {args.rounds} rounds; mixed settings {mix}"
    )
    with background_server(continuous) as cont_url:
        urls = {"continuous": cont_url}
        results = alternate_phases(urls, mix, args.clients, args.seconds, args.rounds)

    print(
        "\n| scheduler | traffic | tokens/s (median) | in the window | TTFT p50 | TTFT p95 "
        "| latency p50 | latency p95 | replies | mean batch | errors |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rate, steady = {}, {}
    for (scheduler, traffic), runs in sorted(results.items()):
        rate[(scheduler, traffic)] = statistics.median(r.tokens_per_s for r in runs)
        steady[(scheduler, traffic)] = statistics.median(r.steady_tokens_per_s for r in runs)
        ttft = [x for r in runs for x in r.ttft]
        latency = [x for r in runs for x in r.latencies]
        batch = [x for r in runs for x in r.batch]
        print(
            f"| {scheduler} | {traffic} | {rate[(scheduler, traffic)]:.1f} | "
            f"{steady[(scheduler, traffic)]:.1f} | "
            f"{percentile(ttft, 50):.2f} s | {percentile(ttft, 95):.2f} s | "
            f"{percentile(latency, 50):.2f} s | {percentile(latency, 95):.2f} s | "
            f"{len(latency)} | {statistics.mean(batch):.1f} | {sum(r.errors for r in runs)} |"
        )
    print()
    for name, table in (("tokens/s", rate), ("in the window", steady)):
        ratio = table[("continuous", "mixed")] / table[("continuous", "uniform")]
        print(f"{name}: continuous: mixed / uniform = {ratio:.2f}×")


if __name__ == "__main__":
    main()
