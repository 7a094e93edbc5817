"""Models placed with ``device_map`` (accelerate): capture, generation and interventions.

What a CPU-only machine can test:

1. A model loaded with an explicit per-module ``device_map`` dict, and one dispatched by
   accelerate with its device-alignment hooks forced on every module, give the same pooled
   activations, replies, capped replies and projections as a plainly loaded model: our hooks
   sit beside accelerate's and read/replace block outputs wherever it put them.
2. Every hook creates its tensors on the hidden state's own device: driven with hidden states
   on the ``meta`` device (shape-only tensors; mixing them with CPU tensors raises), the
   intervention hook, the position mask, the generation engine's pooled states and the span
   pooler's plan all follow the hidden state.

What stays untested without GPUs: a real split across two CUDA devices (layers on cuda:0 and
cuda:1, where each hooked block's output lives on its own device and pooled states are moved
to the CPU after each decoding step), and speed. The code paths involved are the ones
exercised in (2).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import dispatch_model

from persona_axis.inference.capture import PoolingPlan, SpanPooler, response_activations
from persona_axis.inference.generation import Sampling, generate_replies
from persona_axis.inference.hooks import PositionTracker
from persona_axis.inference.interventions import (
    Intervention,
    InterventionSpec,
    _LayerHook,
    intervene,
)
from persona_axis.inference.rows import PoolSums, RowPlan
from persona_axis.inference.telemetry import record_projections
from persona_axis.models import LoadedModel, load_model
from support.tiny_models import N_LAYERS, build_tiny, styled_tokenizer

pytestmark = pytest.mark.slow

META = torch.device("meta")
CHATS = [
    [{"role": "user", "content": "Who are you?"}],
    [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Tell me about the sea, please."},
    ],
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("devices") / "model"
    build_tiny("llama").save_pretrained(path)
    styled_tokenizer("chatml").save_pretrained(path)
    return path


def per_module_map(device: str = "cpu") -> dict[str, str]:
    """Every top-level piece of the tiny Llama placed explicitly (the multi-GPU shape)."""
    pieces = ["model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head"]
    pieces += [f"model.layers.{i}" for i in range(N_LAYERS)]
    return dict.fromkeys(pieces, device)


def run_everything(lm: LoadedModel) -> dict[str, object]:
    """Pooled activations, greedy replies with pooling, capped replies, projections."""
    conversations = [[*c, {"role": "assistant", "content": "I sail and I sing."}] for c in CHATS]
    axis = torch.randn(N_LAYERS, 64, generator=torch.Generator().manual_seed(3))
    sampling = Sampling(max_new_tokens=6)
    replies = generate_replies(lm, CHATS, sampling, pool_layers=range(N_LAYERS))
    spec = InterventionSpec.floor_cap(axis, [(1, 0.5), (2, 0.5)])
    with intervene(lm, spec):
        capped = generate_replies(lm, CHATS, sampling)
    ids = lm.chat.render(conversations[1]).input_ids
    with record_projections(lm, axis, [0, 3]) as log:
        lm.stack.module(input_ids=torch.tensor([ids]).to(lm.device))
    return {
        "activations": response_activations(lm, conversations),
        "replies": [r.token_ids for r in replies],
        "pooled": [r.activations for r in replies],
        "capped": [r.token_ids for r in capped],
        "projections": log.all_positions(),
    }


@pytest.fixture(scope="module")
def plain(model_dir: Path) -> dict[str, object]:
    return run_everything(load_model(model_dir, dtype="float32"))


def test_explicit_device_map_gives_the_plain_results(model_dir: Path, plain) -> None:
    lm = load_model(model_dir, dtype="float32", device_map=per_module_map())
    assert {p.device.type for p in lm.model.parameters()} == {"cpu"}
    torch.testing.assert_close(run_everything(lm), plain, rtol=0, atol=0)


def test_accelerate_alignment_hooks_keep_the_results(model_dir: Path, plain) -> None:
    lm = load_model(model_dir, dtype="float32")
    dispatch_model(lm.model, device_map=per_module_map(), force_hooks=True)
    block = lm.stack.layers[0]
    assert hasattr(block, "_hf_hook"), "accelerate hooked every block"
    torch.testing.assert_close(run_everything(lm), plain, rtol=0, atol=0)


def test_meta_tensors_do_not_mix_with_cpu_tensors() -> None:
    """The premise of the tests below: a CPU tensor in a meta computation raises."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.zeros(2, 3, device=META) @ torch.ones(3)


def test_intervention_hook_follows_the_hidden_state_device() -> None:
    direction = torch.randn(64)
    tracker = PositionTracker(prompt_length=3)
    hook = _LayerHook(
        [
            Intervention(1, "cap", direction, floor=0.0),
            Intervention(1, "add", direction, coefficient=2.0, positions="generated"),
            Intervention(1, "ablate", direction, positions="prompt"),
        ],
        tracker,
    )
    hidden = torch.empty(2, 5, 64, device=META)
    for offset in (0, 1, 3, 4):  # prompt only, prompt then generated, generated only
        tracker.offset = offset
        out = hook(torch.nn.Identity(), (), (hidden, None))
        assert out[0].device == META and out[0].shape == hidden.shape
        assert tracker.generated_mask(5, META).device == META


def test_engine_pooling_reads_on_the_hidden_state_device(model_dir: Path) -> None:
    lm = load_model(model_dir, dtype="float32")
    plan = RowPlan(lm, [None, None], pools=[PoolSums.start(lm, [2, 0]), None])
    assert plan.pooled == [0, 2] and plan.layers == [0, 2]
    for layer in plan.pooled:
        hidden = torch.empty(2, 1, 64, device=META)
        plan._hook(layer, "generated")(torch.nn.Identity(), (), (hidden,))
    assert [t.device for t in plan._pooling.values()] == [META, META]


def test_span_pooler_plan_follows_the_hidden_state_device(model_dir: Path) -> None:
    lm = load_model(model_dir, dtype="float32")
    pooler = SpanPooler(lm, [1])
    pooler._cpu_plan = PoolingPlan.build([[[(0, 2)]]], [0], width=3)
    plan = pooler._plan_on(META)
    assert plan.token_index.device == META and plan.weights.device == META
