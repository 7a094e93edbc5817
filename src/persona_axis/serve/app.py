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
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from persona_axis.axis.bundle import AxisBundle
from persona_axis.errors import Conflict, NotFound, PersonaAxisError
from persona_axis.inference.generation import Sampling
from persona_axis.models.loading import LoadedModel
from persona_axis.serve import protocol
from persona_axis.serve.continuous import (
    ContinuousScheduler,
    check_scheduler,
    generation_factory,
)
from persona_axis.serve.engine import RECOMMENDED, Engine, Setting
from persona_axis.serve.guard import (
    BODY_TIMEOUT_S,
    MAX_BODY_BYTES,
    Access,
    BodyLimit,
    Guard,
    error_response,
)
from persona_axis.serve.metrics import CONTENT_TYPE, Metrics
from persona_axis.serve.openapi import schema as openapi_schema
from persona_axis.serve.protocol import MIN_TEMPERATURE, ApiError
from persona_axis.serve.scheduler import Job, Outcome, QueueFull, Scheduler

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_TOKENS = 128
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}
LOG = logging.getLogger(__name__)


class Limits:
    """Request limits: tokens per reply, prompt tokens, the default reply length."""

    def __init__(self, max_tokens: int, default_max_tokens: int, max_input_tokens: int) -> None:
        if not 1 <= default_max_tokens <= max_tokens:
            raise PersonaAxisError(
                f"default_max_tokens {default_max_tokens} must be within 1..{max_tokens} "
                "(the max_tokens limit)."
            )
        self.max_tokens = max_tokens
        self.default_max_tokens = default_max_tokens
        self.max_input_tokens = max_input_tokens


class Service:
    """What the routes share: engine, scheduler, metrics, limits, the served name."""

    def __init__(
        self,
        engine: Engine,
        scheduler: Scheduler,
        metrics: Metrics,
        limits: Limits,
        *,
        served: str,
    ) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.metrics = metrics
        self.limits = limits
        self.served = served

    def prepare(self, body: protocol.ChatRequest) -> tuple[Job, Setting]:
        """Validate a parsed request against the model and limits; the job to queue."""
        if body.model not in (None, "", self.served):
            raise ApiError(
                404,
                f"Model {body.model!r} is not served here; use {self.served!r} (see /v1/models).",
                param="model",
                code="model_not_found",
            )
        messages = protocol.conversation(body.messages)
        options = body.persona_axis or protocol.PersonaAxisOptions()
        try:
            setting = self.engine.setting(options.cap, options.steer, options.bundle)
            served = self.engine.served(setting.bundle)
        except PersonaAxisError as exc:
            raise ApiError(400, str(exc), param="persona_axis") from exc
        max_tokens = self._max_tokens(body)
        self._check_prompt(messages, max_tokens)
        sampling = Sampling(max_new_tokens=max_tokens)  # greedy: seed and top_p do not matter
        if body.temperature:
            if body.temperature < MIN_TEMPERATURE:
                raise ApiError(
                    400,
                    f"temperature {body.temperature:g} is too small to sample with; give 0 "
                    f"(greedy) or at least {MIN_TEMPERATURE:g}.",
                    param="temperature",
                )
            sampling = Sampling(
                max_new_tokens=max_tokens,
                temperature=body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                seed=body.seed or 0,
            )
        job = Job(
            served=served,
            setting=setting,
            sampling=sampling,
            conversation=messages,
            loop=asyncio.get_running_loop(),
            stream=body.stream,
        )
        return job, setting

    def _max_tokens(self, body: protocol.ChatRequest) -> int:
        requested = body.requested_tokens
        max_tokens = self.limits.default_max_tokens if requested is None else requested
        if not 1 <= max_tokens <= self.limits.max_tokens:
            raise ApiError(
                400,
                f"max_tokens is {max_tokens}; this server allows 1..{self.limits.max_tokens}.",
                param="max_tokens",
            )
        return max_tokens

    def _check_prompt(self, messages: list[protocol.Message], max_tokens: int) -> None:
        try:
            prompt_tokens = self.engine.prompt_length(messages)
        except PersonaAxisError as exc:
            raise ApiError(400, str(exc), param="messages") from exc
        limit = self.limits.max_input_tokens
        if prompt_tokens > limit:
            raise ApiError(
                400,
                f"The conversation is {prompt_tokens} tokens long; this server accepts at most "
                f"{limit}. Shorten it or drop earlier messages.",
                param="messages",
                code="context_length_exceeded",
            )
        context = self.engine.context_length
        if context is not None and prompt_tokens + max_tokens > context:
            raise ApiError(
                400,
                f"The conversation ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) "
                f"exceeds the model's context of {context} tokens; lower max_tokens or shorten "
                "the conversation.",
                param="messages",
                code="context_length_exceeded",
            )

    def submit(self, job: Job) -> None:
        try:
            self.scheduler.submit(job)
        except QueueFull as exc:
            self.metrics.rejected.inc()
            raise ApiError(
                429,
                f"The server is busy ({exc}); retry in a moment.",
                kind="rate_limit_error",
                code="queue_full",
            ) from exc

    def finished(
        self, outcome: Outcome, setting: Setting, arrived: float
    ) -> tuple[Literal["stop", "length"], dict[str, int], dict[str, Any]]:
        """Record metrics; the finish reason, usage and telemetry of a finished job."""
        turn, metrics = outcome.turn, self.metrics
        n = len(turn.reply.token_ids)
        telemetry = {
            **outcome.telemetry,
            "batch_size": outcome.batch_size,
            "queue_seconds": round(outcome.queue_s, 4),
            "generate_seconds": round(outcome.run_s, 4),
        }
        label = setting.label
        metrics.completions.labels(label).inc()
        metrics.completion_tokens.labels(label).inc(n)
        metrics.queue_wait.observe(outcome.queue_s)
        if telemetry["drift"]:
            metrics.drift.labels(label).inc()
        if turn.touched is not None:
            metrics.touched.observe(turn.touched)
        metrics.latency.observe(time.perf_counter() - arrived)
        finish: Literal["stop", "length"] = "stop" if turn.reply.finished else "length"
        return finish, protocol.usage(turn.reply.prompt_length, n), telemetry

    async def respond(self, job: Job, setting: Setting, arrived: float) -> JSONResponse:
        """Wait for ``job`` and answer one ``chat.completion``."""
        try:
            outcome = await _wait(job)
        finally:
            job.cancelled = True  # a no-op once done; drops the job if the client left
        finish, use, telemetry = self.finished(outcome, setting, arrived)
        ident = protocol.completion_id()
        text = outcome.turn.reply.text
        return JSONResponse(
            protocol.completion(ident, self.served, text, finish, use, telemetry=telemetry)
        )

    async def stream(
        self, job: Job, setting: Setting, arrived: float, include_usage: bool
    ) -> AsyncIterator[str]:
        """Server-sent ``chat.completion.chunk`` events of ``job``, then ``[DONE]``."""
        ident, served = protocol.completion_id(), self.served
        try:
            yield protocol.chunk(ident, served, {"role": "assistant", "content": ""})
            while True:
                kind, payload = await job.events.get()
                if kind == "delta":
                    yield protocol.chunk(ident, served, {"content": payload})
                    continue
                if kind == "error":
                    yield protocol.event(_as_api_error(payload).body())
                    break
                finish, use, telemetry = self.finished(payload, setting, arrived)
                extra: dict[str, Any] = {"persona_axis": telemetry}
                if include_usage:
                    extra["usage"] = None
                yield protocol.chunk(ident, served, {}, finish, **extra)
                if include_usage:
                    yield protocol.usage_chunk(ident, served, use)
                break
            yield protocol.event("[DONE]")
        finally:
            job.cancelled = True


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
    _add_routes(app, service)
    _add_admin_routes(app, service, roots)
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
        return error_response(_internal(exc, f"{request.method} {request.url.path}"))

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


def _add_routes(app: FastAPI, service: Service) -> None:
    engine, scheduler, limits = service.engine, service.scheduler, service.limits
    created = int(time.time())

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = scheduler.alive
        return JSONResponse(
            {
                "status": "ok" if ok else "worker stopped",
                "model": service.served,
                "queued": scheduler.depth,
                "generating": scheduler.running,
            },
            status_code=200 if ok else 503,
        )

    @app.get("/metrics")
    async def metrics_page() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": service.served, "object": "model", "created": created, "owned_by": "local"}
            ],
        }

    @app.get("/v1/persona_axis")
    async def persona_axis() -> dict[str, Any]:
        return {
            "model": service.served,
            **engine.describe(),
            "limits": {
                "max_tokens": limits.max_tokens,
                "default_max_tokens": limits.default_max_tokens,
                "max_input_tokens": limits.max_input_tokens,
                "context_length": engine.context_length,
            },
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        arrived = time.perf_counter()
        body = protocol.parse_request(await request.body())
        job, setting = service.prepare(body)
        job.drift, job.setting = await asyncio.to_thread(
            engine.read_drift, job.served, job.setting, job.conversation
        )
        setting = job.setting
        service.submit(job)
        if not body.stream:
            return await service.respond(job, setting, arrived)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            service.stream(job, setting, arrived, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _add_admin_routes(app: FastAPI, service: Service, roots: tuple[Path, ...]) -> None:
    """``GET/POST /v1/admin/bundles`` and ``DELETE /v1/admin/bundles/{name}``: list, load
    (``{"name", "path", "cap"?}``: a bundle directory under one of ``roots``, absolute or
    relative to a root) and unload bundles at run time. The guard lets only the admin key in;
    without ``roots`` loads are refused. Loading reads the bundle and checks it against the
    model off the event loop; requests in flight keep their bundle."""
    engine = service.engine

    def listing() -> dict[str, Any]:
        return {
            "default_bundle": engine.default_bundle,
            "bundles": {name: served.describe() for name, served in engine.bundles.items()},
            "bundle_roots": [str(root) for root in roots],
        }

    @app.get("/v1/admin/bundles")
    async def bundles() -> dict[str, Any]:
        return listing()

    @app.post("/v1/admin/bundles")
    async def load_bundle(request: Request) -> JSONResponse:
        body = protocol.parse_model(protocol.LoadBundle, await request.body())
        path = _under_roots(body.path, roots)
        try:
            bundle = await asyncio.to_thread(AxisBundle.load, path)
            await asyncio.to_thread(
                engine.load, body.name, bundle, default_cap=body.cap or RECOMMENDED
            )
        except PersonaAxisError as exc:
            raise _typed(exc, param="path") from exc
        return JSONResponse(listing(), status_code=201)

    @app.delete("/v1/admin/bundles/{name}")
    async def unload_bundle(name: str) -> dict[str, Any]:
        try:
            engine.unload(name)
        except PersonaAxisError as exc:
            raise _typed(exc, param="name") from exc
        return listing()


def _under_roots(path: str, roots: tuple[Path, ...]) -> Path:
    """``path`` resolved (symbolic links followed) if it lies under one of ``roots``; the
    refusal is the same whether or not the path exists, so it reveals nothing outside them."""
    if not roots:
        raise ApiError(
            403,
            "Admin loads are off; start the server with --bundle-root DIR to allow loading "
            "bundles from DIR.",
            kind="permission_error",
            param="path",
            code="admin_load_disabled",
        )
    given = Path(path)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    for candidate in candidates:
        try:
            resolved = Path(os.path.realpath(candidate))
        except (OSError, ValueError):  # e.g. a NUL byte: no such path can be under a root
            break
        if any(resolved.is_relative_to(root) for root in roots):
            return resolved
    raise ApiError(
        403,
        "Bundles load only from the server's --bundle-root folders; give a path inside one.",
        kind="permission_error",
        param="path",
        code="path_not_allowed",
    )


def _typed(exc: PersonaAxisError, *, param: str) -> ApiError:
    """A user error as an answer: 404 for :class:`NotFound`, 409 for :class:`Conflict`, 400
    for the rest."""
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
    return ApiError(status, str(exc), param=param)


def _internal(exc: BaseException, where: str) -> ApiError:
    """A 500 that names an error id and nothing of ``exc``; the log has the details."""
    ident = uuid.uuid4().hex[:12]
    LOG.error("internal error %s in %s", ident, where, exc_info=exc)
    return ApiError(
        500,
        f"Internal server error (id {ident}); the server keeps serving. Retry, or report the "
        "id to the operator.",
        kind="server_error",
        code="internal_error",
    )


async def _wait(job: Job) -> Outcome:
    """The job's outcome; its error as an :class:`ApiError`."""
    while True:
        kind, payload = await job.events.get()
        if kind == "done":
            assert isinstance(payload, Outcome)
            return payload
        if kind == "error":
            raise _as_api_error(payload)


def _as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PersonaAxisError):
        return _typed(exc, param="persona_axis")
    if isinstance(exc, QueueFull):
        return ApiError(503, f"Not served: {exc}.", kind="server_error", code="unavailable")
    return _internal(exc, "generation")
