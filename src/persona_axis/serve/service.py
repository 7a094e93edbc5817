"""What the routes share: the request limits, and the :class:`Service` that checks a parsed
request against the model and limits, queues it, and answers it (one ``chat.completion``, or
server-sent chunks) with usage, telemetry and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi.responses import JSONResponse

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.generation import Sampling
from persona_axis.serve import protocol
from persona_axis.serve.engine import Engine, Setting
from persona_axis.serve.failures import as_api_error
from persona_axis.serve.metrics import Metrics
from persona_axis.serve.protocol import MIN_TEMPERATURE, ApiError
from persona_axis.serve.scheduler import Job, Outcome, QueueFull, Scheduler


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
                    yield protocol.event(as_api_error(payload).body())
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


async def _wait(job: Job) -> Outcome:
    """The job's outcome; its error as an :class:`ApiError`."""
    while True:
        kind, payload = await job.events.get()
        if kind == "done":
            assert isinstance(payload, Outcome)
            return payload
        if kind == "error":
            raise as_api_error(payload)
