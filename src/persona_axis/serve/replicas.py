"""N copies of the server on Ray Serve, behind one endpoint.

:func:`deploy` runs ``replicas`` copies of :func:`~persona_axis.serve.config.build_app`'s app
as a Ray Serve deployment: each replica (a Ray actor, :class:`ServerReplica`) builds its own
app from the :class:`~persona_axis.serve.config.ServerConfig`, so the routes, the API key, the
web page and the admin routes are the same; Ray Serve's HTTP proxy listens on ``host:port``.

Why a front: Ray Serve's own proxy answers a request whose replica died with a bare "Internal
Server Error" or a cut stream. The :class:`Front` deployment (the HTTP ingress, no model)
forwards each request (method, path, headers, body) to a replica through a streaming
deployment handle, which spreads requests over the replicas; the replica runs it through its
ASGI app and streams the ASGI messages back. Failures are then clear: Ray Serve restarts a
replica whose actor dies; a request in flight on it that had sent nothing yet is retried once
on another replica, and one that had (a stream) ends with an OpenAI-style error event saying
the replica failed and to retry; never a hang.
The front runs the same guard as a single server (:mod:`~persona_axis.serve.guard`: the
``Host``/``Origin`` allow-lists, the keys, the body size and time limits) before it reads a
body, so a refused request never reaches a replica.
An admin change (bundle load/unload) reaches the one replica that answers it: send it once
per replica, or restart the deployment with the new ``--bundle`` list.

On a cluster: start Ray on every machine (``ray start --head`` on one, ``ray start
--address HEAD:6379`` on the others), make the model and the bundle directories readable at
the same paths everywhere (a shared filesystem or the same HF cache), then run
``persona-axis serve --bundle DIR --replicas N --ray-address HEAD:6379 --host 0.0.0.0``;
``--gpus-per-replica`` reserves GPUs per copy.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from persona_axis.errors import PersonaAxisError
from persona_axis.serve.config import ServerConfig, build_app
from persona_axis.serve.guard import BODY_TIMEOUT_S, MAX_BODY_BYTES, Access, BodyLimit, Guard
from persona_axis.serve.protocol import ApiError

APP_NAME = "persona-axis"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
ATTEMPTS = 2
"""A request whose replica died before answering is sent this many times at most."""
FAILED = ApiError(
    503,
    "The server replica handling this request failed; it is being replaced. Retry the request.",
    kind="server_error",
    code="replica_failed",
)


class ServerReplica:
    """One copy of the server: its app, started, answering forwarded requests."""

    async def __init__(self, config: ServerConfig, threads: int = 1) -> None:  # type: ignore[misc]
        import ray
        import torch

        from persona_axis.serve.app import REPLICA

        torch.set_num_threads(threads)
        name = ray.get_runtime_context().get_actor_name()  # ray.get_actor(name, "serve")
        options = {**config.options, "replica": f"{REPLICA}/{name}"}
        self.app = build_app(replace(config, options=options))
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()

    async def call(self, request: dict[str, Any], body: bytes) -> AsyncIterator[dict[str, Any]]:
        """Run one HTTP request through the app; yields its ASGI ``http.response.*``
        messages. Cancelling the generator tells the app the client disconnected."""
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        gone = asyncio.Event()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await messages.put(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "http",
            "root_path": "",
            "server": ("replica", 0),
            "client": ("front", 0),
            **request,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request["headers"]],
            "query_string": request["query_string"].encode("latin-1"),
            "raw_path": request["path"].encode(),
        }
        task = asyncio.create_task(self.app(scope, receive, send))
        try:
            while True:
                message = await _next(messages, task)
                if message is None:
                    return
                yield message
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    return
        finally:
            gone.set()
            if not task.done():
                task.cancel()

    async def __del__(self) -> None:
        await self._lifespan.__aexit__(None, None, None)


async def _next(
    messages: asyncio.Queue[dict[str, Any]], task: asyncio.Task[None]
) -> dict[str, Any] | None:
    """The app's next message; None once the app returned without more (its error raises)."""
    if not messages.empty() or not task.done():
        getter = asyncio.ensure_future(messages.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
    if not messages.empty():
        return messages.get_nowait()
    task.result()
    return None


class Front:
    """The HTTP ingress of a replicated server: forwards every route to a replica."""

    def __init__(self, server: Any, options: dict[str, Any]) -> None:
        self.server = server
        self.options = options

    def __serve_build_asgi_app__(self) -> FastAPI:
        return front_app(self.server, self.options)


def front_app(server: Any, options: dict[str, Any]) -> FastAPI:
    """A FastAPI app forwarding every request to the deployment handle ``server``, behind the
    guard and body limit of the server ``options`` (:func:`create_app`'s)."""
    from ray.exceptions import RayError
    from ray.serve.exceptions import RayServeException

    failures: tuple[type[BaseException], ...] = (RayError, RayServeException)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        BodyLimit,
        limit=options.get("max_body_bytes", MAX_BODY_BYTES),
        timeout_s=options.get("body_timeout_s", BODY_TIMEOUT_S),
    )
    app.add_middleware(Guard, access=access_of(options))

    @app.api_route("/{path:path}", methods=METHODS, include_in_schema=False)
    async def forward(request: Request, path: str) -> Response:
        forwarded = {
            "method": request.method,
            "path": request.url.path,
            "query_string": request.url.query,
            "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
        }
        body = await request.body()
        for _ in range(ATTEMPTS):
            stream = server.options(stream=True).call.remote(forwarded, body)
            try:
                start = await stream.__anext__()
            except failures:
                continue
            except StopAsyncIteration:
                break
            return _respond(start, stream, failures)
        return JSONResponse(FAILED.body(), status_code=503, headers={"Retry-After": "1"})

    return app


def _respond(
    start: dict[str, Any], stream: Any, failures: tuple[type[BaseException], ...]
) -> Response:
    headers = {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in start["headers"]
        if k.lower() not in (b"content-length", b"transfer-encoding")
    }
    events = headers.get("content-type", "").startswith("text/event-stream")

    async def body() -> AsyncIterator[bytes]:
        try:
            async for message in stream:
                if message["type"] == "http.response.body" and message.get("body"):
                    yield message["body"]
        except failures:
            if events:
                yield f"data: {json.dumps(FAILED.body())}\n\n".encode()
        finally:
            stream.cancel()

    return StreamingResponse(body(), status_code=start["status"], headers=headers)


def deployment(
    config: ServerConfig, replicas: int, *, gpus_per_replica: float = 0.0, threads: int = 1
) -> Any:
    """The bound Ray Serve application: a front (HTTP ingress, no model) forwarding every
    request to one of ``replicas`` copies of :func:`build_app`'s app (see the module doc)."""
    from ray import serve

    if replicas < 1:
        raise PersonaAxisError(f"--replicas must be at least 1, not {replicas}.")
    config = replace(
        config,
        bundles={name: str(Path(path).resolve()) for name, path in config.bundles.items()},
        model=_resolved(config.model),
    )
    server = serve.deployment(
        name="server",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": threads, "num_gpus": gpus_per_replica},
        max_ongoing_requests=64,
    )(ServerReplica)
    front = serve.deployment(
        name="front", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024
    )(serve.ingress()(Front))
    return front.bind(server.bind(config, threads), config.options)


def access_of(options: dict[str, Any]) -> Access:
    """The :class:`Access` of :func:`create_app` options (as the replicas' apps build it)."""
    return Access.of(
        options.get("api_key"),
        options.get("admin_key"),
        options.get("allowed_hosts"),
        options.get("allowed_origins", ()),
    )


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
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise PersonaAxisError(
            "--replicas and --ray-address need Ray Serve; install it with "
            "pip install 'persona-axis[scale]'."
        ) from exc
    if not ray.is_initialized():
        if ray_address is not None:
            check_reachable(ray_address)
        ray.init(address=ray_address, log_to_driver=False, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    app = deployment(config, replicas, gpus_per_replica=gpus_per_replica, threads=threads)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise a :class:`PersonaAxisError` unless a ``host:port`` Ray address (``ray://`` or
    not) accepts a connection within ``timeout_s`` (Ray itself retries for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local": Ray finds the cluster itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise PersonaAxisError(
            f"No Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
            "'ray start --head' there, or check --ray-address."
        ) from exc


def _resolved(model: str | None) -> str | None:
    """A local model directory as an absolute path (replicas may start elsewhere)."""
    if model is not None and Path(model).is_dir():
        return str(Path(model).resolve())
    return model
