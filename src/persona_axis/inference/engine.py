"""The generation-engine interface: requests in, tokens and finished replies out, step by step.

Two implementations satisfy it: our Hugging Face continuous batch
(:class:`~persona_axis.inference.continuous.ContinuousBatch`) and the vLLM engine
(:class:`~persona_axis.inference.vllm.engine.VllmBatch`, in the separate vLLM environment,
docs/vllm-backend.md). Every request carries its own intervention, sampling and telemetry probe
(:class:`RowRequest`); a step returns the content tokens it
sampled and the requests that finished (:class:`StepResult`).
The server's continuous scheduler and :func:`run_to_end` drive any engine through this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from persona_axis.inference.generation import Reply, Sampling
from persona_axis.inference.interventions import InterventionSpec
from persona_axis.inference.rows import Phase, Probe
from persona_axis.inference.telemetry import ReplyTelemetry


@dataclass(frozen=True)
class RowRequest:
    """One generation: ``prompt`` token ids (rendered with the generation prompt), decoding
    settings, the row's intervention (None = none) and what to read (None = no telemetry).
    ``key`` identifies it in the results."""

    key: Hashable
    prompt: Sequence[int]
    sampling: Sampling = field(default_factory=Sampling)
    spec: InterventionSpec | None = None
    probe: Probe | None = None


@dataclass(frozen=True)
class Finished:
    """A finished request: its reply and telemetry (None without a probe or content)."""

    key: Hashable
    reply: Reply
    telemetry: ReplyTelemetry | None


@dataclass
class StepResult:
    """What one step produced: ``(key, token id)`` of every content token sampled (in order),
    and the requests that finished."""

    tokens: list[tuple[Hashable, int]] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)
    kind: Phase | None = None
    rows: int = 0


@runtime_checkable
class GenerationEngine(Protocol):
    """A running batch: :meth:`add` queues a request, :meth:`step` advances every running
    request by one forward pass, :meth:`cancel` drops one. Not thread-safe: one thread drives it."""

    def add(self, request: RowRequest) -> None: ...

    def cancel(self, key: Hashable) -> bool: ...

    def step(self) -> StepResult: ...

    @property
    def idle(self) -> bool: ...

    @property
    def running_keys(self) -> list[Hashable]:
        """Keys of the requests the next step decodes (not those still waiting)."""
        ...


E = TypeVar("E", bound=GenerationEngine)


def run_to_end(
    engine: E,
    requests: Sequence[RowRequest],
    *,
    on_step: Callable[[E, int], None] | None = None,
) -> dict[Hashable, Finished]:
    """Run ``requests`` to the end through ``engine``; results by key. ``on_step(engine, step)``
    runs before every step (e.g. to add requests mid-run)."""
    for request in requests:
        engine.add(request)
    done: dict[Hashable, Finished] = {}
    step = 0
    while True:
        if on_step is not None:
            on_step(engine, step)
        if engine.idle:
            return done
        for finished in engine.step().finished:
            done[finished.key] = finished
        step += 1
