"""The admin routes: list, load and unload bundles at run time (admin key only; loads read
only from the server's bundle roots)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from persona_axis.axis.bundle import AxisBundle
from persona_axis.errors import PersonaAxisError
from persona_axis.serve import protocol
from persona_axis.serve.engine import RECOMMENDED
from persona_axis.serve.failures import typed_error
from persona_axis.serve.protocol import ApiError
from persona_axis.serve.service import Service


def add_admin_routes(app: FastAPI, service: Service, roots: tuple[Path, ...]) -> None:
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
        path = under_roots(body.path, roots)
        try:
            bundle = await asyncio.to_thread(AxisBundle.load, path)
            await asyncio.to_thread(
                engine.load, body.name, bundle, default_cap=body.cap or RECOMMENDED
            )
        except PersonaAxisError as exc:
            raise typed_error(exc, param="path") from exc
        return JSONResponse(listing(), status_code=201)

    @app.delete("/v1/admin/bundles/{name}")
    async def unload_bundle(name: str) -> dict[str, Any]:
        try:
            engine.unload(name)
        except PersonaAxisError as exc:
            raise typed_error(exc, param="name") from exc
        return listing()


def under_roots(path: str, roots: tuple[Path, ...]) -> Path:
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
