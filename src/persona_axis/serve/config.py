"""What a server is made of: :class:`ServerConfig` (bundles by name, model, app options),
and :func:`build_app`, which loads them into the FastAPI app. The CLI runs that app in one
process; :mod:`~persona_axis.serve.replicas` runs copies of it on Ray Serve."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from persona_axis.errors import PersonaAxisError


@dataclass(frozen=True)
class ServerConfig:
    """Everything needed to build the server's app anywhere: bundle directories by name (the
    first is the default), the model (None: the default bundle's), its dtype, and
    :func:`~persona_axis.serve.app.create_app` options."""

    bundles: dict[str, str]
    model: str | None = None
    dtype: str = "auto"
    allow_mismatch: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def build_app(config: ServerConfig) -> Any:
    """Load ``config``'s bundles and model (each bundle is checked against the model) and
    return the FastAPI app."""
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.models.loading import load_model, model_for_bundle
    from persona_axis.serve.app import create_app

    if not config.bundles:
        raise PersonaAxisError("Give at least one bundle to serve (--bundle DIR).")
    bundles = {name: AxisBundle.load(path) for name, path in config.bundles.items()}
    first = next(iter(bundles.values()))
    lm = load_model(model_for_bundle(config.model, first.model_id), dtype=config.dtype)
    return create_app(lm, bundles, allow_mismatch=config.allow_mismatch, **config.options)
