"""Capability probes (seeded generators, rule checks, aggregation) and the lm-eval adapter on
an offline task (tests/data/lm_eval) with a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_axis.errors import PersonaAxisError
from persona_axis.evals.capability import (
    FAMILIES,
    Probe,
    check_reply,
    last_integer,
    make_probes,
    summarize_checks,
    summed_change,
)

TASKS = Path(__file__).parent / "data" / "lm_eval"


def test_probes_are_seeded_and_cover_every_family() -> None:
    probes = make_probes(10, seed=1)
    assert probes == make_probes(10, seed=1) and probes != make_probes(10, seed=2)
    assert [p.family for p in probes] == [f for f in FAMILIES for _ in range(10)]
    assert make_probes(12, seed=1)[:10] == probes[:10]  # arithmetic unchanged by the count
    for probe in probes:
        if probe.check["rule"] == "number":
            assert isinstance(probe.check["answer"], int) and probe.check["answer"] >= 0
    rules = {p.check["rule"] for p in make_probes(60)}
    assert rules >= {"number", "word_count", "include", "lowercase", "no_commas", "upper"}
    with pytest.raises(PersonaAxisError):
        make_probes(0)


def test_arithmetic_answers_are_right() -> None:
    for probe in make_probes(40, seed=5)[:40]:
        expression = probe.prompt.removeprefix("What is ").split("?")[0].replace("×", "*")
        assert eval(expression) == probe.check["answer"]  # our own digits


@pytest.mark.parametrize(
    ("check", "reply", "ok"),
    [
        ({"rule": "number", "answer": 42}, "The answer is 42.", True),
        ({"rule": "number", "answer": 1234}, "It costs 1,234", True),
        ({"rule": "number", "answer": 42}, "42 minus 2 is 40", False),
        ({"rule": "number", "answer": 4}, "four", False),
        ({"rule": "word_count", "count": 3}, "Vast, blue, deep.", True),
        ({"rule": "word_count", "count": 3}, "Vast and blue and deep.", False),
        ({"rule": "include", "word": "river"}, "The River flows.", True),
        ({"rule": "include", "word": "river"}, "Rivers flow.", False),
        ({"rule": "lowercase"}, "the moon is bright tonight.", True),
        ({"rule": "lowercase"}, "The moon is bright.", False),
        ({"rule": "lowercase"}, "123", False),
        ({"rule": "no_commas"}, "Rain falls softly. It is calm.", True),
        ({"rule": "no_commas"}, "Rain falls, softly.", False),
        ({"rule": "starts_with", "word": "yes"}, "Yes, it is.", True),
        ({"rule": "starts_with", "word": "yes"}, "Well, yes.", False),
        ({"rule": "upper", "word": "green"}, "GREEN", True),
        ({"rule": "upper", "word": "green"}, "Green", False),
    ],
)
def test_check_reply(check: dict, reply: str, ok: bool) -> None:
    assert check_reply(Probe("instruction", "p", check), reply) is ok


def test_last_integer_and_aggregation() -> None:
    assert last_integer("no digits") is None and last_integer("-3 then 7") == 7
    probes = [Probe(f, "p", {}) for f in ("arithmetic", "arithmetic", "instruction")]
    base = summarize_checks(probes, [True, False, True])
    assert base["overall"]["k"] == 2 and base["families"]["arithmetic"]["rate"] == 0.5
    assert "word_problem" not in base["families"]
    other = summarize_checks(probes, [False, False, False])
    assert summed_change(base, other) == pytest.approx(-1.5)
    assert summed_change(base, base) == 0.0


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from persona_axis.models.loading import load_model
    from support.eval_helpers import tiny_bundle, tiny_model_dir

    root = tmp_path_factory.mktemp("lm-eval")
    model_dir = tiny_model_dir(root)
    return model_dir, tiny_bundle(root, load_model(model_dir).shape)


@pytest.mark.slow
def test_lm_eval_adapter_runs_local_tasks_with_the_cap(tiny_setup: tuple[Path, Path]) -> None:
    from lm_eval.api.registry import get_model

    from persona_axis.evals.lm_eval_adapter import PersonaAxisLM, evaluate_tasks
    from support.eval_helpers import STRONG

    assert get_model("persona-axis") is PersonaAxisLM
    model_dir, bundle = tiny_setup
    tasks = ["persona_axis_tiny_mc", "persona_axis_tiny_gen"]
    runs = {}
    for cap in ("none", STRONG):
        args = {"pretrained": str(model_dir), "bundle": str(bundle), "cap": cap}
        runs[cap] = evaluate_tasks(tasks, model_args=args, include_path=TASKS, log_samples=True)
    for results in runs.values():
        assert set(results["results"]) == set(tasks)
        assert 0.0 <= results["results"]["persona_axis_tiny_mc"]["acc,none"] <= 1.0
        assert "exact_match,none" in results["results"]["persona_axis_tiny_gen"]
        assert len(results["samples"]["persona_axis_tiny_mc"]) == 3
        assert len(results["samples"]["persona_axis_tiny_gen"]) == 2

    def scores(results: dict) -> list:
        return [s["resps"] for s in results["samples"]["persona_axis_tiny_mc"]]

    assert scores(runs["none"]) != scores(runs[STRONG])  # capping changes loglikelihoods


@pytest.mark.slow
def test_lm_eval_adapter_arguments(tiny_setup: tuple[Path, Path]) -> None:
    from persona_axis.evals.lm_eval_adapter import PersonaAxisLM, evaluate_tasks
    from support.eval_helpers import NOOP

    model_dir, bundle = tiny_setup
    with pytest.raises(PersonaAxisError, match="need bundle"):
        PersonaAxisLM(pretrained=str(model_dir), cap="recommended")
    lm = PersonaAxisLM(pretrained=str(model_dir), bundle=str(bundle), cap="recommended")
    assert lm.cap_name == NOOP and len(lm.spec.interventions) == 2
    with pytest.raises(PersonaAxisError, match="Unknown lm-eval task"):
        evaluate_tasks(["no_such_task_xyz"], model_args={}, include_path=TASKS)
