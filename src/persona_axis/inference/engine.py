"""The generation-engine interface: requests in, tokens and finished replies out, step by step.

Two implementations satisfy it: our Hugging Face continuous batch
(:class:`~persona_axis.inference.continuous.ContinuousBatch`) and the vLLM engine
(:class:`~persona_axis.inference.vllm.engine.VllmBatch`, in the separate vLLM environment,
docs/vllm-backend.md). Every request carries its own intervention, sampling, telemetry probe
and pooled layers (:class:`RowRequest`); a step returns the content tokens it sampled and the
requests that finished (:class:`StepResult`). Everything that generates drives an engine
through this interface: the server's continuous scheduler step by step, the library
(:func:`~persona_axis.inference.generation.generate_replies`,
:func:`~persona_axis.inference.telemetry.generate_with_telemetry`) and the build through
:func:`run_to_end`.

Rules both engines follow: a reply ends at an end-of-turn token (not kept) or at
``max_new_tokens``; a request with a probe or pooled layers is fed its last content token once
more, so every content token is read; a sampled request draws from its own generator seeded
with ``Sampling.seed`` (:func:`row_seed` gives the rows of one call distinct seeds), so its
reply does not depend on the batch around it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from torch import Tensor
from transformers import GenerationConfig

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.interventions import InterventionSpec
from persona_axis.inference.rows import Phase, Probe, ReplyTelemetry
from persona_axis.models.loading import LoadedModel

ROW_SEED_STRIDE = 2**32
""":func:`row_seed`: row i of a call seeded s samples with ``s + i·2³²``."""


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; ``temperature`` 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise PersonaAxisError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}.")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise PersonaAxisError("temperature must be >= 0 and top_p in (0, 1].")

    def config(self, lm: LoadedModel) -> GenerationConfig:
        """The same settings for Hugging Face ``model.generate`` (callers who run it
        themselves, e.g. inside :func:`~persona_axis.inference.interventions.intervene`)."""
        tokenizer = lm.tokenizer
        sample = self.temperature > 0
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=sample,
            temperature=self.temperature if sample else None,
            top_p=self.top_p if sample else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop_ids(lm),
        )


@dataclass(frozen=True)
class Reply:
    """One generated reply: text (special tokens removed), token ids, prompt length."""

    text: str
    token_ids: list[int]
    prompt_length: int
    finished: bool  # ended with an end-of-turn token rather than the length limit
    activations: Tensor | None = None
    """``[n_pooled_layers, d]`` float32 content-token mean when pooled during generation."""
    norms: Tensor | None = None
    """``[n_pooled_layers]`` mean ``‖h‖`` over the content tokens, pooled alongside."""


def stop_ids(lm: LoadedModel) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus the generation config's, deduplicated."""
    ids: list[int] = []
    configured = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    for candidate in (lm.tokenizer.eos_token_id, configured):
        if isinstance(candidate, int):
            ids.append(candidate)
        elif isinstance(candidate, list):
            ids.extend(candidate)
    return sorted(set(ids))


@dataclass(frozen=True)
class RowRequest:
    """One generation: ``prompt`` token ids (rendered with the generation prompt), decoding
    settings, the row's intervention (None = none), what to read (None = no telemetry) and the
    layers whose content-token mean the reply carries (``pool``: decoder blocks, 0-based; None
    = none; :attr:`Reply.activations`). ``key`` identifies it in the results."""

    key: Hashable
    prompt: Sequence[int]
    sampling: Sampling = field(default_factory=Sampling)
    spec: InterventionSpec | None = None
    probe: Probe | None = None
    pool: tuple[int, ...] | None = None


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


def row_seed(seed: int, index: int) -> int:
    """The seed of row ``index`` of a call seeded ``seed``: ``seed + index·2³²`` (row 0 keeps
    ``seed``, so a call with one conversation samples as one server request with that seed)."""
    return seed + index * ROW_SEED_STRIDE
