"""The evaluations called from Python (persona_axis.evals.runs) write what the CLI writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_axis.axis.bundle import AxisBundle
from persona_axis.cli import app
from persona_axis.evals.runs import capability_eval, lm_eval_capability
from persona_axis.models.loading import load_model
from support.eval_helpers import STRONG, tiny_bundle, tiny_model_dir

TASKS = Path(__file__).parent / "data" / "lm_eval"


@pytest.mark.slow
def test_python_and_cli_write_the_same_records(tmp_path: Path) -> None:
    model_dir = tiny_model_dir(tmp_path)
    lm = load_model(model_dir)
    bundle_path = tiny_bundle(tmp_path, lm.shape)
    common = ["--bundle", str(bundle_path), "--model", str(model_dir), "--cap", STRONG]
    runner = CliRunner()

    cli_out, py_out = tmp_path / "cli", tmp_path / "py"
    args = ["eval", "capability", *common, "--out", str(cli_out), "--n", "1"]
    result = runner.invoke(app, [*args, "--max-new-tokens", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    run = capability_eval(
        lm, AxisBundle.load(bundle_path), py_out, bundle_path=bundle_path,
        model=str(model_dir), caps=[STRONG], n=1, max_new_tokens=4,
    )  # fmt: skip
    assert run.path == py_out / "capability.json" and run.plot is None
    # greedy decoding in one process on the same weights: the same replies and counts
    assert json.loads((cli_out / "capability.json").read_text()) == run.record
    assert list(run.record["conditions"]) == ["none", STRONG]

    args = ["eval", "capability", *common, "--out", str(cli_out), "--tasks", "persona_axis_tiny_mc"]
    result = runner.invoke(app, [*args, "--include-path", str(TASKS)])
    assert result.exit_code == 0, result.output
    run = lm_eval_capability(
        bundle_path, ["persona_axis_tiny_mc"], py_out, caps=[STRONG], model=str(model_dir),
        include_path=TASKS,
    )  # fmt: skip
    cli_record = json.loads((cli_out / "capability_lm_eval.json").read_text())
    assert list(run.record["runs"]) == list(cli_record["runs"]) == ["none", STRONG]
    for name, run_results in run.record["runs"].items():
        mine = run_results["results"]["persona_axis_tiny_mc"]["acc,none"]
        theirs = cli_record["runs"][name]["results"]["persona_axis_tiny_mc"]["acc,none"]
        assert mine == pytest.approx(theirs, abs=1e-12)
