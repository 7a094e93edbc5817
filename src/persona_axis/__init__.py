"""persona-axis: compute, monitor and stabilise the Assistant Axis of chat models.

The Python API in one import (loaded lazily, so ``import persona_axis`` stays light)::

    import persona_axis as pa

    lm = pa.load_model()                         # embedded SmolLM2, an HF id or a local path
    lm = pa.wrap(model, tokenizer)               # or a plain HF model and tokenizer
    bundle = pa.compute_axis(lm, roles, questions)   # in memory; pa.build(...) for the full job
    lm = bundle.load_model()                     # the bundle's model, weights checked
    turns = pa.generate(lm, bundle, chats)       # capped replies + projections, weights checked
    pa.monitor(lm, bundle, conversations)        # per-turn projections, flags, alarms
    pa.ChatSession.open(lm, bundle, cap="recommended").send("Hello")
    with bundle.capping(lm):                     # the recommended cap, weights checked first
        ...                                      # any forward / generate call is capped
    pa.drift_rule(bundle)                        # the one drift rule monitor/serve/simulate use

Every call takes the model first, then the bundle, then the data.

Conventions (docs/method.md): layer L is the output of decoder block L, 0-based (= Hugging Face
``hidden_states[L + 1]``); projections are taken on the unit axis, in float32; caps are floors
along +axis (higher projection = more Assistant-like).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from persona_axis._version import __version__
from persona_axis.errors import PersonaAxisError

_EXPORTS = {
    "load_model": "persona_axis.models.loading",
    "wrap": "persona_axis.models.loading",
    "AxisBundle": "persona_axis.axis.bundle",
    "build": "persona_axis.drift.reference_chats",
    "BuildConfig": "persona_axis.pipeline.config",
    "preset": "persona_axis.pipeline.config",
    "compute_axis": "persona_axis.pipeline.in_memory",
    "monitor": "persona_axis.drift.monitor",
    "drift_rule": "persona_axis.drift.profile",
    "generate": "persona_axis.application.generate",
    "generate_with_telemetry": "persona_axis.application.generate",
    "ChatSession": "persona_axis.application.session",
    "Sampling": "persona_axis.inference.generation",
    "InterventionSpec": "persona_axis.inference.interventions",
    "intervene": "persona_axis.inference.interventions",
}

__all__ = [
    "AxisBundle",
    "BuildConfig",
    "ChatSession",
    "InterventionSpec",
    "PersonaAxisError",
    "Sampling",
    "__version__",
    "build",
    "compute_axis",
    "drift_rule",
    "generate",
    "generate_with_telemetry",
    "intervene",
    "load_model",
    "monitor",
    "preset",
    "wrap",
]

if TYPE_CHECKING:
    from persona_axis.application.generate import generate, generate_with_telemetry
    from persona_axis.application.session import ChatSession
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.monitor import monitor
    from persona_axis.drift.profile import drift_rule
    from persona_axis.drift.reference_chats import build
    from persona_axis.inference.generation import Sampling
    from persona_axis.inference.interventions import InterventionSpec, intervene
    from persona_axis.models.loading import load_model, wrap
    from persona_axis.pipeline.config import BuildConfig, preset
    from persona_axis.pipeline.in_memory import compute_axis


def __getattr__(name: str) -> Any:
    """Import an API name's module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'persona_axis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names with the lazy API names, so ``dir(persona_axis)`` lists them."""
    return sorted(set(globals()) | set(__all__))
