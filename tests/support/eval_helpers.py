"""A tiny model directory and a matching AxisBundle for the evaluation tests (seconds to make)."""

from __future__ import annotations

from pathlib import Path

from persona_axis.models.layers import ModelShape
from support.bundles import cap_setting, make_bundle
from support.tiny_models import build_tiny, styled_tokenizer

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
    bundle = make_bundle(
        shape,
        model_id=model_id,
        default=1.0,
        caps=[cap_setting(STRONG, {2: 50.0, 3: 50.0}), cap_setting(NOOP, {1: -1e6, 2: -1e6}, 50.0)],
        recommended=NOOP,
        extras={"model_name": "Tiny"},
    )
    return bundle.save(root / "bundle")
