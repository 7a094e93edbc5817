"""Build settings, presets and the fixed, seeded rollout plan."""

from __future__ import annotations

import pytest

from persona_axis.catalog import Catalog, Role, Trait, TraitPair
from persona_axis.errors import PersonaAxisError
from persona_axis.judges import settings_from_flags as judge_settings
from persona_axis.pipeline import PRESETS, BuildConfig, default_cap_layer_ranges, preset
from persona_axis.pipeline.plan import make_batches, make_plan

CATALOG = Catalog(
    roles=(
        Role("ghost", "mystical", "d", ("You are a ghost.", "Haunt {model_name}'s house.")),
        Role("baker", "professional", "d", ("You bake bread.",)),
    ),
    questions=("Who are you?", "What do you fear most of all?", "Why?", "How?"),
    traits=(Trait("calm", "d", (TraitPair("Stay calm.", "Panic about everything."),)),),
    default_prompts=(None, "You are {model_name}."),
)


def test_plan_covers_defaults_roles_and_both_trait_polarities() -> None:
    plan = make_plan(CATALOG, "TestLM", trait_questions=2)
    kinds = [s.kind for s in plan]
    assert kinds.count("default") == 2 * 4
    assert kinds.count("role") == (2 + 1) * 4
    assert kinds.count("trait_pos") == kinds.count("trait_neg") == 2
    assert [s.id for s in plan] == list(range(len(plan)))
    assert any(s.system == "Haunt TestLM's house." for s in plan)
    assert plan[0].messages() == [{"role": "user", "content": "Who are you?"}]
    trait_questions = {s.question_index for s in plan if s.kind == "trait_pos"}
    assert trait_questions == {0, 2}  # spread through the list


def test_batches_are_fixed_bucketed_and_complete() -> None:
    plan = make_plan(CATALOG, "TestLM", trait_questions=None)
    batches = make_batches(plan, 5)
    assert batches == make_batches(list(reversed(plan)), 5)  # a pure function of the plan
    assert sorted(s.id for b in batches for s in b) == list(range(len(plan)))
    lengths = [len(s.system or "") + len(s.question) for b in batches for s in b]
    assert lengths == sorted(lengths)


def test_settings_validate_and_override() -> None:
    quick = preset("quick")
    assert quick.n_roles == 12 and PRESETS["paper"].n_roles is None
    assert PRESETS["paper"].temperature == 0.7 and PRESETS["paper"].max_new_tokens == 512
    changed = quick.with_overrides(n_roles=3, seed=None)
    assert changed.n_roles == 3 and changed.seed == quick.seed
    assert "progress" not in changed.result_fields()
    with pytest.raises(PersonaAxisError, match="Unknown build settings"):
        quick.with_overrides(rolez=3)
    with pytest.raises(PersonaAxisError, match="Unknown preset"):
        preset("huge")
    with pytest.raises(PersonaAxisError, match="top_p"):
        BuildConfig(top_p=0)


def test_default_cap_layer_ranges_sit_in_the_upper_middle() -> None:
    for n_layers in (4, 30, 64, 80):
        for first, stop in default_cap_layer_ranges(n_layers):
            assert 0 <= first < stop <= n_layers
            assert first >= n_layers // 2 - 1
    # 12.5% of the depth from 70%: near the paper's 46-53
    assert (44, 52) in default_cap_layer_ranges(64)


def test_judge_flags_become_settings() -> None:
    assert judge_settings(None) is None
    assert judge_settings("none") == {"backend": "none"}
    openai = judge_settings("openai", "http://127.0.0.1:9/v1", "judge-model", "KEY", 4)
    assert openai == {
        "backend": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "judge-model",
        "api_key_env": "KEY",
        "concurrency": 4,
    }
    with pytest.raises(PersonaAxisError, match="needs --judge-url"):
        judge_settings("openai")
    with pytest.raises(PersonaAxisError, match="Unknown judge"):
        judge_settings("oracle")


def test_stored_settings_round_trip_and_an_unset_target_layer_is_not_stored() -> None:
    quick = preset("quick").with_overrides(cap_layer_ranges=((1, 3),), progress=False)
    assert BuildConfig.from_result_fields(quick.result_fields()) == quick
    assert "target_layer" not in quick.result_fields()  # older build directories still resume
    pinned = quick.with_overrides(target_layer=5)
    assert pinned.result_fields()["target_layer"] == 5
    assert BuildConfig.from_result_fields(pinned.result_fields()) == pinned
    with pytest.raises(PersonaAxisError, match="does not know"):
        BuildConfig.from_result_fields({**quick.result_fields(), "colour": "blue"})
