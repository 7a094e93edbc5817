"""The build pipeline: catalog → rollouts → judge → vectors → axis → space → caps → bundle."""

from __future__ import annotations

from typing import Any

from persona_axis.errors import PersonaAxisError
from persona_axis.pipeline.config import PRESETS, BuildConfig, default_cap_bands, preset
from persona_axis.pipeline.stages import BuildResult, build

__all__ = [
    "PRESETS",
    "BuildConfig",
    "BuildResult",
    "build",
    "default_cap_bands",
    "judge_settings",
    "preset",
]


def judge_settings(
    backend: str | None,
    url: str | None = None,
    model: str | None = None,
    key_env: str = "OPENAI_API_KEY",
    concurrency: int = 8,
) -> dict[str, Any] | None:
    """The judge config dict from command-line flags (None: keep the preset's judge)."""
    if backend is None:
        if url or model:
            raise PersonaAxisError("--judge-url/--judge-model need --judge openai or --judge hf.")
        return None
    if backend == "openai":
        if not url or not model:
            raise PersonaAxisError("--judge openai needs --judge-url and --judge-model.")
        return {
            "backend": "openai",
            "base_url": url,
            "model": model,
            "api_key_env": key_env,
            "concurrency": concurrency,
        }
    if backend == "hf":
        return {"backend": "hf", "model": model or "default"}
    if backend in ("heuristic", "none"):
        return {"backend": backend}
    raise PersonaAxisError(f"Unknown judge {backend!r}; use heuristic, none, openai or hf.")
