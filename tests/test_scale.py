"""`build --workers N`: generation sharded over local Ray actors (tiny model, 2 CPU workers).

The sharded store and bundle must equal a one-process build's, and a worker SIGKILLed after it
stored a batch must cost nothing: its unfinished batches are redone by a fresh actor, and every
batch is generated exactly once.

Builds are compared with :func:`support.build_equality.assert_same_build`: rollouts, token
ids and judge records exactly, floats with a stated tolerance (see that module for why).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch

from persona_axis.pipeline import BuildConfig, build
from persona_axis.pipeline.config import RUNTIME_FIELDS
from persona_axis.pipeline.sharding import WorkerInfo, threads_per_worker
from support.build_equality import assert_same_build
from support.small_catalog import tiny_build_config

ray = pytest.importorskip("ray")

RAY_PROCESSES = ("raylet", "gcs_server")


def test_workers_are_runtime_settings_not_results() -> None:
    config = BuildConfig(workers=2, ray_address="ray://head:10001", gpus_per_worker=1.0)
    assert {"workers", "ray_address", "gpus_per_worker"} <= RUNTIME_FIELDS
    assert config.result_fields() == BuildConfig().result_fields()
    assert threads_per_worker(2, cores=2) == 1 and threads_per_worker(3, cores=2) == 1
    assert threads_per_worker(2, cores=16) == 8


@pytest.fixture
def no_stray_ray():
    """Shut Ray down whatever happens, then check no Ray process of ours is left."""
    yield
    if ray.is_initialized():
        ray.shutdown()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = [
            p.name()
            for p in psutil.Process().children(recursive=True)
            if any(name in p.name() for name in RAY_PROCESSES)
        ]
        if not left:
            return
        time.sleep(0.2)
    raise AssertionError(f"Ray processes left behind: {left}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> BuildConfig:
    return tiny_build_config(tmp_path_factory.mktemp("scale"))


def build_with_threads(config: BuildConfig, out: Path, threads: int) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        build(config, out)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(setup: BuildConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-process build with the torch threads each of 2 local workers gets."""
    out = tmp_path_factory.mktemp("single")
    build_with_threads(setup, out, threads_per_worker(2))
    return out


@pytest.mark.slow
def test_another_thread_count_gives_the_same_build(setup, reference, tmp_path) -> None:
    """Another thread count samples the same replies; its floats agree within tolerance."""
    threads = max(2, threads_per_worker(1))
    if threads == threads_per_worker(2):
        pytest.skip("one core: the workers use as many threads as one process")
    build_with_threads(setup, tmp_path, threads)
    assert_same_build(reference, tmp_path)


@pytest.mark.slow
def test_two_workers_equal_one_process(setup, reference, tmp_path, no_stray_ray) -> None:
    result = build(setup.with_overrides(workers=2), tmp_path)
    report = result.generation
    assert report is not None
    n_batches = len(list((reference / "work" / "rollouts").iterdir()))
    assert sorted(report.generated) == list(range(n_batches))
    assert set(report.generated.values()) == {0, 1}, "both workers generated batches"
    assert report.threads_per_worker == threads_per_worker(2)
    assert report.worker_failures == 0 and report.skipped == []
    assert_same_build(reference, tmp_path)
    assert not ray.is_initialized(), "the build shuts down the Ray instance it started"


@pytest.mark.slow
def test_a_killed_worker_loses_and_duplicates_nothing(
    setup, reference, tmp_path, no_stray_ray
) -> None:
    killed: list[WorkerInfo] = []

    def kill_first_writer(batch: int, worker: WorkerInfo) -> None:
        if not killed:  # the worker has stored ≥ 1 batch and holds more
            killed.append(worker)
            os.kill(worker.pid, signal.SIGKILL)

    result = build(setup.with_overrides(workers=2), tmp_path, on_batch=kill_first_writer)
    report = result.generation
    assert report is not None and killed
    n_batches = len(list((reference / "work" / "rollouts").iterdir()))
    assert report.worker_failures == 1 and report.workers_started == 3
    assert report.retried, "the killed worker's queued batches were handed out again"
    assert report.skipped == [], "no batch was dispatched after it had been stored"
    assert sorted(report.generated) == list(range(n_batches)), "every batch exactly once"
    assert killed[0].index not in {report.generated[k] for k in report.retried}
    assert not psutil.pid_exists(killed[0].pid) or psutil.Process(killed[0].pid).status() in (
        psutil.STATUS_ZOMBIE,
        psutil.STATUS_DEAD,
    )
    assert_same_build(reference, tmp_path)


@pytest.mark.slow
def test_resume_a_one_process_build_with_workers(setup, reference, tmp_path, no_stray_ray):
    """Workers are a runtime setting: a build started in one process finishes sharded."""
    first = setup.with_overrides(n_roles=2)  # a smaller, separate build: no reference reuse
    build(first, tmp_path / "a")
    partial = tmp_path / "b"
    (partial / "work").mkdir(parents=True)
    for item in (tmp_path / "a" / "work").iterdir():  # keep the header and the first 3 batches
        if item.is_file():
            (partial / "work" / item.name).write_bytes(item.read_bytes())
        else:
            (partial / "work" / item.name).mkdir()
            for f in sorted(item.iterdir())[:3]:
                (partial / "work" / item.name / f.name).write_bytes(f.read_bytes())
    for kind in ("judge",):
        for f in (partial / "work" / kind).iterdir():
            f.unlink()
    result = build(first.with_overrides(workers=2), partial)
    assert result.generation is not None
    n_batches = len(list((tmp_path / "a" / "work" / "rollouts").iterdir()))
    assert sorted(result.generation.generated) == list(range(3, n_batches))
    assert_same_build(tmp_path / "a", partial)


@pytest.mark.slow
def test_default_model_two_workers_equal_one_process(tmp_path, no_stray_ray) -> None:
    """The issue's check on the embedded SmolLM2, at a tiny size (14 rollouts, 4 new tokens)."""
    config = BuildConfig(
        dtype="float32",
        n_roles=2,
        prompts_per_role=1,
        n_questions=2,
        n_traits=0,
        max_new_tokens=4,
        batch_size=2,
        judge={"backend": "none"},
        min_role_rollouts=1,
        token_percentile_rollouts=4,
        progress=False,
    )
    build_with_threads(config, tmp_path / "single", threads_per_worker(2))
    result = build(config.with_overrides(workers=2), tmp_path / "sharded")
    assert result.generation is not None and len(result.generation.generated) == 7
    assert_same_build(tmp_path / "single", tmp_path / "sharded")
