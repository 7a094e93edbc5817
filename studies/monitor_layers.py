"""Turn projections at every layer: does a layer other than the target tell slow drift from twin?

The monitor reads the axis at the bundle's target layer. A slow drift's early turns sit close to
its benign twin's there (docs/monitoring.md, "Why warnings come late"). This study reads every
judged turn's mean at *every* layer, projected on that layer's unit axis (teacher-forced, one
pass per conversation, the monitor's context plan; conversations longer than one window are
left out), and judges each layer, and the mean of z-scored layers over bands, like
``monitor_tokens.py`` judges its statistics (change since a two-turn anchor in units of the
robust spread of its turn-to-turn steps on the ordinary benign conversations, CUSUM over k, h).

Per series it prints the separation of slow drifts from their twins before the harm turn (the
AUC of the change at the turns from ``drift_turn`` to ``harm_turn − 1`` of slow drifts against
the same turns of the twins; 0.5 = none) and the best (k, h) with false alarms ≤ 5%, by
detections before ``harm_turn`` then detections:

    python studies/monitor_layers.py read /tmp/evaldata-bundle evaldata/monitor/*_dev.jsonl \
        --out /tmp/drift-layers-dev.json                    # the model pass (flock)
    python studies/monitor_layers.py judge /tmp/drift-layers-dev.json
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monitor_tokens import (
    FIELDS,
    _changes,
    benign_spread,
    best_settings,
    result_cells,
    run,
    single_windows,
)

BANDS = ((10, 20), (12, 18), (15, 25), (20, 30))
"""Layer ranges [start, stop) whose z-scored series are averaged as one more series."""


def read(bundle_dir: Path, data: Sequence[Path], out: Path) -> None:
    """Per record: label fields and, per assistant turn, its mean projection at every layer."""
    import torch

    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.projections import unit_rows
    from persona_axis.inference.capture import pool_spans
    from persona_axis.models.loading import load_model

    bundle = AxisBundle.load(bundle_dir)
    lm = load_model(bundle.model_id, dtype="float32")
    layers = list(range(bundle.axis.shape[0]))
    units = unit_rows(bundle.axis, layers)
    rows = []
    for window, row in single_windows(lm, data, (*FIELDS, "drift_turn")):
        pooled = pool_spans(lm, [window.input_ids], [window.spans], layers, batch_size=1)[0]
        values = torch.einsum("tld,ld->tl", pooled, units).tolist()
        turns: list[list[float] | None] = [None] * len(row["performed"])
        for turn, per_layer in zip(window.turns, values, strict=True):
            turns[turn] = [round(v, 3) for v in per_layer]
        rows.append({**row, "turns": turns})
    out.write_text(json.dumps({"target_layer": bundle.target_layer, "rows": rows}))


def _layer_series(row: dict[str, Any], layer: int) -> list[float | None]:
    return [
        None if t is None or acted else t[layer]
        for t, acted in zip(row["turns"], row["performed"], strict=True)
    ]


def _separation(rows: list[dict[str, Any]], z: dict[str, list[float | None]]) -> float:
    """AUC of slow drifts' changes (drift_turn ≤ turn < harm_turn) against their twins' at the
    same turns: the chance a drift turn's change exceeds a twin turn's."""
    by_id = {row["id"]: row for row in rows}
    drift, twin = [], []
    for row in rows:
        if row["label"] != "drifting" or not row.get("harm_turn") or row["twin_of"] not in by_id:
            continue
        turns = range(row["drift_turn"], row["harm_turn"])
        drift += [z[row["id"]][t - 1] for t in turns if t - 1 < len(z[row["id"]])]
        twin += [z[row["twin_of"]][t - 1] for t in turns if t - 1 < len(z[row["twin_of"]])]
    a = np.asarray([v for v in drift if v is not None])
    b = np.asarray([v for v in twin if v is not None])
    if not len(a) or not len(b):
        return float("nan")
    return float((a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean())


def judge(path: Path) -> None:
    readings = json.loads(path.read_text())
    rows, target = readings["rows"], readings["target_layer"]
    n_layers = len(next(t for t in rows[0]["turns"] if t is not None))
    zs: dict[str, dict[str, list[float | None]]] = {}
    for layer in range(n_layers):
        changes = {row["id"]: _changes(_layer_series(row, layer)) for row in rows}
        spread = benign_spread(rows, changes)
        zs[f"layer {layer}"] = {
            key: [None if c is None else c / spread for c in series]
            for key, series in changes.items()
        }
    for start, stop in BANDS:
        band = [zs[f"layer {layer}"] for layer in range(start, min(stop, n_layers))]
        zs[f"layers {start}–{stop - 1}"] = {
            row["id"]: [
                None if values[0] is None else float(np.mean(values))
                for values in zip(*(b[row["id"]] for b in band), strict=True)
            ]
            for row in rows
        }
    print(f"target layer {target}")
    print(
        "| series | slow vs twin AUC | k | h | false alarms | twins | detections "
        "| detected before harm_turn | median lead |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, z in zs.items():
        settings = best_settings(rows, z, 1.0)
        if not settings:
            print(f"| {name} | {_separation(rows, z):.2f} | - | - | - | - | - | - | - |")
            continue
        k, h, r = settings[0]
        print(f"| {name} | {_separation(rows, z):.2f} | {k:g} | {h:g} | {result_cells(r)} |")


if __name__ == "__main__":
    run(__doc__, read, judge)
