"""The build pipeline: catalog → rollouts → judge → vectors → axis → space → caps → bundle."""

from __future__ import annotations

from persona_axis.pipeline.config import PRESETS, BuildConfig, default_cap_layer_ranges, preset
from persona_axis.pipeline.stages import BuildResult, build

__all__ = [
    "PRESETS",
    "BuildConfig",
    "BuildResult",
    "build",
    "default_cap_layer_ranges",
    "preset",
]
