"""`persona-axis build` end to end on a tiny model: the bundle, resumption after real SIGKILLs
between batches and inside a batch's write (the result equals an uninterrupted run's: store
files byte for byte, floats within the tolerance of tests/support/build_equality.py, since
they come from another process), and refusal of changed settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from persona_axis.axis.bundle import AxisBundle
from persona_axis.errors import PersonaAxisError
from persona_axis.pipeline import BuildConfig, build
from support.build_equality import assert_same_build
from support.small_catalog import ROLES, tiny_build_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> BuildConfig:
    return tiny_build_config(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="module")
def reference_run(setup: BuildConfig, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, build(setup, out)


def test_build_writes_a_complete_bundle(reference_run) -> None:
    out, result = reference_run
    bundle = AxisBundle.load(out / "bundle")
    assert bundle.shape == (4, 64)
    assert sorted(bundle.roles()) == sorted(name for name, *_ in ROLES)
    assert sorted(bundle.traits()) == ["calm", "wry"]
    manifest = bundle.manifest
    n_rollouts = 5 * 3 + 4 * 2 * 3 + 2 * 2 * 2
    assert (
        manifest["projection_percentiles"]["n_rollouts"] + manifest["counts"]["empty_replies"]
        == n_rollouts
    )
    assert manifest["catalog"]["roles"] == 4 and manifest["judge"]["name"] == "none"
    assert len(manifest["space"]["cos_axis_pc1_by_layer"]) == 4
    assert set(manifest["projection_percentiles"]["per_response_by_kind"]) == {"default", "role"}
    assert bundle.caps and manifest["recommended_cap"] in bundle.caps
    for setting in bundle.caps.values():
        assert len(setting.notes["per_token_thresholds"]) == len(setting.thresholds)
    assert set(result.timings) >= {"generate", "judge", "vectors", "quality", "calibrate"}
    quality = manifest["quality"]
    assert bundle.target_layer == quality["target_layer"]["layer"]
    assert quality["target_layer"]["chosen_by"] == "evidence"
    assert manifest["space"]["layer"] == manifest["rankings"]["layer"] == bundle.target_layer
    for key in ("stability_question", "stability_role", "heldout_auroc", "cos_axis_pc1"):
        assert len(quality[key]["estimate"]) == len(quality[key]["ci95"]) == 4
    assert quality["method"]["question_blocks"] == 3  # one block per question here
    assert quality["method"]["heldout_rollouts"]["default"] == manifest["counts"]["default"]
    assert set(result.summary["quality"]) >= {"stability_question", "heldout_auroc"}
    assert result.summary["roles_kept"] == 4
    assert "Tiny" in json.dumps(manifest["catalog"]) or manifest["model_name"] == "Tiny"


WORKER = """
import json, os, signal, sys, time
import persona_axis.files as files
import persona_axis.pipeline.stages as stages
from persona_axis.pipeline import BuildConfig, build

after, mode, stored = int(sys.argv[3]), sys.argv[4], []
generate_batch, write_atomic = stages.generate_batch, files.write_atomic

def generate_then_hold(lm, store, k, specs, config):
    generate_batch(lm, store, k, specs, config)
    stored.append(k)
    if mode == "hold" and len(stored) >= after:  # alive, unfinished, until the test kills us
        time.sleep(600)

def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)

def write_and_die(path, write):
    # The record that would mark batch number `after` + 1 of this run done: its tensor file
    # is already in place. "tensors": die before the record's write; "record": die with half
    # of the record written to its temporary file.
    if mode == "hold" or os.path.basename(os.path.dirname(path)) != "rollouts":
        return write_atomic(path, write)
    if len(stored) < after:
        return write_atomic(path, write)
    if mode == "tensors":
        die()

    def torn(temporary):
        write(temporary)
        os.truncate(temporary, os.path.getsize(temporary) // 2)
        die()

    return write_atomic(path, torn)

stages.generate_batch = generate_then_hold
files.write_atomic = write_and_die
build(BuildConfig(**json.loads(sys.argv[1])), sys.argv[2])
"""


def start_worker(config: BuildConfig, out: Path, after: int, mode: str) -> subprocess.Popen:
    settings = asdict(config)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(settings), str(out), str(after), mode],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_after(config: BuildConfig, out: Path, new_batches: int) -> int:
    """Start a build that holds (alive, unfinished) once it has stored ``new_batches`` more
    batches, SIGKILL it there, and return the number of stored batches. Deterministic: the
    build cannot finish before the kill."""
    rollouts = out / "work" / "rollouts"
    before = len(list(rollouts.glob("*.json"))) if rollouts.is_dir() else 0
    worker = start_worker(config, out, new_batches, "hold")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and worker.poll() is None:
        if rollouts.is_dir() and len(list(rollouts.glob("*.json"))) >= before + new_batches:
            break
        time.sleep(0.01)
    alive = worker.poll() is None
    worker.send_signal(signal.SIGKILL)
    _, stderr = worker.communicate()
    assert alive, f"the worker ended before the kill: {stderr.decode()[-2000:]}"
    return len(list(rollouts.glob("*.json")))


def test_resumes_after_sigkill_with_an_identical_result(setup, reference_run, tmp_path) -> None:
    reference_out, _ = reference_run
    total = len(list((reference_out / "work" / "rollouts").glob("*.json")))
    first = kill_after(setup, tmp_path, 2)
    second = kill_after(setup, tmp_path, 3)
    assert (first, second) == (2, 5) and second < total, (first, second, total)
    assert not (tmp_path / "bundle").exists()
    build(setup, tmp_path)
    assert_same_build(reference_out, tmp_path)
    assert not list(tmp_path.rglob("*.tmp")), "no temporary files are left behind"


def die_in_write(config: BuildConfig, out: Path, new_batches: int, mode: str) -> list[str]:
    """Run a build that SIGKILLs itself inside the write of its batch ``new_batches`` + 1
    (see WORKER); return the names of the stored rollout records."""
    worker = start_worker(config, out, new_batches, mode)
    _, stderr = worker.communicate(timeout=300)
    assert worker.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    return sorted(p.name for p in (out / "work" / "rollouts").glob("*.json"))


def test_resumes_after_a_kill_inside_a_batch_write(setup, reference_run, tmp_path) -> None:
    reference_out, _ = reference_run
    work = tmp_path / "work"
    # Killed between batch 1's tensor file and its record: batch 1 is not done.
    assert die_in_write(setup, tmp_path, 1, "tensors") == ["000000.json"]
    assert (work / "activations" / "000001.safetensors").is_file()
    # Killed with batch 2's record half written to its temporary file.
    assert die_in_write(setup, tmp_path, 1, "record") == ["000000.json", "000001.json"]
    assert (work / "activations" / "000002.safetensors").is_file()
    (torn,) = (work / "rollouts").glob(".*.tmp")
    assert torn.stat().st_size > 0
    build(setup, tmp_path)
    assert_same_build(reference_out, tmp_path)
    assert not list(tmp_path.rglob("*.tmp")), "the torn temporary file was removed"


def test_a_finished_build_reruns_without_regenerating(setup, reference_run) -> None:
    out, _ = reference_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "work" / "rollouts").iterdir()}
    build(setup, out)
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "work" / "rollouts").iterdir()}


def test_changed_settings_in_an_existing_build_are_refused(setup, reference_run) -> None:
    out, _ = reference_run
    with pytest.raises(PersonaAxisError, match=r"settings\.seed: stored 0, now 1"):
        build(setup.with_overrides(seed=1), out)


def test_token_percentile_batches_equal_one_at_a_time() -> None:
    from persona_axis.inference.token_projections import token_projections
    from support.tiny_models import tiny_lm

    lm = tiny_lm("qwen2")
    axis = torch.randn(lm.shape.n_layers, lm.shape.hidden_size)
    sample = [
        ([{"role": "user", "content": "Who are you?"}], [11, 12, 13]),
        ([{"role": "system", "content": "Be a ghost."}, {"role": "user", "content": "Hi"}], [7]),
        ([{"role": "user", "content": "A longer question about the sea?"}], [21, 22, 23, 24, 25]),
    ]
    batched = token_projections(lm, axis, sample, batch_size=3, progress=False)
    alone = token_projections(lm, axis, sample, batch_size=1, progress=False)
    assert batched.shape == (9, lm.shape.n_layers)
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_validate_recomputes_the_manifest_figures(reference_run, tmp_path) -> None:
    from typer.testing import CliRunner

    from persona_axis.cli import app

    out, result = reference_run
    written = tmp_path / "quality.json"
    run = CliRunner().invoke(app, ["validate", str(out / "bundle"), "--json", str(written)])
    assert run.exit_code == 0, run.output
    assert "holds the same figures" in run.output and "split-half cosine" in run.output
    assert json.loads(written.read_text()) == result.bundle.manifest["quality"]
    from persona_axis.pipeline.validate import validate_build

    checked = validate_build(out)  # the same from Python, given the build directory
    assert checked.quality == result.bundle.manifest["quality"] and checked.matches_manifest
    assert checked.layer == result.bundle.target_layer and checked.unavailable is None
    assert set(checked.figures) >= {"stability_question", "heldout_auroc"}


def test_target_layer_override_is_recorded(setup, reference_run, tmp_path) -> None:
    forced = build(setup.with_overrides(target_layer=0), tmp_path)
    assert forced.bundle.target_layer == 0
    assert forced.bundle.manifest["quality"]["target_layer"]["chosen_by"] == "override"
    with pytest.raises(PersonaAxisError, match="out of range"):
        build(setup.with_overrides(target_layer=9), tmp_path / "other")


def test_a_build_too_small_to_assess_still_writes_its_bundle(setup, tmp_path) -> None:
    small = build(setup.with_overrides(n_questions=1, n_traits=0), tmp_path)
    quality = small.bundle.manifest["quality"]
    assert "two question blocks" in quality["unavailable"]
    assert small.bundle.target_layer == 2 and quality["target_layer"]["chosen_by"] == "default"
    assert small.summary["warnings"][0].startswith("QUALITY NOT ASSESSED")
