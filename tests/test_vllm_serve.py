"""``serve --engine vllm``: the same app on the vLLM engine answers like the HF engine.

Runs in the vLLM environment (``make test-vllm``); skipped where vLLM is not installed. Both
apps serve SmolLM2 with one random-axis bundle, greedy; replies (text, finish reason, telemetry
within 1e-3) must agree for no cap, a cap and steering, and streaming must give the whole reply.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here; `make test-vllm` runs these tests")

from persona_axis.axis.bundle import AxisBundle
from persona_axis.axis.calibrate import CapSetting, LayerThreshold
from persona_axis.models import LoadedModel
from persona_axis.serve.app import create_app
from persona_axis.serve.runner import background_server

CAP = "test-cap"


def make_bundle(lm: LoadedModel) -> AxisBundle:
    n_layers, d = lm.shape.n_layers, lm.shape.hidden_size
    axis = torch.randn(n_layers, d, generator=torch.Generator().manual_seed(7))
    thresholds = tuple(LayerThreshold(layer, 1.0) for layer in (10, 11, 12, 13))
    caps = {CAP: CapSetting(CAP, thresholds, 75, "test")}
    vectors = {"axis": axis, "stats/mean_norm": torch.full((n_layers,), 10.0)}
    return AxisBundle.create(
        vectors,
        model_shape=lm.shape,
        model_id=lm.name,
        caps=caps,
        extras={"recommended_cap": CAP},
    )


@pytest.fixture(scope="module")
def urls(smollm: LoadedModel) -> Iterator[dict[str, str]]:
    bundle = make_bundle(smollm)
    apps = {
        backend: create_app(
            smollm, bundle, default_cap="none", max_batch=16, backend=backend, max_tokens_limit=32
        )
        for backend in ("hf", "vllm")
    }
    with background_server(apps["hf"]) as hf, background_server(apps["vllm"]) as vllm:
        yield {"hf": hf, "vllm": vllm}


def ask(url: str, options: dict[str, Any] | None, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Who are you, really?"}],
        "max_tokens": 16,
        "temperature": 0,
        **extra,
    }
    if options is not None:
        body["persona_axis"] = options
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


@pytest.mark.parametrize("options", [None, {"cap": CAP}, {"steer": -1.0}])
def test_vllm_server_answers_like_the_hf_server(urls, options) -> None:
    replies = {}
    for backend, url in urls.items():
        response = ask(url, options)
        assert response.status_code == 200, response.text
        replies[backend] = response.json()
    hf, ours = replies["hf"], replies["vllm"]
    assert ours["choices"][0]["message"] == hf["choices"][0]["message"]
    assert ours["choices"][0]["finish_reason"] == hf["choices"][0]["finish_reason"]
    for key in ("projection_before", "projection_after"):
        if hf["persona_axis"].get(key) is not None:
            assert ours["persona_axis"][key] == pytest.approx(hf["persona_axis"][key], abs=1e-3)
    assert (ours["persona_axis"]["cap_touched_fraction"] is None) == (options != {"cap": CAP})


def test_vllm_server_streams_the_whole_reply(urls) -> None:
    whole = ask(urls["vllm"], {"cap": CAP}).json()["choices"][0]["message"]["content"]
    pieces = []
    with httpx.stream(
        "POST",
        f"{urls['vllm']}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "Who are you, really?"}],
            "max_tokens": 16,
            "temperature": 0,
            "stream": True,
            "persona_axis": {"cap": CAP},
        },
        timeout=120,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line.removeprefix("data: "))
                for choice in chunk.get("choices", []):
                    pieces.append(choice.get("delta", {}).get("content") or "")
    assert "".join(pieces) == whole and len([p for p in pieces if p]) > 1
