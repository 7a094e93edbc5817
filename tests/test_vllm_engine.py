"""The vLLM engine against the HF engine on SmolLM2 (float32, greedy): no intervention, caps,
steering, a mixed batch of all three, telemetry and pooled activations.

Runs in the vLLM environment (``make test-vllm``, part of ``make test``); in the main
environment vLLM is not installed and the module is skipped. One vLLM engine serves the whole
module (start-up takes tens of seconds).

Tokens: vLLM and HF compute the same float32 model with different kernels, so their greedy
replies can part at a near tie. ``agreement`` counts the prompts whose uncapped replies agree
token for token; the intervened replies must agree wherever the uncapped ones do.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here; `make test-vllm` runs these tests")

from persona_axis.inference.continuous import generate_rows
from persona_axis.inference.engine import Finished, RowRequest, run_to_end
from persona_axis.inference.generation import Sampling, generate_replies
from persona_axis.inference.interventions import InterventionSpec
from persona_axis.inference.rows import Probe
from persona_axis.inference.vllm.engine import VllmBatch, start_engine
from persona_axis.models import LoadedModel

TEXTS = [
    "Hello there",
    "What is two plus two?",
    "Tell me a story about a cat who lived in a lighthouse by the sea.",
    "Hi",
    "Why is the sky blue?",
    "Explain gravity in one sentence, please.",
]
N_TOKENS = 24
BAND = [10, 11, 12, 13]
STEER_AT = 15
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def engine(smollm: LoadedModel) -> VllmBatch:
    batch = VllmBatch(smollm, start_engine(smollm, max_rows=16))
    yield batch
    batch.close()


@pytest.fixture(scope="module")
def axis(smollm: LoadedModel) -> torch.Tensor:
    shape = (smollm.shape.n_layers, smollm.shape.hidden_size)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(7))


def specs(axis: torch.Tensor) -> dict[str, InterventionSpec | None]:
    """No intervention, floors that lift most tokens, steering toward -axis."""
    return {
        "none": None,
        "cap": InterventionSpec.floor_cap(axis, [(layer, 1.0) for layer in BAND]),
        "steer": InterventionSpec.steer(axis, STEER_AT, -1.0, 10.0),
    }


def make(lm: LoadedModel, setting: str, spec, probe: Probe | None) -> list[RowRequest]:
    out = []
    for index, text in enumerate(TEXTS):
        prompt = lm.chat.render([{"role": "user", "content": text}], add_generation_prompt=True)
        sampling = Sampling(max_new_tokens=N_TOKENS)
        out.append(RowRequest((setting, index), prompt.input_ids, sampling, spec, probe))
    return out


@pytest.fixture(scope="module")
def runs(smollm, engine, axis) -> dict[str, dict]:
    """Every setting through both engines, each setting as its own batch, and all settings in
    one mixed batch through vLLM."""
    probe = Probe(axis, (BAND[0], STEER_AT, 20))
    out: dict[str, dict] = {"hf": {}, "vllm": {}}
    mixed: list[RowRequest] = []
    for setting, spec in specs(axis).items():
        requests = make(smollm, setting, spec, probe)
        out["hf"].update(generate_rows(smollm, requests))
        out["vllm"].update(run_to_end(engine, requests))
        mixed += make(smollm, "mixed-" + setting, spec, probe)
    out["mixed"] = run_to_end(engine, mixed)
    return out


def tokens(found: Finished) -> list[int]:
    return found.reply.token_ids


def agreeing(runs: dict) -> list[int]:
    return [
        index
        for index in range(len(TEXTS))
        if tokens(runs["hf"][("none", index)]) == tokens(runs["vllm"][("none", index)])
    ]


def test_uncapped_agreement_rate(runs) -> None:
    same = agreeing(runs)
    rate = len(same) / len(TEXTS)
    print(f"vLLM/HF greedy agreement without intervention: {len(same)}/{len(TEXTS)} = {rate:.2f}")
    assert rate >= 0.5, "the engines disagree on most uncapped replies: not the same model"


@pytest.mark.parametrize("setting", ["none", "cap", "steer"])
def test_tokens_equal_where_engines_agree(runs, setting: str) -> None:
    for index in agreeing(runs):
        hf, ours = runs["hf"][(setting, index)], runs["vllm"][(setting, index)]
        assert tokens(ours) == tokens(hf), f"{setting} prompt {index}"
        assert ours.reply.finished == hf.reply.finished


def test_interventions_change_the_reply(runs) -> None:
    changed = [
        setting
        for setting in ("cap", "steer")
        if any(
            tokens(runs["vllm"][(setting, i)]) != tokens(runs["vllm"][("none", i)])
            for i in range(len(TEXTS))
        )
    ]
    assert changed == ["cap", "steer"]


@pytest.mark.parametrize("setting", ["none", "cap", "steer"])
def test_telemetry_matches_hf(runs, setting: str) -> None:
    for index in agreeing(runs):
        hf = runs["hf"][(setting, index)].telemetry
        ours = runs["vllm"][(setting, index)].telemetry
        if tokens(runs["hf"][(setting, index)]) != tokens(runs["vllm"][(setting, index)]):
            continue
        assert hf is not None and ours is not None
        assert ours.layers == hf.layers and ours.n_tokens == hf.n_tokens
        for a, b in zip(ours.before + ours.after, hf.before + hf.after, strict=True):
            assert a == pytest.approx(b, abs=TOLERANCE)
        assert (ours.touched is None) == (hf.touched is None)
        if hf.touched is not None and hf.cap_layers is not None:
            assert ours.touched == pytest.approx(hf.touched, abs=TOLERANCE)
            assert ours.touched_tokens == hf.touched_tokens
            assert ours.cap_layers is not None and set(ours.cap_layers) == set(hf.cap_layers)
            for layer, pair in hf.cap_layers.items():
                assert ours.cap_layers[layer] == pytest.approx(pair, abs=TOLERANCE)


def test_cap_lifts_tokens(runs) -> None:
    capped = [runs["vllm"][("cap", i)].telemetry for i in range(len(TEXTS))]
    assert all(t is not None and t.touched_tokens for t in capped)


@pytest.mark.parametrize("setting", ["none", "cap", "steer"])
def test_mixed_batch_equals_separate_batches(runs, setting: str) -> None:
    for index in range(len(TEXTS)):
        alone = runs["vllm"][(setting, index)]
        mixed = runs["mixed"][("mixed-" + setting, index)]
        assert tokens(mixed) == tokens(alone), f"{setting} prompt {index}"
        assert alone.telemetry is not None and mixed.telemetry is not None
        for a, b in zip(mixed.telemetry.after, alone.telemetry.after, strict=True):
            assert a == pytest.approx(b, abs=TOLERANCE)


def test_uncapped_request_alone_equals_in_mixed_batch(smollm, engine, axis) -> None:
    lone = make(smollm, "lone", None, None)[2]
    alone = run_to_end(engine, [lone])[lone.key]
    crowd = [*make(smollm, "crowd-cap", specs(axis)["cap"], None)]
    crowd += make(smollm, "crowd-steer", specs(axis)["steer"], None)
    together = run_to_end(engine, [*crowd, lone])[lone.key]
    assert tokens(together) == tokens(alone)


def test_pooled_activations_match_hf(smollm, engine) -> None:
    conversations = [[{"role": "user", "content": text}] for text in TEXTS[:3]]
    layers = list(range(smollm.shape.n_layers))
    hf = generate_replies(smollm, conversations, Sampling(max_new_tokens=12), pool_layers=layers)
    ours_all = generate_replies(
        smollm, conversations, Sampling(max_new_tokens=12), pool_layers=layers, engine=engine
    )
    for ours, reply in zip(ours_all, hf, strict=True):
        if ours.token_ids != reply.token_ids:
            continue
        assert ours.activations is not None and reply.activations is not None
        assert ours.norms is not None and reply.norms is not None
        torch.testing.assert_close(ours.activations, reply.activations, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(ours.norms, reply.norms, atol=1e-3, rtol=1e-4)


def test_cancel_drops_a_request(smollm, engine) -> None:
    request = make(smollm, "cancel", None, None)[0]
    engine.add(request)
    engine.step()
    assert engine.cancel(request.key) and engine.idle
    assert not engine.cancel(request.key)


def test_prefix_cache_is_isolated_by_intervention(smollm, engine, axis) -> None:
    """A request whose intervention acts on the prompt never reuses blocks cached without it
    (its prompt's keys and values would miss the intervention), while equal settings share
    theirs; outputs equal their uncached runs and the HF engine's."""
    text = "Here is a long note about lighthouses and the sea. " * 10 + "Summarise it."
    chat = [{"role": "user", "content": text}]
    prompt = smollm.chat.render(chat, add_generation_prompt=True).input_ids
    # prompt-only steering: its whole effect lives in the prompt's cached keys and values
    steer = InterventionSpec.steer(axis, STEER_AT, -3.0, 10.0, positions="prompt")

    def one(key: str, spec: InterventionSpec | None) -> Finished:
        request = RowRequest(key, prompt, Sampling(max_new_tokens=12), spec)
        return run_to_end(engine, [request])[key]

    plain, steered = one("p-none-1", None), one("p-steer-1", steer)
    plain_again, steered_again = one("p-none-2", None), one("p-steer-2", steer)
    hf = generate_rows(smollm, [RowRequest("hf", prompt, Sampling(max_new_tokens=12), steer)])
    assert engine.cached_tokens["p-steer-1"] == 0
    assert engine.cached_tokens["p-none-2"] >= 64 and engine.cached_tokens["p-steer-2"] >= 64
    assert tokens(steered) == tokens(hf["hf"]) != tokens(plain)
    assert tokens(steered_again) == tokens(steered) and tokens(plain_again) == tokens(plain)
