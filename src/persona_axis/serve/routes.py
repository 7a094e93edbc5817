"""The public routes: the chat page and its static files, ``/health``, ``/metrics``,
``/v1/models``, ``/v1/persona_axis`` and ``POST /v1/chat/completions``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from persona_axis.serve import protocol
from persona_axis.serve.metrics import CONTENT_TYPE
from persona_axis.serve.service import Service

STATIC = Path(__file__).with_name("static")
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


def add_routes(app: FastAPI, service: Service) -> None:
    """The public routes (module doc) on ``app``, answered by ``service``."""
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
