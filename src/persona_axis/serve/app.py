"""The FastAPI app: OpenAI-compatible chat completions with per-request caps and telemetry.

Routes: ``POST /v1/chat/completions`` (JSON or server-sent events with ``"stream": true``),
``GET /v1/models``, ``GET /v1/persona_axis`` (caps, target layer, drift rule of the default
bundle and of every bundle: what a client needs to pick a setting and draw a meter),
``GET /health``, ``GET /metrics`` (Prometheus), the admin routes ``/v1/admin/bundles`` (load
and unload bundles; API key required) and the chat page at ``/`` (static files shipped in the
package, no external resources). Every response names the process that answered in its
``X-Persona-Axis-Replica`` header.

Before a body is read, :mod:`~persona_axis.serve.guard` checks the ``Host`` and ``Origin``
allow-lists and the keys: with an API key, every ``/v1/`` route needs ``Authorization: Bearer
<key>``; the admin routes need the separate admin key and are off without one; ``/``, the
static files, ``/health`` and ``/metrics`` stay open (they hold no conversation data). Request
bodies above ``max_body_bytes`` get 413 before they are parsed. Admin loads read bundles only
from the ``bundle_roots`` folders. Any other failure answers a JSON 500 with an error id and no
exception text; the details go to the log under that id. The OpenAPI schema is at
``/openapi.json``.

``temperature`` defaults to 0 (greedy), not OpenAI's 1; ``max_tokens`` defaults to
``default_max_tokens``. Requests of every bundle, setting, sampling and length share one
continuously batched engine; see :mod:`~persona_axis.serve.continuous` and
:mod:`~persona_axis.serve.scheduler`.

This module builds the app (:func:`create_app`: limits, engine, scheduler, error handlers and
middleware); the routes live in :mod:`~persona_axis.serve.routes` (page, health, metrics,
models, chat completions) and :mod:`~persona_axis.serve.admin` (bundles), what they share in
:mod:`~persona_axis.serve.service`, and failures become answers in
:mod:`~persona_axis.serve.failures`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from persona_axis.axis.bundle import AxisBundle
from persona_axis.errors import PersonaAxisError
from persona_axis.models.loading import LoadedModel
from persona_axis.serve.admin import add_admin_routes
from persona_axis.serve.continuous import (
    ContinuousScheduler,
    check_scheduler,
    generation_factory,
)
from persona_axis.serve.engine import RECOMMENDED, Engine
from persona_axis.serve.failures import internal_failure
from persona_axis.serve.guard import (
    BODY_TIMEOUT_S,
    MAX_BODY_BYTES,
    Access,
    BodyLimit,
    Guard,
    error_response,
)
from persona_axis.serve.metrics import Metrics
from persona_axis.serve.openapi import schema as openapi_schema
from persona_axis.serve.protocol import ApiError
from persona_axis.serve.routes import add_routes
from persona_axis.serve.service import Limits, Service

DEFAULT_MAX_TOKENS = 128
SchedulerKind = Literal["continuous"]
Backend = Literal["hf", "vllm"]
REPLICA = f"{socket.gethostname()}:{os.getpid()}"
"""This process (host:pid), as named in the ``X-Persona-Axis-Replica`` header of every response
unless ``create_app(replica=...)`` names it otherwise."""


def create_app(
    lm: LoadedModel,
    bundle: AxisBundle | Mapping[str, AxisBundle],
    *,
    default_cap: str = RECOMMENDED,
    api_key: str | None = None,
    scheduler: SchedulerKind = "continuous",
    backend: Backend = "hf",
    max_queue: int = 64,
    max_batch: int = 8,
    max_tokens_limit: int = 512,
    default_max_tokens: int | None = None,
    max_input_tokens: int = 4096,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout_s: float = BODY_TIMEOUT_S,
    model_name: str | None = None,
    allow_mismatch: bool = False,
    replica: str = REPLICA,
    admin_key: str | None = None,
    bundle_roots: Iterable[str | os.PathLike[str]] = (),
    allowed_hosts: Iterable[str] | None = None,
    allowed_origins: Iterable[str] = (),
) -> FastAPI:
    """The server for ``lm`` with one bundle, or several by name (the first is the default for
    requests that name none); start it with uvicorn.

    ``default_cap`` is used when a request names none: a setting in every bundle's caps,
    "none" or "recommended" (each bundle's recommended cap, else none). ``scheduler``:
    "continuous", the one left (every setting in one batch, requests join and leave at each
    step; :func:`check_scheduler`). ``max_queue`` pending requests at most (429 beyond);
    ``max_batch`` requests generated together. A body
    over ``max_body_bytes`` gets 413, one not complete within ``body_timeout_s`` seconds 408.
    ``backend``: "hf" (our Hugging Face continuous batch) or "vllm" (the vLLM engine; needs the
    vLLM environment, docs/vllm-backend.md).
    ``max_tokens_limit`` caps a request's ``max_tokens``, ``max_input_tokens`` its rendered
    prompt; ``default_max_tokens`` (default ``min(128, max_tokens_limit)``) applies to
    requests without one.

    Access (see :mod:`~persona_axis.serve.guard`): ``api_key`` for the ``/v1/`` routes (None:
    open; an empty key is refused), ``admin_key`` for the admin routes (None: admin off),
    ``bundle_roots`` the folders admin loads may read bundles from (none: admin loads off),
    ``allowed_hosts`` the ``Host`` names answered (None: any), ``allowed_origins`` web origins
    besides the server's own. Raises :class:`PersonaAxisError` for a bundle that does not fit
    the model, an unknown ``default_cap`` or an empty key.
    """
    access = Access.of(api_key, admin_key, allowed_hosts, allowed_origins)
    roots = tuple(Path(os.path.realpath(root)) for root in bundle_roots)
    for root in roots:
        if not root.is_dir():
            raise PersonaAxisError(f"Bundle root {root} is not a directory; give a folder.")
    if default_max_tokens is None:
        default_max_tokens = min(DEFAULT_MAX_TOKENS, max_tokens_limit)
    check_scheduler(scheduler)
    limits = Limits(max_tokens_limit, default_max_tokens, max_input_tokens)
    make_batch = generation_factory(lm, backend, max_batch)
    engine = Engine(lm, bundle, default_cap=default_cap, allow_mismatch=allow_mismatch)
    metrics = Metrics()
    worker = ContinuousScheduler(
        engine,
        make_batch,
        max_queue=max_queue,
        max_batch=max_batch,
        on_batch=metrics.batch_size.observe,
    )
    metrics.queue_depth.set_function(lambda: worker.depth)
    service = Service(engine, worker, metrics, limits, served=model_name or lm.name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    app = FastAPI(
        title="persona-axis",
        summary="OpenAI-compatible chat with activation capping on the Assistant Axis.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.engine = engine
    body_limit = {"limit": max_body_bytes, "timeout_s": body_timeout_s}
    _install_errors_and_middleware(app, metrics, access, body_limit, replica)
    add_routes(app, service)
    add_admin_routes(app, service, roots)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app


def _install_errors_and_middleware(
    app: FastAPI,
    metrics: Metrics,
    access: Access,
    body_limit: dict[str, Any],
    replica: str,
) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(internal_failure(exc, f"{request.method} {request.url.path}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"No route {request.method} {request.url.path}; see /v1/models."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        return error_response(ApiError(exc.status_code, message))

    app.add_middleware(BodyLimit, **body_limit)  # inner: after the guard
    app.add_middleware(Guard, access=access)

    @app.middleware("http")  # added last: outermost, so it also counts 413s
    async def count(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", None) or "other"
        metrics.requests.labels(path, str(response.status_code)).inc()
        response.headers["X-Persona-Axis-Replica"] = replica
        return response
