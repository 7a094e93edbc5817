"""Where our layer L lives in vLLM's decoder layers: the residual pair.

vLLM's decoder layers (Llama and SmolLM2, Qwen2/3, Gemma 2/3, ...) return a pair
``(hidden_states, residual)`` and the next layer's fused add + RMSNorm forms their sum first, so

    x_L = hidden_states_L + residual_L          (= HF ``hidden_states[L + 1]``, docs/method.md)

An intervention replaces the pair by ``(x_L', 0)``: the next fused add then sees
``x_L' + 0 = x_L'`` exactly, and a token the intervention leaves alone gets ``(x_L, 0)``, whose
sum equals ``h + r`` bit for bit. docs/vllm-backend.md §1.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from persona_axis.errors import PersonaAxisError

LAYER_PATHS = ("model.layers", "language_model.model.layers", "model.language_model.layers")
"""Attribute paths from a vLLM model to its decoder layers, tried in order."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a vLLM model (``[n_layers]`` modules, 0-based like ours)."""
    for path in LAYER_PATHS:
        found: Any = model
        for name in path.split("."):
            found = getattr(found, name, None)
        if isinstance(found, nn.ModuleList):
            return found
    raise PersonaAxisError(
        f"Could not find the decoder layers of {type(model).__name__} in vLLM (looked at "
        f"{', '.join(LAYER_PATHS)}); the vLLM engine supports Llama, Qwen2/3 and Gemma 2/3."
    )


def residual_pair(output: Any, layer: int) -> tuple[Tensor, Tensor]:
    """The ``(hidden_states, residual)`` pair decoder layer ``layer`` returned, each
    ``[tokens, d]``; refuses layers of another convention."""
    if (
        isinstance(output, tuple)
        and len(output) == 2
        and all(isinstance(part, Tensor) for part in output)
    ):
        return output[0], output[1]
    raise PersonaAxisError(
        f"vLLM decoder layer {layer} returned {type(output).__name__}, not the pair "
        "(hidden_states, residual) the vLLM engine hooks; this architecture is not supported."
    )


def stream(hidden: Tensor, residual: Tensor) -> Tensor:
    """Our layer output ``x_L = hidden + residual`` ``[tokens, d]``, in the model dtype."""
    return hidden + residual


def replaced(stream_out: Tensor) -> tuple[Tensor, Tensor]:
    """The pair to return for a new stream ``x_L'``: ``(x_L', 0)``."""
    return stream_out, stream_out.new_zeros(stream_out.shape)
