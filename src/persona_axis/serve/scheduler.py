"""A bounded request queue and the one worker thread that owns the model.

Request handlers (on the event loop) :meth:`Scheduler.submit` a :class:`Job`; at most
``max_queue`` jobs wait (429 beyond). The worker turns pending jobs into batches:
:class:`~persona_axis.serve.continuous.ContinuousScheduler` (the default) lets every job join
the running batch at the next decoding step, whatever its setting; :class:`StaticScheduler`
(the earlier behaviour, kept for comparison) runs static batches of one setting each.

Results travel back to the event loop through ``loop.call_soon_threadsafe`` onto each job's
:class:`asyncio.Queue` of events: ``("delta", text)`` while streaming, then ``("done",
Outcome)`` or ``("error", exception)``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from persona_axis.application.session import Turn
from persona_axis.inference.generation import Sampling
from persona_axis.models.chat import Message
from persona_axis.serve.drift import RequestDrift
from persona_axis.serve.engine import BatchKey, Cancelled, DeltaDecoder, Engine, Served, Setting

log = logging.getLogger("persona_axis.serve")
IDLE_WAIT_S = 0.01
"""Seconds a lone job waits for company before it runs alone."""


class QueueFull(Exception):  # noqa: N818 - named for what the client is told
    """The bounded queue holds ``max_queue`` pending jobs; the client should retry later."""


@dataclass(frozen=True)
class Outcome:
    """A finished job: its turn, telemetry, seconds queued and generating, and the mean number
    of requests in the batch while it generated."""

    turn: Turn
    telemetry: dict[str, Any]
    queue_s: float
    run_s: float
    batch_size: float


@dataclass(eq=False)
class Job:
    """One chat completion waiting for, or in, a batch, with the bundle it was admitted with."""

    served: Served
    setting: Setting
    sampling: Sampling
    conversation: Sequence[Message]
    loop: asyncio.AbstractEventLoop
    stream: bool = False
    drift: RequestDrift | None = None  # the drift rule over the request's history
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    enqueued: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    @property
    def key(self) -> BatchKey:
        return BatchKey(self.setting, self.sampling)

    def emit(self, kind: str, payload: Any) -> None:
        """Hand an event to the job's event loop (thread-safe; dropped if the loop closed)."""
        with suppress(RuntimeError):  # the loop is closed: the server is shutting down
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))

    def outcome(self, engine: Engine, turn: Turn, started: float, batch_size: float) -> Outcome:
        """The job's outcome for ``turn``, generated since ``started``."""
        return Outcome(
            turn=turn,
            telemetry=engine.telemetry(self.served, self.setting, turn, self.drift),
            queue_s=started - self.enqueued,
            run_s=time.perf_counter() - started,
            batch_size=batch_size,
        )


class Scheduler:
    """The bounded queue and the worker thread that owns the model; subclasses decide how
    pending jobs become batches (:meth:`_work`)."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int = 64,
        max_batch: int = 8,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be >= 1")
        self.engine = engine
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._pending: list[Job] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.running = 0  # jobs being generated

    # -- event-loop side ----------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`QueueFull` when ``max_queue`` jobs are pending."""
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are already queued")
            self._pending.append(job)
            self._cond.notify_all()

    @property
    def depth(self) -> int:
        """Jobs waiting for a batch (not counting those being generated)."""
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="persona-axis-worker")
            self._thread.daemon = True
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the work in progress, fail the pending jobs, and end the worker."""
        with self._cond:
            self._stopping = True
            pending, self._pending = self._pending, []
            self._cond.notify_all()
        for job in pending:
            job.emit("error", QueueFull("the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        raise NotImplementedError


class StaticScheduler(Scheduler):
    """Static micro-batches of one setting each (the scheduler before continuous batching).

    The worker takes the oldest pending job and every other pending job with the same
    :class:`BatchKey` (setting and sampling), up to ``max_batch``, and runs them as one batch
    that returns when its longest reply ends. The oldest job always goes next, so no setting
    starves. Micro-batching window: when the previous batch held more than one job, or more
    than one job is pending, the worker waits up to ``batch_wait_s`` for ``max_batch`` jobs (of
    any key) to be pending; otherwise only ``IDLE_WAIT_S`` (10 ms) for a second arrival.
    """

    def __init__(self, engine: Engine, *, batch_wait_s: float = 0.1, **options: Any) -> None:
        super().__init__(engine, **options)
        if batch_wait_s < 0:
            raise ValueError("batch_wait_s must be >= 0")
        self.batch_wait_s = batch_wait_s
        self._last_batch = 1

    def _same_key(self, key: BatchKey) -> list[Job]:
        return [job for job in self._pending if job.key == key and not job.cancelled]

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                self._pending = [job for job in self._pending if not job.cancelled]
                if self._pending:
                    break
                if self._stopping:
                    return None
                self._cond.wait()
            key = self._pending[0].key
            opened = time.monotonic()
            while len(self._pending) < self.max_batch and not self._stopping:
                busy = self._last_batch > 1 or len(self._pending) > 1
                window = self.batch_wait_s if busy else min(IDLE_WAIT_S, self.batch_wait_s)
                remaining = opened + window - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = self._same_key(key)[: self.max_batch]
            chosen = set(map(id, batch))
            self._pending = [job for job in self._pending if id(job) not in chosen]
            self._last_batch = max(1, len(batch))
            self.running = len(batch)
            log.debug(
                "batch of %d after %.0f ms in the window; %d left pending",
                len(batch),
                1000 * (time.monotonic() - opened),
                len(self._pending),
            )
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self._run(batch)
            except Exception as exc:  # never let the worker die; tell every client
                if not isinstance(exc, Cancelled):
                    log.exception("batch of %d failed", len(batch))
                for job in batch:
                    job.emit("error", exc)
            finally:
                self.running = 0

    def _run(self, batch: list[Job]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        started = time.perf_counter()
        engine = self.engine
        decoders = [
            DeltaDecoder(engine.lm.tokenizer, engine.stops) if job.stream else None for job in batch
        ]

        def on_tokens(ids: list[int]) -> None:
            if all(job.cancelled for job in batch):
                raise Cancelled("every request of the batch was cancelled")
            for job, decoder, token in zip(batch, decoders, ids, strict=True):
                if decoder is not None and not job.cancelled:
                    delta = decoder.push(token)
                    if delta:
                        job.emit("delta", delta)

        first = batch[0]
        turns = engine.run(first.served, first.key, [job.conversation for job in batch], on_tokens)
        for job, decoder, turn in zip(batch, decoders, turns, strict=True):
            if decoder is not None:
                rest = decoder.finish(turn.reply.text)
                if rest:
                    job.emit("delta", rest)
            job.emit("done", job.outcome(engine, turn, started, len(batch)))
