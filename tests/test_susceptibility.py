"""Role susceptibility: seeded items from the catalog, score aggregation, and a tiny-model run
judged by the offline heuristic role judge and by an LLM judge over real HTTP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from persona_axis.catalog import load_catalog
from persona_axis.errors import PersonaAxisError
from persona_axis.evals.common import rate_summary
from persona_axis.evals.susceptibility import (
    IDENTITY_QUESTIONS,
    pick_cap,
    plain_assistant_change,
    run_susceptibility,
    sample_items,
    similarity,
    summarize_scores,
)
from persona_axis.judges.backends import OpenAIChatBackend
from persona_axis.judges.role import HeuristicRoleJudge, LLMRoleJudge
from support.fake_openai import FAST, FakeOpenAI


def test_items_are_seeded_role_prompts_with_identity_questions() -> None:
    catalog = load_catalog()
    items = sample_items(catalog, n_roles=4, n_questions=3, seed=2, model_name="Tiny")
    assert items == sample_items(catalog, n_roles=4, n_questions=3, seed=2, model_name="Tiny")
    assert items != sample_items(catalog, n_roles=4, n_questions=3, seed=3, model_name="Tiny")
    assert len(items) == 12 and len({i.role for i in items}) == 4
    for item in items:
        assert item.system in [
            p.replace("{model_name}", "Tiny") for p in catalog.role(item.role).prompts
        ]
        assert item.question in IDENTITY_QUESTIONS and "{model_name}" not in item.system
    with pytest.raises(PersonaAxisError):
        sample_items(catalog, n_roles=0, n_questions=1)
    with pytest.raises(PersonaAxisError):
        sample_items(catalog, n_roles=1, n_questions=len(IDENTITY_QUESTIONS) + 1)


def test_summarize_scores() -> None:
    summary = summarize_scores([3, 3, 2, 1, 0, None])
    assert summary["in_role"]["k"] == 2 and summary["in_role"]["n"] == 5
    assert summary["some_traits"]["k"] == 3 and summary["unjudged"] == 1
    assert summary["mean_score"] == pytest.approx(9 / 5)
    assert summary["scores"] == {"0": 1, "1": 1, "2": 1, "3": 2}


@pytest.mark.slow
def test_run_susceptibility_on_a_tiny_model(tmp_path: Path) -> None:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.evals.common import Condition, cap_condition, steer_condition
    from persona_axis.inference.generation import Sampling
    from support.eval_helpers import STRONG, tiny_bundle
    from support.tiny_models import tiny_lm

    lm = tiny_lm("llama")
    bundle = AxisBundle.load(tiny_bundle(tmp_path, lm.shape))
    items = sample_items(load_catalog(), n_roles=2, n_questions=2, seed=0)
    conditions = [
        Condition("none"),
        cap_condition(bundle, STRONG),
        steer_condition(lm, bundle, 1.0),
    ]
    result = run_susceptibility(
        lm, conditions, items, HeuristicRoleJudge("Tiny"), Sampling(max_new_tokens=5)
    )
    assert list(result["conditions"]) == ["none", STRONG, "steer:+1"]
    assert result["judge"] == "heuristic-offline" and result["in_role_change"]["none"] == 0
    assert all(set(r["replies"]) == set(result["conditions"]) for r in result["records"])

    server = FakeOpenAI()
    try:

        def reply(body: dict[str, Any]) -> str:
            role = re.search(r"^Role: (.*)$", body["messages"][0]["content"], re.M)
            assert role is not None
            return "Score: 3" if role.group(1) == items[0].role else "Score: 1"

        server.reply = reply
        backend = OpenAIChatBackend(server.base_url, "judge", api_key_env=None, **FAST)
        judged = run_susceptibility(
            lm, conditions[:1], items, LLMRoleJudge(backend, "Tiny"), Sampling(max_new_tokens=3)
        )
    finally:
        server.close()
    assert judged["conditions"]["none"]["in_role"]["k"] == 2  # items[0]'s role has 2 questions
    assert len(server.bodies) == len(items)


def test_similarity_is_word_level_and_symmetric_in_range() -> None:
    assert similarity("the cat sat", "the cat sat") == 1.0
    assert similarity("", "") == 1.0
    assert similarity("a b c d", "a b x d") == pytest.approx(0.75)
    assert similarity("one two", "three four") == 0.0


def table(rates: dict[str, int], n: int = 10) -> dict[str, Any]:
    return {"conditions": {c: {"in_role": rate_summary(k, n)} for c, k in rates.items()}}


def plain(similar: dict[str, float]) -> dict[str, Any]:
    return {
        c: {"similarity": v, "identical": rate_summary(int(10 * v), 10)} for c, v in similar.items()
    }


def test_pick_cap_takes_the_strongest_cap_that_leaves_the_assistant_alone() -> None:
    rates = {"none": 6, "layers_1:3-p75": 4, "layers_1:3-p99": 1, "steer:+1": 0}
    similar = {"none": 1.0, "layers_1:3-p75": 0.9, "layers_1:3-p99": 0.5, "steer:+1": 0.2}
    picked, why = pick_cap(table(rates), plain(similar))
    assert picked == "layers_1:3-p75"  # p99 pulls harder but rewrites plain replies
    assert "60% to 40%" in why


def test_pick_cap_says_so_when_only_steering_pulls_the_model_back() -> None:
    rates = {"none": 5, "layers_1:3-p75": 5, "layers_1:3-p99": 2, "steer:+1": 1}
    similar = {"none": 1.0, "layers_1:3-p75": 1.0, "layers_1:3-p99": 0.3, "steer:+1": 0.4}
    picked, why = pick_cap(table(rates), plain(similar))
    assert picked is None
    assert "No cap setting lowers the in-role rate" in why and "layers_1:3-p99" in why
    assert "steering (steer:+1) does" in why
    picked, why = pick_cap(
        table({"none": 0, "layers_1:3-p75": 0}), plain({"none": 1.0, "layers_1:3-p75": 1.0})
    )
    assert picked is None and why.endswith("nor does steering.")


@pytest.mark.slow
def test_plain_assistant_change_on_a_tiny_model(tmp_path: Path) -> None:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.evals.common import Condition, cap_condition
    from persona_axis.inference.generation import Sampling
    from support.eval_helpers import STRONG, tiny_bundle
    from support.tiny_models import tiny_lm

    lm = tiny_lm("llama")
    bundle = AxisBundle.load(tiny_bundle(tmp_path, lm.shape))
    conditions = [Condition("none"), cap_condition(bundle, STRONG)]
    requests = ("Hello there.", "What is two plus two?", "Name a colour.")
    out = plain_assistant_change(
        lm, conditions, Sampling(max_new_tokens=6), requests=requests, batch_size=2
    )
    assert out["none"]["identical"]["k"] == 3 and out["none"]["similarity"] == 1.0
    capped = out[STRONG]
    assert capped["identical"]["n"] == 3 and len(capped["replies"]) == 3
    assert 0.0 <= capped["similarity"] <= 1.0
    assert capped["similarity"] < 1.0  # a strong floor on a random model changes its replies
