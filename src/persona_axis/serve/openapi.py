"""The server's OpenAPI schema (``/openapi.json``), with the request bodies the routes parse.

The routes read raw bytes and validate them with :mod:`~persona_axis.serve.protocol` (so every
problem is an OpenAI-style 4xx), which FastAPI cannot see; this module adds those bodies, the
bearer key and the error responses to FastAPI's generated schema, so clients and API fuzzers
(the suite runs schemathesis against it) know what the routes take.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from persona_axis._version import __version__
from persona_axis.serve.protocol import ChatRequest, LoadBundle

BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatRequest,
    "/v1/admin/bundles": LoadBundle,
}
ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def schema(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app`` (computed once, then cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title, version=__version__, summary=app.summary, routes=app.routes
    )
    components = document.setdefault("components", {})
    models = components.setdefault("schemas", {})
    models["Error"] = ERROR
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, model in BODIES.items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        models.update(body.pop("$defs", {}))
        models[model.__name__] = body
        document["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path.startswith("/v1/"):
                operation["security"] = [{"bearer": []}]
            for status, why in (("400", "Invalid request"), ("401", "Missing or wrong key")):
                operation.setdefault("responses", {}).setdefault(
                    status, {"description": why, **error}
                )
    app.openapi_schema = document
    return document
