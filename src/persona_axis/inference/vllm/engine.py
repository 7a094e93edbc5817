"""The generation engine on vLLM: :class:`VllmBatch`, with per-request interventions inside
vLLM's own continuous batching.

vLLM's engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
:func:`~persona_axis.inference.vllm.require_vllm`), so the hooks of
:class:`~persona_axis.inference.vllm.tokens.TokenSteering` read the model runner's batch and our
per-request state directly. A request carries our row id in ``SamplingParams.extra_args``; the
runner's batch order, query offsets and computed-token counts give each request's tokens and
positions in the flattened step. Requirements that follow: eager mode (``enforce_eager``: hooks
do not run inside CUDA graphs) and no asynchronous scheduling (the hooks read the batch being
run). Prefix caching stays on, isolated per intervention by :func:`~.salt.cache_salt`.

Replies follow the HF engine's rules: greedy or seeded sampling (vLLM's own sampler: sampled
replies are not expected to equal HF's token for token), end at an end-of-turn token (dropped)
or ``max_new_tokens``; with a probe or pooling, a request asks for one token more so that every
content token is fed, and that token is dropped.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.engine import Finished, Reply, RowRequest, StepResult, stop_ids
from persona_axis.inference.interventions import by_layer_checked
from persona_axis.inference.rows import PoolSums, RowTelemetry
from persona_axis.inference.vllm import require_vllm
from persona_axis.inference.vllm.residual import decoder_layers
from persona_axis.inference.vllm.salt import cache_salt
from persona_axis.inference.vllm.tokens import Live, TokenSteering
from persona_axis.models.loading import LoadedModel

EXTRA_KEY = "persona_axis_row"
"""``SamplingParams.extra_args`` entry holding our row id."""
KV_CACHE_GIB = "4"
"""vLLM's CPU KV cache (GiB) unless ``VLLM_CPU_KVCACHE_SPACE`` is set: vLLM's default takes
most of the machine's memory."""


_IDS = itertools.count()
"""Engine request ids, unique in the process (batches may share an engine)."""
_ENGINES: dict[tuple[str, str, int, int], Any] = {}
_SHARED: dict[int, VllmBatch] = {}


def start_engine(lm: LoadedModel, *, max_rows: int = 16, seed: int = 0) -> Any:
    """A vLLM ``LLMEngine`` on ``lm``'s weights (``lm.source``) and dtype, set up for
    :class:`VllmBatch`; one per process and setting (started once, then reused: start-up takes
    tens of seconds, as vLLM profiles and warms up)."""
    dtype = lm.dtype_name
    key = (lm.source, dtype, max_rows, seed)
    if key not in _ENGINES:
        _ENGINES[key] = _start(lm, dtype, max_rows, seed)
    return _ENGINES[key]


def shared_batch(lm: LoadedModel, *, max_rows: int = 16) -> VllmBatch:
    """A :class:`VllmBatch` on :func:`start_engine`'s engine, one per loaded model (the build
    takes it batch after batch)."""
    found = _SHARED.get(id(lm))
    if found is None or found.lm is not lm:
        found = VllmBatch(lm, start_engine(lm, max_rows=max_rows))
        _SHARED[id(lm)] = found
    return found


def _start(lm: LoadedModel, dtype: str, max_rows: int, seed: int) -> Any:
    require_vllm()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", KV_CACHE_GIB)
    # vLLM drops torch to one thread unless OMP_NUM_THREADS is set; its engine runs here, in
    # the same process as the HF model, so keep the threads torch already has
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    from vllm import EngineArgs
    from vllm.platforms import current_platform
    from vllm.v1.engine.llm_engine import LLMEngine

    cpu: dict[str, Any] = {}
    if current_platform.is_cpu():
        # vLLM 0.32 rewinds a seeded request's generator after a partial (chunked) prefill,
        # which CPU generators cannot do: prefill whole prompts only
        longest = int(getattr(lm.model.config, "max_position_embeddings", 0) or 0)
        cpu = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(longest, 8192)}
    args = EngineArgs(
        model=lm.source,
        tokenizer=lm.source,
        dtype=dtype,
        seed=seed,
        max_num_seqs=max_rows,
        enforce_eager=True,
        enable_prefix_caching=True,  # isolated per intervention by cache_salt
        async_scheduling=False,
        **cpu,
    )
    return LLMEngine.from_engine_args(args)


def _runner_of(worker: Any) -> Any:
    return worker.model_runner


@dataclass
class _Row:
    live: Live
    engine_id: str
    limit: int
    tokens: list[int] = field(default_factory=list)
    seen: int = 0
    ended: bool = False
    stopped: bool = False


class VllmBatch:
    """vLLM behind :class:`~persona_axis.inference.engine.GenerationEngine` (module doc).

    ``engine`` is a vLLM ``LLMEngine`` from :func:`start_engine` (one per process; several
    batches may share it one after another, never at once). ``lm`` gives the tokenizer, stop
    tokens and the shapes requests are checked against.
    """

    def __init__(self, lm: LoadedModel, engine: Any) -> None:
        self.lm = lm
        self.engine = engine
        self.stops = stop_ids(lm)
        runners = engine.collective_rpc(_runner_of)
        if len(runners) != 1 or not hasattr(runners[0], "input_batch"):
            raise PersonaAxisError(
                "The vLLM engine must run its model in this process (one worker, "
                "VLLM_ENABLE_V1_MULTIPROCESSING=0, no tensor or pipeline parallelism)."
            )
        self.runner = runners[0]
        layers = decoder_layers(self.runner.model)
        if len(layers) != lm.shape.n_layers:
            raise PersonaAxisError(
                f"vLLM's model has {len(layers)} decoder layers, the HF model "
                f"{lm.shape.n_layers}; load the same model in both."
            )
        self.steering = TokenSteering(lm, layers, self._scheduled)
        self._rows: dict[str, _Row] = {}  # by our engine id
        self._keys: dict[Hashable, str] = {}
        self.cached_tokens: dict[Hashable, int] = {}
        """Prompt tokens each finished request took from vLLM's prefix cache."""

    def close(self) -> None:
        """Abort what runs and remove the hooks (the vLLM engine stays usable)."""
        for key in list(self._keys):
            self.cancel(key)
        self.steering.remove()

    # -- requests ------------------------------------------------------------------------------

    def add(self, request: RowRequest) -> None:
        """Queue ``request``; with ``request.pool``, its reply carries the content-token mean of
        those layers (``Reply.activations``, ``Reply.norms``), as in the build."""
        from vllm import SamplingParams

        if not request.prompt:
            raise PersonaAxisError("The prompt is empty; render a conversation first.")
        if request.key in self._keys:
            raise PersonaAxisError(f"Request {request.key!r} is already running.")
        if request.spec is not None:
            by_layer_checked(self.lm, request.spec)
        telemetry = None
        if request.probe is not None:
            telemetry = RowTelemetry.start(self.lm, request.spec, request.probe)
        pool_sums = None if request.pool is None else PoolSums.start(self.lm, request.pool)
        sampling = request.sampling
        extra = int(telemetry is not None or pool_sums is not None)
        engine_id = f"pa-{next(_IDS)}"
        params = SamplingParams(
            max_tokens=sampling.max_new_tokens + extra,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed if sampling.temperature > 0 else None,
            stop_token_ids=list(self.stops),
            detokenize=False,
            extra_args={EXTRA_KEY: engine_id},
        )
        live = Live(request, telemetry, pool_sums)
        prompt: dict[str, Any] = {"prompt_token_ids": list(request.prompt)}
        salt = cache_salt(request.spec)
        if salt is not None:
            prompt["cache_salt"] = salt
        self.engine.add_request(engine_id, prompt, params)
        self._rows[engine_id] = _Row(live, engine_id, sampling.max_new_tokens)
        self._keys[request.key] = engine_id

    def cancel(self, key: Hashable) -> bool:
        """Drop request ``key``; True if it was running."""
        engine_id = self._keys.pop(key, None)
        if engine_id is None:
            return False
        self._rows.pop(engine_id, None)
        self.engine.abort_request([engine_id])
        return True

    @property
    def idle(self) -> bool:
        return not self._rows

    @property
    def running_keys(self) -> list[Hashable]:
        return [row.live.request.key for row in self._rows.values()]

    # -- one step ------------------------------------------------------------------------------

    def _scheduled(self) -> list[tuple[Live | None, int, int]]:
        """The runner's current step: each request's row, first position and token count."""
        runner = self.runner
        batch = runner.input_batch
        n = batch.num_reqs
        offsets = runner.query_start_loc.cpu[: n + 1].tolist()
        computed = batch.num_computed_tokens_cpu[:n].tolist()
        out: list[tuple[Live | None, int, int]] = []
        for index, req_id in enumerate(batch.req_ids[:n]):
            state = runner.requests.get(req_id)
            extra = getattr(getattr(state, "sampling_params", None), "extra_args", None) or {}
            row = self._rows.get(extra.get(EXTRA_KEY, ""))
            count = offsets[index + 1] - offsets[index]
            out.append((None if row is None else row.live, int(computed[index]), count))
        return out

    def step(self) -> StepResult:
        """One vLLM step: a forward pass over every scheduled request's new tokens."""
        outputs = self.engine.step()
        result = StepResult(
            kind="prompt" if self.steering.last_prefill else "generated",
            rows=self.steering.last_rows,
        )
        for output in outputs:
            row = self._rows.get(output.request_id)
            if row is None:
                continue
            token_ids = list(output.outputs[0].token_ids)
            for token in token_ids[row.seen :]:
                self._take(row, token, result)
            row.seen = len(token_ids)
            if output.finished:
                self.cached_tokens[row.live.request.key] = int(output.num_cached_tokens or 0)
                del self._rows[row.engine_id]
                self._keys.pop(row.live.request.key, None)
                result.finished.append(self._finished(row))
        return result

    def _take(self, row: _Row, token: int, result: StepResult) -> None:
        if row.ended:
            return
        if len(row.tokens) >= row.limit:  # the extra token asked for so the last is fed
            row.ended = True
        elif token in self.stops:
            row.ended = row.stopped = True
        else:
            row.tokens.append(token)
            result.tokens.append((row.live.request.key, token))

    def _finished(self, row: _Row) -> Finished:
        live = row.live
        if live.pool is not None and live.pool.count != len(row.tokens):  # an invariant
            raise RuntimeError(f"pooled {live.pool.count} tokens, reply has {len(row.tokens)}")
        pooled = None if live.pool is None else live.pool.means()
        reply = Reply(
            text=str(self.lm.tokenizer.decode(row.tokens, skip_special_tokens=True)).strip(),
            token_ids=list(row.tokens),
            prompt_length=live.prompt_length,
            finished=row.stopped,
            activations=None if pooled is None else pooled[0],
            norms=None if pooled is None else pooled[1],
        )
        telemetry = None if live.telemetry is None else live.telemetry.result()
        return Finished(live.request.key, reply, telemetry)
