"""A cheap, deterministic identity of a model's weights.

The fingerprint hashes the shapes and a fixed strided sample of a few structurally chosen
parameters: the input embedding and every parameter of the first and last decoder blocks (found
with :func:`find_decoder_stack`, never by name). At most ``SAMPLES_PER_TENSOR`` elements of each
tensor are read and rounded to bfloat16 on the CPU, so the cost does not grow with model size,
parameters may sit on any device, and one checkpoint loaded in float32 or bfloat16 fingerprints
the same (an axis built in bf16 serves the float32 model); a quantised load (int8, 4-bit) does
not.

Offloaded parameters (``meta`` tensors, as accelerate leaves them) hold no values: the strict
:func:`weight_fingerprint` raises :class:`PersonaAxisError`, :func:`try_weight_fingerprint`
returns ``None``.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from persona_axis.errors import PersonaAxisError
from persona_axis.models.layers import find_decoder_stack

SCHEME = b"persona-axis weight fingerprint v2"
SAMPLES_PER_TENSOR = 4096
PREFIX = "sha256:"


def _sampled_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(stable label, parameter) pairs to hash; labels do not depend on wrapper prefixes."""
    stack = find_decoder_stack(model)
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embedding = get_embeddings() if callable(get_embeddings) else None
    assert isinstance(embedding, nn.Module)  # find_decoder_stack has already required one
    chosen: list[tuple[str, torch.Tensor]] = [
        (f"embed.{name}", p) for name, p in embedding.named_parameters()
    ]
    n_layers = len(stack.layers)
    for tag, index in (("first", 0), ("last", n_layers - 1)):
        block = stack.layers[index]
        chosen += [
            (f"{tag}.{name}", p)
            for name, p in sorted(block.named_parameters(), key=lambda item: item[0])
        ]
    return chosen


def _strided_sample(tensor: torch.Tensor) -> torch.Tensor:
    """Up to ``SAMPLES_PER_TENSOR`` evenly strided elements, rounded to bfloat16, as a float32
    CPU tensor [k]."""
    flat = tensor.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
    sample = flat[::step][:SAMPLES_PER_TENSOR].to(device="cpu")
    return sample.to(torch.bfloat16).to(torch.float32)


def weight_fingerprint(model: nn.Module) -> str:
    """``"sha256:<hex>"`` over the sampled shapes and values of ``model``'s weights.

    Raises :class:`PersonaAxisError` when a sampled parameter is on the ``meta`` device
    (offloaded or not materialised), since its values cannot be read.
    """
    chosen = _sampled_tensors(model)
    offloaded = [label for label, p in chosen if p.is_meta]
    if offloaded:
        raise PersonaAxisError(
            f"Cannot fingerprint {type(model).__name__}: parameters {offloaded[:3]} are on the "
            "'meta' device (offloaded or not loaded), so their values cannot be read. Load the "
            "model without disk offload, or identify it by model id and revision instead."
        )
    digest = hashlib.sha256(SCHEME)
    digest.update(f"n_layers={len(find_decoder_stack(model).layers)}".encode())
    for label, param in chosen:
        digest.update(f"|{label}:{tuple(param.shape)}|".encode())
        digest.update(_strided_sample(param).numpy().astype("<f4").tobytes())
    return PREFIX + digest.hexdigest()


def try_weight_fingerprint(model: nn.Module) -> str | None:
    """Like :func:`weight_fingerprint`, but ``None`` where the weights cannot be read."""
    try:
        return weight_fingerprint(model)
    except PersonaAxisError:
        return None
