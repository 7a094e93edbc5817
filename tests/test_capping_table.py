"""The capping table's choice of cap settings to compare, on a bundle with the build's cap grid."""

from __future__ import annotations

import torch

from persona_axis.axis.bundle import AxisBundle
from persona_axis.axis.calibrate import calibrate_grid
from persona_axis.evals.capping_table import candidate_caps
from persona_axis.models.layers import ModelShape
from persona_axis.pipeline.config import default_cap_layer_ranges


def test_candidates_are_the_recommended_layers_at_three_percentiles_and_the_middle_range() -> None:
    n_layers = 30  # layer ranges (15, 19), (18, 22), (21, 25), (15, 21), (18, 24), (21, 27)
    projections = torch.arange(3 * n_layers, dtype=torch.float32).reshape(3, n_layers)
    caps = calibrate_grid(projections, default_cap_layer_ranges(n_layers), [50, 75, 99], "x")
    bundle = AxisBundle.create(
        {"axis": torch.ones(n_layers, 8)},
        model_shape=ModelShape("LlamaForCausalLM", n_layers, 8),
        model_id="tiny",
        caps=caps,
    )
    assert candidate_caps(bundle) == [
        "layers_21:25-p50",
        "layers_21:25-p75",
        "layers_21:25-p99",
        "layers_15:19-p75",
    ]
