"""Chat backends: turn a batch of conversations into one reply text each.

Two backends share the :class:`ChatBackend` protocol:

- :class:`OpenAIChatBackend` posts to any OpenAI-compatible ``/chat/completions`` endpoint
  (OpenAI, vLLM, llama.cpp server, our own ``persona-axis serve``) with a concurrency limit, an
  optional rate limit and retries with exponential backoff;
- :class:`HFChatBackend` generates locally with a loaded Hugging Face model.

Conventions: results come back in the order of the inputs; ``temperature`` 0 means greedy;
``max_tokens`` counts generated tokens only. Importing this module does not import torch.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import httpx
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.models.chat import Message
    from persona_axis.models.loading import LoadedModel

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 429})  # plus every 5xx
_BODY_EXCERPT = 300


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that answers chats: ``complete`` returns one reply per conversation, in order."""

    name: str

    def complete(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
    ) -> list[str]: ...


class _StatusError(Exception):
    """An HTTP error status from the server (internal; turned into PersonaAxisError)."""

    def __init__(self, status: int, body: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _StatusError):
        return exc.status in RETRYABLE_STATUS or exc.status >= 500
    return isinstance(exc, httpx.TransportError)  # connection errors, timeouts, broken reads


def _retry_after_seconds(value: str | None) -> float | None:
    """A numeric ``Retry-After`` header in seconds; None for absent or HTTP-date values."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _plain_messages(conversation: Sequence[Message], index: int) -> list[dict[str, str]]:
    messages = []
    for message in conversation:
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            raise PersonaAxisError(
                f"Conversation {index} holds {message!r}; every message must be an object "
                "with string 'role' and 'content'."
            )
        messages.append({"role": str(message.get("role")), "content": message["content"]})
    if not messages:
        raise PersonaAxisError(f"Conversation {index} is empty; give at least one message.")
    return messages


@cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once (about 20 ms each time otherwise)."""
    return httpx.create_ssl_context()


def _run_coroutine(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, even when called inside a running loop."""

    async def main() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with ThreadPoolExecutor(max_workers=1) as pool:  # e.g. from a notebook or an async server
        return pool.submit(asyncio.run, main()).result()


class OpenAIChatBackend:
    """Client for an OpenAI-compatible ``POST {base_url}/chat/completions``.

    ``base_url`` ends with the API version, e.g. ``http://127.0.0.1:8000/v1``. The API key is
    read from the environment variable ``api_key_env`` on every call and sent as
    ``Authorization: Bearer <key>``; when the variable is unset no header is sent (local servers).

    At most ``concurrency`` requests are in flight; ``requests_per_second`` (None = unlimited)
    spaces request starts evenly, also across consecutive ``complete`` calls. Connection errors,
    timeouts, 408, 429 and 5xx are retried up to ``max_retries`` times; retry ``n`` (1-based)
    waits a random time in ``[0, min(backoff_max_s, backoff_base_s * 2**(n - 1))]`` (exponential
    backoff, full jitter), or the server's numeric ``Retry-After`` capped at
    ``retry_after_max_s``. Other 4xx statuses and malformed bodies fail at once. ``extra_body``
    is merged into every request body (e.g. ``{"top_p": 0.9}`` or server-specific options).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 8,
        requests_per_second: float | None = None,
        max_retries: int = 5,
        timeout_s: float = 60.0,
        extra_body: Mapping[str, Any] | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_after_max_s: float = 60.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise PersonaAxisError(
                f"base_url {base_url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1."
            )
        if not model:
            raise PersonaAxisError("The OpenAI backend needs a model name (the server's id).")
        if concurrency < 1:
            raise PersonaAxisError(f"concurrency must be at least 1, not {concurrency}.")
        if requests_per_second is not None and requests_per_second <= 0:
            raise PersonaAxisError(
                f"requests_per_second must be positive or None, not {requests_per_second}."
            )
        if max_retries < 0:
            raise PersonaAxisError(f"max_retries must be 0 or more, not {max_retries}.")
        if timeout_s <= 0 or backoff_base_s < 0 or backoff_max_s < 0 or retry_after_max_s < 0:
            raise PersonaAxisError("timeout_s must be positive and the backoff settings >= 0.")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.requests_per_second = requests_per_second
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.extra_body = dict(extra_body or {})
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self._backoff = wait_random_exponential(multiplier=backoff_base_s, max=backoff_max_s)
        self.name = f"openai:{model}@{self.base_url}"
        self._next_start = 0.0  # monotonic time before which no new call may send (rate limit)
        self._rate_lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def complete(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
    ) -> list[str]:
        """One reply text per conversation, in input order; raises PersonaAxisError on failure."""
        if max_tokens < 1 or temperature < 0:
            raise PersonaAxisError("max_tokens must be at least 1 and temperature >= 0.")
        bodies = [
            {
                "model": self.model,
                "messages": _plain_messages(conversation, index),
                "max_tokens": max_tokens,
                "temperature": temperature,
                **self.extra_body,
            }
            for index, conversation in enumerate(conversations)
        ]
        if not bodies:
            return []
        return _run_coroutine(lambda: self._complete_all(bodies))

    async def _complete_all(self, bodies: list[dict[str, Any]]) -> list[str]:
        semaphore = asyncio.Semaphore(self.concurrency)
        limiter = None
        if self.requests_per_second is not None:
            # capacity 1: starts are spaced by 1/rate, no initial burst
            limiter = AsyncLimiter(1, 1.0 / self.requests_per_second)
            with self._rate_lock:
                wait = self._next_start - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        timeout = httpx.Timeout(self.timeout_s)
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(
            timeout=timeout, limits=limits, verify=_ssl_context()
        ) as client:

            async def one(body: dict[str, Any]) -> str:
                async with semaphore:
                    return await self._post_with_retries(client, body, limiter)

            tasks = [asyncio.ensure_future(one(body)) for body in bodies]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for task in tasks:  # one failure cancels the rest
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _StatusError) and exc.retry_after is not None:
            return min(exc.retry_after, self.retry_after_max_s)
        return float(self._backoff(state))

    async def _post_with_retries(
        self, client: httpx.AsyncClient, body: dict[str, Any], limiter: AsyncLimiter | None
    ) -> str:
        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.max_retries + 1),
                wait=self._wait,
                retry=retry_if_exception(_retryable),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    return await self._post(client, body, limiter)
        except _StatusError as exc:
            raise PersonaAxisError(self._status_message(exc, attempts)) from exc
        except httpx.TimeoutException as exc:
            raise PersonaAxisError(
                f"POST {self.url} timed out after {self.timeout_s:g} s ({attempts} attempt(s), "
                f"{type(exc).__name__}). Check that the server is up and not overloaded, or raise "
                "timeout_s / lower concurrency."
            ) from exc
        except httpx.TransportError as exc:
            raise PersonaAxisError(
                f"POST {self.url} failed after {attempts} attempt(s): {type(exc).__name__}: "
                f"{exc}. Start the server or fix base_url (it should end with /v1)."
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _post(
        self, client: httpx.AsyncClient, body: dict[str, Any], limiter: AsyncLimiter | None
    ) -> str:
        if limiter is not None:
            await limiter.acquire()
            assert self.requests_per_second is not None
            with self._rate_lock:
                self._next_start = time.monotonic() + 1.0 / self.requests_per_second
        response = await client.post(self.url, json=body, headers=self._headers())
        if response.status_code >= 400:
            raise _StatusError(
                response.status_code,
                response.text[:_BODY_EXCERPT],
                _retry_after_seconds(response.headers.get("retry-after")),
            )
        return self._reply_text(response)

    def _reply_text(self, response: httpx.Response) -> str:
        try:
            data = response.json()
        except ValueError:
            data = None
        content = None
        if isinstance(data, dict):
            choices = data.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                message = choices[0].get("message")
                if isinstance(message, dict):
                    content = message.get("content")
        if not isinstance(content, str):
            raise PersonaAxisError(
                f"POST {self.url} returned HTTP {response.status_code} without a reply text "
                f"(expected JSON choices[0].message.content): {response.text[:_BODY_EXCERPT]!r}. "
                "Point base_url at an OpenAI-compatible chat completions API; for reasoning "
                "models that spend the budget on thinking, raise max_tokens."
            )
        return content

    def _status_message(self, exc: _StatusError, attempts: int) -> str:
        if exc.status in {401, 403}:
            fix = (
                f"set the API key in ${self.api_key_env}"
                if self.api_key_env
                else "set api_key_env to the variable holding the API key"
            )
        elif exc.status == 404:
            fix = f"check base_url (it should end with /v1) and that model {self.model!r} exists"
        elif exc.status == 429:
            fix = "lower concurrency or requests_per_second, or raise max_retries"
        elif exc.status >= 500:
            fix = "check the server's log; it failed on every attempt"
        else:
            fix = f"check the request settings (model {self.model!r}, max_tokens, extra_body)"
        return (
            f"POST {self.url} failed with HTTP {exc.status} after {attempts} attempt(s): "
            f"{exc.body!r}. Fix: {fix}."
        )


class HFChatBackend:
    """Local generation with a loaded Hugging Face model (:func:`generate_replies`).

    Conversations are generated ``batch_size`` at a time; batch ``i`` is seeded with
    ``seed + i`` so repeated conversations in different batches get different samples when
    ``temperature`` > 0. Chat formatting follows the model's own template, thinking off.
    """

    def __init__(self, lm: LoadedModel, *, batch_size: int = 8, seed: int = 0) -> None:
        if batch_size < 1:
            raise PersonaAxisError(f"batch_size must be at least 1, not {batch_size}.")
        self.lm = lm
        self.batch_size = batch_size
        self.seed = seed
        self.name = f"hf:{lm.name}"

    def complete(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
    ) -> list[str]:
        """One reply text per conversation, in input order."""
        from persona_axis.inference.generation import Sampling, generate_replies

        replies: list[str] = []
        for batch_index, start in enumerate(range(0, len(conversations), self.batch_size)):
            sampling = Sampling(
                max_new_tokens=max_tokens, temperature=temperature, seed=self.seed + batch_index
            )
            batch = conversations[start : start + self.batch_size]
            replies.extend(reply.text for reply in generate_replies(self.lm, batch, sampling))
        return replies


OPENAI_KEYS = (
    "backend",
    "base_url",
    "model",
    "api_key_env",
    "concurrency",
    "requests_per_second",
    "max_retries",
    "timeout_s",
    "extra_body",
)
HF_KEYS = ("backend", "model", "batch_size", "seed", "dtype", "device", "device_map", "revision")
BACKENDS = ("openai", "hf")
_OPENAI_TYPES: dict[str, Callable[[Any], Any]] = {
    "api_key_env": str,
    "concurrency": int,
    "requests_per_second": float,
    "max_retries": int,
    "timeout_s": float,
    "extra_body": dict,
}


def _check_keys(config: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise PersonaAxisError(
            f"Unknown {what} setting(s) {', '.join(map(repr, unknown))}; "
            f"valid ones are {', '.join(allowed)}."
        )


def backend_from_config(config: Mapping[str, Any]) -> ChatBackend:
    """Build a backend from ``{"backend": "openai" | "hf", ...}``; unknown keys are refused.

    OpenAI: ``base_url`` and ``model`` are required; ``api_key_env``, ``concurrency``,
    ``requests_per_second``, ``max_retries``, ``timeout_s``, ``extra_body`` are optional.
    HF: ``model`` is a Hugging Face id, a local path or ``"default"`` (the embedded model);
    ``batch_size``, ``seed``, ``dtype``, ``device``, ``device_map``, ``revision`` are optional.
    """
    kind = config.get("backend")
    if kind == "openai":
        _check_keys(config, OPENAI_KEYS, "openai backend")
        missing = [key for key in ("base_url", "model") if not config.get(key)]
        if missing:
            raise PersonaAxisError(
                f"The openai backend needs {' and '.join(missing)}, e.g. "
                '{"backend": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "..."}.'
            )
        options = {k: v for k, v in config.items() if k not in {"backend", "base_url", "model"}}
        try:
            for key, kind_of in _OPENAI_TYPES.items():
                if options.get(key) is not None:
                    options[key] = kind_of(options[key])
        except (TypeError, ValueError) as exc:
            raise PersonaAxisError(f"Bad openai backend setting: {exc}; check its type.") from exc
        return OpenAIChatBackend(str(config["base_url"]), str(config["model"]), **options)
    if kind == "hf":
        _check_keys(config, HF_KEYS, "hf backend")
        from persona_axis.models.loading import load_model

        load_options = {
            key: config[key]
            for key in ("dtype", "device", "device_map", "revision")
            if key in config
        }
        try:
            batch_size, seed = int(config.get("batch_size", 8)), int(config.get("seed", 0))
        except (TypeError, ValueError) as exc:
            raise PersonaAxisError(f"batch_size and seed must be integers: {exc}.") from exc
        lm = load_model(config.get("model") or "default", **load_options)
        return HFChatBackend(lm, batch_size=batch_size, seed=seed)
    raise PersonaAxisError(
        f"Unknown chat backend {kind!r}; set 'backend' to one of {', '.join(BACKENDS)}."
    )
