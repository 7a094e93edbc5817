"""Shared fixtures: the embedded SmolLM2 model and tiny random models with test templates.

Model fixtures are session-scoped: each model loads once per test run.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download; set before HF imports

from functools import cache

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from persona_axis.models import LoadedModel, load_model
from persona_axis.models.loading import default_model_dir
from templates import SPECIAL_TOKENS, TEMPLATES
from tiny_models import CONFIGS, build_tiny

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm() -> LoadedModel:
    """The embedded default model, SmolLM2-135M-Instruct, float32."""
    return load_model()


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
