"""persona-axis: compute, monitor and stabilise the Assistant Axis of chat models.

The Python API in one import (loaded lazily, so ``import persona_axis`` stays light)::

    import persona_axis as pa

    lm = pa.load_model()                         # embedded SmolLM2, an HF id or a local path
    bundle = pa.compute_axis(lm, roles, questions)   # in memory; pa.build(...) for the full job
    with bundle.capping(lm):                     # the recommended cap, weights checked first
        ...                                      # any forward / generate call is capped
    pa.generate_with_telemetry(lm, chats, bundle)    # replies + projections, one pass
    pa.monitor(lm, bundle, conversations)        # per-turn projections, flags, alarms
    pa.drift_rule(bundle)                        # the one drift rule monitor/serve/simulate use

Conventions (docs/method.md): layer L is the output of decoder block L, 0-based (= Hugging Face
``hidden_states[L + 1]``); projections are taken on the unit axis, in float32; caps are floors
along +axis (higher projection = more Assistant-like).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from persona_axis.errors import PersonaAxisError

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "persona_axis.models.loading",
    "AxisBundle": "persona_axis.axis.bundle",
    "build": "persona_axis.pipeline.stages",
    "BuildConfig": "persona_axis.pipeline.config",
    "preset": "persona_axis.pipeline.config",
    "compute_axis": "persona_axis.pipeline.in_memory",
    "monitor": "persona_axis.drift.monitor",
    "drift_rule": "persona_axis.drift.calibration",
    "generate_with_telemetry": "persona_axis.inference.telemetry",
    "Sampling": "persona_axis.inference.generation",
    "InterventionSpec": "persona_axis.inference.interventions",
    "intervene": "persona_axis.inference.interventions",
}

__all__ = [
    "AxisBundle",
    "BuildConfig",
    "InterventionSpec",
    "PersonaAxisError",
    "Sampling",
    "__version__",
    "build",
    "compute_axis",
    "drift_rule",
    "generate_with_telemetry",
    "intervene",
    "load_model",
    "monitor",
    "preset",
]

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.calibration import drift_rule
    from persona_axis.drift.monitor import monitor
    from persona_axis.inference.generation import Sampling
    from persona_axis.inference.interventions import InterventionSpec, intervene
    from persona_axis.inference.telemetry import generate_with_telemetry
    from persona_axis.models.loading import load_model
    from persona_axis.pipeline.config import BuildConfig, preset
    from persona_axis.pipeline.in_memory import compute_axis
    from persona_axis.pipeline.stages import build


def __getattr__(name: str) -> Any:
    """Import an API name's module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'persona_axis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
