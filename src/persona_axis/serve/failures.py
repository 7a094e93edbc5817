"""Failures as OpenAI-style answers: a user error by its type (404 not found, 409 conflict,
400 the rest), anything else a 500 with an error id and no exception text (the details go to
the log under that id), a job the scheduler dropped 503."""

from __future__ import annotations

import logging
import uuid

from persona_axis.errors import Conflict, NotFound, PersonaAxisError
from persona_axis.serve.protocol import ApiError
from persona_axis.serve.scheduler import QueueFull

LOG = logging.getLogger("persona_axis.serve.app")


def typed_error(exc: PersonaAxisError, *, param: str) -> ApiError:
    """A user error as an answer: 404 for :class:`NotFound`, 409 for :class:`Conflict`, 400
    for the rest."""
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
    return ApiError(status, str(exc), param=param)


def internal_failure(exc: BaseException, where: str) -> ApiError:
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


def as_api_error(exc: BaseException) -> ApiError:
    """What a queued job failed with, as an answer (module doc)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PersonaAxisError):
        return typed_error(exc, param="persona_axis")
    if isinstance(exc, QueueFull):
        return ApiError(503, f"Not served: {exc}.", kind="server_error", code="unavailable")
    return internal_failure(exc, "generation")
