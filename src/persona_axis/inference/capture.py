"""Per-layer means of the residual stream over token spans, pooled inside the hooks.

For every requested layer L (output of decoder block L, = HF ``hidden_states[L + 1]``) and every
span, the mean hidden state over the span's tokens is accumulated in float32 inside the block's
forward hook, so the ``layers × batch × tokens × d`` tensor is never built. Only the hooked
layers are read, the pass stops right after the last of them (a raised :class:`StopForward`),
and the LM head is never run: the decoder stack is called directly, without the head.

Batches mix lengths under right or left padding; position ids follow the attention mask, so a
padded sequence gets the same activations as when it runs alone (up to float rounding).

A sequence too long for one pass runs in chunks with a KV cache (:func:`pool_spans_chunked`):
each chunk attends to the cached keys and values of the chunks before it, so the span means
equal a single pass's (up to float rounding) while the attention buffers stay bounded by
``chunk × sequence`` instead of ``sequence²``. The cache holds only the layers up to the last
hooked one, since the pass stops there.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.hooks import StopForward, block_output, removing
from persona_axis.models.chat import Message
from persona_axis.models.loading import LoadedModel

Segments = Sequence[tuple[int, int]]
"""One pooled unit: ``[start, end)`` token ranges whose union is averaged."""

PaddingSide = Literal["left", "right"]
TokenTransform = Callable[[Tensor], Tensor]
"""Applied to the selected float32 hidden states ``[n_tokens, d]`` before pooling."""


@dataclass(frozen=True)
class PoolingPlan:
    """Where the pooled tokens sit in a flattened ``[batch * tokens]`` batch, and their weights.

    ``token_index`` ``[n]`` lists each token used by any span once; ``weights`` ``[n_spans, n]``
    holds ``1 / span_length`` where a span uses a token, so ``weights @ h[token_index]`` is the
    span means.
    """

    token_index: Tensor
    weights: Tensor

    @classmethod
    def build(
        cls, spans: Sequence[Sequence[Segments]], offsets: Sequence[int], width: int
    ) -> PoolingPlan:
        """``spans[b]`` are sequence b's spans, ``offsets[b]`` its left padding, ``width`` T."""
        positions: dict[int, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        n_spans = 0
        for batch_row, (row_spans, pad) in enumerate(zip(spans, offsets, strict=True)):
            for segments in row_spans:
                tokens = sorted({t for begin, end in segments for t in range(begin, end)})
                if not tokens:
                    raise PersonaAxisError(
                        f"Span {n_spans} of sequence {batch_row} holds no tokens; every span "
                        "to pool needs at least one (an empty reply has no activation)."
                    )
                for token in tokens:
                    flat = batch_row * width + pad + token
                    cols.append(positions.setdefault(flat, len(positions)))
                    rows.append(n_spans)
                    vals.append(1.0 / len(tokens))
                n_spans += 1
        weights = torch.zeros(n_spans, len(positions), dtype=torch.float32)
        weights[rows, cols] = torch.tensor(vals, dtype=torch.float32)
        return cls(token_index=torch.tensor(list(positions), dtype=torch.long), weights=weights)


class SpanPooler:
    """Forward hooks that pool span means at chosen layers of a loaded model.

    Use as a context manager (hooks exist only inside it), then call :meth:`run` per batch.
    """

    def __init__(
        self,
        lm: LoadedModel,
        layers: Sequence[int] | None = None,
        transform: TokenTransform | None = None,
    ) -> None:
        n_layers = lm.shape.n_layers
        chosen = list(range(n_layers)) if layers is None else sorted(set(layers))
        bad = [layer for layer in chosen if not 0 <= layer < n_layers]
        if bad or not chosen:
            raise PersonaAxisError(
                f"Layers {bad or chosen} are out of range; this model has layers 0..{n_layers - 1}."
            )
        self.lm = lm
        self.layers = chosen
        self.transform = transform
        self._plan: dict[torch.device, PoolingPlan] = {}
        self._cpu_plan: PoolingPlan | None = None
        self._out: list[Tensor | None] = []
        params = inspect.signature(lm.stack.module.forward).parameters
        self._takes_positions = "position_ids" in params
        self._cache_key = next((k for k in ("cache", "past_key_values") if k in params), None)

    def _hook(self, slot: int, is_last: bool) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            hidden = block_output(output)
            plan = self._plan_on(hidden.device)
            tokens = hidden.reshape(-1, hidden.shape[-1]).index_select(0, plan.token_index)
            tokens = tokens.float()
            if self.transform is not None:
                tokens = self.transform(tokens)
            self._out[slot] = (plan.weights @ tokens).cpu()
            if is_last:
                raise StopForward

        return hook

    def _plan_on(self, device: torch.device) -> PoolingPlan:
        plan = self._plan.get(device)
        if plan is None:
            assert self._cpu_plan is not None
            plan = PoolingPlan(
                self._cpu_plan.token_index.to(device), self._cpu_plan.weights.to(device)
            )
            self._plan[device] = plan
        return plan

    @contextmanager
    def hooked(self) -> Iterator[SpanPooler]:
        handles = [
            self.lm.stack.layers[layer].register_forward_hook(
                self._hook(slot, layer == self.layers[-1])
            )
            for slot, layer in enumerate(self.layers)
        ]
        with removing(handles):
            yield self

    @torch.no_grad()
    def run(
        self,
        sequences: Sequence[Sequence[int]],
        spans: Sequence[Sequence[Segments]],
        padding_side: PaddingSide = "right",
    ) -> list[Tensor]:
        """Pool one batch; returns per sequence ``[n_spans, n_layers_chosen, d]`` float32 (CPU)."""
        if padding_side not in ("left", "right"):
            raise PersonaAxisError(f"padding_side must be 'left' or 'right', not {padding_side!r}.")
        width = max(len(seq) for seq in sequences)
        pad_id = self.lm.tokenizer.pad_token_id or 0
        ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        offsets = []
        for row, seq in enumerate(sequences):
            if not seq:
                raise PersonaAxisError(f"Sequence {row} is empty; nothing to run.")
            pad = width - len(seq) if padding_side == "left" else 0
            ids[row, pad : pad + len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, pad : pad + len(seq)] = 1
            offsets.append(pad)
        device = self.lm.device
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "use_cache": False,
        }
        if self._takes_positions:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0).to(device)
        return self._forward(kwargs, spans, offsets, width)

    @torch.no_grad()
    def run_cached(self, chunk: Sequence[int], spans: Sequence[Segments], cache: Any) -> Tensor:
        """Pool one chunk of a single sequence that continues the tokens held in ``cache``.

        ``spans`` are positions within the chunk; the chunk's tokens sit at absolute positions
        ``past .. past + len(chunk)`` where ``past`` is what the cache holds. Returns
        ``[n_spans, n_layers_chosen, d]`` float32 (CPU). The cache must only ever be fed through
        this pooler (it stops after the last hooked layer, so deeper layers are never cached).
        """
        if not chunk:
            raise PersonaAxisError("The chunk is empty; nothing to run.")
        if self._cache_key is None:
            raise PersonaAxisError(
                f"{type(self.lm.stack.module).__name__} takes no KV cache argument, so long "
                "sequences cannot be run in chunks; pass a window that fits one pass."
            )
        past = int(cache.get_seq_length())
        device = self.lm.device
        ids = torch.as_tensor([list(chunk)], dtype=torch.long)
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(device),
            self._cache_key: cache,
            "use_cache": True,
        }
        if self._takes_positions:
            kwargs["position_ids"] = torch.arange(past, past + len(chunk), device=device)[None]
        (pooled,) = self._forward(kwargs, [spans], [0], len(chunk))
        return pooled

    def _forward(
        self,
        kwargs: dict[str, Any],
        spans: Sequence[Sequence[Segments]],
        offsets: Sequence[int],
        width: int,
    ) -> list[Tensor]:
        self._cpu_plan = PoolingPlan.build(spans, offsets, width)
        self._plan.clear()
        self._out = [None] * len(self.layers)
        with contextlib.suppress(StopForward):  # raised after the last requested layer
            self.lm.stack.module(**kwargs)
        pooled = torch.stack([out for out in self._out if out is not None], dim=1)
        counts = [len(row_spans) for row_spans in spans]
        return list(torch.split(pooled, counts, dim=0))


def pool_spans(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    spans: Sequence[Sequence[Segments]],
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 8,
    padding_side: PaddingSide = "right",
    transform: TokenTransform | None = None,
    progress: bool = False,
) -> list[Tensor]:
    """Span means for many sequences, batched by similar length.

    Returns, per sequence, ``[n_spans, n_layers_chosen, d]`` float32 where the layers are
    ``sorted(set(layers))`` (all layers when None).
    """
    if len(sequences) != len(spans):
        raise PersonaAxisError(
            f"Got {len(sequences)} sequences but spans for {len(spans)}; give one list per "
            "sequence."
        )
    if batch_size < 1:
        raise PersonaAxisError(f"batch_size must be at least 1, not {batch_size}.")
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    results: list[Tensor | None] = [None] * len(sequences)
    pooler = SpanPooler(lm, layers, transform)
    with (
        pooler.hooked(),
        tqdm(total=len(sequences), disable=not progress, desc="capture", unit="seq") as bar,
    ):
        for first in range(0, len(order), batch_size):
            chunk = order[first : first + batch_size]
            pooled = pooler.run(
                [sequences[i] for i in chunk], [spans[i] for i in chunk], padding_side
            )
            for i, tensor in zip(chunk, pooled, strict=True):
                results[i] = tensor
            bar.update(len(chunk))
    return [r for r in results if r is not None]


def new_cache(lm: LoadedModel) -> Any:
    """An empty KV cache for ``lm`` (transformers' ``DynamicCache``, laid out from its config)."""
    from transformers import DynamicCache

    return DynamicCache(config=lm.model.config)


def split_segments(segments: Segments, first: int, stop: int) -> tuple[tuple[int, int], ...]:
    """The parts of ``segments`` inside ``[first, stop)``, shifted to start at ``first``."""
    parts = []
    for begin, end in segments:
        low, high = max(begin, first), min(end, stop)
        if high > low:
            parts.append((low - first, high - first))
    return tuple(parts)


def pool_spans_chunked(
    lm: LoadedModel,
    sequence: Sequence[int],
    spans: Sequence[Segments],
    layers: Sequence[int] | None = None,
    *,
    chunk_tokens: int = 1024,
    transform: TokenTransform | None = None,
    pooler: SpanPooler | None = None,
) -> Tensor:
    """Span means over one long ``sequence``, run in chunks of at most ``chunk_tokens`` with a
    KV cache (module doc): ``[n_spans, n_layers_chosen, d]`` float32, equal to
    :func:`pool_spans` on the whole sequence up to float rounding.

    A span crossing chunk boundaries is pooled per chunk and recombined weighted by its token
    counts. The pass over each chunk stops after the last requested layer. Pass ``pooler``
    (already :meth:`~SpanPooler.hooked`) to reuse its hooks across calls.
    """
    if chunk_tokens < 1:
        raise PersonaAxisError(f"chunk_tokens must be at least 1, not {chunk_tokens}.")
    if not sequence:
        raise PersonaAxisError("The sequence is empty; nothing to run.")
    counts = [sum(max(0, end - begin) for begin, end in segments) for segments in spans]
    if any(count == 0 for count in counts):
        raise PersonaAxisError(
            f"Span {counts.index(0)} holds no tokens; every span to pool needs at least one "
            "(an empty reply has no activation)."
        )
    if pooler is None:
        pooler = SpanPooler(lm, layers, transform)
        with pooler.hooked():
            return pool_spans_chunked(lm, sequence, spans, chunk_tokens=chunk_tokens, pooler=pooler)
    last = max(end for segments in spans for _, end in segments) if spans else 0
    stop = min(len(sequence), last)  # nothing after the last span is needed
    sums = torch.zeros(len(spans), len(pooler.layers), lm.shape.hidden_size)
    cache = new_cache(lm)
    for first in range(0, stop, chunk_tokens):
        end = min(stop, first + chunk_tokens)
        local = [split_segments(segments, first, end) for segments in spans]
        used = [i for i, parts in enumerate(local) if parts]
        chunk = sequence[first:end]
        if not used:  # context only: feed it to the cache, pool a dummy span
            pooler.run_cached(chunk, [((0, 1),)], cache)
            continue
        means = pooler.run_cached(chunk, [local[i] for i in used], cache)
        weights = torch.tensor([sum(b - a for a, b in local[i]) for i in used], dtype=torch.float32)
        sums[used] += means * weights[:, None, None]
    return sums / torch.tensor(counts, dtype=torch.float32)[:, None, None]


def response_activations(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    layers: Sequence[int] | None = None,
    *,
    role: str = "assistant",
    exclude_code: bool = False,
    batch_size: int = 8,
    padding_side: PaddingSide = "right",
    progress: bool = False,
) -> list[Tensor]:
    """Per conversation, ``[n_turns, n_layers_chosen, d]``: the mean over each ``role`` turn's
    content tokens (the response activations of docs/method.md, for ``role="assistant"``)."""
    sequences, spans = [], []
    for index, conversation in enumerate(conversations):
        rendered = lm.chat.render(conversation, exclude_code=exclude_code)
        turns = [span.segments for span in rendered.role_spans(role)]
        if not turns:
            raise PersonaAxisError(f"Conversation {index} has no {role} message to pool.")
        sequences.append(rendered.input_ids)
        spans.append(turns)
    return pool_spans(
        lm,
        sequences,
        spans,
        layers,
        batch_size=batch_size,
        padding_side=padding_side,
        progress=progress,
    )
