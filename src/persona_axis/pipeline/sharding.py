"""The generate stage sharded across Ray actors: ``persona-axis build --workers N``.

The plan's batches are already fixed and seeded (batch ``k`` holds the same rollouts and samples
with seed ``config.seed + k``, see :mod:`persona_axis.pipeline.plan`), so sharding only decides
*who* generates a batch, never *what* it holds. Each actor loads the model once and writes its
batches straight into the build's :class:`~persona_axis.pipeline.store.BuildStore`; a batch
write is atomic and batches never share files, so concurrent writers are safe. The driver hands
out batches from a queue (at most :data:`IN_FLIGHT` per actor, so an actor never idles between
batches) and keeps the progress bar.

Failure: when an actor dies (killed, out of memory, node lost), every batch it held that is not
in the store goes back to the queue and a fresh actor replaces it, up to ``max_restarts``
replacements in all. A batch found in the store is never generated again, so each batch is
written exactly once even when an actor dies between writing it and reporting back. An error
raised by the generation code itself is not retried (it would fail again); it is re-raised.

Threads: torch processes sharing cores slow each other down badly (OpenMP spin-waiting; about
100× with 2 threads each on 2 cores). Locally each actor gets ``max(1, cores // workers)``
threads (``torch.set_num_threads`` and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` through the
actor's ``runtime_env``) and reserves as many Ray CPUs.

Determinism: a batch's tokens and activations do not depend on which actor ran it. They may
depend on the torch thread count in the last float bits (CPU kernels may split reductions by
thread), and a last-bit change in the logits can, rarely, flip a sampled token; the tests check
what holds on their model (see ``tests/test_scale.py``).

Ray is imported lazily (``pip install 'persona-axis[scale]'``); ``import persona_axis`` stays light.
For a cluster (``ray_address``), every node needs persona-axis, the model (same id or path) and
the build directory on a shared filesystem; an actor that cannot see the store refuses to start.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from persona_axis.errors import PersonaAxisError
from persona_axis.pipeline.config import BuildConfig
from persona_axis.pipeline.plan import RolloutSpec
from persona_axis.pipeline.store import HEADER, BuildStore, read_json

if TYPE_CHECKING:
    from persona_axis.models.loading import LoadedModel

IN_FLIGHT = 2
"""Batches queued on one actor at a time: one running, one waiting."""


@dataclass(frozen=True)
class WorkerInfo:
    """One started actor: its sequence number, Ray handle and process id."""

    index: int
    actor: Any
    pid: int
    node: str


@dataclass
class ShardReport:
    """What a sharded generate stage did (for logs and tests).

    ``generated`` maps each batch generated in this run to the worker index that wrote it;
    ``skipped`` lists batches an actor found already stored (none, unless another process
    writes the same store); ``retried`` lists batches handed out again after their actor died;
    ``workers_started`` counts actors including replacements.
    """

    generated: dict[int, int] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    workers_started: int = 0
    worker_failures: int = 0
    threads_per_worker: int = 1
    seconds: float = 0.0


def local_cores() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """``max(1, cores // workers)``: torch threads for each local actor."""
    return max(1, (cores or local_cores()) // workers)


class _Worker:
    """The actor body: loads the model once, then generates batches into the store.

    A :class:`PersonaAxisError` while starting (store not visible, other weights) is kept and
    raised by :meth:`ready`, so the driver reports it as the user error it is instead of
    retrying a worker that can never start."""

    def __init__(
        self,
        config: BuildConfig,
        out: str,
        header: dict[str, Any],
        fingerprint: str | None,
        threads: int,
    ) -> None:
        self.error: PersonaAxisError | None = None
        try:
            self._start(config, out, header, fingerprint, threads)
        except PersonaAxisError as exc:
            self.error = exc

    def _start(
        self,
        config: BuildConfig,
        out: str,
        header: dict[str, Any],
        fingerprint: str | None,
        threads: int,
    ) -> None:
        import torch

        from persona_axis.models.fingerprint import try_weight_fingerprint
        from persona_axis.models.loading import load_model

        torch.set_num_threads(threads)
        stored = Path(out) / "work" / HEADER
        if not stored.is_file() or read_json(stored) != header:
            raise PersonaAxisError(
                f"The build directory {out} is not visible from a Ray worker on this node (or "
                "holds another build); put --out on a filesystem every node shares."
            )
        self.config = config
        self.store = BuildStore(out)
        device_map = "auto" if config.gpus_per_worker > 0 else None
        self.lm: LoadedModel = load_model(
            None if config.model == "default" else config.model,
            dtype=config.dtype,
            device_map=device_map,
        )
        model = header["model"]
        shape = self.lm.shape
        ours = try_weight_fingerprint(self.lm.model)
        if (
            self.lm.name != model["id"]
            or (shape.n_layers, shape.hidden_size) != (model["n_layers"], model["hidden_size"])
            or (fingerprint is not None and ours is not None and ours != fingerprint)
        ):
            raise PersonaAxisError(
                f"A Ray worker loaded {self.lm.name!r} ({shape.n_layers} layers, fingerprint "
                f"{ours}), not the driver's model {model['id']!r} (fingerprint {fingerprint}); "
                "give --model a path or id that resolves to the same weights on every node."
            )

    def ready(self) -> tuple[int, str, int]:
        """(process id, node name, torch threads) once the model is loaded."""
        import socket

        import torch

        if self.error is not None:
            raise self.error
        return os.getpid(), socket.gethostname(), torch.get_num_threads()

    def generate(self, batch: int, specs: list[RolloutSpec]) -> bool:
        """Generate batch ``batch`` (seed ``config.seed + batch``) into the store; False when
        it was stored already (nothing is written twice)."""
        from persona_axis.pipeline.rollouts import generate_batch

        if self.store.has_batch(batch):
            return False
        generate_batch(self.lm, self.store, batch, specs, self.config)
        return True


def generate_sharded(
    store: BuildStore,
    batches: list[list[RolloutSpec]],
    config: BuildConfig,
    header: dict[str, Any],
    *,
    fingerprint: str | None = None,
    max_restarts: int | None = None,
    on_batch: Callable[[int, WorkerInfo], None] | None = None,
) -> ShardReport:
    """Generate every batch missing from ``store`` on ``config.workers`` Ray actors.

    Connects to ``config.ray_address`` when set, else starts a local Ray instance (and shuts it
    down afterwards); an already initialised Ray is used as it is. ``max_restarts`` bounds
    replacement actors (default ``2 × workers``). ``on_batch(batch, worker)`` is called in the
    driver after each batch is stored (tests use it to kill a worker mid-run).
    """
    try:
        import ray
    except ImportError as exc:
        raise PersonaAxisError(
            "--workers needs Ray; install it with `pip install 'persona-axis[scale]'`."
        ) from exc

    started = time.perf_counter()
    report = ShardReport()
    todo = deque(k for k in range(len(batches)) if not store.has_batch(k))
    if not todo:
        return report
    workers = min(config.workers, len(todo))
    local = config.ray_address is None
    # On a cluster the driver cannot see the nodes' cores: one thread per actor (GPU actors
    # need little CPU); Ray reserves as many CPUs as threads either way.
    # Threads follow the requested worker count, not how many batches are left, so a resumed
    # build computes its last batches with the same thread count as the first ones.
    report.threads_per_worker = threads = threads_per_worker(config.workers) if local else 1
    own_ray = not ray.is_initialized()
    if own_ray:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        if local:
            options["num_cpus"] = max(workers * threads, local_cores())
        ray.init(address=config.ray_address, **options)
    try:
        dispatcher = _Dispatcher(
            ray,
            store,
            batches=batches,
            config=config,
            header=header,
            fingerprint=fingerprint,
            threads=threads,
            report=report,
        )
        dispatcher.run(
            todo, workers, 2 * workers if max_restarts is None else max_restarts, on_batch
        )
    finally:
        if own_ray:
            ray.shutdown()
    missing = [k for k in range(len(batches)) if not store.has_batch(k)]
    if missing:  # an internal invariant: the loop ends only when every batch is stored
        raise RuntimeError(f"sharded generation finished with batches {missing} missing")
    report.seconds = time.perf_counter() - started
    return report


class _Dispatcher:
    """The driver's queue: hands batches to actors, replaces dead ones, re-queues their work."""

    def __init__(
        self,
        ray: Any,
        store: BuildStore,
        *,
        batches: list[list[RolloutSpec]],
        config: BuildConfig,
        header: dict[str, Any],
        fingerprint: str | None,
        threads: int,
        report: ShardReport,
    ) -> None:
        from ray.exceptions import OutOfMemoryError, RayActorError, WorkerCrashedError

        self.ray = ray
        self.store = store
        self.batches = batches
        self.config = config
        self.report = report
        self.failures = (RayActorError, WorkerCrashedError, OutOfMemoryError)
        self.remote = ray.remote(_Worker)
        self.args = (config, str(store.out.resolve()), header, fingerprint, threads)
        self.threads = threads
        self.env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.starting: dict[Any, tuple[int, Any]] = {}  # ready ref -> (index, actor)
        self.live: dict[int, WorkerInfo] = {}
        self.holding: dict[int, list[int]] = {}  # worker index -> batches queued on it
        self.tasks: dict[Any, tuple[int, int]] = {}  # task ref -> (worker index, batch)
        self.todo: deque[int] = deque()
        self.last_error: BaseException | None = None

    def start(self) -> None:
        index = self.report.workers_started
        actor = self.remote.options(
            num_cpus=self.threads,
            num_gpus=self.config.gpus_per_worker,
            runtime_env={"env_vars": self.env},
            max_restarts=0,
        ).remote(*self.args)
        self.starting[actor.ready.remote()] = (index, actor)
        self.report.workers_started += 1

    def feed(self) -> None:
        for index, info in self.live.items():
            queued = self.holding[index]
            while self.todo and len(queued) < IN_FLIGHT:
                batch = self.todo.popleft()
                queued.append(batch)
                self.tasks[info.actor.generate.remote(batch, self.batches[batch])] = (index, batch)

    def lose(self, index: int, actor: Any, error: BaseException) -> None:
        """Forget a dead actor; its unstored batches go back to the front of the queue."""
        if getattr(error, "actor_init_failed", False):  # a bug or broken set-up, not bad luck
            raise RuntimeError(f"A Ray worker could not start: {error}") from error
        self.report.worker_failures += 1
        for batch in reversed(self.holding.pop(index, [])):
            if not self.store.has_batch(batch):
                self.todo.appendleft(batch)
                self.report.retried.append(batch)
        self.live.pop(index, None)
        for ref in [r for r, (i, _) in self.tasks.items() if i == index]:
            del self.tasks[ref]
        self.ray.kill(actor, no_restart=True)
        self.last_error = error

    def run(
        self,
        todo: deque[int],
        workers: int,
        restarts: int,
        on_batch: Callable[[int, WorkerInfo], None] | None,
    ) -> None:
        self.todo = todo
        for _ in range(workers):
            self.start()
        try:
            self._loop(workers, restarts, on_batch)
        finally:  # never leave actors behind, also on a Ray instance the caller owns
            for actor in [info.actor for info in self.live.values()] + [
                actor for _, actor in self.starting.values()
            ]:
                self.ray.kill(actor, no_restart=True)

    def _loop(
        self,
        workers: int,
        restarts: int,
        on_batch: Callable[[int, WorkerInfo], None] | None,
    ) -> None:
        from ray.exceptions import RayTaskError

        with tqdm(
            total=sum(map(len, self.batches)),
            initial=sum(len(b) for k, b in enumerate(self.batches) if self.store.has_batch(k)),
            desc=f"generate ×{workers}",
            unit="rollout",
            disable=not self.config.progress,
        ) as bar:
            while self.todo or self.tasks:
                if self.todo and len(self.live) + len(self.starting) < workers:
                    if restarts <= 0 and not self.live and not self.starting:
                        raise PersonaAxisError(
                            f"Ray workers kept failing ({self.report.worker_failures} failures, "
                            f"last: {self.last_error}); {len(self.todo)} batches are left. Rerun "
                            "the same command to resume, with fewer --workers or more memory."
                        )
                    if restarts > 0:
                        restarts -= 1
                        self.start()
                ready, _ = self.ray.wait([*self.starting, *self.tasks], num_returns=1)
                ref = ready[0]
                if ref in self.starting:
                    index, actor = self.starting.pop(ref)
                    try:
                        pid, node, _threads = self.ray.get(ref)
                    except RayTaskError as error:  # ready() raised the constructor's user error
                        raise _unwrap(error) from None
                    except self.failures as error:
                        self.lose(index, actor, error)
                        continue
                    self.live[index] = WorkerInfo(index, actor, pid, node)
                    self.holding[index] = []
                    self.feed()
                    continue
                index, batch = self.tasks.pop(ref)
                info = self.live[index]
                try:
                    written = self.ray.get(ref)
                except RayTaskError as error:  # generation itself failed: retrying cannot help
                    raise _unwrap(error) from None
                except self.failures as error:
                    self.lose(index, info.actor, error)
                    self.feed()
                    continue
                self.holding[index].remove(batch)
                if not written:
                    self.report.skipped.append(batch)
                elif batch in self.report.generated:  # an internal invariant
                    raise RuntimeError(f"batch {batch} was generated twice")
                else:
                    self.report.generated[batch] = index
                bar.update(len(self.batches[batch]))
                if on_batch is not None:
                    on_batch(batch, info)
                self.feed()


def _unwrap(error: Any) -> BaseException:
    """The exception raised inside an actor: a :class:`PersonaAxisError` as it was, else the
    Ray error that also is an instance of the original exception's class."""
    inner = getattr(error, "cause", None)
    if isinstance(inner, PersonaAxisError):
        return inner
    converted: BaseException = error.as_instanceof_cause()
    return converted
