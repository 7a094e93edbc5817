"""Weight fingerprints on tiny randomly initialised Llama models."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from persona_axis.errors import PersonaAxisError
from persona_axis.models.fingerprint import try_weight_fingerprint, weight_fingerprint


def _config() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    )


def _tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(_config()).eval()


def test_same_weights_same_fingerprint() -> None:
    first = weight_fingerprint(_tiny_llama(0))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first)
    assert weight_fingerprint(_tiny_llama(0)) == first


def test_different_seed_different_fingerprint() -> None:
    assert weight_fingerprint(_tiny_llama(0)) != weight_fingerprint(_tiny_llama(1))


@pytest.mark.parametrize(
    "param",
    [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.3.mlp.down_proj.weight",
    ],
)
def test_one_changed_sampled_weight_changes_fingerprint(param: str) -> None:
    model = _tiny_llama(0)
    before = weight_fingerprint(model)
    with torch.no_grad():
        model.get_parameter(param).view(-1)[0] += 1e-3
    assert weight_fingerprint(model) != before


def test_unsampled_middle_block_is_not_read() -> None:
    # The price of a constant-time fingerprint: blocks between the first and last are skipped.
    model = _tiny_llama(0)
    before = weight_fingerprint(model)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.add_(1.0)
    assert weight_fingerprint(model) == before


def test_independent_of_wrapper_and_of_exact_upcast() -> None:
    model = _tiny_llama(0).bfloat16()
    in_bf16 = weight_fingerprint(model)
    assert weight_fingerprint(model.model) == in_bf16  # bare decoder, no LM-head wrapper
    assert weight_fingerprint(model.float()) == in_bf16  # bf16 -> fp32 is exact


def test_meta_parameters_cannot_be_fingerprinted() -> None:
    with torch.device("meta"):
        model = LlamaForCausalLM(_config())
    with pytest.raises(PersonaAxisError, match="meta"):
        weight_fingerprint(model)
    assert try_weight_fingerprint(model) is None


def test_a_float32_model_and_its_bfloat16_cast_fingerprint_the_same() -> None:
    model = _tiny_llama(0)
    in_fp32 = weight_fingerprint(model)
    assert weight_fingerprint(model.bfloat16()) == in_fp32
    with torch.no_grad():  # a change bigger than bf16 rounding is still seen
        model.get_input_embeddings().weight[0, 0] += 0.5
    assert weight_fingerprint(model) != in_fp32
