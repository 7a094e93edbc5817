"""The OpenAI chat-completions wire format: request validation and response bodies.

Requests are parsed from raw bytes so that every problem (bad JSON, wrong types, unsupported
options, wrong roles) becomes an :class:`ApiError` with a clear message and a 4xx status, in
OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``. Unknown top-level
fields are ignored like OpenAI's server does for fields it does not know; options that change
the output and are not implemented (``stop``, ``tools``, ``logprobs``, ``n`` > 1 ...) are refused
rather than silently ignored.

The extra body field ``persona_axis`` (``{"bundle": NAME, "cap": "<setting>" | "none",
"steer": m}``) selects the bundle and the intervention; every response carries a
``persona_axis`` telemetry object.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from persona_axis.models.chat import Message

ROLE_ALIASES = {"developer": "system"}
"""OpenAI's newer name for the system role."""
UNSUPPORTED = ("stop", "tools", "tool_choice", "functions", "function_call", "response_format")
UNSUPPORTED_IF_TRUE = (
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "audio",
)


class ApiError(Exception):
    """An error answered to the client: HTTP ``status`` and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


class PersonaAxisOptions(BaseModel):
    """``persona_axis`` body field: ``bundle`` a served bundle's name (None = the default),
    ``cap`` a setting name, "none" or "on-drift" (the recommended cap while the drift rule,
    run over the request's history, has the conversation armed; None = the bundle's default),
    ``steer`` a multiple of the target layer's mean residual norm (+ = toward the Assistant)."""

    model_config = ConfigDict(extra="forbid")
    bundle: str | None = None
    cap: str | None = None
    steer: float | None = None


class LoadBundle(BaseModel):
    """Body of ``POST /v1/admin/bundles``: serve the bundle directory ``path`` (on the
    server's filesystem) as ``name``, with ``cap`` as its default cap (default "recommended")."""

    model_config = ConfigDict(extra="forbid")
    name: str
    path: str
    cap: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class InMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of a chat-completions request this server reads."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[InMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    persona_axis: PersonaAxisOptions | None = None

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_tokens is None else self.max_tokens


Parsed = TypeVar("Parsed", bound=BaseModel)


def parse_model(model: type[Parsed], raw: bytes) -> Parsed:
    """Validate a JSON body as ``model``; raises :class:`ApiError` (400) naming the problem."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(
            400, f"The request body is not valid JSON ({exc}); send a JSON object."
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, f"The request body must be a JSON object, not {type(data).__name__}.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise ApiError(
            400, f"Invalid request: {problems}.", param=".".join(map(str, first))
        ) from None


def parse_request(raw: bytes) -> ChatRequest:
    """Validate a chat-completions body; raises :class:`ApiError` (400) naming the problem."""
    request = parse_model(ChatRequest, raw)
    extra = request.model_extra or {}
    for name in UNSUPPORTED:
        if extra.get(name) not in (None, [], ""):
            raise ApiError(400, f"'{name}' is not supported by this server; remove it.", param=name)
    for name in UNSUPPORTED_IF_TRUE:
        if extra.get(name):
            raise ApiError(400, f"'{name}' is not supported by this server; remove it.", param=name)
    if request.n not in (None, 1):
        raise ApiError(400, "Only n = 1 is supported; send one request per completion.", param="n")
    return request


def conversation(messages: list[InMessage]) -> list[Message]:
    """Plain ``{"role", "content"}`` messages ending with a user message; raises ApiError."""
    if not messages:
        raise ApiError(
            400, "'messages' is empty; send at least one user message.", param="messages"
        )
    out: list[Message] = []
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        role = ROLE_ALIASES.get(message.role, message.role)
        if role not in ("system", "user", "assistant"):
            raise ApiError(
                400,
                f"{where}.role is {message.role!r}; this server takes system (or developer), "
                "user and assistant messages (no tool or function messages).",
                param=f"{where}.role",
            )
        if role == "system" and index > 0:
            raise ApiError(
                400, f"{where}: only the first message may be a system message.", param=where
            )
        text = _text(message.content, where)
        if role == "user" and not text.strip():
            raise ApiError(400, f"{where}: the user message is empty.", param=f"{where}.content")
        out.append({"role": role, "content": text})
    if out[-1]["role"] != "user":
        raise ApiError(
            400,
            f"The last message is a {out[-1]['role']} message; end the conversation with the "
            "user message to reply to.",
            param="messages",
        )
    return out


def _text(content: str | list[ContentPart] | None, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise ApiError(
                400,
                f"{where}.content has a {part.type!r} part; only text parts are supported.",
                param=f"{where}.content",
            )
        pieces.append(part.text)
    return "".join(pieces)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(
    ident: str,
    model: str,
    text: str,
    finish: Literal["stop", "length"],
    usage: dict[str, int],
    *,
    telemetry: dict[str, Any],
) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` body."""
    return {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": usage,
        "persona_axis": telemetry,
    }


def chunk(
    ident: str,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    **extra: Any,
) -> str:
    """One server-sent event holding a ``chat.completion.chunk``."""
    body = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        **extra,
    }
    return event(body)


def event(body: dict[str, Any] | str) -> str:
    """``data: ...`` server-sent event text."""
    data = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    return f"data: {data}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def usage_chunk(ident: str, model: str, usage: dict[str, int]) -> str:
    """The final streamed chunk with ``usage`` and no choices (``stream_options``)."""
    return event(
        {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [],
            "usage": usage,
        }
    )
