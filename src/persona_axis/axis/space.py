"""Persona space: PCA of role vectors at one layer.

The role vectors ``[n_layers, d]`` are read at one layer (0-based decoder block output), mean-
centred and *not* variance-scaled, then decomposed with scikit-learn's PCA (full SVD, in float64;
results stored as float32). In the paper PC1 is the Assistant-likeness direction; when a default
vector is given, PC1 is signed so that the default (Assistant) end is positive, matching the
axis convention. Coordinates are in residual-stream units.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import Tensor

from persona_axis.axis.vectors import as_float32, check_layer, unit
from persona_axis.errors import PersonaAxisError

__all__ = ["PersonaSpace", "axis_pc1_cosine", "persona_space"]


@dataclass(frozen=True)
class PersonaSpace:
    """A fitted persona space at ``layer``.

    ``names``: the roles, in row order of ``loadings``; ``mean`` ``[d]``: the role mean that was
    subtracted; ``components`` ``[k, d]``: unit principal directions, PC1 first;
    ``explained_variance_ratio`` ``[k]``: fraction of the total role variance per component;
    ``loadings`` ``[n_roles, k]``: role coordinates; ``default_loading`` ``[k]`` or ``None``: the
    default vector's coordinates when one was given (PC1 is then signed so it is ≥ 0).
    """

    layer: int
    names: tuple[str, ...]
    mean: Tensor
    components: Tensor
    explained_variance_ratio: Tensor
    loadings: Tensor
    default_loading: Tensor | None = None

    def transform(self, vectors: Tensor) -> Tensor:
        """Coordinates of ``vectors`` ``[n, d]`` (or one ``[d]``) → ``[n, k]`` (or ``[k]``)."""
        v = as_float32(vectors, "vectors")
        if v.ndim not in (1, 2) or v.shape[-1] != self.mean.shape[0]:
            raise PersonaAxisError(
                f"Vectors must be [n, {self.mean.shape[0]}] or [{self.mean.shape[0]}] at layer "
                f"{self.layer}; got {tuple(v.shape)}. Take vector[:, layer] rows first."
            )
        return (v - self.mean) @ self.components.T

    def components_for(self, fraction: float = 0.7) -> int:
        """Fewest leading components whose explained variance ratios sum to ≥ ``fraction``."""
        if not 0 < fraction <= 1:
            raise PersonaAxisError(f"fraction must be in (0, 1]; got {fraction!r}.")
        cumulative = np.cumsum(self.explained_variance_ratio.double().numpy())
        reached = np.flatnonzero(cumulative >= fraction - 1e-6)
        if reached.size == 0:
            raise PersonaAxisError(
                f"The {cumulative.size} fitted components explain only {cumulative[-1]:.3f} of "
                f"the variance, less than {fraction}; refit with more n_components (or None)."
            )
        return int(reached[0]) + 1


def persona_space(
    role_vectors: Mapping[str, Tensor],
    layer: int,
    n_components: int | None = None,
    default: Tensor | None = None,
) -> PersonaSpace:
    """Fit the persona space at ``layer`` from role vectors ``[n_layers, d]`` (at least two).

    ``n_components`` defaults to ``min(n_roles − 1, d)``: centred role vectors span at most
    ``n_roles − 1`` dimensions, so further components carry no variance. ``default``
    ``[n_layers, d]``, if given, is placed in the space and fixes the sign of PC1 (default end
    positive); without it PC1's sign is scikit-learn's deterministic choice.
    """
    names = tuple(role_vectors)
    if len(names) < 2:
        raise PersonaAxisError(f"Persona space needs at least two role vectors; got {len(names)}.")
    shapes = {tuple(v.shape) for v in role_vectors.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise PersonaAxisError(
            f"Role vectors must all be [n_layers, d] with one shape; got {sorted(shapes)}."
        )
    n_layers, d = next(iter(shapes))
    check_layer(layer, n_layers)
    max_components = min(len(names), d)
    k = min(len(names) - 1, d) if n_components is None else n_components
    if not 1 <= k <= max_components:
        raise PersonaAxisError(
            f"n_components must be between 1 and {max_components} (number of roles or d); "
            f"got {n_components!r}."
        )
    points = torch.stack([as_float32(role_vectors[n], f"role {n!r}")[layer] for n in names])
    pca = PCA(n_components=k, svd_solver="full").fit(points.double().numpy())
    components = torch.from_numpy(pca.components_).to(torch.float32)
    mean = torch.from_numpy(pca.mean_).to(torch.float32)
    default_point: Tensor | None = None
    if default is not None:
        default32 = as_float32(default, "default vector")
        if tuple(default32.shape) != (n_layers, d):
            raise PersonaAxisError(
                f"The default vector is {tuple(default32.shape)}; it must match the role vectors "
                f"({n_layers}, {d})."
            )
        default_point = default32[layer]
        if float((default_point - mean) @ components[0]) < 0:
            components[0] = -components[0]
    space = PersonaSpace(
        layer=layer,
        names=names,
        mean=mean,
        components=components,
        explained_variance_ratio=torch.from_numpy(pca.explained_variance_ratio_).to(torch.float32),
        loadings=(points - mean) @ components.T,
    )
    if default_point is None:
        return space
    return replace(space, default_loading=space.transform(default_point))


def axis_pc1_cosine(axis: Tensor, space: PersonaSpace) -> float:
    """``cos(axis[space.layer], PC1)`` for an axis ``[n_layers, d]``; unitless, in [-1, 1].

    Positive when PC1 was signed with the default vector (both then point toward the Assistant).
    """
    a32 = as_float32(axis, "axis")
    if a32.ndim != 2 or a32.shape[1] != space.components.shape[1]:
        raise PersonaAxisError(
            f"The axis must be [n_layers, {space.components.shape[1]}]; got {tuple(a32.shape)}."
        )
    direction = unit(a32[check_layer(space.layer, a32.shape[0])])
    return float(direction @ space.components[0])
