"""The build's cap calibration: cap settings from per-response projections of every rollout
(:func:`persona_axis.axis.calibrate.calibrate_grid`), and the projection percentiles (tables of
per-response and per-token projections, unit axis, residual-stream units) for the manifest's
``projection_percentiles``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from persona_axis.axis.calibrate import calibrate_grid
from persona_axis.axis.vectors import project
from persona_axis.inference.token_projections import token_projections
from persona_axis.models.chat import Message
from persona_axis.models.loading import LoadedModel
from persona_axis.pipeline.config import BuildConfig, default_cap_layer_ranges
from persona_axis.pipeline.plan import RolloutSpec
from persona_axis.pipeline.store import BuildStore, token_lists


def calibrate(
    lm: LoadedModel,
    store: BuildStore,
    batches: list[list[RolloutSpec]],
    axis: Tensor,
    config: BuildConfig,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cap settings from per-response projections of every rollout, plus percentile tables of
    both per-response and per-token projections (the latter on an even sample of rollouts).

    Tables are ``[n_layers][n_percentiles]`` (projections on the unit axis); the per-response
    table also exists for default rollouts and role rollouts alone (``per_response_by_kind``),
    the reference points a drift monitor compares against."""
    projections: list[Tensor] = []
    kinds: list[str] = []
    sample: list[tuple[list[Message], list[int]]] = []
    stride = max(1, sum(map(len, batches)) // max(1, config.token_percentile_rollouts))
    for _, records, tensors in store.iter_batches(len(batches)):
        replies = token_lists(tensors)
        rows = [row for row, record in enumerate(records) if record["n_tokens"] > 0]
        projections.append(project(tensors["activations"][rows], axis))
        kinds += [records[row]["kind"] for row in rows]
        for row in rows:
            record = records[row]
            if record["id"] % stride == 0 and len(sample) < config.token_percentile_rollouts:
                spec = RolloutSpec(**{k: record[k] for k in RolloutSpec.__dataclass_fields__})
                sample.append((spec.messages(), replies[row]))
    per_response = torch.cat(projections)  # [n_rollouts, n_layers]
    per_token = token_projections(lm, axis, sample, config.batch_size, config.progress)
    layer_ranges = config.cap_layer_ranges or default_cap_layer_ranges(lm.shape.n_layers)
    described = (
        f"per-response projections of all {per_response.shape[0]} rollouts "
        "(roles at every score, traits both ways, default)"
    )
    caps = calibrate_grid(per_response, layer_ranges, config.cap_percentiles, described)
    token_table = percentile_table(per_token, config.cap_percentiles)
    for setting in caps.values():
        pct_index = list(config.cap_percentiles).index(float(setting.percentile or 0))
        setting.notes["per_token_thresholds"] = [
            round(token_table[t.layer][pct_index], 5) for t in setting.thresholds
        ]
        setting.notes["per_token_rollouts"] = len(sample)
    percentiles = {
        "percentiles": list(config.percentiles),
        "per_response": percentile_table(per_response, config.percentiles),
        "per_response_by_kind": {
            kind: percentile_table(
                per_response[torch.tensor([k == kind for k in kinds])], config.percentiles
            )
            for kind in ("default", "role")
            if kind in kinds
        },
        "per_token": percentile_table(per_token, config.percentiles),
        "n_rollouts": int(per_response.shape[0]),
        "n_token_rollouts": len(sample),
        "n_tokens": int(per_token.shape[0]),
        "cap_layer_ranges": [list(r) for r in layer_ranges],
    }
    return caps, percentiles


def percentile_table(values: Tensor, percentiles: tuple[float, ...]) -> list[list[float]]:
    """Per layer, the percentiles of ``values`` ``[n, n_layers]`` (numpy linear, float64)."""
    table = np.percentile(values.double().numpy(), list(percentiles), axis=0, method="linear")
    return [[round(float(x), 5) for x in column] for column in table.T]
