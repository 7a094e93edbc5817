"""Axis quality metrics on synthetic activations whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from persona_axis.axis.quality import (
    THRESHOLDS,
    AxisCells,
    Estimate,
    assess,
    choose_target_layer,
    separation,
    space_structure,
    split_half_stability,
    warnings_for,
)
from persona_axis.axis.space import axis_pc1_cosine, persona_space
from persona_axis.axis.vectors import assistant_axis, project
from persona_axis.errors import PersonaAxisError

L, D, R, Q = 3, 16, 10, 6


def synthetic(noise: float, seed: int = 0) -> tuple[torch.Tensor, list[str | None], list[int]]:
    """Default rollouts around +direction, each role around its own point on the far side;
    5 default prompts and 2 prompts per role, per question."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(L, D, generator=g)
    centres = -direction + 0.7 * torch.randn(R, L, D, generator=g)
    acts, roles, blocks = [], [], []
    for q in range(Q):
        for _ in range(5):
            acts.append(direction + noise * torch.randn(L, D, generator=g))
            roles.append(None)
            blocks.append(q)
        for r in range(R):
            for _ in range(2):
                acts.append(centres[r] + noise * torch.randn(L, D, generator=g))
                roles.append(f"role{r}")
                blocks.append(q)
    return torch.stack(acts), roles, blocks


def direct_axis(acts: torch.Tensor, roles: list[str | None], keep: list[bool]) -> torch.Tensor:
    default = acts[[i for i, r in enumerate(roles) if r is None and keep[i]]].mean(0)
    names = sorted({r for r in roles if r is not None})
    vectors = {
        n: acts[[i for i, r in enumerate(roles) if r == n and keep[i]]].mean(0) for n in names
    }
    return assistant_axis(default, vectors)


def test_cells_give_the_axis_and_the_leave_one_block_out_axes() -> None:
    acts, roles, blocks = synthetic(0.5)
    cells = AxisCells.from_rollouts(acts, roles, blocks, n_blocks=Q)
    everything = [True] * len(roles)
    torch.testing.assert_close(cells.axis(), direct_axis(acts, roles, everything))
    folds = cells.fold_axes()
    assert folds.shape == (Q, L, D)
    for k in (0, 3):
        without = [b != k for b in blocks]
        torch.testing.assert_close(folds[k], direct_axis(acts, roles, without))
    is_role = [r is not None for r in roles]
    pooled = acts[is_role].mean(0)
    default = acts[[not x for x in is_role]].mean(0)
    torch.testing.assert_close(cells.axis(weighting="rollout"), default - pooled)


def test_split_halves_are_stable_with_little_noise_and_less_so_with_more() -> None:
    quiet = AxisCells.from_rollouts(*synthetic(0.1), n_blocks=Q)
    noisy = AxisCells.from_rollouts(*synthetic(3.0), n_blocks=Q)
    for by in ("question", "role"):
        good = split_half_stability(quiet, by, n_boot=50)  # type: ignore[arg-type]
        bad = split_half_stability(noisy, by, n_boot=50)  # type: ignore[arg-type]
        assert good.value.shape == (L,)
        assert (good.value > 0.97).all() and (bad.value < good.value).all()
        assert (good.low <= good.high).all() and (bad.low < bad.high).all()
    seeded = split_half_stability(noisy, "question", n_boot=20, seed=4)
    again = split_half_stability(noisy, "question", n_boot=20, seed=4)
    np.testing.assert_array_equal(seeded.value, again.value)


def test_separation_by_hand() -> None:
    default = np.array([[3.0], [2.0], [0.5]])
    roles = np.array([[1.0], [0.0]])
    auroc, effect = separation(default, roles, n_boot=30)
    assert auroc.value[0] == pytest.approx(5 / 6)  # 5 of the 6 pairs rank the default higher
    pooled = (2 * np.var([3, 2, 0.5], ddof=1) + 1 * np.var([1, 0], ddof=1)) / 3
    assert effect.value[0] == pytest.approx((11 / 6 - 0.5) / np.sqrt(pooled))
    assert 0 <= auroc.low[0] <= auroc.high[0] <= 1
    same = np.random.default_rng(0).normal(size=(400, 2))
    chance, _ = separation(same[:200], same[200:], n_boot=30)
    assert np.all(np.abs(chance.value - 0.5) < 0.1)
    with pytest.raises(PersonaAxisError, match="at least two"):
        separation(default[:1], roles)


def test_space_structure_matches_the_build_persona_space() -> None:
    acts, roles, blocks = synthetic(0.5)
    cells = AxisCells.from_rollouts(acts, roles, blocks, n_blocks=Q)
    role_vectors = cells.role_sums.sum(1) / cells.role_counts.sum(1)[:, None, None]
    default = cells.default_sums.sum(0) / cells.default_counts.sum()
    somewhat = role_vectors[:3] + 0.3
    cos, share = space_structure(role_vectors, default, somewhat, [0, 1, 2], n_boot=20)
    points = {str(i): v for i, v in enumerate(role_vectors)}
    points |= {f"{i}@somewhat": v for i, v in enumerate(somewhat)}
    axis = cells.axis()
    for layer in range(L):
        space = persona_space(points, layer, default=default)
        assert cos.value[layer] == pytest.approx(axis_pc1_cosine(axis, space), abs=1e-4)
        assert share.value[layer] == pytest.approx(
            float(space.explained_variance_ratio[0]), abs=1e-4
        )
    assert (cos.low <= cos.high).all() and (share.low <= share.high).all()


def estimate(values: list[float]) -> Estimate:
    v = np.array(values)
    return Estimate(v, v - 0.01, v + 0.01)


def test_target_layer_is_the_best_separating_stable_layer() -> None:
    stable_q = estimate([0.95, 0.99, 0.80, 0.97])
    stable_r = estimate([0.95, 0.99, 0.99, 0.91])
    effect = estimate([1.0, 2.0, 9.0, 3.0])  # layer 2 separates best but is unstable
    layer, reason = choose_target_layer(stable_q, stable_r, effect)
    assert layer == 3 and "3 layers" in reason
    nothing = estimate([0.5] * 4)
    layer, reason = choose_target_layer(nothing, nothing, effect)
    assert layer == 2 and "middle" in reason


def test_assess_is_json_ready_and_warns_on_a_poor_axis() -> None:
    acts, roles, blocks = synthetic(4.0)
    cells = AxisCells.from_rollouts(acts, roles, blocks, n_blocks=Q)
    folds = cells.fold_axes()
    proj = torch.stack([project(a, folds[b]) for a, b in zip(acts, blocks, strict=True)])
    is_default = torch.tensor([r is None for r in roles])
    quality = assess(cells, proj[is_default].numpy(), proj[~is_default].numpy(), n_boot=20)
    json.dumps(quality, allow_nan=False)
    layer = quality["target_layer"]["layer"]
    assert quality["target_layer"]["chosen_by"] == "evidence"
    assert len(quality["heldout_auroc"]["estimate"]) == L
    assert quality["method"]["heldout_rollouts"] == {"default": 5 * Q, "role": 2 * R * Q}
    assert quality["warnings"] == warnings_for(quality, layer)
    assert any(w.startswith("UNSTABLE") for w in quality["warnings"])
    forced = assess(
        cells, proj[is_default].numpy(), proj[~is_default].numpy(), n_boot=5, target_layer=0
    )
    assert forced["target_layer"] == {
        "layer": 0,
        "chosen_by": "override",
        "reason": "set by --target-layer",
    }


def test_warnings_follow_the_documented_thresholds() -> None:
    def quality(stable: float, auroc: float, d: float, cos: float) -> dict:
        return {
            "stability_question": {"estimate": [stable]},
            "stability_role": {"estimate": [0.99]},
            "heldout_auroc": {"estimate": [auroc]},
            "heldout_effect_size": {"estimate": [d]},
            "cos_axis_pc1": {"estimate": [cos]},
        }

    assert warnings_for(quality(0.99, 0.99, 3.0, 0.9), 0) == []
    got = warnings_for(quality(THRESHOLDS["stable"] - 0.01, 0.7, 3.0, 0.1), 0)
    assert [w.split(":")[0] for w in got] == ["UNSTABLE", "BARELY SEPARATES", "note"]


def test_cells_refuse_too_little_data() -> None:
    acts, roles, blocks = synthetic(0.5)
    only_one_role = [r if r in (None, "role0") else None for r in roles]
    with pytest.raises(PersonaAxisError, match="two roles"):
        AxisCells.from_rollouts(acts, only_one_role, blocks, n_blocks=Q)
    with pytest.raises(PersonaAxisError, match="two question blocks"):
        AxisCells.from_rollouts(acts, roles, [0] * len(roles), n_blocks=Q)


def test_the_report_shows_the_quality_section() -> None:
    from persona_axis.report.sections import quality_section

    acts, roles, blocks = synthetic(4.0)
    cells = AxisCells.from_rollouts(acts, roles, blocks, n_blocks=Q)
    folds = cells.fold_axes()
    proj = torch.stack([project(a, folds[b]) for a, b in zip(acts, blocks, strict=True)])
    is_default = torch.tensor([r is None for r in roles])
    quality = assess(cells, proj[is_default].numpy(), proj[~is_default].numpy(), n_boot=5)
    page = quality_section({"quality": quality, "target_layer": quality["target_layer"]["layer"]})
    layer = quality["target_layer"]["layer"]
    assert f"{quality['heldout_auroc']['estimate'][layer]:.3f}" in page
    assert "UNSTABLE" in page and 'class="alarm"' in page and "<details>" in page
    assert "records no quality metrics" in quality_section({})
    assert "Not assessed" in quality_section({"quality": {"unavailable": "too small"}})
