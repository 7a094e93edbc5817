"""The `standard` preset (docs/axis-quality.md): present, valid, and sized between quick and paper.

No build runs here; the preset's timing and quality are measured in docs/axis-quality.md.
"""

from __future__ import annotations

from dataclasses import asdict

from persona_axis.catalog import load_catalog
from persona_axis.pipeline import PRESETS, BuildConfig, preset
from persona_axis.pipeline.plan import make_plan


def plan_size(config: BuildConfig) -> int:
    catalog = load_catalog(config.catalog).subset(
        n_roles=config.n_roles,
        prompts_per_role=config.prompts_per_role,
        n_questions=config.n_questions,
        n_traits=config.n_traits,
        pairs_per_trait=config.pairs_per_trait,
    )
    return len(make_plan(catalog, "SmolLM2", config.trait_questions))


def test_standard_preset_is_a_valid_config_between_quick_and_paper() -> None:
    standard = preset("standard")
    assert standard is PRESETS["standard"]
    # Every field survives the round trip a build directory makes (validation runs again).
    assert asdict(BuildConfig.from_result_fields(standard.result_fields())) == asdict(
        standard.with_overrides(progress=False)
    )
    assert standard.judge == {"backend": "heuristic"}  # offline: no judge model needed
    assert standard.temperature == 0.7 and standard.top_p == 0.9  # the paper's sampling
    quick, standard_n = plan_size(preset("quick")), plan_size(standard)
    assert quick < standard_n < 6000  # sized for about 20 minutes on 2 CPU cores
    assert standard.n_roles is not None and standard.n_roles > preset("quick").n_roles  # type: ignore[operator]
    assert standard.min_role_rollouts <= (standard.prompts_per_role or 1) * (
        standard.n_questions or 1
    )  # a role can reach the minimum
