"""A bounded request queue and the one worker thread that owns the model.

Request handlers (on the event loop) :meth:`Scheduler.submit` a :class:`Job`; at most
``max_queue`` jobs wait (429 beyond). The worker turns pending jobs into rows of the running
batch: :class:`~persona_axis.serve.continuous.ContinuousScheduler` lets every job join at the
next step, whatever its setting. (The static scheduler, per-setting micro-batches, was removed
once continuous batching matched or beat it on uniform and mixed traffic; docs/benchmarks.md.)

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
from persona_axis.serve.engine import Engine, Served, Setting

log = logging.getLogger("persona_axis.serve")


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
