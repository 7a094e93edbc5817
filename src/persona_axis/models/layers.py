"""Find a model's decoder blocks by structure and describe its shape.

Layer L in this package is the output of decoder block L, 0-based, which equals Hugging Face's
``hidden_states[L + 1]``. The decoder block list is found structurally, never by model name: it
is the list of identical blocks that sits beside the token embedding (``embed_tokens``, ``wte``,
``embed_in``...), which also picks the language model inside multimodal wrappers, whose vision
tower holds block lists of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from persona_axis.errors import PersonaAxisError


@dataclass(frozen=True)
class ModelShape:
    """What an artifact must agree with: architecture, depth and residual width."""

    architecture: str
    n_layers: int
    hidden_size: int

    @property
    def target_layer(self) -> int:
        """The middle layer, ``n_layers // 2`` (docs/method.md), where the axis is read by
        default."""
        return self.n_layers // 2


@dataclass(frozen=True)
class DecoderStack:
    """The module that owns the decoder blocks (callable with ``input_ids``) and the blocks."""

    module: nn.Module
    layers: nn.ModuleList


def _block_lists(owner: nn.Module) -> list[nn.ModuleList]:
    """Direct children of ``owner`` that are non-empty lists of same-class blocks."""
    return [
        child
        for child in owner.children()
        if isinstance(child, nn.ModuleList)
        and len(child) > 0
        and len({type(block) for block in child}) == 1
    ]


def _input_embedding(model: nn.Module) -> nn.Module:
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embedding = get_embeddings() if callable(get_embeddings) else None
    if not isinstance(embedding, nn.Module):
        raise PersonaAxisError(
            f"{type(model).__name__} exposes no input embedding (get_input_embeddings), so its "
            "decoder blocks cannot be located; pass a Hugging Face causal language model."
        )
    return embedding


def find_decoder_stack(model: nn.Module) -> DecoderStack:
    """Return the decoder block list and the module owning it.

    The owner is the nearest ancestor of the input embedding that holds a list of identical
    blocks as a direct child; among several such lists the longest wins.
    """
    embedding = _input_embedding(model)
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    owner = parents.get(id(embedding))
    while owner is not None:
        lists = _block_lists(owner)
        if lists:
            return DecoderStack(module=owner, layers=max(lists, key=len))
        owner = parents.get(id(owner))
    raise PersonaAxisError(
        f"No list of decoder blocks found beside the token embedding of "
        f"{type(model).__name__}; this architecture is not supported yet."
    )


def model_shape(model: nn.Module) -> ModelShape:
    """Architecture name, number of decoder blocks and hidden size of ``model``."""
    stack = find_decoder_stack(model)
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None else None
    hidden = getattr(text_config, "hidden_size", None)
    if not isinstance(hidden, int):
        hidden = int(getattr(_input_embedding(model), "embedding_dim", 0))
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    return ModelShape(
        architecture=str(architectures[0]), n_layers=len(stack.layers), hidden_size=hidden
    )
