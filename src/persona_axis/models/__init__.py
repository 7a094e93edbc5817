"""Model loading, decoder-block discovery, chat rendering and token spans."""

from persona_axis.models.chat import ChatFormat, MessageSpan, RenderedChat, validate_messages
from persona_axis.models.layers import DecoderStack, ModelShape, find_decoder_stack, model_shape
from persona_axis.models.loading import (
    DEFAULT_MODEL,
    LoadedModel,
    cache_dir,
    load_model,
    model_facts,
    wrap,
)

__all__ = [
    "DEFAULT_MODEL",
    "ChatFormat",
    "DecoderStack",
    "LoadedModel",
    "MessageSpan",
    "ModelShape",
    "RenderedChat",
    "cache_dir",
    "find_decoder_stack",
    "load_model",
    "model_facts",
    "model_shape",
    "validate_messages",
    "wrap",
]
