"""Axis quality: stability, held-out separation and persona-space structure, per layer, each
with a bootstrap 95% interval; the warnings they raise; and the target layer they choose.

All metrics are computed from :class:`~persona_axis.axis.quality_cells.AxisCells`: the
float32 sums (and counts) of the rollouts an axis is built from (default rollouts, and role
rollouts counted in role), per role and per *question block* (question index modulo
:data:`QUESTION_BLOCKS`). An axis from any subset of roles and blocks is then a ratio of pooled
sums (docs/method.md: ``default − mean over roles``,
each role weighted once), so hundreds of resampled axes cost no pass over the rollouts.

Metrics (docs/axis-quality.md states them in full):

- **stability by question**: cosine between the axes of two disjoint halves of the question
  blocks (same roles); **by role**: between the axes of two disjoint halves of the roles (same
  questions; the default vector is shared). The estimate is the mean over random splits; the
  interval takes 2.5/97.5 percentiles over replicates that also resample the other factor
  (roles, respectively question blocks) with replacement.
- **held-out separation**: every default and in-role rollout is projected on the axis built
  without its question block (K-fold cross-fitting over blocks); AUROC of default against role
  projections (1 = every default reply projects higher) and the effect size (Cohen's d, pooled
  standard deviation). Interval: rollouts resampled with replacement within each class.
- **persona space**: cos(axis, PC1) (PC1 signed toward the default) and the variance PC1
  explains, from the PCA of the role (and "somewhat") vectors. Interval: roles resampled with
  replacement, axis and PCA recomputed.

Projections are on the unit axis, in residual-stream units; layer L is decoder block L's output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from persona_axis.axis.quality_cells import (
    QUESTION_BLOCKS,
    AxisCells,
    CellKey,
    Weighting,
)
from persona_axis.axis.vectors import as_float32, unit
from persona_axis.errors import PersonaAxisError

__all__ = [
    "METRICS",
    "QUESTION_BLOCKS",
    "THRESHOLDS",
    "AxisCells",
    "CellKey",
    "Estimate",
    "assess",
    "choose_target_layer",
    "separation",
    "space_structure",
    "split_half_stability",
    "unavailable",
    "warnings_for",
]

METRICS = (
    ("stability_question", "split-half cosine, by question", ".3f"),
    ("stability_role", "split-half cosine, by role", ".3f"),
    ("heldout_auroc", "held-out AUROC (default vs role replies)", ".3f"),
    ("heldout_effect_size", "held-out effect size (Cohen's d)", ".2f"),
    ("cos_axis_pc1", "cos(axis, PC1)", ".3f"),
    ("pc1_variance", "PC1 variance explained", ".1%"),
)
"""The quality figures as shown (CLI summary, HTML report): manifest key, label, format spec."""

N_BOOT = 200
"""Replicates per interval (and random splits per estimate)."""
THRESHOLDS: dict[str, float] = {
    "stable": 0.90,  # split-half cosine (question and role) below this: unstable
    "auroc": 0.80,  # held-out AUROC below this: barely separates
    "effect_size": 1.0,  # held-out Cohen's d below this: barely separates
    "cos_pc1": 0.5,  # cos(axis, PC1) below this: PC1 is not the axis (a note, not a failure)
}
"""Warning thresholds, read at the target layer (docs/method.md, "Axis quality")."""


@dataclass(frozen=True)
class Estimate:
    """Per-layer estimates ``[n_layers]`` with 95% intervals ``low``/``high`` ``[n_layers]``."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def at(self, layer: int) -> tuple[float, float, float]:
        return float(self.value[layer]), float(self.low[layer]), float(self.high[layer])

    def to_dict(self) -> dict[str, list[float] | list[list[float]]]:
        return {
            "estimate": [round(float(v), 5) for v in self.value],
            "ci95": [
                [round(float(lo), 5), round(float(hi), 5)]
                for lo, hi in zip(self.low, self.high, strict=True)
            ],
        }

    @classmethod
    def from_replicates(cls, value: np.ndarray, replicates: np.ndarray) -> Estimate:
        """``value`` ``[L]`` and percentile interval of ``replicates`` ``[n, L]``."""
        low, high = np.nanpercentile(replicates, [2.5, 97.5], axis=0)
        return cls(np.asarray(value, dtype=np.float64), low, high)


def _cosines(a: Tensor, b: Tensor) -> np.ndarray:
    """Per-layer cosines of two stacks ``[B, L, d]`` → ``[B, L]``."""
    return (unit(a) * unit(b)).sum(-1).double().numpy()


def split_half_stability(
    cells: AxisCells,
    by: Literal["question", "role"],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    weighting: Weighting = "role",
) -> Estimate:
    """Cosine per layer between the axes of two disjoint halves (module docstring)."""
    rng = np.random.default_rng(seed)
    r, k = cells.role_counts.shape
    if by == "question":
        units, other = k, r
        present = [b for b in range(k) if cells.default_counts[b] > 0]
        if len(present) < 2:
            raise PersonaAxisError("Splitting by question needs two blocks with replies.")
    else:
        units, other = r, k
        present = list(range(r))

    def halves(n: int) -> tuple[Tensor, Tensor]:
        a = torch.zeros(n, units)
        b = torch.zeros(n, units)
        for i in range(n):
            order = rng.permutation(present)
            half = len(order) // 2
            a[i, order[:half]] = 1
            b[i, order[half : 2 * half]] = 1
        return a, b

    def resample(n: int) -> Tensor:
        return torch.from_numpy(rng.multinomial(other, np.full(other, 1 / other), size=n)).float()

    results = []
    for boot in (False, True):
        a, b = halves(n_boot)
        others = resample(n_boot) if boot else None
        if by == "question":
            first = cells.axes(others, a, weighting)
            second = cells.axes(others, b, weighting)
        else:
            first = cells.axes(a, others, weighting)
            second = cells.axes(b, others, weighting)
        results.append(_cosines(first, second))
    return Estimate.from_replicates(results[0].mean(0), results[1])


def _auroc(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """P(positive > negative) per column: ``[n1, L]``, ``[n0, L]`` → ``[L]`` (rank-sum; ties
    between the classes do not occur with continuous projections)."""
    both = np.concatenate([positive, negative])
    order = np.argsort(both, axis=0)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, both.shape[0] + 1)[:, None], axis=0)
    n1, n0 = positive.shape[0], negative.shape[0]
    return (ranks[:n1].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _cohens_d(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    n1, n0 = positive.shape[0], negative.shape[0]
    pooled = ((n1 - 1) * positive.var(0, ddof=1) + (n0 - 1) * negative.var(0, ddof=1)) / (
        n1 + n0 - 2
    )
    return (positive.mean(0) - negative.mean(0)) / np.sqrt(np.maximum(pooled, 1e-24))


def separation(
    default: Tensor | np.ndarray,
    roles: Tensor | np.ndarray,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> tuple[Estimate, Estimate]:
    """AUROC and Cohen's d per layer of ``default`` ``[n0, L]`` against ``roles`` ``[n1, L]``
    projections (higher = more Assistant-like), with bootstrap intervals (module docstring)."""
    pos = np.asarray(default, dtype=np.float64)
    neg = np.asarray(roles, dtype=np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise PersonaAxisError(
            f"Projections must be [n, n_layers] for both classes; got {pos.shape}, {neg.shape}."
        )
    if pos.shape[0] < 2 or neg.shape[0] < 2:
        raise PersonaAxisError(
            f"Held-out separation needs at least two default and two role replies; got "
            f"{pos.shape[0]} and {neg.shape[0]}."
        )
    rng = np.random.default_rng(seed)
    aurocs, effects = [], []
    for _ in range(n_boot):
        p = pos[rng.integers(0, pos.shape[0], pos.shape[0])]
        q = neg[rng.integers(0, neg.shape[0], neg.shape[0])]
        aurocs.append(_auroc(p, q))
        effects.append(_cohens_d(p, q))
    return (
        Estimate.from_replicates(_auroc(pos, neg), np.array(aurocs)),
        Estimate.from_replicates(_cohens_d(pos, neg), np.array(effects)),
    )


def _pc1(points: Tensor, weights: Tensor, default: Tensor) -> tuple[Tensor, Tensor]:
    """Per layer, PC1 of ``points`` ``[L, P, d]`` counted ``weights`` ``[P]`` times each
    (a point drawn twice by the bootstrap counts twice), signed toward ``default`` ``[L, d]``,
    and the share of variance it explains: ``[L, d]`` unit rows and ``[L]``. Computed from the
    smaller of the ``P × P`` and ``d × d`` Gram matrices."""
    w = weights.float()
    mean = (w[None, :, None] * points).sum(1) / w.sum()  # [L, d]
    x = (points - mean[:, None, :]) * w.sqrt()[None, :, None]
    if x.shape[1] <= x.shape[2]:
        values, vectors = torch.linalg.eigh(x @ x.transpose(1, 2))  # [L, P], ascending
        pc1 = torch.einsum("lpd,lp->ld", x, vectors[..., -1])
    else:
        values, vectors = torch.linalg.eigh(x.transpose(1, 2) @ x)
        pc1 = vectors[..., -1]
    pc1 = pc1 / torch.linalg.vector_norm(pc1, dim=-1, keepdim=True).clamp(min=1e-30)
    side = ((default - mean) * pc1).sum(-1)
    pc1 = torch.where(side[:, None] < 0, -pc1, pc1)
    share = values[..., -1] / values.clamp(min=0).sum(-1).clamp(min=1e-30)
    return pc1, share


def space_structure(
    role_vectors: Tensor,
    default: Tensor,
    somewhat: Tensor | None = None,
    somewhat_owner: Sequence[int] = (),
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> tuple[Estimate, Estimate]:
    """cos(axis, PC1) and PC1's explained-variance share per layer, with intervals.

    ``role_vectors`` ``[R, L, d]`` build the axis (``default − mean``) and, with the optional
    ``somewhat`` vectors ``[S, L, d]`` (``somewhat_owner[s]`` = index of its role), are the
    points of the PCA, as in the build's persona space. Replicates resample roles with
    replacement (a drawn role brings its "somewhat" vector along, as often as it is drawn)."""
    roles32 = as_float32(role_vectors, "role vectors")
    default32 = as_float32(default, "default vector")
    r = roles32.shape[0]
    if r < 2:
        raise PersonaAxisError("The persona space needs at least two role vectors.")
    extra = (
        torch.zeros(0, *roles32.shape[1:]) if somewhat is None else as_float32(somewhat, "somewhat")
    )
    owners = torch.as_tensor(list(somewhat_owner), dtype=torch.long)
    if extra.shape[0] != owners.shape[0]:
        raise PersonaAxisError("Give one owner role index per 'somewhat' vector.")
    points = torch.cat([roles32, extra]).transpose(0, 1).contiguous()  # [L, R + S, d]

    def one(counts: Tensor) -> tuple[np.ndarray, np.ndarray]:
        weights = torch.cat([counts, counts[owners]]).float()
        keep = weights > 0
        axis = default32 - (counts.float()[:, None, None] * roles32).sum(0) / counts.sum()
        pc1, share = _pc1(points[:, keep], weights[keep], default32)
        cos = (unit(axis) * pc1).sum(-1)
        return cos.double().numpy(), share.double().numpy()

    value_cos, value_share = one(torch.ones(r, dtype=torch.long))
    rng = np.random.default_rng(seed)
    reps = [
        one(torch.from_numpy(np.bincount(rng.integers(0, r, r), minlength=r)))
        for _ in range(n_boot)
    ]
    return (
        Estimate.from_replicates(value_cos, np.array([c for c, _ in reps])),
        Estimate.from_replicates(value_share, np.array([s for _, s in reps])),
    )


def choose_target_layer(
    stability_question: Estimate,
    stability_role: Estimate,
    effect_size: Estimate,
    *,
    stable: float = THRESHOLDS["stable"],
) -> tuple[int, str]:
    """The layer with the largest held-out effect size among the stable layers (both split-half
    cosines ≥ ``stable``); the middle layer when no layer is stable. Returns (layer, reason)."""
    n_layers = len(effect_size.value)
    ok = [
        layer
        for layer in range(n_layers)
        if stability_question.value[layer] >= stable and stability_role.value[layer] >= stable
    ]
    if not ok:
        middle = n_layers // 2
        return middle, (
            f"no layer has both split-half cosines ≥ {stable}; kept the middle layer "
            f"{middle} (n_layers // 2)"
        )
    best = max(ok, key=lambda layer: float(effect_size.value[layer]))
    return best, (
        f"largest held-out effect size (d = {effect_size.value[best]:.2f}) among the "
        f"{len(ok)} layers whose split-half cosines by question and by role are ≥ {stable}"
    )


def warnings_for(quality: Mapping[str, Any], layer: int) -> list[str]:
    """Plain-language warnings for the axis at ``layer`` (thresholds: :data:`THRESHOLDS`)."""
    out: list[str] = []

    def at(key: str) -> float:
        return float(quality[key]["estimate"][layer])

    remedies = {  # what the study in docs/axis-quality.md found to raise each one
        "question": "build with more questions (--questions): each adds a reply per default "
        "prompt, and their number limits this",
        "role": "build with more roles (--roles)",
    }
    for key, what in (("stability_question", "question"), ("stability_role", "role")):
        if at(key) < THRESHOLDS["stable"]:
            out.append(
                f"UNSTABLE: axes from two halves of the {what}s agree only to cosine "
                f"{at(key):.2f} at layer {layer} (want ≥ {THRESHOLDS['stable']}); "
                f"{remedies[what]}."
            )
    if (
        at("heldout_auroc") < THRESHOLDS["auroc"]
        or at("heldout_effect_size") < THRESHOLDS["effect_size"]
    ):
        out.append(
            f"BARELY SEPARATES: on held-out questions the axis tells default from role replies "
            f"with AUROC {at('heldout_auroc'):.2f} and effect size "
            f"{at('heldout_effect_size'):.2f} at layer {layer} (want AUROC ≥ "
            f"{THRESHOLDS['auroc']} and d ≥ {THRESHOLDS['effect_size']})."
        )
    if at("cos_axis_pc1") < THRESHOLDS["cos_pc1"]:
        out.append(
            f"note: cos(axis, PC1) = {at('cos_axis_pc1'):.2f} at layer {layer}: the main "
            "direction of the persona space is not the axis here (the paper finds > 0.71)."
        )
    return out


def assess(
    cells: AxisCells,
    heldout_default: Tensor | np.ndarray,
    heldout_roles: Tensor | np.ndarray,
    somewhat: Tensor | None = None,
    somewhat_owner: Sequence[int] = (),
    *,
    target_layer: int | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of the module docstring, the chosen target layer and its warnings, as the
    JSON-ready ``quality`` section of a bundle's manifest.

    ``heldout_default``/``heldout_roles`` ``[n, L]`` are the cross-fitted projections (each
    rollout on :meth:`AxisCells.fold_axes` of its block). ``target_layer`` overrides the choice.
    """
    by_question = split_half_stability(cells, "question", n_boot=n_boot, seed=seed)
    by_role = split_half_stability(cells, "role", n_boot=n_boot, seed=seed + 1)
    auroc, effect = separation(heldout_default, heldout_roles, n_boot=n_boot, seed=seed + 2)
    role_vectors = cells.role_sums.sum(1) / cells.role_counts.sum(1)[:, None, None]
    default = cells.default_sums.sum(0) / cells.default_counts.sum()
    cos_pc1, share = space_structure(
        role_vectors, default, somewhat, somewhat_owner, n_boot=n_boot, seed=seed + 3
    )
    if target_layer is None:
        layer, reason = choose_target_layer(by_question, by_role, effect)
        how = "evidence"
    else:
        layer, reason, how = target_layer, "set by --target-layer", "override"
    quality: dict[str, Any] = {
        "stability_question": by_question.to_dict(),
        "stability_role": by_role.to_dict(),
        "heldout_auroc": auroc.to_dict(),
        "heldout_effect_size": effect.to_dict(),
        "cos_axis_pc1": cos_pc1.to_dict(),
        "pc1_variance": share.to_dict(),
    }
    quality["target_layer"] = {"layer": layer, "chosen_by": how, "reason": reason}
    quality["warnings"] = warnings_for(quality, layer)
    quality["thresholds"] = dict(THRESHOLDS)
    quality["method"] = {
        "question_blocks": cells.n_blocks,
        "roles": len(cells.names),
        "default_rollouts": int(cells.default_counts.sum()),
        "role_rollouts": int(cells.role_counts.sum()),
        "heldout_rollouts": {
            "default": int(np.asarray(heldout_default).shape[0]),
            "role": int(np.asarray(heldout_roles).shape[0]),
        },
        "replicates": n_boot,
        "seed": seed,
        "interval": "bootstrap 2.5-97.5 percentiles (docs/axis-quality.md)",
    }
    return quality


def unavailable(reason: str, n_layers: int, target_layer: int | None = None) -> dict[str, Any]:
    """The ``quality`` section of a build too small to assess (``reason`` says why): the
    target layer is the override or the middle layer, and the reason is the one warning."""
    layer = n_layers // 2 if target_layer is None else target_layer
    how = "middle layer (quality unavailable)" if target_layer is None else "set by --target-layer"
    return {
        "unavailable": reason,
        "target_layer": {
            "layer": layer,
            "chosen_by": "default" if target_layer is None else "override",
            "reason": how,
        },
        "warnings": [f"QUALITY NOT ASSESSED: {reason}"],
    }


def summary_at(quality: Mapping[str, Any], layer: int) -> dict[str, tuple[float, float, float]]:
    """``{metric: (estimate, low, high)}`` at ``layer`` for the six metrics."""
    out = {}
    for key in (
        "stability_question",
        "stability_role",
        "heldout_auroc",
        "heldout_effect_size",
        "cos_axis_pc1",
        "pc1_variance",
    ):
        low, high = quality[key]["ci95"][layer]
        out[key] = (float(quality[key]["estimate"][layer]), float(low), float(high))
    return out
