"""Role susceptibility: seeded items from the catalog, score aggregation, and a tiny-model run
judged by the offline heuristic role judge and by an LLM judge over real HTTP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from persona_axis.catalog import load_catalog
from persona_axis.errors import PersonaAxisError
from persona_axis.evals.susceptibility import (
    IDENTITY_QUESTIONS,
    run_susceptibility,
    sample_items,
    summarize_scores,
)
from persona_axis.judges.backends import OpenAIChatBackend
from persona_axis.judges.role import HeuristicRoleJudge, LLMRoleJudge
from test_chat_backends import FAST, FakeOpenAI


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
    from eval_helpers import STRONG, tiny_bundle
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.evals.common import Condition, cap_condition, steer_condition
    from persona_axis.inference.generation import Sampling
    from tiny_models import tiny_lm

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
