"""Per-row interventions and telemetry: every row of one batch with its own spec.

A :class:`RowPlan` turns one :class:`~persona_axis.inference.interventions.InterventionSpec`
per row (or None) into, per layer, a few batched operations whose parameters are tensors with
one value per row: directions ``[batch, d]`` and coefficient / value / floor / ceiling
``[batch]``. They are applied with the one implementation of the math,
:func:`~persona_axis.inference.interventions.add`, ``ablate`` and ``cap``, which accept
per-row parameters. Row r's interventions at a layer apply in r's list order: the k-th
intervention of every row at that layer forms "slot" k, and a slot applies one operation per
kind present in it, each to its own rows. A row with no operation in a slot keeps its hidden
state bit for bit (``torch.where`` on the row mask), so rows without an intervention are
untouched.

Positions: a forward call is either a prompt call (prefill) or a decoding call (tokens fed
back), and :meth:`RowPlan.hooked` is told which; an intervention with ``positions="prompt"``
or ``"generated"`` applies only in calls of that kind.

Telemetry (:class:`Probe`, one per row, optional): in decoding calls, each row's projections on
the unit axis at its layers ``⟨h, â_L⟩`` before and after the interventions at L, and, at each
layer the row caps, the projection on the cap direction before capping compared with the floor
(the last floor per layer: the one place this rule lives, for both engines). Sums are kept per
row (:class:`RowTelemetry`) and turned into a :class:`ReplyTelemetry`.

Pooling (:class:`PoolSums`, one per row, optional): in decoding calls, each row's block output
at its pooled layers after the interventions there, and its norm, added to float32 sums (the
response activations of the build).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.hooks import block_output, removing, with_block_output
from persona_axis.inference.interventions import (
    Intervention,
    InterventionSpec,
    Kind,
    apply_kind,
    by_layer_checked,
)
from persona_axis.models.loading import LoadedModel

Phase = Literal["prompt", "generated"]


@dataclass(frozen=True)
class Probe:
    """What to read for one row: projections on the unit ``axis`` ``[n_layers, d]`` at
    ``layers`` (decoder blocks, 0-based)."""

    axis: Tensor
    layers: tuple[int, ...]


def unit_rows(axis: Tensor, layers: Sequence[int], n_layers: int) -> Tensor:
    """``axis[layers]`` as float32 unit rows ``[len(layers), d]``; refuses layers outside
    ``0..n_layers - 1``, none, or where the axis is zero."""
    if not layers or not all(0 <= layer < n_layers for layer in layers):
        raise PersonaAxisError(
            f"Layers {list(layers)} must be within 0..{n_layers - 1} and not empty."
        )
    units = axis[list(layers)].float()
    norms = units.norm(dim=-1, keepdim=True)
    if not bool((norms > 0).all()):
        flat = norms.flatten().tolist()
        empty = [layer for layer, norm in zip(layers, flat, strict=True) if not norm > 0]
        raise PersonaAxisError(
            f"The axis is zero at layers {empty}, so nothing can be projected there; read it at "
            "layers where it is defined (an imported control vector covers only its own layers)."
        )
    return units / norms


@dataclass(frozen=True)
class ReplyTelemetry:
    """Projections of one generated reply on the unit axis, read in its own generation pass.

    ``before[i]`` and ``after[i]`` are means over the reply's ``n_tokens`` content tokens of
    ``⟨h, â_L⟩`` at decoder block ``layers[i]`` (float32 sums, residual-stream units): ``before``
    reads the block output ahead of any intervention at that layer, ``after`` once it has run
    (equal where the layer is not intervened on; upstream interventions move both). ``touched``
    is the fraction of (token, capped layer) pairs whose projection on the cap direction was
    below the floor before capping; None when the spec caps nothing. ``touched_tokens`` counts
    the content tokens raised at one capped layer at least; ``cap_layers`` maps each capped
    layer to the mean projection on its cap direction before and after the floor.
    """

    layers: tuple[int, ...]
    before: tuple[float, ...]
    after: tuple[float, ...]
    n_tokens: int
    touched: float | None = None
    touched_tokens: int | None = None
    cap_layers: dict[int, tuple[float, float]] | None = None

    def at(self, layer: int) -> tuple[float, float]:
        """``(before, after)`` at ``layer``."""
        if layer not in self.layers:
            raise PersonaAxisError(
                f"Layer {layer} was not recorded; recorded layers: {list(self.layers)}."
            )
        index = self.layers.index(layer)
        return self.before[index], self.after[index]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "before": list(self.before),
            "after": list(self.after),
            "n_tokens": self.n_tokens,
            "touched": self.touched,
            "touched_tokens": self.touched_tokens,
            "cap_layers": None
            if self.cap_layers is None
            else {str(layer): list(pair) for layer, pair in self.cap_layers.items()},
        }


@dataclass
class PoolSums:
    """A row's float32 sums over its content tokens at ``layers`` (decoder blocks, 0-based,
    ascending): ``x_L`` ``sums`` ``[len(layers), d]`` and ``‖x_L‖`` ``norms``
    ``[len(layers)]``, read after the row's interventions, and how many tokens were added."""

    layers: tuple[int, ...]
    sums: Tensor
    norms: Tensor
    count: int = 0

    @classmethod
    def start(cls, lm: LoadedModel, layers: Sequence[int]) -> PoolSums:
        """Empty sums at ``layers`` of ``lm`` (refused when out of range)."""
        chosen = tuple(sorted(set(layers)))
        n_layers = lm.shape.n_layers
        bad = [layer for layer in chosen if not 0 <= layer < n_layers]
        if bad or not chosen:
            raise PersonaAxisError(
                f"Layers {bad or list(layers)} are out of range; this model has layers "
                f"0..{n_layers - 1}."
            )
        return cls(chosen, torch.zeros(len(chosen), lm.shape.hidden_size), torch.zeros(len(chosen)))

    def means(self) -> tuple[Tensor, Tensor] | None:
        """``(activations [len(layers), d], norms [len(layers)])``, None without tokens."""
        if self.count == 0:
            return None
        return self.sums / self.count, self.norms / self.count


@dataclass
class RowOp:
    """One kind of intervention applied to the rows in ``rows`` (bool ``[batch]``).

    ``directions`` ``[batch, d]`` float32 unit vectors (zero for other rows); ``amount`` the
    coefficient (add), value (ablate) or floor (cap, ``-inf`` where none); ``ceiling`` the
    ceiling (cap, ``+inf`` where none; unused by other kinds). ``phases`` maps a call's phase to
    the rows that act in it (their ``positions`` allow it).
    """

    kind: Kind
    rows: Tensor
    directions: Tensor
    amount: Tensor
    ceiling: Tensor
    phases: dict[str, Tensor]

    @classmethod
    def build(cls, kind: Kind, items: dict[int, Intervention], batch: int) -> RowOp:
        d = next(iter(items.values())).direction.shape[0]
        directions = torch.zeros(batch, d)
        amount = torch.zeros(batch)
        ceiling = torch.full((batch,), torch.inf)
        phases = {"prompt": torch.zeros(batch, dtype=torch.bool)}
        phases["generated"] = phases["prompt"].clone()
        for row, item in items.items():
            directions[row] = item.direction
            if kind == "add":
                amount[row] = item.coefficient
            elif kind == "ablate":
                amount[row] = item.value
            else:
                amount[row] = -torch.inf if item.floor is None else item.floor
                ceiling[row] = torch.inf if item.ceiling is None else item.ceiling
            for phase in ("prompt", "generated"):
                phases[phase][row] = item.positions in ("all", phase)
        rows = phases["prompt"] | phases["generated"]
        return cls(kind, rows, directions, amount, ceiling, phases)

    def to(self, device: torch.device) -> RowOp:
        return RowOp(
            self.kind,
            self.rows.to(device),
            self.directions.to(device),
            self.amount.to(device),
            self.ceiling.to(device),
            {phase: mask.to(device) for phase, mask in self.phases.items()},
        )

    def apply(self, h: Tensor, phase: Phase) -> Tensor:
        """``h`` ``[batch, tokens, d]`` with this operation on its rows acting in ``phase``."""
        acting = self.phases[phase]
        if not bool(self._any[phase]):
            return h
        out = apply_kind(
            self.kind,
            h,
            self.directions,
            coefficient=self.amount,
            value=self.amount,
            floor=self.amount,
            ceiling=self.ceiling,
        )
        if self._all[phase]:
            return out
        return torch.where(acting[:, None, None], out, h)

    def __post_init__(self) -> None:  # host-side flags: no device sync in the hook
        self._any = {phase: bool(mask.any()) for phase, mask in self.phases.items()}
        self._all = {phase: bool(mask.all()) for phase, mask in self.phases.items()}


@dataclass
class LayerReads:
    """Telemetry reads at one layer: axis rows and directions, cap rows, directions, floors."""

    axis_rows: list[int]
    axis: Tensor  # [batch, d] unit axis rows (zero elsewhere)
    cap_rows: list[int]
    cap: Tensor  # [batch, d] cap directions
    floors: list[float]  # per row (only cap_rows meaningful)

    def to(self, device: torch.device) -> LayerReads:
        return LayerReads(
            self.axis_rows, self.axis.to(device), self.cap_rows, self.cap.to(device), self.floors
        )


@dataclass
class RowTelemetry:
    """One row's reads and their running float sums over its fed content tokens.

    ``axis`` maps each read layer to its unit axis ``[d]``; ``caps`` each capped layer to its
    cap direction ``[d]`` and floor (the last floor per layer of the row's spec).
    """

    axis: dict[int, Tensor]
    caps: dict[int, tuple[Tensor, float]]
    before: dict[int, float] = field(default_factory=dict)
    after: dict[int, float] = field(default_factory=dict)
    cap_values: dict[int, float] = field(default_factory=dict)
    cap_lifted: dict[int, float] = field(default_factory=dict)
    below: int = 0
    touched_tokens: int = 0
    n_tokens: int = 0

    @classmethod
    def start(cls, lm: LoadedModel, spec: InterventionSpec | None, probe: Probe) -> RowTelemetry:
        """Empty sums for a row under ``spec`` read with ``probe`` (checked against ``lm``)."""
        n_layers, d = lm.shape.n_layers, lm.shape.hidden_size
        layers = sorted(set(probe.layers))
        if probe.axis.ndim != 2 or tuple(probe.axis.shape) != (n_layers, d):
            raise PersonaAxisError(
                f"The axis has shape {tuple(probe.axis.shape)}; this model needs [{n_layers}, {d}]."
            )
        units = unit_rows(probe.axis, layers, n_layers)
        caps = {
            item.layer: (item.direction, float(item.floor))
            for item in (spec.interventions if spec else ())
            if item.floor is not None
        }  # the last floor per layer wins
        return cls(dict(zip(layers, units, strict=True)), caps)

    def result(self) -> ReplyTelemetry | None:
        """The reply's telemetry, or None when no content token was fed."""
        n = self.n_tokens
        if n == 0:
            return None
        layers = tuple(self.axis)
        caps = self.caps
        return ReplyTelemetry(
            layers=layers,
            before=tuple(self.before.get(layer, 0.0) / n for layer in layers),
            after=tuple(self.after.get(layer, 0.0) / n for layer in layers),
            n_tokens=n,
            touched=self.below / (n * len(caps)) if caps else None,
            touched_tokens=self.touched_tokens if caps else None,
            cap_layers={
                layer: (self.cap_values.get(layer, 0.0) / n, self.cap_lifted.get(layer, 0.0) / n)
                for layer in sorted(caps)
            }
            if caps
            else None,
        )


class RowPlan:
    """Per-layer batched operations and reads for one batch composition (see module doc).

    ``telemetry[r]`` and ``pools[r]`` (or None) hold row r's reads and sums; they outlive the
    plan, so a row keeps its sums when the batch around it changes.
    """

    def __init__(
        self,
        lm: LoadedModel,
        specs: Sequence[InterventionSpec | None],
        telemetry: Sequence[RowTelemetry | None] | None = None,
        pools: Sequence[PoolSums | None] | None = None,
    ) -> None:
        batch = len(specs)
        self.telemetry = list(telemetry) if telemetry is not None else [None] * batch
        self.pools = list(pools) if pools is not None else [None] * batch
        if len(self.telemetry) != batch or len(self.pools) != batch:
            raise PersonaAxisError(
                f"Got {batch} specs but {len(self.telemetry)} telemetry rows and "
                f"{len(self.pools)} pools; give one per row."
            )
        self.lm = lm
        self.batch = batch
        per_row = [by_layer_checked(lm, spec) if spec else {} for spec in specs]
        self.ops: dict[int, list[RowOp]] = {}
        for layer in sorted({layer for row in per_row for layer in row}):
            ops: list[RowOp] = []
            for slot in range(max(len(row.get(layer, [])) for row in per_row)):
                by_kind: dict[Kind, dict[int, Intervention]] = {}
                for index, row in enumerate(per_row):
                    items = row.get(layer, [])
                    if slot < len(items):
                        by_kind.setdefault(items[slot].kind, {})[index] = items[slot]
                ops.extend(RowOp.build(kind, rows, batch) for kind, rows in by_kind.items())
            self.ops[layer] = ops
        self.reads: dict[int, LayerReads] = {}
        for index, sums in enumerate(self.telemetry):
            if sums is None:
                continue
            for layer, unit in sums.axis.items():
                reads = self._reads_at(layer)
                reads.axis_rows.append(index)
                reads.axis[index] = unit
            for layer, (direction, floor) in sums.caps.items():
                reads = self._reads_at(layer)
                reads.cap_rows.append(index)
                reads.cap[index] = direction
                reads.floors[index] = floor
        self.pooled = sorted({layer for pool in self.pools if pool for layer in pool.layers})
        """Layers some row pools; row r's are ``pooled[i]`` for i in ``self._pool_index[r]``."""
        self._pool_index = [
            None if pool is None else torch.tensor([self.pooled.index(x) for x in pool.layers])
            for pool in self.pools
        ]
        self._on_device: dict[tuple[int, torch.device], tuple[list[RowOp], LayerReads | None]] = {}
        self._records: dict[int, tuple[Tensor | None, Tensor | None, Tensor | None]] = {}
        self._pooling: dict[int, Tensor] = {}

    def _reads_at(self, layer: int) -> LayerReads:
        found = self.reads.get(layer)
        if found is None:
            d = self.lm.shape.hidden_size
            zeros = torch.zeros(self.batch, d)
            found = LayerReads([], zeros, [], zeros.clone(), [0.0] * self.batch)
            self.reads[layer] = found
        return found

    @property
    def layers(self) -> list[int]:
        """Layers with an operation, a read or pooling."""
        return sorted(set(self.ops) | set(self.reads) | set(self.pooled))

    def at(self, layer: int, device: torch.device) -> tuple[list[RowOp], LayerReads | None]:
        """The operations and reads at ``layer`` with their tensors on ``device`` (cached)."""
        key = (layer, device)
        found = self._on_device.get(key)
        if found is None:
            reads = self.reads.get(layer)
            found = (
                [op.to(device) for op in self.ops.get(layer, [])],
                None if reads is None else reads.to(device),
            )
            self._on_device[key] = found
        return found

    def _hook(self, layer: int, phase: Phase) -> Any:
        read = phase == "generated"
        pool = read and layer in self.pooled

        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            h = block_output(output)
            ops, reads = self.at(layer, h.device)
            before = capped = after = None
            if read and reads is not None:
                wide = h.float()
                if reads.axis_rows:
                    before = torch.matmul(wide, reads.axis[:, :, None]).squeeze(-1)
                if reads.cap_rows:
                    capped = torch.matmul(wide, reads.cap[:, :, None]).squeeze(-1)
            for op in ops:
                h = op.apply(h, phase)
            if read and reads is not None and reads.axis_rows:
                after = torch.matmul(h.float(), reads.axis[:, :, None]).squeeze(-1)
            if read and reads is not None:
                self._records[layer] = (before, capped, after)
            if pool:
                self._pooling[layer] = h[:, -1].float()
            return with_block_output(output, h) if ops else None

        return hook

    @contextmanager
    def hooked(self, phase: Phase) -> Iterator[RowPlan]:
        """Hooks for forward calls of ``phase`` on a batch of this plan's rows; removed on
        exit. In "generated" calls the reads and pooled states of each row's last position are
        recorded; call :meth:`commit` after the forward pass to add them to the rows' sums."""
        self._records.clear()
        self._pooling.clear()
        handles = [
            self.lm.stack.layers[layer].register_forward_hook(self._hook(layer, phase))
            for layer in self.layers
        ]
        with removing(handles):
            yield self

    def commit(self) -> None:
        """Add the reads of the last decoding call (one fed token per row) to the row sums."""
        self._commit_pooling()
        touched = [False] * self.batch
        for layer, (before, capped, after) in self._records.items():
            reads = self.reads[layer]
            if before is not None and after is not None:
                pre, post = before[:, -1].tolist(), after[:, -1].tolist()
                for row in reads.axis_rows:
                    sums = self.telemetry[row]
                    assert sums is not None
                    sums.before[layer] = sums.before.get(layer, 0.0) + pre[row]
                    sums.after[layer] = sums.after.get(layer, 0.0) + post[row]
            if capped is not None:
                values = capped[:, -1].tolist()
                for row in reads.cap_rows:
                    sums = self.telemetry[row]
                    assert sums is not None
                    value, floor = values[row], reads.floors[row]
                    sums.cap_values[layer] = sums.cap_values.get(layer, 0.0) + value
                    sums.cap_lifted[layer] = sums.cap_lifted.get(layer, 0.0) + max(value, floor)
                    if value < floor:
                        sums.below += 1
                        touched[row] = True
        for row, sums in enumerate(self.telemetry):
            if sums is not None:
                sums.n_tokens += 1
                sums.touched_tokens += touched[row]
        self._records.clear()

    def _commit_pooling(self) -> None:
        if not self._pooling:
            return
        states = torch.stack([self._pooling[layer].cpu() for layer in self.pooled], 1)
        norms = states.norm(dim=-1)  # states [batch, pooled layers, d], norms [batch, pooled]
        for row, (pool, index) in enumerate(zip(self.pools, self._pool_index, strict=True)):
            if pool is not None and index is not None:
                pool.sums += states[row, index]
                pool.norms += norms[row, index]
                pool.count += 1
        self._pooling.clear()
