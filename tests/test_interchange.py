"""``persona-axis export`` and ``import`` end to end: llama.cpp control vectors and the reference
project's files, on a tiny model and the embedded SmolLM2's shape; user errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from persona_axis.axis.bundle import MEAN_NORM_KEY, AxisBundle
from persona_axis.axis.control_vector import read_control_vector
from persona_axis.axis.reference import AXIS_FILE, CAPPING_FILE, DEFAULT_FILE
from persona_axis.cli import app
from persona_axis.inference.interventions import mean_residual_norms, norm_samples
from persona_axis.models import load_model
from persona_axis.models.fingerprint import weight_fingerprint
from persona_axis.models.layers import ModelShape, model_shape
from persona_axis.models.loading import DEFAULT_MODEL, load_shape
from support.bundles import cap_setting, make_bundle
from support.console_script import error_lines, run_console
from support.tiny_models import ARCHITECTURES, HIDDEN, N_LAYERS, build_tiny, styled_tokenizer

runner = CliRunner()
CAP = "layers_2:4-p75"
EXPORT_GGUF = ["export", "--format", "gguf-control-vector"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny("llama").save_pretrained(path)
    styled_tokenizer("chatml").save_pretrained(path)
    return path


def _bundle(tiny_dir: Path, root: Path, *, norms: bool = True) -> Path:
    """A bundle for the tiny model: seeded axis and default, one cap, its fingerprint, and
    (``norms``) stored mean residual norms as ``build`` writes them."""
    lm = load_model(tiny_dir)
    bundle = make_bundle(
        lm,
        model_id=str(tiny_dir),
        default=0.3,
        mean_norm=torch.arange(1.0, N_LAYERS + 1) * 2 if norms else None,
        fingerprint=weight_fingerprint(lm.model),
        caps=[cap_setting(CAP, {2: 0.5, 3: -0.25})],
    )
    return bundle.save(root / "bundle")


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_control_vector_export_import_then_monitor(tiny_dir: Path, tmp_path: Path) -> None:
    bundle = _bundle(tiny_dir, tmp_path)
    out = tmp_path / "axis.gguf"
    export = [*EXPORT_GGUF, "--bundle", str(bundle), "--out", str(out)]
    printed = _ok([*export, "--layers", "1:3", "--scale", "0.5"])
    assert f"--control-vector-scaled {out}:1.0" in printed
    directions, meta = read_control_vector(out)
    assert list(directions) == [1, 2]
    source = AxisBundle.load(bundle)
    torch.testing.assert_close(directions[2], 0.5 * 6.0 * source.unit_axis(2))  # M · n̄_2 · â_2
    assert meta["persona_axis.model_id"] == str(tiny_dir)

    imported = tmp_path / "imported"
    printed = _ok(["import", str(out), "--model", str(tiny_dir), "--out", str(imported)])
    assert "layers [1, 2] (others absent)" in printed and "target layer 2" in printed
    bundle_in = AxisBundle.load(imported)
    assert bundle_in.axis_layers == [1, 2]
    assert bundle_in.fingerprint == source.fingerprint
    assert bundle_in.manifest["imported_from"]["format"] == "gguf-control-vector"

    chat = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    (tmp_path / "chat.json").write_text(json.dumps(chat))
    monitor = ["monitor", str(tmp_path / "chat.json"), "--bundle", str(imported)]
    monitored = _ok([*monitor, "--out", str(tmp_path / "mon"), "--no-progress"])
    assert "layer 2" in monitored
    readings = json.loads((tmp_path / "mon" / "monitor.json").read_text())
    assert readings["extra_layers"] == [1, 2]


def test_export_estimates_mean_norms_on_the_model_when_the_bundle_has_none(
    tiny_dir: Path, tmp_path: Path
) -> None:
    bundle = _bundle(tiny_dir, tmp_path, norms=False)
    out = tmp_path / "axis.gguf"
    _ok([*EXPORT_GGUF, "--bundle", str(bundle), "--out", str(out)])
    (vector,) = read_control_vector(out)[0].values()
    expected = mean_residual_norms(load_model(tiny_dir), norm_samples())[N_LAYERS // 2]
    assert float(vector.norm()) == pytest.approx(float(expected), rel=1e-4)


def test_reference_export_and_import_round_trip(tiny_dir: Path, tmp_path: Path) -> None:
    bundle = _bundle(tiny_dir, tmp_path)
    folder = tmp_path / "reference"
    _ok(["export", "--format", "reference", "--bundle", str(bundle), "--out", str(folder)])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [AXIS_FILE, DEFAULT_FILE, CAPPING_FILE]
    )
    args = ["import", "--format", "reference", "--axis", str(folder / AXIS_FILE)]
    args += ["--default", str(folder / DEFAULT_FILE), "--capping", str(folder / CAPPING_FILE)]
    printed = _ok(
        [*args, "--model", str(tiny_dir), "--revision", "r1", "--out", str(tmp_path / "again")]
    )
    assert f"recommended: {CAP}" in printed and "all layers" in printed
    source, again = AxisBundle.load(bundle), AxisBundle.load(tmp_path / "again")
    assert torch.equal(again.axis, source.axis) and torch.equal(again.default, source.default)
    assert again.fingerprint is None  # the shape came from the config; no weights were read
    assert again.manifest["model"]["revision"] == "r1"
    assert [(layer, floor) for layer, _, floor in again.cap_floors(CAP)] == [(2, 0.5), (3, -0.25)]
    _ok([*args, "--model", str(tiny_dir), "--fingerprint", "--out", str(tmp_path / "fp")])
    assert AxisBundle.load(tmp_path / "fp").fingerprint == source.fingerprint


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_load_shape_reads_the_config_only(arch: str, tmp_path: Path) -> None:
    model = build_tiny(arch)
    model.config.save_pretrained(tmp_path)  # a config and no weights at all
    assert load_shape(tmp_path) == model_shape(model)


def test_smollm2_shape_from_its_config_and_an_import_for_it(tmp_path: Path) -> None:
    shape = load_shape()  # the embedded model's config: its weights are not loaded
    assert shape == ModelShape("LlamaForCausalLM", 30, 576)
    generator = torch.Generator().manual_seed(1)
    bundle = AxisBundle.create(
        {"axis": torch.randn(30, 576, generator=generator), MEAN_NORM_KEY: torch.full((30,), 9.0)},
        model_shape=shape,
        model_id=DEFAULT_MODEL,
    )
    path = bundle.save(tmp_path / "bundle")
    out = tmp_path / "smollm2.gguf"
    _ok([*EXPORT_GGUF, "--bundle", str(path), "--out", str(out)])
    assert list(read_control_vector(out)[0]) == [15]
    _ok(["import", str(out), "--out", str(tmp_path / "imported")])  # default --model: SmolLM2
    imported = AxisBundle.load(tmp_path / "imported")
    assert imported.model_id == DEFAULT_MODEL and imported.axis_layers == [15]
    torch.testing.assert_close(imported.unit_axis(15), bundle.unit_axis(15))


@pytest.fixture(scope="module")
def files(tiny_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("interchange")
    bundle = _bundle(tiny_dir, root)
    gguf = root / "axis.gguf"
    _ok([*EXPORT_GGUF, "--bundle", str(bundle), "--out", str(gguf)])
    (root / "junk.gguf").write_bytes(b"junk")
    torch.save(torch.randn(N_LAYERS, HIDDEN), root / AXIS_FILE)
    return {"bundle": bundle, "gguf": gguf, "junk": root / "junk.gguf", "axis": root / AXIS_FILE}


ERRORS = [
    (["export", "--bundle", "{bundle}", "--out", "x.gguf", "--layers", "0:2"], "Layer 0 cannot"),
    (["export", "--format", "onnx", "--bundle", "{bundle}", "--out", "x"], "Unknown format 'onnx'"),
    (
        ["export", "--format", "reference", "--bundle", "{bundle}", "--out", "x", "--scale", "2"],
        "gguf-control-vector only",
    ),
    (["export", "--bundle", "{bundle}", "--out", "x.gguf", "--scale", "0"], "non-zero finite"),
    (["import", "--out", "x"], "Give the control vector file"),
    (["import", "{gguf}", "--axis", "{axis}", "--out", "x"], "belong to --format reference"),
    (["import", "{junk}", "--model", "{model}", "--out", "x"], "not a readable GGUF"),
    (["import", "{gguf}", "--out", "x"], "hidden size is 576"),  # the default model: SmolLM2
    (["import", "--format", "reference", "--out", "x"], "needs --axis"),
    (
        ["import", "{gguf}", "--format", "reference", "--axis", "{axis}", "--out", "x"],
        "not the argument",
    ),
    (
        ["import", "--format", "reference", "--axis", "{axis}", "--out", "x"],
        "belongs to a different model",
    ),
    (
        ["import", "{gguf}", "--model", "/nonexistent/model", "--out", "x"],
        "Could not read the config",
    ),
]


@pytest.mark.parametrize(("args", "message"), ERRORS)
def test_user_errors(files: dict[str, Path], tiny_dir: Path, tmp_path, args, message) -> None:
    values = {**{k: str(v) for k, v in files.items()}, "model": str(tiny_dir)}
    filled = [arg.format(**values) for arg in args]
    filled = [str(tmp_path / a) if a in {"x", "x.gguf"} else a for a in filled]
    if "export" in filled and "--format" not in filled:
        filled = [*filled, "--format", "gguf-control-vector"]
    result = runner.invoke(app, filled)
    assert result.exit_code != 0
    assert message in str(result.exception), result.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.gguf").exists()


def test_the_console_script_prints_one_error_line(files: dict[str, Path], tmp_path: Path) -> None:
    args = [*EXPORT_GGUF, "--bundle", str(files["bundle"])]
    args += ["--out", str(tmp_path / "x.gguf"), "--layers", "0,1"]
    result = run_console(*args)
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: Layer 0 cannot be exported")
