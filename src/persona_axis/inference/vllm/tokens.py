"""Per-request interventions, telemetry and pooling on one flattened vLLM step.

vLLM runs every scheduled request's new tokens as one ``[tokens, d]`` batch. At the start of each
forward pass (a pre-hook on the first decoder layer) :class:`TokenSteering` maps each token to
its request ("row") and position, from the model runner's batch (the engine tells it where each
request's tokens sit, :data:`Scheduled`). Then, at every decoder layer, a forward hook:

- forms our layer output ``x_L = h + r`` (:mod:`.residual`),
- applies the rows' interventions with the one implementation of the math
  (:func:`~persona_axis.inference.interventions.apply_kind`), per-row parameters of a
  :class:`~persona_axis.inference.rows.RowPlan` indexed per token: a token acts where its row's
  intervention acts at its position (prompt positions ``< prompt length``, generated ones
  after); other tokens, padding included, keep ``x_L`` bit for bit,
- reads telemetry on the row's content tokens (generated positions fed back: ``⟨x, â_L⟩`` before
  and after the layer's interventions, the cap direction's projection against its floor) into
  the row's :class:`~persona_axis.inference.rows.RowTelemetry`, the sums the HF engine keeps,
- adds the content tokens' ``x_L`` (float32) and ``‖x_L‖`` to the row's pooled sums (build).

A step with no intervention, probe or pooling anywhere returns from every hook at once. A
content position is counted once even if vLLM recomputes it (preemption). docs/vllm-backend.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.engine import RowRequest
from persona_axis.inference.interventions import apply_kind
from persona_axis.inference.rows import PoolSums, RowOp, RowPlan, RowTelemetry
from persona_axis.inference.vllm.residual import replaced, residual_pair, stream
from persona_axis.models.loading import LoadedModel


@dataclass
class Live:
    """One request while vLLM runs it: its settings, sums, and the next content position to
    count (positions ``< prompt_length`` are prompt)."""

    request: RowRequest
    telemetry: RowTelemetry | None
    pool: PoolSums | None
    next_position: int = -1

    def __post_init__(self) -> None:
        if self.next_position < 0:
            self.next_position = len(self.request.prompt)

    @property
    def prompt_length(self) -> int:
        return len(self.request.prompt)

    @property
    def plain(self) -> bool:
        """No intervention, no telemetry, no pooling: the hooks leave it alone."""
        return self.request.spec is None and self.telemetry is None and self.pool is None


Scheduled = Callable[[], list[tuple[Live | None, int, int]]]
"""The current step's requests in batch order: ``(row or None for a foreign request, first
position, token count)``; their tokens are consecutive from token 0 of the flattened batch."""


@dataclass
class StepMap:
    """Where each token of one forward pass belongs.

    ``slots`` ``[tokens]`` row index per token (``len(rows)`` = no row: padding, foreign or
    plain requests), ``generated`` ``[tokens]`` position past the prompt; ``counted`` the token
    indices whose position is a content token seen for the first time, ``counted_rows`` their
    rows (``counted_index`` the same, as a tensor). ``records`` holds each layer's reads until
    :meth:`TokenSteering.commit`.
    """

    rows: list[Live]
    plan: RowPlan
    slots: Tensor
    generated: Tensor
    counted: Tensor
    counted_rows: list[int]
    counted_index: Tensor
    records: dict[int, tuple[Tensor | None, Tensor | None, Tensor | None]] = field(
        default_factory=dict
    )


def apply_to_tokens(op: RowOp, x: Tensor, slots: Tensor, generated: Tensor) -> Tensor:
    """``x`` ``[tokens, d]`` with ``op`` applied to the tokens whose row it acts on at their
    position (the per-row parameters of ``op`` indexed per token); others untouched."""
    acting = torch.where(generated, op.phases["generated"][slots], op.phases["prompt"][slots])
    amount = op.amount[slots]
    out = apply_kind(
        op.kind,
        x[:, None, :],
        op.directions[slots],
        coefficient=amount,
        value=amount,
        floor=amount,
        ceiling=op.ceiling[slots],
    )[:, 0]
    return torch.where(acting[:, None], out, x)


class TokenSteering:
    """The hooks on a vLLM model's decoder ``layers`` (see the module docstring)."""

    def __init__(self, lm: LoadedModel, layers: nn.ModuleList, scheduled: Scheduled) -> None:
        self.lm = lm
        self.layers = layers
        self.scheduled = scheduled
        self.map: StepMap | None = None
        self.last_rows = 0
        self.last_prefill = False
        self._plans: tuple[tuple[int, ...], RowPlan] | None = None
        self._handles: list[RemovableHandle] = [
            layers[0].register_forward_pre_hook(self._start, with_kwargs=True)
        ]
        last = len(layers) - 1
        self._handles += [
            layer.register_forward_hook(self._hook(index, index == last))
            for index, layer in enumerate(layers)
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _plan(self, rows: Sequence[Live]) -> RowPlan:
        key = tuple(id(row) for row in rows)
        if self._plans is None or self._plans[0] != key:
            specs = [row.request.spec for row in rows] + [None]  # the last row: "no row"
            telemetry = [row.telemetry for row in rows] + [None]
            self._plans = (key, RowPlan(self.lm, specs, telemetry))
        return self._plans[1]

    def _start(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        scheduled = self.scheduled()
        self.last_rows = len(scheduled)
        self.last_prefill = any(count > 1 for _, _, count in scheduled)
        rows = [live for live, _, _ in scheduled if live is not None and not live.plain]
        self.map = None
        if not rows:
            return
        hidden = args[1] if len(args) > 1 else kwargs.get("hidden_states")
        if not isinstance(hidden, Tensor):  # never silently skip someone's intervention
            raise PersonaAxisError(
                f"vLLM's {type(module).__name__} was called without hidden_states as its second "
                "argument; the vLLM engine does not support this architecture."
            )
        index = {id(row): i for i, row in enumerate(rows)}
        n_tokens = hidden.shape[0]
        slots = torch.full((n_tokens,), len(rows), dtype=torch.long)
        generated = torch.zeros(n_tokens, dtype=torch.bool)
        counted: list[int] = []
        counted_rows: list[int] = []
        start = 0
        for live, first, count in scheduled:
            row = None if live is None else index.get(id(live))
            if row is not None and live is not None:
                slots[start : start + count] = row
                prompt_left = max(0, min(count, live.prompt_length - first))
                generated[start + prompt_left : start + count] = True
                for token in range(start + prompt_left, start + count):
                    if first + token - start == live.next_position:
                        counted.append(token)
                        counted_rows.append(row)
                        live.next_position += 1
            start += count
        device = hidden.device
        self.map = StepMap(
            rows,
            self._plan(rows),
            slots.to(device),
            generated.to(device),
            torch.tensor(counted, dtype=torch.long, device=device),
            counted_rows,
            torch.tensor(counted_rows, dtype=torch.long, device=device),
        )

    def _hook(self, layer: int, is_last: bool) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            step = self.map
            if step is None:
                return None
            try:
                return self._at_layer(step, layer, output)
            finally:
                if is_last:
                    self.commit(step)
                    self.map = None

        return hook

    def _at_layer(self, step: StepMap, layer: int, output: Any) -> Any:
        ops, reads = step.plan.at(layer, step.slots.device)
        pooling = any(
            (pool := step.rows[row].pool) is not None and layer in pool.layers
            for row in step.counted_rows
        )
        if not ops and reads is None and not pooling:
            return None
        hidden, residual = residual_pair(output, layer)
        x = stream(hidden, residual)
        reading = reads is not None and bool(step.counted_rows)
        rows = step.counted_index
        before = capped = after = None
        if reading and reads is not None:
            wide = x[step.counted].float()
            before = (wide * reads.axis[rows]).sum(-1)
            capped = (wide * reads.cap[rows]).sum(-1)
        for op in ops:
            x = apply_to_tokens(op, x, step.slots, step.generated)
        if reading and reads is not None:
            after = (x[step.counted].float() * reads.axis[rows]).sum(-1)
            step.records[layer] = (before, capped, after)
        if pooling:
            self._pool(step, layer, x)
        return replaced(x) if ops else None

    def _pool(self, step: StepMap, layer: int, x: Tensor) -> None:
        wide = x[step.counted].float().cpu()
        norms = wide.norm(dim=-1).tolist()
        for position, row in enumerate(step.counted_rows):
            sums = step.rows[row].pool
            if sums is not None and layer in sums.layers:
                slot = sums.layers.index(layer)
                sums.sums[slot] += wide[position]
                sums.norms[slot] += norms[position]

    def commit(self, step: StepMap) -> None:
        """Add the step's reads to its rows' telemetry sums, one content token at a time."""
        values = {
            layer: tuple(None if v is None else v.tolist() for v in record)
            for layer, record in step.records.items()
        }
        for position, row in enumerate(step.counted_rows):
            live = step.rows[row]
            if live.pool is not None:
                live.pool.count += 1
            sums = live.telemetry
            if sums is None:
                continue
            touched = False
            for layer, (before, capped, after) in values.items():
                if layer in sums.axis and before is not None and after is not None:
                    sums.before[layer] = sums.before.get(layer, 0.0) + before[position]
                    sums.after[layer] = sums.after.get(layer, 0.0) + after[position]
                if layer in sums.caps and capped is not None:
                    value, floor = capped[position], sums.caps[layer][1]
                    sums.cap_values[layer] = sums.cap_values.get(layer, 0.0) + value
                    sums.cap_lifted[layer] = sums.cap_lifted.get(layer, 0.0) + max(value, floor)
                    if value < floor:
                        sums.below += 1
                        touched = True
            sums.n_tokens += 1
            sums.touched_tokens += touched
