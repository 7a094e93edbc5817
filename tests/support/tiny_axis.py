"""A tiny model saved to disk and an AxisBundle built from it in a few seconds, shared by the
monitor, simulate and report tests (built once per test session, removed at exit), with the
benign profile every build ships."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from support.small_catalog import tiny_build_config


@dataclass(frozen=True)
class TinyAxis:
    """``model``: a saved tiny Llama with the chatml test template; ``bundle``: its bundle."""

    model: Path
    bundle: Path


@cache
def tiny_axis() -> TinyAxis:
    from persona_axis import build  # the build every entry point runs (shipped profile)

    root = Path(tempfile.mkdtemp(prefix="persona-axis-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    config = tiny_build_config(root).with_overrides(
        max_new_tokens=8, batch_size=8, token_percentile_rollouts=4
    )
    result = build(config, root / "build")
    return TinyAxis(model=Path(config.model), bundle=result.path)
