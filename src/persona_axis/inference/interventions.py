"""Interventions on the residual stream: the math, a validated spec, and one context manager.

Every function takes a hidden state ``h`` ``[..., d]`` and a *unit* direction ``u`` ``[d]``,
computes projections in float32 and returns a tensor of ``h``'s dtype (for per-row
interventions, ``u`` may be ``[batch, d]`` and the parameters ``[batch]`` tensors, one value per
row of ``h`` ``[batch, tokens, d]``: the same formulas, see :mod:`~persona_axis.inference.rows`):

- :func:`add`:    ``h + c·u``                         (steering; ``c`` in residual-stream units)
- :func:`ablate`: ``h − (⟨h,u⟩ − v)·u``                (projection set to ``v``; 0 = ablation)
- :func:`cap`:    ``h + (clamp(⟨h,u⟩, floor, ceiling) − ⟨h,u⟩)·u``  (docs/method.md activation cap)

With ``u`` the unit Assistant Axis, a floor keeps layer outputs from drifting away from the
Assistant. :func:`intervene` applies an :class:`InterventionSpec` to decoder-block outputs
(layer L = block L, 0-based) at all, prompt or generated positions, inside plain forward calls
and ``model.generate`` alike, and removes its hooks on every exit path.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.capture import pool_spans
from persona_axis.inference.hooks import PositionTracker, block_output, removing, with_block_output
from persona_axis.models.loading import LoadedModel

Kind = Literal["add", "ablate", "cap"]
Positions = Literal["all", "prompt", "generated"]


Param = float | None | Tensor
"""A parameter of the math: one number for every row, or a tensor ``[batch]`` with one number
per row of ``h`` ``[batch, tokens, d]`` (per-row interventions, see
:mod:`~persona_axis.inference.rows`)."""


def _rows(value: Param, like: Tensor) -> Any:
    """``value`` broadcast over the token axis of projections ``like`` ``[batch, tokens]``."""
    if isinstance(value, Tensor):
        return value.to(like.device, torch.float32)[:, None]
    return value


def _unit(u: Tensor) -> Tensor:
    """``u`` ``[d]`` or per row ``[batch, d]``, as float32 broadcast over ``[batch, tokens, d]``."""
    return u.float() if u.ndim == 1 else u.float()[:, None, :]


def _along(h: Tensor, u: Tensor, amount: Callable[[Tensor], Tensor]) -> Tensor:
    """``h + amount(⟨h,u⟩)·u`` in float32, returned in ``h``'s dtype.

    ``u`` is one direction ``[d]`` or one per row ``[batch, d]``. Kept to four tensor operations
    for float32 inputs (six for others): this runs in every hooked layer at every decoding step,
    where per-operation overhead dominates.
    """
    wide = h.float()  # no copy for float32
    unit = _unit(u)
    if u.ndim == 1:
        projection = torch.matmul(wide, unit)
    else:  # [batch, tokens, d] @ [batch, d, 1]: one direction per row
        projection = torch.matmul(wide, unit.transpose(-1, -2)).squeeze(-1)
    return torch.addcmul(wide, amount(projection).unsqueeze(-1), unit).to(h.dtype)


def add(h: Tensor, u: Tensor, coefficient: float | Tensor) -> Tensor:
    """``h + coefficient·u``."""
    if isinstance(coefficient, Tensor):
        scale = coefficient.to(h.device, torch.float32)[:, None, None]
        return torch.addcmul(h.float(), scale, _unit(u)).to(h.dtype)
    return torch.add(h.float(), u.float(), alpha=coefficient).to(h.dtype)


def ablate(h: Tensor, u: Tensor, value: float | Tensor = 0.0) -> Tensor:
    """Set the projection on ``u`` to ``value``: ``h − (⟨h,u⟩ − value)·u``."""
    return _along(h, u, lambda p: p.neg_().add_(_rows(value, p)))


def cap(h: Tensor, u: Tensor, floor: Param = None, ceiling: Param = None) -> Tensor:
    """Clamp the projection on ``u`` into ``[floor, ceiling]``; untouched where already inside.

    Per row, ``floor``/``ceiling`` tensors hold ``-inf``/``+inf`` where a bound is absent.
    """
    return _along(h, u, lambda p: p.clamp(min=_rows(floor, p), max=_rows(ceiling, p)).sub_(p))


def apply_kind(
    kind: Kind,
    h: Tensor,
    u: Tensor,
    *,
    coefficient: float | Tensor = 0.0,
    value: float | Tensor = 0.0,
    floor: Param = None,
    ceiling: Param = None,
) -> Tensor:
    """Apply one intervention of ``kind`` (its own parameters; per row or shared)."""
    if kind == "add":
        return add(h, u, coefficient)
    if kind == "ablate":
        return ablate(h, u, value)
    return cap(h, u, floor, ceiling)


@dataclass(frozen=True)
class Intervention:
    """One operation at one layer. ``direction`` is stored as a float32 unit vector ``[d]``.

    ``coefficient`` (add) is in residual-stream units along the unit direction; ``value``
    (ablate) is the projection to set; ``floor``/``ceiling`` (cap) bound the projection.
    """

    layer: int
    kind: Kind
    direction: Tensor
    coefficient: float = 0.0
    value: float = 0.0
    floor: float | None = None
    ceiling: float | None = None
    positions: Positions = "all"

    def __post_init__(self) -> None:
        if self.kind not in get_args(Kind):
            raise PersonaAxisError(
                f"Unknown intervention kind {self.kind!r}; use one of {get_args(Kind)}."
            )
        if self.positions not in get_args(Positions):
            raise PersonaAxisError(
                f"Unknown positions {self.positions!r}; use one of {get_args(Positions)}."
            )
        if self.kind == "cap" and self.floor is None and self.ceiling is None:
            raise PersonaAxisError(f"Cap at layer {self.layer} needs a floor, a ceiling or both.")
        if self.floor is not None and self.ceiling is not None and self.floor > self.ceiling:
            raise PersonaAxisError(
                f"Cap at layer {self.layer} has floor {self.floor} above ceiling {self.ceiling}."
            )
        direction = self.direction.detach().float().flatten()
        norm = direction.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise PersonaAxisError(f"The direction at layer {self.layer} is zero or not finite.")
        object.__setattr__(self, "direction", direction / norm)

    def apply(self, h: Tensor, u: Tensor) -> Tensor:
        """Apply to ``h`` with ``u``: this intervention's direction on ``h``'s device."""
        return apply_kind(
            self.kind,
            h,
            u,
            coefficient=self.coefficient,
            value=self.value,
            floor=self.floor,
            ceiling=self.ceiling,
        )


_COMMON_KEYS = {"layer", "kind", "vector", "positions"}
_KIND_KEYS: dict[str, set[str]] = {
    "add": {"coefficient", "norm_multiple"},
    "ablate": {"value"},
    "cap": {"floor", "ceiling"},
}


@dataclass(frozen=True)
class InterventionSpec:
    """An ordered list of interventions; several at one layer apply in list order."""

    interventions: tuple[Intervention, ...] = ()

    @property
    def layers(self) -> list[int]:
        return sorted({item.layer for item in self.interventions})

    def __add__(self, other: InterventionSpec) -> InterventionSpec:
        return InterventionSpec(self.interventions + other.interventions)

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        vectors: Mapping[str, Tensor] | None = None,
        mean_norms: Tensor | None = None,
    ) -> InterventionSpec:
        """Build from the declarative form, rejecting unknown keys.

        ``{"interventions": [{"layer": 14, "kind": "cap", "vector": "axis", "floor": 3.0,
        "positions": "all"}, {"layer": 10, "kind": "add", "vector": "axis",
        "norm_multiple": 0.5}]}``. ``vector`` names a ``[n_layers, d]`` entry of ``vectors``
        (e.g. a bundle's ``axis`` or ``role/pirate``; its row ``layer`` is used) or is a list of
        ``d`` floats. ``norm_multiple`` m gives ``coefficient = m · mean_norms[layer]`` (the mean
        residual norm at that layer, docs/method.md).
        """
        if set(data) - {"interventions"}:
            raise PersonaAxisError(
                f"Unknown top-level keys {sorted(set(data) - {'interventions'})} in the "
                "intervention spec; it takes only 'interventions'."
            )
        items = data.get("interventions", [])
        if not isinstance(items, list):
            raise PersonaAxisError("'interventions' must be a list of objects.")
        return cls(tuple(_parse_item(i, item, vectors, mean_norms) for i, item in enumerate(items)))

    @classmethod
    def floor_cap(
        cls,
        axis: Tensor,
        thresholds: Sequence[tuple[int, float]],
        positions: Positions = "all",
    ) -> InterventionSpec:
        """Floors along +axis: ``axis`` ``[n_layers, d]``, ``(layer, τ)`` pairs."""
        return cls.from_floors([(layer, axis[layer], tau) for layer, tau in thresholds], positions)

    @classmethod
    def from_floors(
        cls, floors: Sequence[tuple[int, Tensor, float]], positions: Positions = "all"
    ) -> InterventionSpec:
        """Floors from ``(layer, direction [d], τ)`` triples, e.g. ``AxisBundle.cap_floors``."""
        return cls(
            tuple(
                Intervention(layer, "cap", direction, floor=tau, positions=positions)
                for layer, direction, tau in floors
            )
        )

    @classmethod
    def steer(
        cls,
        axis: Tensor,
        layer: int,
        multiple: float,
        mean_norm: float,
        positions: Positions = "all",
    ) -> InterventionSpec:
        """``h ← h + m·n̄_L·â_L`` (docs/method.md); positive m pushes toward the Assistant."""
        return cls(
            (
                Intervention(
                    layer, "add", axis[layer], coefficient=multiple * mean_norm, positions=positions
                ),
            )
        )


def _parse_item(
    index: int,
    item: Any,
    vectors: Mapping[str, Tensor] | None,
    mean_norms: Tensor | None,
) -> Intervention:
    where = f"intervention {index}"
    if not isinstance(item, Mapping):
        raise PersonaAxisError(f"{where} must be an object, not {type(item).__name__}.")
    kind = item.get("kind")
    if kind not in _KIND_KEYS:
        raise PersonaAxisError(f"{where}: unknown kind {kind!r}; use one of {sorted(_KIND_KEYS)}.")
    allowed = _COMMON_KEYS | _KIND_KEYS[kind]
    unknown = set(item) - allowed
    if unknown:
        raise PersonaAxisError(
            f"{where}: unknown keys {sorted(unknown)} for kind {kind!r}; "
            f"allowed: {sorted(allowed)}."
        )
    layer = item.get("layer")
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise PersonaAxisError(f"{where}: 'layer' must be an integer decoder-block index.")
    direction = _resolve_vector(where, item.get("vector"), layer, vectors)
    options: dict[str, Any] = {"positions": item.get("positions", "all")}
    try:
        if kind == "add":
            options["coefficient"] = _coefficient(where, item, layer, mean_norms)
        elif kind == "ablate":
            options["value"] = float(item.get("value", 0.0))
        else:
            for key in ("floor", "ceiling"):
                if item.get(key) is not None:
                    options[key] = float(item[key])
    except (TypeError, ValueError) as exc:
        raise PersonaAxisError(f"{where}: numbers expected ({exc}).") from exc
    return Intervention(layer, kind, direction, **options)


def _resolve_vector(
    where: str, vector: Any, layer: int, vectors: Mapping[str, Tensor] | None
) -> Tensor:
    if isinstance(vector, str):
        if vectors is None or vector not in vectors:
            known = sorted(vectors) if vectors else []
            raise PersonaAxisError(
                f"{where}: unknown vector {vector!r}; known vectors: {known[:12] or 'none'} "
                "(load a bundle, or give the direction as a list of floats)."
            )
        table = vectors[vector]
        if not 0 <= layer < table.shape[0]:
            raise PersonaAxisError(
                f"{where}: layer {layer} is outside 0..{table.shape[0] - 1} of vector {vector!r}."
            )
        return table[layer]
    if isinstance(vector, list | tuple) and vector:
        try:
            return torch.tensor([float(x) for x in vector])
        except (TypeError, ValueError) as exc:
            raise PersonaAxisError(f"{where}: 'vector' list must hold numbers.") from exc
    raise PersonaAxisError(f"{where}: 'vector' must name a vector or be a list of floats.")


def _coefficient(
    where: str, item: Mapping[str, Any], layer: int, mean_norms: Tensor | None
) -> float:
    if ("coefficient" in item) == ("norm_multiple" in item):
        raise PersonaAxisError(f"{where}: give exactly one of 'coefficient' or 'norm_multiple'.")
    if "coefficient" in item:
        return float(item["coefficient"])
    if mean_norms is None:
        raise PersonaAxisError(
            f"{where}: 'norm_multiple' needs the mean residual norm per layer; compute it with "
            "persona_axis.inference.interventions.mean_residual_norms or use a raw 'coefficient'."
        )
    return float(item["norm_multiple"]) * float(mean_norms[layer])


class _LayerHook:
    """Applies one layer's interventions in order, each on its own positions."""

    def __init__(self, items: list[Intervention], tracker: PositionTracker | None) -> None:
        self.items = items
        self.tracker = tracker
        self._directions: dict[torch.device, list[Tensor]] = {}

    def _on(self, device: torch.device) -> list[Tensor]:
        found = self._directions.get(device)
        if found is None:
            found = [item.direction.to(device) for item in self.items]
            self._directions[device] = found
        return found

    def __call__(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        h = block_output(output)
        for item, u in zip(self.items, self._on(h.device), strict=True):
            if item.positions == "all" or self.tracker is None:
                h = item.apply(h, u)
                continue
            n_tokens = h.shape[1]
            generated = self.tracker.generated_count(n_tokens)
            chosen = generated if item.positions == "generated" else n_tokens - generated
            if chosen == n_tokens:  # decided on the host: no device sync per layer and step
                h = item.apply(h, u)
            elif chosen > 0:
                mask = self.tracker.generated_mask(n_tokens, h.device)
                if item.positions == "prompt":
                    mask = ~mask
                h = torch.where(mask[None, :, None], item.apply(h, u), h)
        return with_block_output(output, h)


def by_layer_checked(lm: LoadedModel, spec: InterventionSpec) -> dict[int, list[Intervention]]:
    """``spec``'s interventions per layer, in list order, after checking that every layer and
    direction fits ``lm``."""
    n_layers = lm.shape.n_layers
    by_layer: dict[int, list[Intervention]] = defaultdict(list)
    for item in spec.interventions:
        if not 0 <= item.layer < n_layers:
            raise PersonaAxisError(
                f"Intervention at layer {item.layer}, but this model has layers 0..{n_layers - 1}."
            )
        if item.direction.shape[0] != lm.shape.hidden_size:
            raise PersonaAxisError(
                f"Direction at layer {item.layer} has size {item.direction.shape[0]}, but the "
                f"model's hidden size is {lm.shape.hidden_size}; use vectors made for this model."
            )
        by_layer[item.layer].append(item)
    return dict(by_layer)


@contextmanager
def intervene(
    lm: LoadedModel,
    spec: InterventionSpec,
    *,
    prompt_length: int | None = None,
) -> Iterator[InterventionSpec]:
    """Apply ``spec`` to ``lm``'s decoder-block outputs while the context is open.

    Positions "prompt"/"generated" are told apart by the KV cache (see
    :class:`~persona_axis.inference.hooks.PositionTracker`); pass ``prompt_length`` to fix the
    boundary
    for a teacher-forced pass over prompt plus response. Hooks are removed on every exit.
    """
    by_layer = by_layer_checked(lm, spec)
    needs_positions = any(item.positions != "all" for item in spec.interventions)
    with ExitStack() as stack:
        tracker = None
        if needs_positions:
            tracker = stack.enter_context(PositionTracker(prompt_length).attached(lm.stack.module))
        handles = [
            lm.stack.layers[layer].register_forward_hook(_LayerHook(items, tracker))
            for layer, items in sorted(by_layer.items())
        ]
        stack.enter_context(removing(handles))
        yield spec


NORM_SAMPLES_FILE = "norm_samples.json"


def norm_samples() -> list[list[dict[str, str]]]:
    """Our short sample chats (package data ``inference/data/norm_samples.json``) for estimating
    the mean residual norm when a bundle stores none."""
    text = resources.files("persona_axis.inference").joinpath("data", NORM_SAMPLES_FILE)
    return list(json.loads(text.read_text("utf-8"))["conversations"])


@torch.no_grad()
def mean_residual_norms(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    *,
    role: str = "assistant",
    batch_size: int = 8,
) -> Tensor:
    """Mean ``‖h‖`` per layer ``[n_layers]`` over the ``role`` content tokens of conversations.

    Each turn counts once (mean of per-turn mean norms); float32.
    """
    sequences, spans = [], []
    for conversation in conversations:
        rendered = lm.chat.render(conversation)
        sequences.append(rendered.input_ids)
        spans.append([span.segments for span in rendered.role_spans(role)])
    pooled = pool_spans(
        lm,
        sequences,
        spans,
        batch_size=batch_size,
        transform=lambda tokens: tokens.norm(dim=-1, keepdim=True),
    )
    return torch.cat(pooled, dim=0)[:, :, 0].mean(dim=0)
