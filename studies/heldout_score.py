"""Score finished axes on the held-out set (evaldata/axis_heldout), once, at the end.

Nothing here feeds back into a build setting: the study chose the presets from the build's own
metrics (studies/axis_study.py) before this script was run on them. For each bundle, at its
target layer (and, for reference, at the middle layer):

- unseen roles: AUROC and effect size of the model's replies under the five default prompts
  against its replies under 48 roles and 40 questions that no build has seen (all replies, no
  judge), projected on the unit axis;
- paired: for each of the 120 held-out questions-with-persona-answer pairs, the projection of
  the model's own answer minus that of the persona-voice answer, both teacher-forced; the
  paired effect size is mean(difference) / sd(difference), and the win rate the share of pairs
  where the model's own answer projects higher.

Intervals: bootstrap 95% (2,000 replicates: replies within each class; pairs).

    cpu shared python studies/heldout_score.py --data /tmp/axis/heldout BUNDLE_DIR...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from common import load_tensors
from persona_axis.axis.bundle import AxisBundle
from persona_axis.axis.quality import separation
from persona_axis.axis.vectors import project

N_BOOT = 2000


def paired(own: np.ndarray, persona: np.ndarray, rng: np.random.Generator) -> dict[str, list]:
    diff = own - persona

    def stats(d: np.ndarray) -> tuple[float, float]:
        return float(d.mean() / d.std(ddof=1)), float((d > 0).mean())

    boots = np.array([stats(diff[rng.integers(0, diff.size, diff.size)]) for _ in range(N_BOOT)])
    value = stats(diff)
    low, high = np.percentile(boots, [2.5, 97.5], axis=0)
    return {
        "effect_size": [round(value[0], 3), round(float(low[0]), 3), round(float(high[0]), 3)],
        "win_rate": [round(value[1], 3), round(float(low[1]), 3), round(float(high[1]), 3)],
    }


def score(bundle: AxisBundle, tensors: dict[str, torch.Tensor], layer: int) -> dict:
    def at(key: str) -> np.ndarray:
        return project(tensors[key][:, layer], bundle.axis, layer).double().numpy()

    default, roles = at("default"), at("role")
    keep_d, keep_r = ~np.isnan(default), ~np.isnan(roles)
    auroc, effect = separation(
        default[keep_d][:, None], roles[keep_r][:, None], n_boot=N_BOOT, seed=0
    )
    return {
        "layer": layer,
        "unseen_roles_auroc": [round(float(x), 3) for x in auroc.at(0)],
        "unseen_roles_effect_size": [round(float(x), 3) for x in effect.at(0)],
        "paired": paired(at("own"), at("persona"), np.random.default_rng(0)),
        "replies": {"default": int(keep_d.sum()), "role": int(keep_r.sum())},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("bundles", nargs="+", type=Path)
    args = parser.parse_args()
    tensors, _ = load_tensors(args.data / "heldout.safetensors")
    results = {}
    for path in args.bundles:
        bundle = AxisBundle.load(path)
        layers = dict.fromkeys([bundle.target_layer, bundle.model_shape.n_layers // 2])
        results[str(path)] = [score(bundle, tensors, layer) for layer in layers]
        for r in results[str(path)]:
            print(
                f"{path!s:40s} L{r['layer']:2d} unseen-roles AUROC {r['unseen_roles_auroc']} "
                f"d {r['unseen_roles_effect_size']} | paired d {r['paired']['effect_size']} "
                f"win {r['paired']['win_rate']}",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
