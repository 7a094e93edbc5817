"""Continuous batching: requests join a running batch at the next step and leave when done.

Why our own loop: transformers' continuous batching (``generate_batch``,
``ContinuousBatchingManager``) runs forward hooks, but on one flattened ragged sequence
``[1, all tokens of all requests, d]`` whose token-to-request map lives in private state, with
prefix sharing of KV blocks across requests (a cached prefix computed under one request's
intervention would be reused under another's) and, on CPU, 2.4× slower than ``generate``
(docs/benchmarks.md, `benchmarks/bench_hf_continuous.py`). So we keep
Hugging Face's ordinary forward with a ``DynamicCache`` and manage the batch ourselves.

The loop (:class:`ContinuousBatch`), one :meth:`~ContinuousBatch.step` at a time:

- **Rows are left aligned on the right.** The KV cache holds ``[rows, heads, W, head_dim]``
  per layer; row r's ``length_r`` real tokens sit in the last ``length_r`` columns, the rest
  is padding masked out by the attention mask. Every row's next token therefore goes to column
  W; its position id is ``length_r`` (positions count real tokens only), so a row computes what
  it would compute alone, up to float rounding. The cache keeps every column of every layer
  (a plain ``DynamicCache()``, no sliding-window trimming): the mask applies sliding windows.
- **Join at the next step.** Waiting requests (up to ``max_rows`` rows in all) are prefilled
  together as one left-padded batch in a fresh cache; their first tokens are sampled from
  the last position; then both caches are left padded to the same width and concatenated along
  the batch. A step is a prefill (when someone waits and a row is free) or a decoding step.
- **Leave when done.** A row ends when it samples an end-of-turn token (not kept), or when it
  has ``max_new_tokens`` tokens; with telemetry or pooling, a row at its limit is fed once more
  so every content token has been read (nothing is sampled from that feed). Finished and
  cancelled rows are dropped from the cache (batch index select), and columns that are
  padding for every remaining row are cut from the left.
- **Per-row everything.** Interventions, telemetry and pooling per row (:mod:`.rows`); sampling
  per row:
  greedy, or temperature / top-p with the row's own seeded generator, so a sampled reply
  depends on its seed only, not on the batch around it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.engine import (
    Finished,
    Reply,
    RowRequest,
    StepResult,
    run_to_end,
    stop_ids,
)
from persona_axis.inference.rows import PoolSums, RowPlan, RowTelemetry
from persona_axis.models.loading import LoadedModel


@dataclass
class _Row:
    request: RowRequest
    generator: torch.Generator | None
    telemetry: RowTelemetry | None
    pool: PoolSums | None
    tokens: list[int] = field(default_factory=list)
    length: int = 0  # real tokens in the cache
    pending: int | None = None  # sampled, not fed yet
    ended: bool = False  # stop sampled or limit reached; fed once more if telemetry needs it
    stopped: bool = False  # ended by an end-of-turn token

    @property
    def reads(self) -> bool:
        """Telemetry or pooling: every content token must be fed."""
        return self.telemetry is not None or self.pool is not None


class ContinuousBatch:
    """The running batch of one model; see the module docstring. Not thread-safe: one thread
    calls :meth:`add`, :meth:`cancel` and :meth:`step` (the serving worker)."""

    def __init__(self, lm: LoadedModel, *, max_rows: int = 16) -> None:
        if max_rows < 1:
            raise PersonaAxisError(f"max_rows must be at least 1, not {max_rows}.")
        self.lm = lm
        self.max_rows = max_rows
        self.stops = set(stop_ids(lm))
        self.waiting: list[_Row] = []
        self.rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: Tensor | None = None  # [rows, W] long
        self._plan: RowPlan | None = None
        params = inspect.signature(lm.model.forward).parameters
        self._cache_name = "cache" if "cache" in params else "past_key_values"
        self._keep_logits = "logits_to_keep" in params

    # -- requests ------------------------------------------------------------------------------

    def add(self, request: RowRequest) -> None:
        """Queue ``request``; it joins the batch at the next step with a free row."""
        if not request.prompt:
            raise PersonaAxisError("The prompt is empty; render a conversation first.")
        sampling = request.sampling
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator(self.lm.device).manual_seed(sampling.seed)
        telemetry = None
        if request.probe is not None:
            telemetry = RowTelemetry.start(self.lm, request.spec, request.probe)
        pool = None if request.pool is None else PoolSums.start(self.lm, request.pool)
        if request.spec is not None:
            RowPlan(self.lm, [request.spec])  # validate now, not when it joins
        self.waiting.append(_Row(request, generator, telemetry, pool))

    def cancel(self, key: Hashable) -> bool:
        """Drop request ``key`` (waiting or running); True if it was found."""
        for group in (self.waiting, self.rows):
            for row in group:
                if row.request.key == key:
                    if group is self.waiting:
                        self.waiting.remove(row)
                    else:
                        self._drop([r is not row for r in self.rows])
                    return True
        return False

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.rows

    @property
    def running_keys(self) -> list[Hashable]:
        """Keys of the rows the next decoding step feeds."""
        return [row.request.key for row in self.rows]

    # -- one step ------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> StepResult:
        """Prefill waiting requests if a row is free, else decode one token for every row."""
        free = self.max_rows - len(self.rows)
        if self.waiting and free > 0:
            joining, self.waiting = self.waiting[:free], self.waiting[free:]
            return self._prefill(joining)
        if self.rows:
            return self._decode()
        return StepResult()

    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor, cache: DynamicCache) -> Tensor:
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            self._cache_name: cache,
            "use_cache": True,
        }
        if self._keep_logits:
            kwargs["logits_to_keep"] = 1
        out = self.lm.model(**kwargs)
        return out.logits[:, -1].float()

    def _prefill(self, joining: list[_Row]) -> StepResult:
        device = self.lm.device
        prompts = [list(row.request.prompt) for row in joining]
        width = max(map(len, prompts))
        pad = self.lm.tokenizer.pad_token_id or 0
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for index, prompt in enumerate(prompts):
            ids[index, width - len(prompt) :] = torch.tensor(prompt)
            mask[index, width - len(prompt) :] = 1
            joining[index].length = len(prompt)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache()
        plan = RowPlan(self.lm, [row.request.spec for row in joining])
        with plan.hooked("prompt"):
            logits = self._forward(ids.to(device), mask.to(device), positions.to(device), cache)
        result = StepResult(kind="prompt", rows=len(joining))
        self._sample(joining, logits, result)
        self._merge(joining, cache, mask.to(device))
        self._finish(result)
        return result

    def _decode(self) -> StepResult:
        assert self._cache is not None and self._mask is not None
        device = self.lm.device
        rows = self.rows
        ids = torch.tensor([[row.pending] for row in rows], dtype=torch.long, device=device)
        positions = torch.tensor([[row.length] for row in rows], dtype=torch.long, device=device)
        mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], dim=1)
        if self._plan is None:
            self._plan = RowPlan(
                self.lm,
                [row.request.spec for row in rows],
                [row.telemetry for row in rows],
                [row.pool for row in rows],
            )
        with self._plan.hooked("generated"):
            logits = self._forward(ids, mask, positions, self._cache)
        self._plan.commit()
        self._mask = mask
        for row in rows:
            row.length += 1
            row.pending = None
        result = StepResult(kind="generated", rows=len(rows))
        self._sample([row for row in rows if not row.ended], logits, result, rows)
        self._finish(result)
        return result

    def _sample(
        self,
        chosen: list[_Row],
        logits: Tensor,
        result: StepResult,
        order: list[_Row] | None = None,
    ) -> None:
        """Sample the next token of each row in ``chosen`` from its row of ``logits``
        (rows of ``order``, default ``chosen``)."""
        index = {id(row): i for i, row in enumerate(order or chosen)}
        greedy = [row for row in chosen if row.generator is None]
        picked: dict[int, int] = {}
        if greedy:
            where = torch.tensor([index[id(row)] for row in greedy], device=logits.device)
            for row, token in zip(greedy, logits[where].argmax(-1).tolist(), strict=True):
                picked[id(row)] = token
        groups: dict[tuple[float, float], list[_Row]] = {}
        for row in chosen:
            if row.generator is not None:
                sampling = row.request.sampling
                groups.setdefault((sampling.temperature, sampling.top_p), []).append(row)
        for (temperature, top_p), rows in groups.items():
            where = torch.tensor([index[id(row)] for row in rows], device=logits.device)
            draws = [row.generator for row in rows if row.generator is not None]
            tokens = sample_tokens(logits[where], temperature, top_p, draws)
            for row, token in zip(rows, tokens, strict=True):
                picked[id(row)] = token
        for row in chosen:
            token = picked[id(row)]
            if token in self.stops:
                row.ended = row.stopped = True
                continue
            row.tokens.append(token)
            row.pending = token
            result.tokens.append((row.request.key, token))
            if len(row.tokens) >= row.request.sampling.max_new_tokens:
                row.ended = True

    def _finish(self, result: StepResult) -> None:
        """Finish rows that ended and need no further feed; drop them from the batch."""
        keep = []
        for row in self.rows:
            fed_all = row.stopped or not row.reads or row.pending is None
            done = row.ended and fed_all
            if done:
                result.finished.append(self._finished(row))
            keep.append(not done)
        if not all(keep):
            self._drop(keep)

    def _finished(self, row: _Row) -> Finished:
        tokens = row.tokens
        pooled = None if row.pool is None else row.pool.means()
        if row.pool is not None and row.pool.count != len(tokens):  # an invariant
            raise RuntimeError(f"pooled {row.pool.count} tokens, reply has {len(tokens)}")
        reply = Reply(
            text=str(self.lm.tokenizer.decode(tokens, skip_special_tokens=True)).strip(),
            token_ids=list(tokens),
            prompt_length=len(row.request.prompt),
            finished=row.stopped,
            activations=None if pooled is None else pooled[0],
            norms=None if pooled is None else pooled[1],
        )
        telemetry = None if row.telemetry is None else row.telemetry.result()
        return Finished(row.request.key, reply, telemetry)

    # -- the cache -----------------------------------------------------------------------------

    def _merge(self, joining: list[_Row], cache: DynamicCache, mask: Tensor) -> None:
        """Append the prefilled rows (their cache and mask) to the running batch."""
        self._plan = None
        if self._cache is None or self._mask is None or not self.rows:
            self._cache, self._mask, self.rows = cache, mask, list(joining)
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for (ours, keys, values), (_, new_keys, new_values) in zip(
            _kv_layers(self._cache), _kv_layers(cache), strict=True
        ):
            ours.keys = torch.cat([_pad_left(keys, width), _pad_left(new_keys, width)])
            ours.values = torch.cat([_pad_left(values, width), _pad_left(new_values, width)])
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])
        self.rows = self.rows + joining

    def _drop(self, keep: list[bool]) -> None:
        """Keep only the rows flagged in ``keep``; cut columns that are padding for all."""
        self._plan = None
        self.rows = [row for row, kept in zip(self.rows, keep, strict=True) if kept]
        if not self.rows or self._cache is None or self._mask is None:
            self._cache = self._mask = None
            self.rows = []
            return
        index = torch.tensor([i for i, kept in enumerate(keep) if kept], dtype=torch.long)
        cut = self._mask.shape[1] - max(row.length for row in self.rows)
        for layer, keys, values in _kv_layers(self._cache):
            rows = index.to(keys.device)
            layer.keys = keys[rows, :, cut:]
            layer.values = values[rows, :, cut:]
        self._mask = self._mask[index.to(self._mask.device), cut:]


def _kv_layers(cache: DynamicCache) -> list[tuple[DynamicLayer, Tensor, Tensor]]:
    """Each layer's key/value store with its keys and values ``[rows, heads, W, head_dim]``;
    refuses caches the loop cannot merge."""
    layers = []
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
            raise PersonaAxisError(
                f"Continuous batching needs plain key/value caches, but this model uses "
                f"{type(layer).__name__} (not an attention-only decoder); persona-axis cannot "
                "generate with it."
            )
        layers.append((layer, layer.keys, layer.values))
    return layers


def _pad_left(tensor: Tensor, width: int) -> Tensor:
    """``tensor`` with zeros prepended on its column axis (dim 1 of a mask ``[rows, W]``, dim 2
    of cached keys/values ``[rows, heads, W, head_dim]``) up to ``width`` columns."""
    axis = 1 if tensor.ndim == 2 else 2
    missing = width - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


NUCLEUS_CANDIDATES = 64
""":func:`sample_tokens` first looks for the top-p nucleus among this many top tokens."""


def sample_tokens(
    logits: Tensor, temperature: float, top_p: float, generators: Sequence[torch.Generator]
) -> list[int]:
    """One token id per row of ``logits`` ``[rows, vocab]``, sampled at ``temperature`` from
    the top-p nucleus (the most likely tokens, in order, until the mass of the tokens ranked
    above the next one reaches ``top_p``; the first token always stays), row i drawing one
    uniform number from ``generators[i]`` and inverting the nucleus's cumulative distribution
    taken in token-id order (so float noise in the logits changes a draw only at a boundary).

    Exact, and cheap where the nucleus is small (the usual case): the nucleus is taken from the
    top :data:`NUCLEUS_CANDIDATES` tokens when their mass reaches ``top_p`` in every row, from
    the whole sorted vocabulary otherwise; top_p 1 samples the whole vocabulary."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
        top, ids = probs.topk(k, dim=-1)
        if k < probs.shape[-1] and bool((top.sum(-1) < top_p).any()):
            top, ids = probs.sort(dim=-1, descending=True)
        above = top.cumsum(-1) - top  # mass of the tokens ranked above each one
        top = top.masked_fill(above >= top_p, 0.0)
        # invert in token-id order, not rank order: a last-bit change in the logits (another
        # thread count or instruction set) may swap two near-equal tokens' ranks, which would
        # move every draw between them; in id order it moves only a draw within rounding of
        # a boundary
        ids, order = ids.sort(dim=-1)
        top = top.gather(-1, order)
    else:
        top, ids = probs, None
    cumulative = top.cumsum(-1)
    uniform = torch.stack([torch.rand((), generator=g, device=g.device) for g in generators])
    target = uniform.to(cumulative.device).unsqueeze(-1) * cumulative[:, -1:]
    chosen = torch.searchsorted(cumulative, target, right=True).clamp_max(top.shape[-1] - 1)
    # a zero-probability position can only be chosen by rounding at the end of a row: step back
    chosen = torch.where(
        top.gather(-1, chosen) > 0, chosen, (top > 0).cumsum(-1).argmax(-1, keepdim=True)
    )
    tokens = chosen if ids is None else ids.gather(-1, chosen)
    return [int(token) for token in tokens.squeeze(-1).tolist()]


def generate_rows(
    lm: LoadedModel,
    requests: Sequence[RowRequest],
    *,
    max_rows: int = 16,
    on_step: Callable[[ContinuousBatch, int], None] | None = None,
) -> dict[Hashable, Finished]:
    """Run ``requests`` to the end through one :class:`ContinuousBatch`; results by key.
    ``on_step(batch, step)`` runs before every step (e.g. to add requests mid-run)."""
    return run_to_end(ContinuousBatch(lm, max_rows=max_rows), requests, on_step=on_step)
