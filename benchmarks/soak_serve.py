"""Soak test of the continuous-batching server: many mixed requests, no errors, exact outputs,
flat memory.

A real server (uvicorn in a background thread of this process) with the default model and a
built bundle; ``--clients`` closed-loop client threads send ``--requests`` greedy chat
completions (every third one streamed) drawn from a fixed set of distinct requests: 12 prompts
× 5 settings (no cap, three cap settings, steering +1.0), each with its own ``max_tokens``
among 16, 32, 48 and 64. Then every distinct request is run alone through the library's
independent path (Hugging Face ``generate`` under ``intervene``,
:func:`persona_axis.inference.telemetry.generate_with_telemetry`) and every reply of the soak
is compared with it: text, and telemetry within 1e-4. Resident memory (RSS) is sampled after
the warm-up (the first 10% of the requests) and at the end.

    cpu shared .venv/bin/python benchmarks/soak_serve.py --bundle /tmp/serve-bundle/bundle

Untimed (it checks errors, exactness and memory), so it may run beside other jobs.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import psutil
import torch
import transformers

from bench_serve import PROMPTS, settings, stream_events
from persona_axis.application.generate import generate_with_telemetry
from persona_axis.axis.bundle import AxisBundle
from persona_axis.inference.generation import Sampling
from persona_axis.models import load_model
from persona_axis.serve.app import create_app
from persona_axis.serve.runner import background_server

LENGTHS = (16, 32, 48, 64)


def distinct(mix: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], int]]:
    cases = []
    for p, prompt in enumerate(PROMPTS[:12]):
        for s, options in enumerate(mix):
            cases.append((prompt, options, LENGTHS[(p + 2 * s) % len(LENGTHS)]))
    return cases


def send(http: httpx.Client, case: tuple[str, dict[str, Any], int], stream: bool) -> dict:
    prompt, options, max_tokens = case
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "persona_axis": options,
    }
    if not stream:
        response = http.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        data = response.json()
        return {"text": data["choices"][0]["message"]["content"], **data["persona_axis"]}
    pieces, telemetry = [], {}
    for event in stream_events(http, body):
        if event.get("persona_axis"):
            telemetry = event["persona_axis"]
        if event.get("choices"):
            pieces.append(event["choices"][0]["delta"].get("content") or "")
    return {"text": "".join(pieces), **telemetry}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="/tmp/serve-bundle/bundle")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    lm = load_model(dtype="float32")
    bundle = AxisBundle.load(args.bundle)
    mix = settings(bundle)
    cases = distinct(mix)
    app = create_app(lm, bundle, default_cap="none", max_batch=args.clients, max_queue=64)
    process = psutil.Process()
    results: list[tuple[int, dict[str, Any] | None, str | None]] = []
    lock = threading.Lock()
    counter = iter(range(args.requests))
    warm_rss: list[float] = []
    started = time.perf_counter()

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while True:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                if k == args.requests // 10:
                    warm_rss.append(process.memory_info().rss / 2**20)
                case = (k * 7 + index) % len(cases)
                try:
                    got: dict[str, Any] | None = send(http, cases[case], stream=k % 3 == 0)
                    error = None
                except (httpx.HTTPError, RuntimeError) as exc:
                    got, error = None, f"{type(exc).__name__}: {exc}"
                with lock:
                    results.append((case, got, error))

    with background_server(app) as url, ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(client, range(args.clients)))
    soak_s = time.perf_counter() - started
    end_rss = process.memory_info().rss / 2**20
    errors = [error for _, _, error in results if error]
    print(
        f"{len(results)} requests from {args.clients} clients in {soak_s:.0f} s; "
        f"{len(errors)} errors {errors[:3]}"
    )
    print(
        f"RSS after warm-up {warm_rss[0]:.0f} MiB, at the end {end_rss:.0f} MiB: "
        f"growth {end_rss - warm_rss[0]:+.0f} MiB"
    )

    compare(lm, bundle, cases, results)


def compare(lm: Any, bundle: AxisBundle, cases: list, results: list) -> None:
    """Run every distinct request alone and count soak replies that differ from it."""
    alone: dict[int, tuple[str, Any]] = {}
    for index, (prompt, options, max_tokens) in enumerate(cases):
        spec = bundle.intervention(options.get("cap"), options.get("steer"), lm=lm)
        [(reply, telemetry)] = generate_with_telemetry(
            lm,
            [[{"role": "user", "content": prompt}]],
            bundle,
            spec=spec,
            sampling=Sampling(max_new_tokens=max_tokens),
        )
        alone[index] = (reply.text, telemetry)
    text_mismatch = telemetry_mismatch = 0
    worst = 0.0
    for case, got, _ in results:
        if got is None:
            continue
        text, telemetry = alone[case]
        text_mismatch += got["text"] != text
        if telemetry is not None:
            before, after = telemetry.at(bundle.target_layer)
            gap = max(abs(got["projection_before"] - before), abs(got["projection_after"] - after))
            worst = max(worst, gap)
            telemetry_mismatch += gap > 1e-4
    print(
        f"{len(cases)} distinct requests run alone; replies differing from alone: "
        f"{text_mismatch}; telemetry beyond 1e-4: {telemetry_mismatch} "
        f"(largest gap {worst:.2e})"
    )


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    main()
