"""The capping table of ``persona-axis demo``: does capping keep the model in character, and
what does it cost?

Over a few role prompts and identity questions of our catalog, how often the model stays in
role (score 3 of the judge) with no intervention, under a few of the bundle's cap settings
(:func:`candidate_caps`) and under steering along +axis at the target layer, beside how much
each condition changes plain Assistant replies; then the cap the table picks
(:func:`persona_axis.evals.susceptibility.compare_conditions`). Greedy decoding; the default
judge is the offline heuristic one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from persona_axis.axis.calibrate import setting_name
from persona_axis.catalog import load_catalog
from persona_axis.evals.common import Condition, cap_condition, steer_condition
from persona_axis.evals.susceptibility import CappingComparison, compare_conditions, sample_items
from persona_axis.inference.generation import Sampling
from persona_axis.judges.role import HeuristicRoleJudge

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.judges.role import RoleJudge
    from persona_axis.models.loading import LoadedModel

ROLES, QUESTIONS, MAX_NEW_TOKENS, STEER = 6, 2, 40, 1.0


@dataclass(frozen=True)
class CappingTable:
    """The comparison (rates, plain-reply change, the picked cap and why) and its size:
    ``n_items`` role replies (``roles`` × ``questions``) per condition."""

    comparison: CappingComparison
    n_items: int
    roles: int
    questions: int


def candidate_caps(bundle: AxisBundle) -> list[str]:
    """The cap settings the table compares: the recommended setting's layers at p50, p75 and
    p99, and p75 on the layer range that starts nearest the middle layer (those stored)."""
    recommended = bundle.cap(bundle.resolve_cap("recommended") or "")
    first, last = recommended.layers[0], recommended.layers[-1] + 1
    middle = min(
        (s for s in bundle.caps.values() if s.percentile == 75.0),
        key=lambda s: (abs(s.layers[0] - bundle.model_shape.n_layers // 2), len(s.layers)),
    )
    names = [setting_name(first, last, p) for p in (50, 75, 99)] + [middle.name]
    return [n for n in dict.fromkeys(names) if n in bundle.caps]


def capping_table(
    lm: LoadedModel,
    bundle: AxisBundle,
    *,
    roles: int = ROLES,
    questions: int = QUESTIONS,
    max_new_tokens: int = MAX_NEW_TOKENS,
    steer: float = STEER,
    judge: RoleJudge | None = None,
    batch_size: int = 16,
) -> CappingTable:
    """The table (module doc) for ``lm`` and ``bundle``: no intervention, each of
    :func:`candidate_caps`, and steering by ``steer`` × the mean residual norm."""
    name = str(bundle.manifest.get("model_name") or "SmolLM2")
    conditions = [Condition("none")]
    conditions += [cap_condition(bundle, cap) for cap in candidate_caps(bundle)]
    conditions.append(steer_condition(lm, bundle, steer))
    items = sample_items(load_catalog(), n_roles=roles, n_questions=questions, model_name=name)
    comparison = compare_conditions(
        lm,
        conditions,
        items,
        judge or HeuristicRoleJudge(name),
        Sampling(max_new_tokens=max_new_tokens),  # greedy
        batch_size=batch_size,
    )
    return CappingTable(comparison, len(items), roles, questions)
