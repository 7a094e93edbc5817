"""Compare two finished builds of the same settings (e.g. bfloat16 vs float32): quality at the
target layer with the bootstrap 95% intervals, whether each estimate lies inside the other
build's interval, the cosine between the two axes, the caps' thresholds and the stage times.

Reads only the two bundles' files, without torch (so it needs no CPU lock). Writes the
comparison as JSON to ``--out`` and prints it; docs/axis-quality.md ("dtype") reports it:

    python benchmarks/compare_builds.py /tmp/hosts/quick-bf16/bundle /tmp/hosts/quick-f32/bundle \
        --out benchmarks/results/quick-dtype-compare.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from persona_axis.files import read_json, write_json


def at_layer(manifest: dict[str, Any], layer: int) -> dict[str, dict[str, Any]]:
    """Every per-layer quality metric of a manifest (those with estimates and intervals) at
    ``layer``."""
    quality = manifest["quality"]
    return {
        key: {"estimate": value["estimate"][layer], "ci95": value["ci95"][layer]}
        for key, value in quality.items()
        if isinstance(value, dict) and {"estimate", "ci95"} <= set(value)
    }


def inside(value: float, interval: list[float]) -> bool:
    return interval[0] <= value <= interval[1]


def thresholds(caps: dict[str, Any], name: str) -> np.ndarray:
    return np.array([t["threshold"] for t in caps[name]["thresholds"]])


def compare(a: Path, b: Path) -> dict[str, Any]:
    """The comparison of bundle ``a`` against bundle ``b`` at ``a``'s target layer."""
    ma, mb = (read_json(p / "manifest.json") for p in (a, b))
    ca, cb = (read_json(p / "caps.json") for p in (a, b))
    layer = ma["target_layer"]
    qa, qb = at_layer(ma, layer), at_layer(mb, layer)
    metrics = {
        key: {
            "a": qa[key],
            "b": qb[key],
            "a_in_b_interval": inside(qa[key]["estimate"], qb[key]["ci95"]),
            "b_in_a_interval": inside(qb[key]["estimate"], qa[key]["ci95"]),
        }
        for key in qa
    }
    xa, xb = (load_file(str(p / "vectors.safetensors"))["axis"] for p in (a, b))  # [n_layers, d]
    cosines = (xa * xb).sum(-1) / (np.linalg.norm(xa, axis=-1) * np.linalg.norm(xb, axis=-1))
    caps = {
        name: float(np.abs(thresholds(ca, name) - thresholds(cb, name)).max())
        for name in sorted(set(ca) & set(cb))
    }
    return {
        "layer": layer,
        "target_layers": [layer, mb["target_layer"]],
        "dtypes": [ma.get("dtype"), mb.get("dtype")],
        "metrics": metrics,
        "equal_within_intervals": all(
            m["a_in_b_interval"] and m["b_in_a_interval"] for m in metrics.values()
        ),
        "axis_cosine_by_layer": [round(float(c), 5) for c in cosines],
        "default_projection": [
            ma["rankings"]["default_projection"],
            mb["rankings"]["default_projection"],
        ],
        "recommended_caps": [ma["recommended_cap"], mb["recommended_cap"]],
        "cap_threshold_max_abs_difference": caps,
        "timings": [ma["timings"], mb["timings"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = compare(args.a, args.b)
    result["bundles"] = [str(args.a), str(args.b)]
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
