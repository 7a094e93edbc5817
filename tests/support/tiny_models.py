"""Tiny randomly initialised models of many architectures, built from configs (no download)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
import transformers as tf
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from persona_axis.models import LoadedModel
from persona_axis.models.loading import default_model_dir
from support.templates import SPECIAL_TOKENS, TEMPLATES

VOCAB = 49152 + 16  # the SmolLM2 tokenizer's vocabulary plus room for template tokens
N_LAYERS = 4
HIDDEN = 64

_COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "intermediate_size": 128,
    "num_hidden_layers": N_LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def _gemma3_multimodal() -> tf.PretrainedConfig:
    text = tf.Gemma3TextConfig(**_COMMON, head_dim=16, sliding_window=8)
    vision = tf.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    return tf.Gemma3Config(
        text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4
    )


CONFIGS: dict[str, tuple[type[nn.Module], Callable[[], tf.PretrainedConfig]]] = {
    "llama": (tf.LlamaForCausalLM, lambda: tf.LlamaConfig(**_COMMON)),
    "mistral": (tf.MistralForCausalLM, lambda: tf.MistralConfig(**_COMMON, head_dim=16)),
    "qwen2": (tf.Qwen2ForCausalLM, lambda: tf.Qwen2Config(**_COMMON)),
    "qwen3": (tf.Qwen3ForCausalLM, lambda: tf.Qwen3Config(**_COMMON, head_dim=16)),
    "gemma2": (
        tf.Gemma2ForCausalLM,
        lambda: tf.Gemma2Config(**_COMMON, head_dim=16, sliding_window=8),
    ),
    "gemma3": (
        tf.Gemma3ForCausalLM,
        lambda: tf.Gemma3TextConfig(**_COMMON, head_dim=16, sliding_window=8),
    ),
    "gemma3_multimodal": (tf.Gemma3ForConditionalGeneration, _gemma3_multimodal),
    "gpt_neox": (
        tf.GPTNeoXForCausalLM,
        lambda: tf.GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=512,
        ),
    ),
    "gpt2": (
        tf.GPT2LMHeadModel,
        lambda: tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=N_LAYERS,
            n_head=4,
            n_positions=512,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "phi3": (
        tf.Phi3ForCausalLM,
        lambda: tf.Phi3Config(**{**_COMMON, "num_key_value_heads": 4}, pad_token_id=0),
    ),
}


def build_tiny(name: str, seed: int = 0) -> nn.Module:
    """A float32 eval-mode tiny model of architecture ``name`` with seeded random weights."""
    model_class, make_config = CONFIGS[name]
    torch.manual_seed(seed)
    config = make_config()
    config._attn_implementation = "eager" if name.startswith("gemma") else "sdpa"
    model = model_class(config).float().eval()
    return model


@cache
def styled_tokenizer(style: str) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer with a test template of ``style`` and its special tokens."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    if SPECIAL_TOKENS[style]:
        tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[style]})
    tokenizer.chat_template = TEMPLATES[style]
    return tokenizer


@cache
def tiny_lm(arch: str, style: str = "chatml") -> LoadedModel:
    """A tiny random model of ``arch`` with the test template ``style``."""
    return LoadedModel(
        model=build_tiny(arch), tokenizer=styled_tokenizer(style), name=f"tiny-{arch}"
    )


ARCHITECTURES = sorted(CONFIGS)
