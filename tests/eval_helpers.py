"""A tiny model directory and a matching AxisBundle for the evaluation tests (seconds to make)."""

from __future__ import annotations

from pathlib import Path

import torch

from persona_axis.axis.bundle import AxisBundle
from persona_axis.axis.calibrate import CapSetting, LayerThreshold
from persona_axis.models.layers import ModelShape
from tiny_models import HIDDEN, N_LAYERS, build_tiny, styled_tokenizer

STRONG = "layers_2:4-p75"  # floors far above any projection: always raises
NOOP = "layers_1:3-p50"  # floors far below any projection: never touches


def tiny_model_dir(root: Path) -> Path:
    """A saved tiny random Llama with the chatml test template."""
    directory = root / "tiny-llama"
    build_tiny("llama").save_pretrained(directory)
    styled_tokenizer("chatml").save_pretrained(directory)
    return directory


def tiny_bundle(root: Path, shape: ModelShape, *, model_id: str = "tiny") -> Path:
    """A bundle with a seeded random axis and the caps :data:`STRONG` and :data:`NOOP`."""
    generator = torch.Generator().manual_seed(0)
    axis = torch.randn(N_LAYERS, HIDDEN, generator=generator)
    caps = {
        STRONG: CapSetting(STRONG, (LayerThreshold(2, 50.0), LayerThreshold(3, 50.0)), 75.0),
        NOOP: CapSetting(NOOP, (LayerThreshold(1, -1e6), LayerThreshold(2, -1e6)), 50.0),
    }
    bundle = AxisBundle.create(
        {"axis": axis, "default": axis.clone()},
        model_shape=shape,
        model_id=model_id,
        caps=caps,
        extras={"recommended_cap": NOOP, "model_name": "Tiny"},
    )
    return bundle.save(root / "bundle")
