"""The command line: info, scripted chat with caps and steering, one-line user errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from persona_axis.axis.bundle import AxisBundle
from persona_axis.axis.calibrate import CapSetting, LayerThreshold
from persona_axis.cli import app
from persona_axis.models import load_model
from support.console_script import error_lines, run_console
from support.small_catalog import write_small_catalog
from support.tiny_models import build_tiny, styled_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny("llama").save_pretrained(path)
    styled_tokenizer("chatml").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_bundle(tiny_dir: Path, tmp_path_factory) -> Path:
    lm = load_model(tiny_dir)
    axis = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    cap = CapSetting(
        name="layers_1:3-p75",
        thresholds=(LayerThreshold(1, 0.5), LayerThreshold(2, 0.5)),
        percentile=75,
        calibrated_on="test",
    )
    elsewhere = CapSetting(  # a cap that acts after the target layer (2) only
        name="layers_3:4-p99",
        thresholds=(LayerThreshold(3, 50.0),),
        percentile=99,
        calibrated_on="test",
    )
    bundle = AxisBundle.create(
        {"axis": axis},
        model_shape=lm.shape,
        model_id=str(tiny_dir),
        caps={cap.name: cap, elsewhere.name: elsewhere},
    )
    return bundle.save(tmp_path_factory.mktemp("bundle") / "b")


def test_info_reports_structure_and_template_facts(tiny_dir: Path) -> None:
    result = runner.invoke(app, ["info", "--model", str(tiny_dir)])
    assert result.exit_code == 0, result.output
    for fact in ("LlamaForCausalLM", "decoder layers", "hidden size", "64", "target layer"):
        assert fact in result.output
    assert "thinking switch" in result.output


@pytest.mark.slow
def test_info_on_the_default_model(smollm) -> None:
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "SmolLM2-135M-Instruct" in result.output
    assert "30" in result.output and "576" in result.output and "15 (n_layers // 2" in result.output


def test_scripted_chat_prints_projections_before_and_after_capping(
    tiny_dir: Path, tiny_bundle: Path
) -> None:
    args = [
        "chat",
        "--model",
        str(tiny_dir),
        "--bundle",
        str(tiny_bundle),
        "-u",
        "Hello",
        "-u",
        "And again",
        "--max-new-tokens",
        "4",
    ]
    plain = runner.invoke(app, args)
    assert plain.exit_code == 0, plain.output
    assert plain.output.count("assistant>") == 2
    assert "axis @ layer 2: before" in plain.output and "cap raised" not in plain.output
    capped = runner.invoke(app, [*args, "--cap", "layers_1:3-p75"])
    assert capped.exit_code == 0, capped.output
    assert capped.output.count("cap raised") == 2
    assert "capped layers" not in capped.output  # the target layer is capped: shown there
    later = runner.invoke(app, [*args, "--cap", "layers_3:4-p99"])
    assert later.exit_code == 0, later.output
    shown = re.findall(r"capped layers 3–3: before (-?[\d.]+)  after (-?[\d.]+)", later.output)
    assert len(shown) == 2 and all(float(after) >= 50.0 > float(was) for was, after in shown)
    steered = runner.invoke(app, [*args, "--steer", "2"])
    assert steered.exit_code == 0, steered.output
    assert "steer +2" in steered.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cap", "layers_9:9-p1"], "No cap setting 'layers_9:9-p1'"),
        (["--bundle", "/nonexistent/bundle"], "nonexistent"),
    ],
)
def test_user_errors_are_one_clear_line(tiny_dir: Path, tiny_bundle: Path, extra, message) -> None:
    args = ["chat", "--model", str(tiny_dir), "--bundle", str(tiny_bundle), "-u", "Hi", *extra]
    result = run_console(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_the_console_script_prints_errors_without_a_traceback(tiny_dir: Path) -> None:
    result = run_console("chat", "--model", str(tiny_dir), "--cap", "layers_1:3-p75", "-u", "Hi")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error:") and "--bundle" in lines[0]


def test_build_command_writes_a_bundle_and_prints_its_summary(
    tiny_dir: Path, tmp_path: Path
) -> None:
    catalog = write_small_catalog(tmp_path / "catalog")
    args = [
        "build",
        "--model",
        str(tiny_dir),
        "--catalog",
        str(catalog),
        "--out",
        str(tmp_path / "out"),
    ]
    args += ["--judge", "none", "--min-role-rollouts", "1", "--max-new-tokens", "6"]
    args += ["--batch-size", "8", "--dtype", "float32", "--trait-questions", "1", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Assistant Axis of" in result.output and "recommended cap" in result.output
    bundle = AxisBundle.load(tmp_path / "out" / "bundle")
    assert len(bundle.roles()) == 4 and bundle.manifest["judge"]["name"] == "none"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--judge", "openai"], "--judge openai needs --judge-url"),
        (["--preset", "huge"], "Unknown preset 'huge'"),
        (["--catalog", "/nonexistent/catalog"], "is not a directory"),
    ],
)
def test_build_user_errors(tiny_dir: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    args = ["build", "--model", str(tiny_dir), "--out", str(tmp_path / "out"), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert message in str(result.exception)
