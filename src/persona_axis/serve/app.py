"""The FastAPI app: OpenAI-compatible chat completions with per-request caps and telemetry.

Routes: ``POST /v1/chat/completions`` (JSON or server-sent events with ``"stream": true``),
``GET /v1/models``, ``GET /v1/persona_axis`` (caps, target layer, drift band of the default
bundle and of every bundle: what a client needs to pick a setting and draw a meter),
``GET /health``, ``GET /metrics`` (Prometheus), the admin routes ``/v1/admin/bundles`` (load
and unload bundles; API key required) and the chat page at ``/`` (static files shipped in the
package, no external resources). Every response names the process that answered in its
``X-Persona-Axis-Replica`` header.

With an API key, every ``/v1/`` route needs ``Authorization: Bearer <key>``; ``/``, the static
files, ``/health`` and ``/metrics`` stay open (they hold no conversation data). Request bodies
above ``max_body_bytes`` get 413 before they are parsed.

``temperature`` defaults to 0 (greedy), not OpenAI's 1; ``max_tokens`` defaults to
``default_max_tokens``. With the continuous scheduler (the default) requests of every bundle,
setting, sampling and length share one batch; see :mod:`~persona_axis.serve.continuous` and
:mod:`~persona_axis.serve.scheduler`.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, get_args

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from persona_axis.axis.bundle import AxisBundle
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.generation import Sampling
from persona_axis.models.loading import LoadedModel
from persona_axis.serve import protocol
from persona_axis.serve.continuous import ContinuousScheduler, generation_factory
from persona_axis.serve.engine import RECOMMENDED, Cancelled, Engine, Setting
from persona_axis.serve.metrics import CONTENT_TYPE, Metrics
from persona_axis.serve.protocol import ApiError
from persona_axis.serve.scheduler import Job, Outcome, QueueFull, Scheduler, StaticScheduler

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_TOKENS = 128
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: answer 413 to bodies over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = ApiError(
            413,
            f"The request body is larger than {self.limit} bytes; send a shorter conversation.",
            code="body_too_large",
        )
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _error_response(too_big)(scope, receive, send)
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            size += len(message.get("body", b""))
            if size > self.limit:
                await _error_response(too_big)(scope, receive, send)
                return
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _error_response(error: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status == 429 else None
    if error.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


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
    """What the routes share: engine, scheduler, metrics, limits, the served name, the key."""

    def __init__(
        self,
        engine: Engine,
        scheduler: Scheduler,
        metrics: Metrics,
        limits: Limits,
        *,
        served: str,
        api_key: str | None,
    ) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.metrics = metrics
        self.limits = limits
        self.served = served
        self.api_key = api_key

    def authorize(self, request: Request) -> None:
        """Raise 401 unless the request carries the API key (when one is set)."""
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise ApiError(
                401,
                "Missing or wrong API key; send 'Authorization: Bearer <key>' with the key the "
                "server was started with (--api-key or PERSONA_AXIS_API_KEY).",
                code="invalid_api_key",
            )

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


SchedulerKind = Literal["continuous", "static"]
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
    batch_wait_ms: float = 100.0,
    max_tokens_limit: int = 512,
    default_max_tokens: int | None = None,
    max_input_tokens: int = 4096,
    max_body_bytes: int = 1_000_000,
    model_name: str | None = None,
    allow_mismatch: bool = False,
    replica: str = REPLICA,
) -> FastAPI:
    """The server for ``lm`` with one bundle, or several by name (the first is the default for
    requests that name none); start it with uvicorn.

    ``default_cap`` is used when a request names none: a setting in every bundle's caps,
    "none" or "recommended" (each bundle's recommended cap, else none). ``scheduler``:
    "continuous" (every setting in one batch, requests join and leave at each step) or "static"
    (the earlier per-setting micro-batches, with the ``batch_wait_ms`` window). ``max_queue``
    pending requests at most (429 beyond); ``max_batch`` requests generated together.
    ``backend``: "hf" (our Hugging Face continuous batch) or "vllm" (the vLLM engine, continuous
    scheduler only; needs the vLLM environment, docs/vllm-backend.md).
    ``max_tokens_limit`` caps a request's ``max_tokens``, ``max_input_tokens`` its rendered
    prompt; ``default_max_tokens`` (default ``min(128, max_tokens_limit)``) applies to
    requests without one. Raises :class:`PersonaAxisError` for a bundle that does not fit the
    model or an unknown ``default_cap``.
    """
    if default_max_tokens is None:
        default_max_tokens = min(DEFAULT_MAX_TOKENS, max_tokens_limit)
    if scheduler not in get_args(SchedulerKind):
        raise PersonaAxisError(
            f"Unknown scheduler {scheduler!r}; use one of {get_args(SchedulerKind)}."
        )
    limits = Limits(max_tokens_limit, default_max_tokens, max_input_tokens)
    make_batch = generation_factory(lm, backend, scheduler, max_batch)
    engine = Engine(lm, bundle, default_cap=default_cap, allow_mismatch=allow_mismatch)
    metrics = Metrics()
    worker: Scheduler
    if scheduler == "static":
        worker = StaticScheduler(
            engine,
            max_queue=max_queue,
            max_batch=max_batch,
            batch_wait_s=batch_wait_ms / 1000,
            on_batch=metrics.batch_size.observe,
        )
    else:
        worker = ContinuousScheduler(
            engine,
            make_batch,
            max_queue=max_queue,
            max_batch=max_batch,
            on_batch=metrics.batch_size.observe,
        )
    metrics.queue_depth.set_function(lambda: worker.depth)
    service = Service(
        engine, worker, metrics, limits, served=model_name or lm.name, api_key=api_key
    )

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
        openapi_url=None,
    )
    app.state.service = service
    app.state.engine = engine
    _install_errors_and_middleware(app, metrics, max_body_bytes, replica)
    _add_routes(app, service)
    _add_admin_routes(app, service)
    return app


def _install_errors_and_middleware(
    app: FastAPI, metrics: Metrics, max_body_bytes: int, replica: str
) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"No route {request.method} {request.url.path}; see /v1/models."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        return _error_response(ApiError(exc.status_code, message))

    app.add_middleware(BodyLimit, limit=max_body_bytes)

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
    async def models(request: Request) -> dict[str, Any]:
        service.authorize(request)
        return {
            "object": "list",
            "data": [
                {"id": service.served, "object": "model", "created": created, "owned_by": "local"}
            ],
        }

    @app.get("/v1/persona_axis")
    async def persona_axis(request: Request) -> dict[str, Any]:
        service.authorize(request)
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
        service.authorize(request)
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


def _add_admin_routes(app: FastAPI, service: Service) -> None:
    """``GET/POST /v1/admin/bundles`` and ``DELETE /v1/admin/bundles/{name}``: list, load
    (``{"name", "path", "cap"?}``: a bundle directory on the server) and unload bundles at run
    time. They need the API key; without one they are refused. Loading reads the bundle and
    checks it against the model off the event loop; requests in flight keep their bundle."""
    engine = service.engine

    def admin(request: Request) -> None:
        if service.api_key is None:
            raise ApiError(
                403,
                "Admin routes need an API key; start the server with --api-key (or "
                "PERSONA_AXIS_API_KEY) to load and unload bundles at run time.",
                kind="permission_error",
                code="admin_disabled",
            )
        service.authorize(request)

    def listing() -> dict[str, Any]:
        return {
            "default_bundle": engine.default_bundle,
            "bundles": {name: served.describe() for name, served in engine.bundles.items()},
        }

    @app.get("/v1/admin/bundles")
    async def bundles(request: Request) -> dict[str, Any]:
        admin(request)
        return listing()

    @app.post("/v1/admin/bundles")
    async def load_bundle(request: Request) -> JSONResponse:
        admin(request)
        body = protocol.parse_model(protocol.LoadBundle, await request.body())
        try:
            bundle = await asyncio.to_thread(AxisBundle.load, body.path)
            await asyncio.to_thread(
                engine.load, body.name, bundle, default_cap=body.cap or RECOMMENDED
            )
        except PersonaAxisError as exc:
            status = 409 if "already served" in str(exc) else 400
            raise ApiError(status, str(exc), param="name" if status == 409 else "path") from exc
        return JSONResponse(listing(), status_code=201)

    @app.delete("/v1/admin/bundles/{name}")
    async def unload_bundle(request: Request, name: str) -> dict[str, Any]:
        admin(request)
        try:
            engine.unload(name)
        except PersonaAxisError as exc:
            status = 404 if "No bundle named" in str(exc) else 409
            raise ApiError(status, str(exc), param="name") from exc
        return listing()


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
        return ApiError(400, str(exc))
    if isinstance(exc, QueueFull):
        return ApiError(503, f"Not served: {exc}.", kind="server_error", code="unavailable")
    if isinstance(exc, Cancelled):
        return ApiError(499, "The request was cancelled.", code="cancelled")
    return ApiError(
        500,
        f"Generation failed ({type(exc).__name__}: {exc}); the server keeps serving, retry or "
        "report this.",
        kind="server_error",
    )
