"""The axis-quality study (docs/axis-quality.md): what makes the Assistant Axis good on the
default model, computed from ONE stored generation by choosing which rollouts enter the axis.

Every configuration is scored with the build's own metrics (persona_axis.axis.quality): split-
half cosines by question and by role, cross-fitted held-out AUROC and effect size of default
against in-role replies, cos(axis, PC1) and PC1's share of variance, each at the layer the build
would choose (best held-out effect size among stable layers) and at the middle layer. One more
column holds the rollouts fixed whatever the configuration: AUROC of the default replies against
ALL role replies of all 200 roles of the store (no judge, no filter), each projected on the axis
built without its question block; a filter cannot raise it by dropping hard replies.

The evaldata/axis_heldout set is NOT read here (studies/heldout_score.py scores final bundles).

    cpu shared python studies/axis_study.py --store /tmp/axis/g1 --out studies/results/g1.json
    cpu shared python studies/axis_study.py --store /tmp/axis/g1 --length /tmp/axis/length \\
        --part length --out studies/results/length.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from common import Rollouts, load_store, load_tensors
from persona_axis.axis.quality import (
    AxisCells,
    Estimate,
    choose_target_layer,
    separation,
    space_structure,
    split_half_stability,
)
from persona_axis.axis.vectors import unit

N_BLOCKS = 8


@dataclass
class Scored:
    """Per-layer estimates of one configuration."""

    stab_q: Estimate
    stab_r: Estimate
    auroc: Estimate
    effect: Estimate
    fixed_auroc: Estimate
    fixed_effect: Estimate
    cos_pc1: Estimate
    pc1_share: Estimate
    roles: int
    role_rollouts: int
    default_rollouts: int

    def layer(self) -> tuple[int, str]:
        return choose_target_layer(self.stab_q, self.stab_r, self.effect)

    def row(self, layer: int) -> dict[str, Any]:
        def fmt(e: Estimate, digits: int = 3) -> list[float]:
            return [round(float(x), digits) for x in e.at(layer)]

        return {
            "layer": layer,
            "stab_q": fmt(self.stab_q),
            "stab_r": fmt(self.stab_r),
            "auroc": fmt(self.auroc),
            "d": fmt(self.effect, 2),
            "fixed_auroc": fmt(self.fixed_auroc),
            "fixed_d": fmt(self.fixed_effect, 2),
            "cos_pc1": fmt(self.cos_pc1),
            "pc1_share": fmt(self.pc1_share),
        }


def blocks_of(r: Rollouts) -> np.ndarray:
    return r.question % N_BLOCKS


def fold_projections(acts: Tensor, blocks: np.ndarray, folds: Tensor) -> np.ndarray:
    """Each rollout ``[L, d]`` projected on the unit fold axis of its block → ``[n, L]``."""
    out = np.zeros((acts.shape[0], acts.shape[1]))
    directions = unit(folds)
    for b in range(folds.shape[0]):
        rows = np.flatnonzero(blocks == b)
        if rows.size:
            chunk = acts[torch.from_numpy(rows)]
            out[rows] = torch.einsum("nld,ld->nl", chunk, directions[b]).double().numpy()
    return out


def score(
    data: Rollouts,
    use: np.ndarray,
    *,
    weighting: str = "role",
    n_boot: int = 50,
    seed: int = 0,
    use_default: np.ndarray | None = None,
) -> Scored:
    """Metrics of the axis built from the rollouts ``use`` (boolean over ``data``; default
    rollouts among them make the default vector, role rollouts the role vectors)."""
    is_default = data.kind == "default"
    chosen_default = is_default if use_default is None else use_default
    mask = (use & (data.kind == "role")) | chosen_default
    index = torch.from_numpy(np.flatnonzero(mask))
    roles = [
        None if k == "default" else n for k, n in zip(data.kind[mask], data.name[mask], strict=True)
    ]
    cells = AxisCells.from_rollouts(data.acts[index], roles, blocks_of(data)[mask], N_BLOCKS)
    w = "rollout" if weighting == "rollout" else "role"
    folds = cells.fold_axes(weighting=w)  # type: ignore[arg-type]
    blocks = blocks_of(data)
    all_proj = fold_projections(data.acts, blocks, folds)
    is_role = data.kind == "role"
    in_axis = mask & is_role
    auroc, effect = separation(
        all_proj[chosen_default], all_proj[in_axis], n_boot=n_boot, seed=seed
    )
    fixed_auroc, fixed_effect = separation(
        all_proj[is_default], all_proj[is_role], n_boot=n_boot, seed=seed
    )
    stab_q = split_half_stability(cells, "question", n_boot=n_boot, seed=seed, weighting=w)  # type: ignore[arg-type]
    stab_r = split_half_stability(cells, "role", n_boot=n_boot, seed=seed, weighting=w)  # type: ignore[arg-type]
    role_vectors = cells.role_sums.sum(1) / cells.role_counts.sum(1)[:, None, None]
    default = cells.default_sums.sum(0) / cells.default_counts.sum()
    cos_pc1, share = space_structure(role_vectors, default, n_boot=n_boot, seed=seed)
    return Scored(
        stab_q, stab_r, auroc, effect, fixed_auroc, fixed_effect, cos_pc1, share,
        roles=len(cells.names), role_rollouts=int(in_axis.sum()),
        default_rollouts=int(chosen_default.sum()),
    )  # fmt: skip


def balanced_roles(data: Rollouts, n: int, seed: int) -> set[str]:
    """``n`` roles drawn evenly from the store's categories (by the catalog)."""
    from persona_axis.catalog import load_catalog

    catalog = load_catalog()
    names = sorted(set(data.name[data.kind == "role"]))
    by_cat: dict[str, list[str]] = {}
    for name in names:
        by_cat.setdefault(catalog.role(name).category, []).append(name)
    rng = np.random.default_rng(seed)
    for members in by_cat.values():
        rng.shuffle(members)
    out: list[str] = []
    while len(out) < n:
        for members in by_cat.values():
            if members and len(out) < n:
                out.append(members.pop())
    return set(out)


def per_role_sample(data: Rollouts, roles: set[str], k: int, seed: int) -> np.ndarray:
    """``k`` random rollouts of each role in ``roles`` (all when it has fewer)."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(data.kind), dtype=bool)
    for name in roles:
        rows = np.flatnonzero((data.kind == "role") & (data.name == name))
        keep[rng.choice(rows, size=min(k, rows.size), replace=False)] = True
    return keep


def role_consistency(data: Rollouts, layers: range) -> dict[str, float]:
    """Per role, the mean over ``layers`` of cos(role − default) between the role's rollouts on
    even and on odd question blocks: near 0 when the role's offset is noise (not played).
    Roles without rollouts on both are left out."""
    is_default = data.kind == "default"
    blocks = blocks_of(data)
    out = {}
    for name in sorted(set(data.name[data.kind == "role"])):
        cosines = []
        halves = []
        for parity in (0, 1):
            rows = torch.from_numpy(np.flatnonzero((data.name == name) & (blocks % 2 == parity)))
            base = torch.from_numpy(np.flatnonzero(is_default & (blocks % 2 == parity)))
            halves.append(data.acts[rows].mean(0) - data.acts[base].mean(0))
        if any(bool(h.isnan().any()) for h in halves):
            continue  # no reply on even or on odd blocks (a partial store): not measurable
        for layer in layers:
            a, b = halves[0][layer], halves[1][layer]
            cosines.append(float(a @ b / (a.norm() * b.norm())))
        out[name] = float(np.mean(cosines))
    return out


def report(label: str, scored: Scored, extra: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    layer, reason = scored.layer()
    row = {
        "config": label,
        **extra,
        "roles": scored.roles,
        "role_rollouts": scored.role_rollouts,
        "default_rollouts": scored.default_rollouts,
        "chosen": scored.row(layer),
        "middle": scored.row(15),
        "reason": reason,
        "per_layer": {
            "stab_q": scored.stab_q.value.round(4).tolist(),
            "stab_r": scored.stab_r.value.round(4).tolist(),
            "auroc": scored.auroc.value.round(4).tolist(),
            "d": scored.effect.value.round(3).tolist(),
            "fixed_auroc": scored.fixed_auroc.value.round(4).tolist(),
            "cos_pc1": scored.cos_pc1.value.round(4).tolist(),
        },
    }
    rows.append(row)
    c = row["chosen"]
    print(
        f"{label:42s} R={scored.roles:3d} n={scored.role_rollouts:5d} L{layer:2d} "
        f"stab_q {c['stab_q'][0]:.3f} stab_r {c['stab_r'][0]:.3f} auroc {c['auroc'][0]:.3f} "
        f"d {c['d'][0]:.2f} fixed {c['fixed_auroc'][0]:.3f} cos {c['cos_pc1'][0]:.3f} "
        f"pc1 {c['pc1_share'][0]:.3f}",
        flush=True,
    )


def part_grid(data: Rollouts, rows: list[dict[str, Any]], n_boot: int) -> None:
    """Rollouts per role vs number of roles (every role rollout counts: no judge)."""
    available = len(set(data.name[data.kind == "role"]))
    for n_roles in sorted({n for n in (12, 25, 50, 100, 200) if n < available} | {available}):
        roles = balanced_roles(data, n_roles, seed=1)
        most = max(int(((data.kind == "role") & (data.name == n)).sum()) for n in roles)
        for k in [k for k in (2, 4, 8, 12, 24) if k <= most]:
            use = per_role_sample(data, roles, k, seed=2)
            s = score(data, use, n_boot=n_boot)
            report(f"grid roles={n_roles} per_role={k}", s, {"n_roles": n_roles, "k": k}, rows)


def part_default(data: Rollouts, rows: list[dict[str, Any]], n_boot: int) -> None:
    """How many default rollouts (of the 60: 5 prompts × 12 questions) the axis needs."""
    roles = set(data.name[data.kind == "role"])
    use = per_role_sample(data, roles, 24, seed=2)
    is_default = data.kind == "default"
    rng = np.random.default_rng(5)
    for prompts in (1, 2, 3, 5):
        chosen = rng.permutation(5)[:prompts]
        use_default = is_default & np.isin(data.prompt, chosen)
        s = score(data, use, n_boot=n_boot, use_default=use_default)
        report(f"default prompts={prompts}", s, {"default_prompts": prompts}, rows)


def part_judge(data: Rollouts, rows: list[dict[str, Any]], n_boot: int) -> None:
    """The heuristic judge's score filter, and per-role vs per-rollout weighting."""
    is_role = data.kind == "role"
    for scores in ((3,), (2, 3), (1, 2, 3), (0, 1, 2, 3)):
        for min_count in (1, 4):
            keep = is_role & np.isin(data.score, scores)
            counts = {n: int((keep & (data.name == n)).sum()) for n in set(data.name[is_role])}
            ok = {n for n, c in counts.items() if c >= min_count}
            use = keep & np.isin(data.name, list(ok))
            for weighting in ("role", "rollout"):
                s = score(data, use, weighting=weighting, n_boot=n_boot)
                label = f"judge scores={scores} min={min_count} w={weighting}"
                extra = {"scores": list(scores), "min_count": min_count, "weighting": weighting}
                report(label, s, extra, rows)


def part_filters(data: Rollouts, rows: list[dict[str, Any]], n_boot: int) -> None:
    """Which roles enter the mean: evidence that a role is played (no judge)."""
    is_role = data.kind == "role"
    consistency = role_consistency(data, range(8, 23))
    Path("/tmp/axis/consistency.json").write_text(json.dumps(consistency, indent=1))
    values = np.array(list(consistency.values()))
    print(f"role consistency: quartiles {np.percentile(values, [25, 50, 75]).round(3)}")
    for quantile in (0.0, 0.25, 0.5, 0.75):
        cut = float(np.quantile(values, quantile))
        kept = [n for n, v in consistency.items() if v >= cut]
        use = is_role & np.isin(data.name, kept)
        s = score(data, use, n_boot=n_boot)
        report(f"consistency >= q{quantile:.2f} ({cut:.3f})", s, {"quantile": quantile}, rows)
    judged = {
        n: float((data.score[is_role & (data.name == n)] == 3).mean())
        for n in set(data.name[is_role])
    }
    for share in (0.1, 0.25):
        kept = [n for n, v in judged.items() if v >= share]
        use = is_role & np.isin(data.name, kept)
        s = score(data, use, n_boot=n_boot)
        report(f"roles with >= {share:.0%} judge-3 replies", s, {"judge3_share": share}, rows)


def part_length(length_dir: Path, rows: list[dict[str, Any]], n_boot: int) -> None:
    """Response length: the same replies read over their first 16, 32, 64 and 128 tokens."""
    tensors, meta = load_tensors(length_dir / "length.safetensors")
    acts = tensors["acts"]  # [n, 4, L, d]
    table = meta["rows"]
    kind = np.array([r["kind"] for r in table])
    name = np.array([r["name"] for r in table])
    question = np.array([r["question"] for r in table])
    for i, t in enumerate(meta["lengths"]):
        data = Rollouts(
            acts=acts[:, i].contiguous(), kind=kind, name=name, prompt=np.zeros(len(kind), int),
            question=question, score=np.full(len(kind), -1), n_tokens=np.zeros(len(kind), int),
            replies=[], systems=[], questions_text=[],
        )  # fmt: skip
        s = score(data, kind == "role", n_boot=n_boot)
        report(f"length {t} tokens", s, {"tokens": t}, rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--length", type=Path, default=None)
    parser.add_argument("--part", default="grid,default,judge,filters")
    parser.add_argument("--boot", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--partial", action="store_true", help="Use the batches stored so far.")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    rows: list[dict[str, Any]] = []
    parts = args.part.split(",")
    started = time.time()
    if "length" in parts:
        part_length(args.length, rows, args.boot)
    if set(parts) - {"length"}:
        data = load_store(args.store, partial=args.partial)
        print(f"loaded {len(data.kind)} rollouts in {time.time() - started:.0f} s", file=sys.stderr)
        for part in parts:
            if part != "length":
                globals()[f"part_{part}"](data, rows, args.boot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
