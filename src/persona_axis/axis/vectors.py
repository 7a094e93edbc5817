"""Role, default and trait vectors, the Assistant Axis, projection and cosine.

Shapes: a *vector* is a float32 tensor ``[n_layers, d]`` where row L belongs to layer L (the
output of decoder block L, 0-based). Activations are in the units of the residual stream.
The Assistant Axis ``a = default − mean over roles of role`` points TOWARD the Assistant and is
stored unnormalised; projections are always taken on the unit axis ``â = a / ‖a‖`` per layer,
so a higher projection means more Assistant-like. Inputs of any dtype are converted to float32.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch
from torch import Tensor

from persona_axis.errors import PersonaAxisError

__all__ = [
    "ActivationSums",
    "RoleVectors",
    "SumCount",
    "as_float32",
    "assistant_axis",
    "axis_from_means",
    "check_layer",
    "cosine_by_layer",
    "mean_vector",
    "pooled",
    "project",
    "role_vectors",
    "role_vectors_from_sums",
    "sum_count",
    "trait_vector",
    "trait_vector_from_sums",
    "unit",
]


def as_float32(x: Tensor, what: str = "tensor") -> Tensor:
    """``x`` as a detached float32 tensor (same shape); ``what`` names it in error messages."""
    if not isinstance(x, Tensor):
        raise PersonaAxisError(f"{what} must be a torch.Tensor, got {type(x).__name__}.")
    return x.detach().to(torch.float32)


def check_layer(layer: int, n_layers: int) -> int:
    """Return ``layer`` if it is a valid 0-based decoder block index in ``[0, n_layers)``."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise PersonaAxisError(
            f"Layer {layer!r} is out of range; pick a decoder block index from 0 to "
            f"{n_layers - 1} (layer L = output of block L, 0-based; negative indices are refused)."
        )
    return layer


def mean_vector(activations: Tensor | Sequence[Tensor]) -> Tensor:
    """Mean over rollouts, float32.

    ``activations`` is ``[n, n_layers, d]`` or a sequence of ``n`` tensors ``[n_layers, d]``
    (response activations, residual-stream units); returns ``[n_layers, d]``. Averaging is done
    in float32 whatever the input dtype (the float32 sum over rollouts divided by ``n``).
    """
    return sum_count(activations).mean()


def sum_count(activations: Tensor | Sequence[Tensor]) -> SumCount:
    """The float32 :class:`SumCount` of ``[n, n_layers, d]`` (or ``n`` × ``[n_layers, d]``)."""
    if isinstance(activations, Tensor):
        stacked = as_float32(activations, "activations")
    else:
        items = list(activations)
        if not items:
            raise PersonaAxisError("No activations to average; pass at least one rollout.")
        shapes = {tuple(t.shape) for t in items}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise PersonaAxisError(
                "Each activation must be [n_layers, d] with one shape for all; "
                f"got {sorted(shapes)}."
            )
        stacked = torch.stack([as_float32(t, "activation") for t in items])
    if stacked.ndim != 3:
        raise PersonaAxisError(
            f"Activations must be [n, n_layers, d]; got shape {tuple(stacked.shape)}."
        )
    if stacked.shape[0] == 0:
        raise PersonaAxisError("No activations to average; pass at least one rollout.")
    return SumCount(stacked.sum(dim=0), int(stacked.shape[0]))


@dataclass(frozen=True)
class SumCount:
    """The float32 sum ``total`` ``[n_layers, d]`` of ``count`` response activations.

    Sums, not means, are what a build streams through (one rollout at a time, in any order);
    every vector below is a ratio of pooled sums, so a mean over a union of groups is exact.
    """

    total: Tensor
    count: int

    def mean(self) -> Tensor:
        """``total / count`` ``[n_layers, d]`` float32; refuses an empty group."""
        if self.count < 1:
            raise PersonaAxisError("No activations to average; the group holds no rollout.")
        return self.total / self.count

    def __add__(self, other: SumCount) -> SumCount:
        if self.total.shape != other.total.shape:
            raise PersonaAxisError(
                f"Cannot pool sums of shapes {tuple(self.total.shape)} and "
                f"{tuple(other.total.shape)}; all must come from the same model and layers."
            )
        return SumCount(self.total + other.total, self.count + other.count)


def pooled(parts: Iterable[SumCount]) -> SumCount | None:
    """The sum of ``parts`` (their union's sum and count), or None when there are none."""
    result: SumCount | None = None
    for part in parts:
        result = part if result is None else result + part
    return result


K = TypeVar("K", bound=Hashable)


@dataclass
class ActivationSums(Generic[K]):
    """Streaming float32 sums of response activations per group key (any hashable).

    ``add(key, acts)`` takes one rollout ``[n_layers, d]`` or several ``[n, n_layers, d]`` of
    any dtype; ``groups[key]`` is their :class:`SumCount`.
    """

    groups: dict[K, SumCount] = field(default_factory=dict)

    def add(self, key: K, acts: Tensor) -> None:
        part = sum_count(acts.unsqueeze(0) if acts.ndim == 2 else acts)
        self.groups[key] = part if key not in self.groups else self.groups[key] + part

    def get(self, keys: Iterable[K]) -> SumCount | None:
        """The pooled sum of the groups ``keys`` that exist; None when none holds a rollout."""
        return pooled(self.groups[k] for k in keys if k in self.groups)

    def count(self, key: K) -> int:
        return self.groups[key].count if key in self.groups else 0


@dataclass(frozen=True)
class RoleVectors:
    """Result of :func:`role_vectors` and :func:`role_vectors_from_sums`.

    ``vectors`` maps each kept role to its ``[n_layers, d]`` float32 mean; ``counts`` gives, for
    every role passed in (kept or dropped), how many rollouts had a requested judge score;
    ``dropped`` lists the roles with fewer than ``min_count`` such rollouts, in input order.
    """

    vectors: dict[str, Tensor]
    counts: dict[str, int]
    dropped: tuple[str, ...]


def role_vectors_from_sums(
    sums_by_role: Mapping[str, Mapping[int | None, SumCount]],
    scores: Collection[int | None] = (3,),
    min_count: int = 10,
) -> RoleVectors:
    """Mean response activation per role over its rollouts whose judge score is in ``scores``.

    ``sums_by_role[r][s]`` is the :class:`SumCount` of role ``r``'s rollouts scored ``s``
    (0-3, or None for "not judged"). docs/method.md uses ``scores=(3,)`` for role vectors and
    ``(2,)`` for the "somewhat" vectors. Roles with fewer than ``max(min_count, 1)`` such
    rollouts are dropped and reported in :attr:`RoleVectors.dropped`. This is the one
    implementation of role vectors: :func:`role_vectors` and the build both call it.
    """
    if not sums_by_role:
        raise PersonaAxisError("No roles given; pass activations for at least one role.")
    vectors: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    dropped: list[str] = []
    shape: tuple[int, ...] | None = None
    for name, by_score in sums_by_role.items():
        for part in by_score.values():
            if shape is not None and tuple(part.total.shape) != shape:
                raise PersonaAxisError(
                    f"Role {name!r} has vectors {tuple(part.total.shape)} but earlier roles have "
                    f"{shape}; all roles must come from the same model and layers."
                )
            shape = tuple(part.total.shape)
        chosen = pooled(by_score[s] for s in scores if s in by_score)
        counts[name] = 0 if chosen is None else chosen.count
        if chosen is None or counts[name] < max(min_count, 1):
            dropped.append(name)
        else:
            vectors[name] = chosen.mean()
    return RoleVectors(vectors=vectors, counts=counts, dropped=tuple(dropped))


def role_vectors(
    activations_by_role: Mapping[str, Tensor],
    scores_by_role: Mapping[str, Tensor | Sequence[int]],
    score: int = 3,
    min_count: int = 10,
) -> RoleVectors:
    """Mean response activation per role over the rollouts whose judge score equals ``score``.

    ``activations_by_role[r]`` is ``[n_r, n_layers, d]``; ``scores_by_role[r]`` holds the ``n_r``
    judge scores (0-3) in the same order. Use ``score=3`` for role vectors (fully in role) and
    ``score=2`` for the "somewhat" vectors. Roles with fewer than ``max(min_count, 1)`` rollouts at
    that score are dropped and reported in :attr:`RoleVectors.dropped`. Sums per role and score,
    then :func:`role_vectors_from_sums`.
    """
    if not activations_by_role:
        raise PersonaAxisError("No roles given; pass activations for at least one role.")
    if set(activations_by_role) != set(scores_by_role):
        raise PersonaAxisError(
            "Roles with activations and roles with scores differ: "
            f"only activations {sorted(set(activations_by_role) - set(scores_by_role))}, "
            f"only scores {sorted(set(scores_by_role) - set(activations_by_role))}."
        )
    sums: dict[str, dict[int | None, SumCount]] = {}
    for name, acts in activations_by_role.items():
        scores = torch.as_tensor(scores_by_role[name]).reshape(-1)
        if acts.ndim != 3 or acts.shape[0] != scores.numel():
            raise PersonaAxisError(
                f"Role {name!r}: activations must be [n, n_layers, d] with one score per rollout; "
                f"got activations {tuple(acts.shape)} and {scores.numel()} scores."
            )
        sums[name] = {
            int(s): sum_count(acts[scores == s]) for s in scores.unique() if acts.shape[0] > 0
        }
    return role_vectors_from_sums(sums, scores=(score,), min_count=min_count)


def trait_vector_from_sums(positive: SumCount, negative: SumCount) -> Tensor:
    """``mean(positive) − mean(negative)`` from pooled sums: ``[n_layers, d]`` float32."""
    if positive.total.shape != negative.total.shape:
        raise PersonaAxisError(
            f"Positive activations are {tuple(positive.total.shape)} per rollout but negative "
            f"ones are {tuple(negative.total.shape)}; both must come from the same model and "
            "layers."
        )
    return positive.mean() - negative.mean()


def trait_vector(positive: Tensor, negative: Tensor) -> Tensor:
    """``mean(positive) − mean(negative)``: ``[n, n_layers, d]`` and ``[m, n_layers, d]`` in,
    ``[n_layers, d]`` float32 out (residual-stream units)."""
    return trait_vector_from_sums(sum_count(positive), sum_count(negative))


def assistant_axis(default: Tensor, role_vectors: Mapping[str, Tensor]) -> Tensor:
    """The Assistant Axis ``default − mean over roles``, ``[n_layers, d]`` float32, unnormalised.

    ``default`` and every role vector are ``[n_layers, d]``. Each role counts once, however many
    rollouts it was averaged from. The result points toward the Assistant.
    """
    if not role_vectors:
        raise PersonaAxisError(
            "No role vectors to build the axis from; if role_vectors() dropped every role, "
            "lower min_count or generate more rollouts."
        )
    default32 = as_float32(default, "default vector")
    if default32.ndim != 2:
        raise PersonaAxisError(
            f"The default vector must be [n_layers, d]; got {tuple(default32.shape)}."
        )
    mismatched = {n: tuple(v.shape) for n, v in role_vectors.items() if v.shape != default32.shape}
    if mismatched:
        raise PersonaAxisError(
            f"Role vectors {mismatched} do not match the default vector's shape "
            f"{tuple(default32.shape)}; all must come from the same model and layers."
        )
    roles = torch.stack([as_float32(v, f"role vector {n!r}") for n, v in role_vectors.items()])
    return axis_from_means(default32, roles)


def axis_from_means(default: Tensor, role_means: Tensor, weights: Tensor | None = None) -> Tensor:
    """``default − Σ_r w_r·role_r / Σ_r w_r``, batched: the arithmetic of every axis.

    ``default`` ``[..., n_layers, d]``, ``role_means`` ``[..., R, n_layers, d]``, ``weights``
    ``[..., R]`` (None: each role once, as docs/method.md defines the axis; a weight of 0 leaves
    a role out; weights proportional to rollout counts pool the rollouts instead). float32.
    """
    means = as_float32(role_means, "role means")
    if weights is None:
        return as_float32(default, "default vector") - means.mean(dim=-3)
    w = as_float32(weights, "weights")
    total = w.sum(dim=-1)
    if bool((total <= 0).any()):
        raise PersonaAxisError("The role weights sum to zero; keep at least one role.")
    mean = (w[..., None, None] * means).sum(dim=-3) / total[..., None, None]
    return as_float32(default, "default vector") - mean


def unit(v: Tensor) -> Tensor:
    """``v / ‖v‖`` along the last dimension: ``[..., d]`` in, ``[..., d]`` float32 out."""
    v32 = as_float32(v, "vector")
    if v32.ndim == 0:
        raise PersonaAxisError("Cannot normalise a scalar; pass a vector [..., d].")
    norms = torch.linalg.vector_norm(v32, dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise PersonaAxisError(
            "Cannot normalise a zero vector (an axis or direction is all zeros at some layer); "
            "check that the default and role activations differ there."
        )
    return v32 / norms


def project(h: Tensor, axis: Tensor, layer: int | None = None) -> Tensor:
    """Projection ``⟨h, â⟩`` on the unit axis, float32, in residual-stream units.

    Three forms:

    - ``layer=None``, ``axis [n_layers, d]``: ``h [..., n_layers, d]`` → ``[..., n_layers]``,
      each layer of ``h`` projected on the axis at the same layer;
    - ``layer=L``, ``axis [n_layers, d]``: ``h [..., d]`` holds activations *at layer L*
      → ``[...]``, projected on ``axis[L]``;
    - ``layer=None``, ``axis [d]`` (one direction): ``h [..., d]`` → ``[...]``.
    """
    h32 = as_float32(h, "activations")
    a32 = as_float32(axis, "axis")
    if layer is not None:
        if a32.ndim != 2:
            raise PersonaAxisError(
                f"With layer= the axis must be [n_layers, d]; got {tuple(a32.shape)}."
            )
        direction = unit(a32[check_layer(layer, a32.shape[0])])
    elif a32.ndim in (1, 2):
        direction = unit(a32)
    else:
        raise PersonaAxisError(f"The axis must be [n_layers, d] or [d]; got {tuple(a32.shape)}.")
    if h32.ndim < direction.ndim or h32.shape[h32.ndim - direction.ndim :] != direction.shape:
        want = "[..., d]" if direction.ndim == 1 else "[..., n_layers, d]"
        raise PersonaAxisError(
            f"Activations {tuple(h32.shape)} do not end in the axis shape "
            f"{tuple(direction.shape)}; expected {want}."
        )
    if direction.ndim == 1:
        return torch.einsum("...d,d->...", h32, direction)
    return torch.einsum("...ld,ld->...l", h32, direction)


def cosine_by_layer(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity per layer: ``[n_layers, d]`` and ``[n_layers, d]`` → ``[n_layers]``."""
    if a.shape != b.shape or a.ndim != 2:
        raise PersonaAxisError(
            f"cosine_by_layer needs two [n_layers, d] tensors of one shape; got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    return (unit(a) * unit(b)).sum(dim=-1)
