"""The Pareto sweep: dominance and frontier on synthetic points, the choice rule, the table,
writing the recommendation into a bundle, and the `persona-axis sweep` command on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_axis.errors import PersonaAxisError
from persona_axis.evals.sweep import (
    SweepPoint,
    choose_setting,
    dominates,
    pareto_front,
    plot_sweep,
    sweep_points,
    sweep_table,
)

P = SweepPoint
POINTS = [
    P("a", -0.40, -0.30),  # most harm reduction, costly
    P("b", -0.30, -0.05),  # frontier
    P("c", -0.10, 0.00),  # frontier
    P("d", -0.10, -0.10),  # dominated by c
    P("e", 0.05, 0.02),  # frontier: best capability
    P("f", -0.30, -0.20),  # dominated by b
    P("g", 0.10, 0.00),  # dominated by c and e
]


def test_dominance() -> None:
    assert dominates(P("x", -0.2, 0.0), P("y", -0.1, 0.0))
    assert dominates(P("x", -0.2, 0.1), P("y", -0.2, 0.0))
    assert not dominates(P("x", -0.2, 0.0), P("y", -0.2, 0.0))  # equal: neither
    assert not dominates(P("x", -0.3, -0.1), P("y", -0.1, 0.0))  # a trade-off


def test_pareto_front_on_synthetic_points() -> None:
    assert [p.name for p in pareto_front(POINTS)] == ["a", "b", "c", "e"]
    assert pareto_front([]) == []
    twins = [P("x", -0.1, 0.0), P("y", -0.1, 0.0), P("z", 0.0, -0.1)]
    assert [p.name for p in pareto_front(twins)] == ["x", "y"]


def test_choose_setting() -> None:
    assert choose_setting(POINTS, max_capability_loss=0.1).name == "b"  # type: ignore[union-attr]
    assert choose_setting(POINTS, max_capability_loss=0.5).name == "a"  # type: ignore[union-attr]
    assert choose_setting(POINTS, max_capability_loss=0.0).name == "c"  # type: ignore[union-attr]
    costly = [P("a", -0.4, -0.3), P("b", -0.2, -0.2)]
    assert choose_setting(costly, max_capability_loss=0.1).name == "b"  # type: ignore[union-attr]
    assert choose_setting([P("e", 0.05, 0.02), P("z", 0.0, 0.0)]) is None  # nothing helps
    with pytest.raises(PersonaAxisError):
        choose_setting(POINTS, max_capability_loss=-1)


def _rate(rate: float) -> dict:
    return {"harmful": {"rate": rate, "ci95": [0.0, 1.0]}}


def test_points_and_table_from_results() -> None:
    harm = {
        "conditions": {"none": _rate(0.5), "s1": _rate(0.2), "s2": _rate(0.6)},
        "harmful_rate_change": {"none": 0.0, "s1": -0.3, "s2": 0.1},
    }
    capability = {"summed_change": {"none": 0.0, "s1": -0.05, "s2": -0.1}}
    points = sweep_points(harm, capability)
    assert points == [P("s1", -0.3, -0.05), P("s2", 0.1, -0.1)]
    rows = sweep_table(points, harm)
    assert [(r["setting"], r["pareto"], r["harmful_rate"]) for r in rows] == [
        ("s1", True, 0.2),
        ("s2", False, 0.6),
    ]


def test_plot_sweep(tmp_path: Path) -> None:
    path = plot_sweep(POINTS, tmp_path / "sweep.png", chosen="b")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_sweep_command_writes_the_recommendation(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.cli import app
    from persona_axis.evals.sweep import write_recommendation
    from persona_axis.models.loading import load_model
    from support.eval_helpers import NOOP, STRONG, tiny_bundle, tiny_model_dir

    model_dir = tiny_model_dir(tmp_path)
    bundle_path = tiny_bundle(tmp_path, load_model(model_dir).shape)
    out = tmp_path / "out"
    args = ["sweep", "--bundle", str(bundle_path), "--model", str(model_dir), "--n", "3"]
    args += ["--n-capability", "1", "--max-new-tokens", "4", "--out", str(out), "--no-progress"]
    args += ["--no-write"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "sweep.json").read_text())
    assert {row["setting"] for row in summary["table"]} == {NOOP, STRONG}
    assert (out / "sweep.png").is_file() and (out / "sweep_details.json").is_file()
    assert "OFFLINE HEURISTIC" in summary["judge_note"]
    assert AxisBundle.load(bundle_path).manifest["recommended_cap"] == NOOP  # --no-write

    # writing a recommendation keeps the bundle loadable and records the evidence
    bundle = AxisBundle.load(bundle_path)
    write_recommendation(bundle, bundle_path, STRONG, {"harm_change": -0.5})
    again = AxisBundle.load(bundle_path)
    assert again.manifest["recommended_cap"] == STRONG
    evidence = again.cap(STRONG).notes["evidence"]
    assert evidence["harm_change"] == -0.5 and evidence["previous_recommended_cap"] == NOOP
    assert again.cap(STRONG).thresholds == bundle.cap(STRONG).thresholds
