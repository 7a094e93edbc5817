"""Shared plumbing for forward hooks on decoder blocks.

Decoder blocks return their output hidden state ``[batch, tokens, d]`` either as a tensor or as
the first item of a tuple; :func:`block_output` and :func:`with_block_output` read and replace it
whatever the form. :class:`PositionTracker` tells hooks which absolute positions a forward call
covers, so an intervention can act on prompt tokens or generated tokens only, including inside
``model.generate`` with a KV cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class StopForward(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a hook after the last layer a caller needs, to skip the rest of the pass."""


def block_output(output: Any) -> Tensor:
    """The hidden state ``[batch, tokens, d]`` a decoder block returned."""
    return output[0] if isinstance(output, tuple) else output


def with_block_output(output: Any, hidden: Tensor) -> Any:
    """``output`` with its hidden state replaced by ``hidden`` (same container type)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def call_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, Tensor | None]:
    """From a decoder stack's forward arguments: how many tokens its KV cache already holds
    (0 for a prompt call) and the call's ``input_ids`` ``[batch, tokens]`` (None if embeddings
    were passed instead)."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    past = int(cache.get_seq_length()) if cache is not None else 0
    return past, kwargs.get("input_ids", args[0] if args else None)


class PositionTracker:
    """Absolute positions of the tokens in the current forward call of a decoder stack.

    A forward pre-hook on the stack reads how many tokens the KV cache already holds: a call
    on an empty cache is a prompt (its length becomes ``prompt_length`` unless one was given);
    later calls are generated tokens. Positions count padded slots, like the cache does.
    """

    def __init__(self, prompt_length: int | None = None) -> None:
        self.fixed_prompt_length = prompt_length
        self.prompt_length = prompt_length or 0
        self.offset = 0
        self._generated: dict[torch.device, Tensor] = {}

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        past, ids = call_inputs(args, kwargs)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        self.offset = past
        if past == 0 and self.fixed_prompt_length is None:
            self.prompt_length = int(ids.shape[1])
        self._generated.clear()

    def generated_mask(self, n_tokens: int, device: torch.device) -> Tensor:
        """Bool ``[n_tokens]``: True where the position lies past the prompt."""
        mask = self._generated.get(device)
        if mask is None or mask.shape[0] != n_tokens:
            positions = torch.arange(self.offset, self.offset + n_tokens, device=device)
            mask = positions >= self.prompt_length
            self._generated[device] = mask
        return mask

    def generated_count(self, n_tokens: int) -> int:
        """How many of the call's ``n_tokens`` positions lie past the prompt, on the host (no
        device tensor is read, so hooks need not wait for the device to decide)."""
        return min(n_tokens, max(0, self.offset + n_tokens - self.prompt_length))

    @contextmanager
    def attached(self, stack_module: nn.Module) -> Iterator[PositionTracker]:
        handle = stack_module.register_forward_pre_hook(self.pre_hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()


@contextmanager
def removing(handles: list[RemovableHandle]) -> Iterator[None]:
    """Remove every hook handle in ``handles`` on exit, exceptions included."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        handles.clear()
