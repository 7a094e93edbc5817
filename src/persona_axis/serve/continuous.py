"""The continuous-batching scheduler: every request joins the running batch at the next step.

The worker admits pending jobs while the batch has free rows (``max_batch`` rows at most),
turns each into a row of a :class:`~persona_axis.inference.continuous.ContinuousBatch` with its
own intervention, sampling and telemetry, and runs one step at a time under the model's
generation lock: a prefill when jobs joined, else one decoding step for every row. Tokens
stream to their clients as they are sampled; a job leaves the batch when its reply ends (end of
turn or its own ``max_tokens``) and is answered at once, while the others go on. A cancelled job
(client gone) leaves at the next step. If a step fails, every job in the batch gets the error
and the worker starts a fresh batch; it never dies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from persona_axis.application.session import Turn
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.continuous import ContinuousBatch
from persona_axis.inference.engine import GenerationEngine, StepResult
from persona_axis.models.loading import LoadedModel
from persona_axis.serve.engine import DeltaDecoder, Engine
from persona_axis.serve.scheduler import Job, Scheduler, log


@dataclass
class _Running:
    job: Job
    decoder: DeltaDecoder | None
    started: float
    steps: int = 0
    rows: int = 0  # sum over its decoding steps of the rows in the batch


class ContinuousScheduler(Scheduler):
    """See the module docstring; ``max_batch`` is the most rows decoded together.
    ``make_batch`` gives a fresh generation engine (default: our HF
    :class:`~persona_axis.inference.continuous.ContinuousBatch`; the vLLM engine with
    ``--engine vllm``), at start and after a failed step."""

    def __init__(
        self,
        engine: Engine,
        make_batch: Callable[[], GenerationEngine] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(engine, **options)
        self.make_batch = make_batch or (
            lambda: ContinuousBatch(engine.lm, max_rows=self.max_batch)
        )
        self.batch = self.make_batch()
        self._jobs: dict[Hashable, _Running] = {}

    def _admit(self) -> list[Job] | None:
        """Wait for work; the pending jobs that fit in the batch (None: stop the worker)."""
        with self._cond:
            while not self._stopping and not self._pending and self.batch.idle:
                self._cond.wait()
            if self._stopping and self.batch.idle:
                return None
            self._pending = [job for job in self._pending if not job.cancelled]
            free = self.max_batch - len(self._jobs)
            admitted, self._pending = self._pending[:free], self._pending[free:]
            self.running = len(self._jobs) + len(admitted)
            return admitted

    def _work(self) -> None:
        while True:
            admitted = self._admit()
            if admitted is None:
                return
            try:
                self._step(admitted)
            except Exception as exc:  # never let the worker die; tell every client
                log.exception("a step of %d rows failed", len(self._jobs))
                for running in self._jobs.values():
                    running.job.emit("error", exc)
                self._jobs.clear()
                self.batch = self.make_batch()
            self.running = len(self._jobs)

    def _step(self, admitted: list[Job]) -> None:
        engine, batch = self.engine, self.batch
        with engine.lock:  # also held while building rows: a steer may estimate norms
            for job in admitted:
                try:
                    row = engine.row(job, job.served, job.setting, job.sampling, job.conversation)
                    batch.add(row)
                except Exception as exc:  # a bad request fails alone
                    job.emit("error", exc)
                    continue
                decoder = DeltaDecoder(engine.lm.tokenizer, engine.stops) if job.stream else None
                self._jobs[job] = _Running(job, decoder, time.perf_counter())
            for job in [r.job for r in self._jobs.values() if r.job.cancelled]:
                batch.cancel(job)
                del self._jobs[job]
            if batch.idle:
                return
            decoding = batch.running_keys
            result = batch.step()
        self._deliver(result, decoding)

    def _deliver(self, result: StepResult, decoding: list[Any]) -> None:
        if result.kind == "generated":
            if self.on_batch is not None:
                self.on_batch(result.rows)
            for key in decoding:
                running = self._jobs.get(key)
                if running is not None:
                    running.steps += 1
                    running.rows += result.rows
        for key, token in result.tokens:
            running = self._jobs.get(key)
            if running is not None and running.decoder is not None:
                delta = running.decoder.push(token)
                if delta:
                    running.job.emit("delta", delta)
        for finished in result.finished:
            running = self._jobs.pop(finished.key, None)
            if running is None:
                continue
            job = running.job
            turn = Turn.read(finished.reply, finished.telemetry, job.served.target_layer)
            if running.decoder is not None:
                rest = running.decoder.finish(turn.reply.text)
                if rest:
                    job.emit("delta", rest)
            size = running.rows / running.steps if running.steps else 1.0
            job.emit("done", job.outcome(self.engine, turn, running.started, size))


def check_scheduler(scheduler: str) -> None:
    """Refuse any scheduler but "continuous" (the static one was removed, docs/benchmarks.md)."""
    if scheduler == "static":
        raise PersonaAxisError(
            "The static scheduler was removed: continuous batching matched or beat it on "
            "uniform and mixed traffic (docs/benchmarks.md). Drop --scheduler static; every "
            "request now joins the continuous batch."
        )
    if scheduler != "continuous":
        raise PersonaAxisError(f"Unknown scheduler {scheduler!r}; use 'continuous'.")


def generation_factory(
    lm: LoadedModel, backend: str, max_rows: int
) -> Callable[[], GenerationEngine] | None:
    """The continuous scheduler's engine factory for ``backend`` ("hf": None, the default
    :class:`~persona_axis.inference.continuous.ContinuousBatch`; "vllm": one vLLM engine for
    the server's life, a fresh :class:`~persona_axis.inference.vllm.engine.VllmBatch` on it at
    each call)."""
    if backend == "hf":
        return None
    if backend != "vllm":
        raise PersonaAxisError(f"Unknown engine {backend!r}; use 'hf' or 'vllm'.")
    from persona_axis.inference.vllm.engine import VllmBatch, start_engine

    vllm_engine = start_engine(lm, max_rows=max_rows)
    current: list[VllmBatch] = []

    def make() -> GenerationEngine:
        for old in current:
            old.close()
        current[:] = [VllmBatch(lm, vllm_engine)]
        return current[0]

    return make
