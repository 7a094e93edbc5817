"""Streaming aggregation of a finished build store: sums of response activations per group and
per question block, then the default, role, role_somewhat and trait vectors and the axis quality
metrics (:mod:`persona_axis.axis.quality`). Activations are float32, all layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from persona_axis.axis.quality import assess, unavailable
from persona_axis.axis.quality_cells import AxisCells, CellKey, block_of, cell_key
from persona_axis.axis.vectors import (
    ActivationSums,
    SumCount,
    role_vectors_from_sums,
    trait_vector_from_sums,
    unit,
)
from persona_axis.errors import PersonaAxisError
from persona_axis.pipeline.config import BuildConfig
from persona_axis.pipeline.store import BuildStore


@dataclass(frozen=True)
class InRole:
    """Which role rollouts make a role vector: judge scores in ``scores``, or every rollout
    when the build has no judge (``judged`` False; docs/method.md uses score 3 only)."""

    scores: tuple[int, ...]
    judged: bool

    def __call__(self, score: int | None) -> bool:
        return score in self.scores if self.judged else True

    @property
    def keys(self) -> tuple[int | None, ...]:
        """The score keys of the sums that make a role vector (None: not judged)."""
        return self.scores if self.judged else (None,)


GroupKey = tuple[str, str, int | None]
"""(kind, name, judge score or None)."""


@dataclass
class Groups:
    """Streaming sums of response activations: per ``(kind, name, score)`` in ``sums``, and
    per question block (:func:`~persona_axis.axis.quality_cells.cell_key`) for the rollouts the
    axis is built from (default, and role rollouts in role) in ``cells``."""

    sums: ActivationSums[GroupKey] = field(default_factory=ActivationSums)
    cells: ActivationSums[CellKey] = field(default_factory=ActivationSums)
    norm_sum: Tensor | None = None
    norm_count: int = 0
    empty: int = 0

    def count(self, key: tuple[str, str, int | None]) -> int:
        return self.sums.count(key)

    def names(self, kind: str) -> list[str]:
        return sorted({key[1] for key in self.sums.groups if key[0] == kind})

    def by_score(self, name: str) -> dict[int | None, SumCount]:
        """A role's sums per judge score (None: not judged)."""
        return {
            key[2]: part
            for key, part in self.sums.groups.items()
            if key[0] == "role" and key[1] == name
        }

    def mean_norm(self) -> Tensor:
        """Mean token ``‖h‖`` per layer ``[n_layers]`` over default rollouts (steering scale)."""
        if self.norm_sum is None:
            raise PersonaAxisError("No default rollout produced a reply; cannot compute norms.")
        return self.norm_sum / self.norm_count


def accumulate(
    store: BuildStore, n_batches: int, progress: bool, *, in_role: InRole, n_blocks: int
) -> Groups:
    """One streaming pass over the store: sums per group (empty replies are skipped)."""
    groups = Groups()
    for k, records, tensors in tqdm(
        store.iter_batches(n_batches),
        total=n_batches,
        desc="vectors",
        unit="batch",
        disable=not progress,
    ):
        scores = {j["id"]: j["score"] for j in store.read_judgement(k)}
        for row, record in enumerate(records):
            if record["n_tokens"] == 0:
                groups.empty += 1
                continue
            kind = record["kind"]
            score = scores.get(record["id"]) if kind == "role" else None
            acts = tensors["activations"][row]
            groups.sums.add((kind, record["name"], score), acts)
            if kind == "default" or (kind == "role" and in_role(score)):
                block = block_of(record["question_index"], n_blocks)
                groups.cells.add(cell_key(kind, record["name"], block), acts)
            if kind == "default":
                norms = tensors["norms"][row]
                groups.norm_sum = (
                    norms.clone() if groups.norm_sum is None else groups.norm_sum + norms
                )
                groups.norm_count += 1
    return groups


def make_vectors(
    groups: Groups, min_count: int, role_scores: tuple[int, ...] = (3,), *, judged: bool
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Default, role (rollouts scored in ``role_scores``; docs/method.md: 3), role_somewhat
    (score 2) and trait vectors, plus counts, by the tested functions of
    :mod:`persona_axis.axis.vectors`.

    Without a judge (``judged`` False) every role rollout counts as in role.
    """
    default = groups.sums.get([("default", "default", None)])
    if default is None:
        raise PersonaAxisError("No default rollout produced a reply; raise max_new_tokens.")
    vectors: dict[str, Tensor] = {"default": default.mean()}
    role_names = groups.names("role")
    sums = {name: groups.by_score(name) for name in role_names}
    in_role = InRole(role_scores, judged)
    if not sums:
        raise PersonaAxisError("No role rollout produced a reply; raise max_new_tokens.")
    full = role_vectors_from_sums(sums, in_role.keys, min_count)
    vectors |= {f"role/{name}": v for name, v in full.vectors.items()}
    if judged and 2 not in role_scores:
        somewhat = role_vectors_from_sums(sums, (2,), min_count)
        vectors |= {f"role_somewhat/{name}": v for name, v in somewhat.vectors.items()}
    per_role: dict[str, dict[str, int]] = {}
    for name in role_names:
        per_role[name] = {str(s): groups.count(("role", name, s)) for s in (0, 1, 2, 3)}
        per_role[name]["unscored"] = groups.count(("role", name, None))
    kept = sorted(full.vectors)
    if len(kept) < 2:
        raise PersonaAxisError(
            f"Only {len(kept)} role(s) had at least {min_count} in-role replies (scores "
            f"{list(role_scores)}); the "
            "axis needs two or more. Lower --min-role-rollouts, generate more rollouts, or use "
            "another judge (--judge none counts every reply)."
        )
    trait_names = groups.names("trait_pos")
    for name in trait_names:
        pos = groups.sums.get([("trait_pos", name, None)])
        neg = groups.sums.get([("trait_neg", name, None)])
        if pos is not None and neg is not None:
            vectors[f"trait/{name}"] = trait_vector_from_sums(pos, neg)
    counts = {
        "default": default.count,
        "roles": per_role,
        "roles_kept": len(kept),
        "roles_dropped": list(full.dropped),
        "traits": {n: groups.count(("trait_pos", n, None)) for n in trait_names},
        "empty_replies": groups.empty,
        "min_role_rollouts": min_count,
        "role_scores": list(role_scores),
        "judged": judged,
    }
    return vectors, counts


def quality_stage(
    store: BuildStore,
    n_batches: int,
    groups: Groups,
    vectors: dict[str, Tensor],
    config: BuildConfig,
    *,
    judged: bool,
    n_blocks: int,
) -> dict[str, Any]:
    """The axis quality metrics (:func:`persona_axis.axis.quality.assess`): the cells of the
    kept roles, then one pass over the store projecting each default and in-role rollout on
    the axis built without its question block."""
    roles = sorted(prefixed(vectors, "role/"))
    try:
        cells = AxisCells.from_sums(groups.cells, roles, n_blocks)
    except PersonaAxisError as exc:  # too small a build to split: say so, do not fail
        n_layers = vectors["default"].shape[0]
        return unavailable(str(exc), n_layers, config.target_layer)
    folds = unit(cells.fold_axes())  # [K, L, d]
    in_role = InRole(config.role_scores, judged)
    kept = set(roles)
    projections: dict[str, list[Tensor]] = {"default": [], "role": []}
    for k, records, tensors in store.iter_batches(n_batches):
        scores = {j["id"]: j["score"] for j in store.read_judgement(k)}
        for row, record in enumerate(records):
            kind = record["kind"]
            if record["n_tokens"] == 0 or not (
                kind == "default"
                or (kind == "role" and record["name"] in kept and in_role(scores.get(record["id"])))
            ):
                continue
            fold = folds[block_of(record["question_index"], n_blocks)]
            projections[kind].append((tensors["activations"][row].float() * fold).sum(-1))
    somewhat = prefixed(vectors, "role_somewhat/")
    owners = [roles.index(name) for name in somewhat if name in kept]
    extra = [v for name, v in somewhat.items() if name in kept]
    return assess(
        cells,
        torch.stack(projections["default"]).numpy(),
        torch.stack(projections["role"]).numpy(),
        torch.stack(extra) if extra else None,
        owners,
        target_layer=config.target_layer,
    )


def prefixed(vectors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The vectors whose key starts with ``prefix``, keyed by the rest (``role/pirate`` ->
    ``pirate``)."""
    return {k.removeprefix(prefix): v for k, v in vectors.items() if k.startswith(prefix)}
