"""A tiny model saved to disk and an AxisBundle built from it in a few seconds, shared by the
monitor, simulate and report tests (built once per test session, removed at exit)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from conftest import styled_tokenizer
from small_catalog import write_small_catalog
from tiny_models import build_tiny


@dataclass(frozen=True)
class TinyAxis:
    """``model``: a saved tiny Llama with the chatml test template; ``bundle``: its bundle."""

    model: Path
    bundle: Path


@cache
def tiny_axis() -> TinyAxis:
    from persona_axis.pipeline import BuildConfig, build

    root = Path(tempfile.mkdtemp(prefix="persona-axis-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    model_dir = root / "model"
    build_tiny("llama").save_pretrained(model_dir)
    styled_tokenizer("chatml").save_pretrained(model_dir)
    config = BuildConfig(
        model=str(model_dir),
        model_name="Tiny",
        dtype="float32",
        catalog=str(write_small_catalog(root / "catalog")),
        trait_questions=2,
        max_new_tokens=8,
        batch_size=8,
        judge={"backend": "none"},
        min_role_rollouts=1,
        token_calibration_rollouts=4,
        progress=False,
    )
    result = build(config, root / "build")
    return TinyAxis(model=model_dir, bundle=result.path)
