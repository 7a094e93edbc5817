"""What a server is made of (:class:`ServerConfig`), and N copies of it on Ray Serve.

:func:`build_app` loads the bundles and the model of a :class:`ServerConfig` and returns the
FastAPI app; the CLI runs it with uvicorn in one process. :func:`deploy` runs ``replicas``
copies of the same app as a Ray Serve deployment: each replica (a Ray actor) builds its own
app from the config, so the routes, the API key, the web page and the admin routes are the
same; Ray Serve's HTTP proxy listens on ``host:port`` and spreads requests over the replicas.

Failures: Ray Serve restarts a replica whose actor dies. Requests in flight on it end with an
error from the proxy (a 5xx; clients retry, as the OpenAI client does by default), never a hang.
An admin change (bundle load/unload) reaches the one replica that answers it: send it once
per replica, or restart the deployment with the new ``--bundle`` list.

On a cluster: start Ray on every machine (``ray start --head`` on one, ``ray start
--address HEAD:6379`` on the others), make the model and the bundle directories readable at
the same paths everywhere (a shared filesystem or the same HF cache), then run
``persona-axis serve --bundle DIR --replicas N --ray-address HEAD:6379 --host 0.0.0.0``;
``--gpus-per-replica`` reserves GPUs per copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from persona_axis.errors import PersonaAxisError

APP_NAME = "persona-axis"


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
    from persona_axis.models import load_model
    from persona_axis.serve.app import create_app

    if not config.bundles:
        raise PersonaAxisError("Give at least one bundle to serve (--bundle DIR).")
    bundles = {name: AxisBundle.load(path) for name, path in config.bundles.items()}
    first = next(iter(bundles.values()))
    lm = load_model(config.model or first.model_id, dtype=config.dtype)
    return create_app(lm, bundles, allow_mismatch=config.allow_mismatch, **config.options)


def deployment(
    config: ServerConfig, replicas: int, *, gpus_per_replica: float = 0.0, threads: int = 1
) -> Any:
    """The bound Ray Serve application: ``replicas`` copies of :func:`build_app`'s app."""
    from ray import serve

    if replicas < 1:
        raise PersonaAxisError(f"--replicas must be at least 1, not {replicas}.")
    config = replace(
        config,
        bundles={name: str(Path(path).resolve()) for name, path in config.bundles.items()},
        model=_resolved(config.model),
    )

    @serve.ingress()
    class Replica:
        """One copy of the server (a Ray actor); its app is built when it starts."""

        def __init__(self, config: ServerConfig) -> None:
            self.config = config

        def __serve_build_asgi_app__(self) -> Any:
            import torch

            torch.set_num_threads(threads)
            return build_app(self.config)

    resources = {"num_cpus": threads, "num_gpus": gpus_per_replica}
    wrap = serve.deployment(
        name="server",
        num_replicas=replicas,
        ray_actor_options=resources,
        max_ongoing_requests=64,
    )
    return wrap(Replica).bind(config)


def deploy(
    config: ServerConfig,
    replicas: int,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ray_address: str | None = None,
    gpus_per_replica: float = 0.0,
    threads: int = 1,
) -> None:
    """Start (or join, with ``ray_address``) Ray and run the deployment on ``host:port``;
    returns once every replica is up (the caller keeps the process alive)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=ray_address, log_to_driver=False, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    app = deployment(config, replicas, gpus_per_replica=gpus_per_replica, threads=threads)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)


def _resolved(model: str | None) -> str | None:
    """A local model directory as an absolute path (replicas may start elsewhere)."""
    if model is not None and Path(model).is_dir():
        return str(Path(model).resolve())
    return model
