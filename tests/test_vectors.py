"""Axis math on synthetic activations whose answers are known in closed form."""

from __future__ import annotations

import pytest
import torch

from persona_axis.axis.vectors import (
    ActivationSums,
    SumCount,
    assistant_axis,
    axis_from_means,
    cosine_by_layer,
    mean_vector,
    project,
    role_vectors,
    role_vectors_from_sums,
    sum_count,
    trait_vector,
    trait_vector_from_sums,
    unit,
)
from persona_axis.errors import PersonaAxisError

N_LAYERS, D = 4, 8


def around(center: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` (even) rollouts ``[n, L, d]``: ``center`` + noise in ± pairs (mean = ``center``)."""
    noise = torch.randn(n // 2, *center.shape, generator=torch.Generator().manual_seed(seed))
    return center + torch.cat([noise, -noise])


def vec(seed: int) -> torch.Tensor:
    return torch.randn(N_LAYERS, D, generator=torch.Generator().manual_seed(seed))


def test_mean_vector_tensor_and_sequence_agree_and_are_float32() -> None:
    center = vec(0)
    acts = around(center, 6, seed=1).to(torch.bfloat16)
    from_tensor = mean_vector(acts)
    from_list = mean_vector(list(acts))
    assert from_tensor.dtype == torch.float32
    assert from_tensor.shape == (N_LAYERS, D)
    torch.testing.assert_close(from_tensor, from_list)
    torch.testing.assert_close(from_tensor, acts.float().mean(0))
    torch.testing.assert_close(mean_vector(around(center, 6, seed=1)), center)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(0, N_LAYERS, D),
        [],
        torch.zeros(N_LAYERS, D),
        [torch.zeros(2, 3), torch.zeros(3)],
    ],
)
def test_mean_vector_refuses_bad_input(bad: object) -> None:
    with pytest.raises(PersonaAxisError):
        mean_vector(bad)  # type: ignore[arg-type]


def test_role_vectors_filter_by_score_and_drop_small_roles() -> None:
    centers = {"pirate": vec(10), "ghost": vec(11), "clerk": vec(12)}
    acts: dict[str, torch.Tensor] = {}
    scores: dict[str, torch.Tensor | list[int]] = {}
    for i, (name, center) in enumerate(centers.items()):
        n_full = {"pirate": 12, "ghost": 20, "clerk": 4}[name]
        full = around(center, n_full, seed=20 + i)
        partial = torch.full((3, N_LAYERS, D), 100.0)  # score 2: must not leak into the mean
        acts[name] = torch.cat([partial[:1], full, partial[1:]])
        scores[name] = [2] + [3] * n_full + [2, 2]
    scores["ghost"] = torch.tensor(scores["ghost"])  # tensors and lists both accepted

    result = role_vectors(acts, scores, score=3, min_count=10)

    assert set(result.vectors) == {"pirate", "ghost"}
    assert result.dropped == ("clerk",)
    assert result.counts == {"pirate": 12, "ghost": 20, "clerk": 4}
    for name in ("pirate", "ghost"):
        assert result.vectors[name].dtype == torch.float32
        torch.testing.assert_close(result.vectors[name], centers[name])

    somewhat = role_vectors(acts, scores, score=2, min_count=3)
    assert somewhat.counts == {"pirate": 3, "ghost": 3, "clerk": 3}
    torch.testing.assert_close(somewhat.vectors["ghost"], torch.full((N_LAYERS, D), 100.0))


def test_role_vectors_drop_roles_without_any_rollout_even_with_min_count_zero() -> None:
    result = role_vectors({"a": torch.ones(2, N_LAYERS, D)}, {"a": [1, 2]}, min_count=0)
    assert result.vectors == {}
    assert result.dropped == ("a",)


def test_role_vectors_refuse_bad_input() -> None:
    good = torch.zeros(2, N_LAYERS, D)
    with pytest.raises(PersonaAxisError, match="No roles"):
        role_vectors({}, {})
    with pytest.raises(PersonaAxisError, match="differ"):
        role_vectors({"a": good}, {"b": [3, 3]})
    with pytest.raises(PersonaAxisError, match="one score per rollout"):
        role_vectors({"a": good}, {"a": [3]})
    with pytest.raises(PersonaAxisError, match="same model"):
        role_vectors({"a": good, "b": torch.zeros(2, N_LAYERS, D + 1)}, {"a": [3, 3], "b": [3, 3]})


def test_trait_vector_is_difference_of_means() -> None:
    pos, neg = vec(30), vec(31)
    torch.testing.assert_close(trait_vector(around(pos, 4, 1), around(neg, 10, 2)), pos - neg)
    with pytest.raises(PersonaAxisError):
        trait_vector(around(pos, 4, 1), torch.zeros(3, N_LAYERS, D + 1))


def test_axis_weights_roles_equally_whatever_their_rollout_counts() -> None:
    default, a, b = vec(40), vec(41), vec(42)
    acts = {"a": around(a, 10, 1), "b": around(b, 50, 2)}
    scores = {"a": [3] * 10, "b": [3] * 50}
    roles = role_vectors(acts, scores).vectors
    axis = assistant_axis(around(default, 8, 3).mean(0), roles)
    expected = default - (a + b) / 2  # not default - (10 a + 50 b) / 60
    torch.testing.assert_close(axis, expected)
    assert axis.dtype == torch.float32
    assert axis.shape == (N_LAYERS, D)


def test_axis_points_toward_the_assistant() -> None:
    direction = unit(vec(50))
    default = 5 * direction
    roles = {"r1": -direction, "r2": -3 * direction}
    axis = assistant_axis(default, roles)
    torch.testing.assert_close(axis, 7 * direction)  # unnormalised
    assert bool((project(default, axis) > project(roles["r1"], axis)).all())


def test_axis_refuses_bad_input() -> None:
    with pytest.raises(PersonaAxisError, match="min_count"):
        assistant_axis(vec(0), {})
    with pytest.raises(PersonaAxisError, match="same model"):
        assistant_axis(vec(0), {"a": torch.zeros(N_LAYERS, D + 1)})
    with pytest.raises(PersonaAxisError):
        assistant_axis(torch.zeros(D), {"a": torch.zeros(D)})


def test_unit_normalises_each_row() -> None:
    v = torch.tensor([[3.0, 4.0], [0.0, -2.0]], dtype=torch.float64)
    out = unit(v)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    with pytest.raises(PersonaAxisError, match="zero vector"):
        unit(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


AXIS = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # unit: [[0.6, 0.8], [0, 1]]


def test_project_all_layers_by_hand() -> None:
    h = torch.tensor([[1.0, 1.0], [5.0, -7.0]])  # [L, d]
    torch.testing.assert_close(project(h, AXIS), torch.tensor([1.4, -7.0]))
    batch = torch.stack([h, 2 * h, -h]).to(torch.bfloat16)  # [3, L, d]
    out = project(batch, AXIS)
    assert out.dtype == torch.float32
    assert out.shape == (3, 2)
    torch.testing.assert_close(out, torch.tensor([[1.4, -7.0], [2.8, -14.0], [-1.4, 7.0]]))
    torch.testing.assert_close(project(h, 10 * AXIS), project(h, AXIS))  # unit axis


def test_project_one_layer_and_one_direction() -> None:
    h = torch.tensor([[[1.0, 1.0], [2.0, -1.0], [0.0, 5.0]]])  # [batch=1, tokens=3, d] at layer 0
    expected = torch.tensor([[1.4, 0.4, 4.0]])
    torch.testing.assert_close(project(h, AXIS, layer=0), expected)
    torch.testing.assert_close(project(h, AXIS[0]), expected)
    torch.testing.assert_close(project(h, AXIS, layer=1), torch.tensor([[1.0, -1.0, 5.0]]))


@pytest.mark.parametrize(
    ("h", "axis", "layer"),
    [
        (torch.zeros(2), AXIS, 2),  # layer out of range
        (torch.zeros(2), AXIS, -1),  # negative layers refused
        (torch.zeros(2), AXIS[0], 0),  # layer= needs [L, d]
        (torch.zeros(3, 2), AXIS, None),  # [..., L, d] must match [L, d]
        (torch.zeros(3), AXIS[0], None),  # wrong d
        (torch.zeros(2, 2), torch.zeros(1, 2, 2), None),  # axis of bad rank
    ],
)
def test_project_refuses_bad_shapes(h: torch.Tensor, axis: torch.Tensor, layer: int | None) -> None:
    with pytest.raises(PersonaAxisError):
        project(h, axis, layer)


def test_cosine_by_layer() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [2.0, 2.0], [-1.0, 1.0]])
    torch.testing.assert_close(cosine_by_layer(a, b), torch.tensor([0.0, 1.0, -(0.5**0.5)]))
    with pytest.raises(PersonaAxisError):
        cosine_by_layer(a, b[:2])


def test_streamed_sums_give_the_same_vectors_as_stacked_activations() -> None:
    """The build streams sums one rollout at a time; the result equals role_vectors()."""
    centers = {"pirate": vec(60), "ghost": vec(61)}
    acts = {n: around(c, 12, seed=62 + i) for i, (n, c) in enumerate(centers.items())}
    scores = {"pirate": [3] * 8 + [2] * 4, "ghost": [3, 1] * 6}
    streamed: ActivationSums[tuple[str, int]] = ActivationSums()
    for name, stack in acts.items():
        for act, score in zip(stack.to(torch.bfloat16), scores[name], strict=True):
            streamed.add((name, score), act)  # one rollout at a time, bfloat16 in
    by_role = {
        name: {s: part for (n, s), part in streamed.groups.items() if n == name} for name in acts
    }
    from_sums = role_vectors_from_sums(by_role, (3,), min_count=5)
    direct = role_vectors({n: a.to(torch.bfloat16) for n, a in acts.items()}, scores, min_count=5)
    assert from_sums.counts == direct.counts == {"pirate": 8, "ghost": 6}
    for name in acts:
        torch.testing.assert_close(from_sums.vectors[name], direct.vectors[name])
    pooled = role_vectors_from_sums(by_role, (1, 2, 3), min_count=1)  # several scores pool
    torch.testing.assert_close(
        pooled.vectors["ghost"], acts["ghost"].to(torch.bfloat16).float().mean(0)
    )
    assert streamed.count(("ghost", 1)) == 6 and streamed.count(("ghost", 0)) == 0
    assert streamed.get([("nobody", 3)]) is None


def test_sum_counts_pool_exactly_and_refuse_mismatches() -> None:
    a, b = sum_count(torch.ones(2, N_LAYERS, D)), sum_count([torch.zeros(N_LAYERS, D)] * 3)
    both = a + b
    assert both.count == 5
    torch.testing.assert_close(both.mean(), torch.full((N_LAYERS, D), 0.4))
    with pytest.raises(PersonaAxisError, match="same model"):
        _ = a + SumCount(torch.zeros(N_LAYERS, D + 1), 1)
    with pytest.raises(PersonaAxisError, match="no rollout"):
        SumCount(torch.zeros(N_LAYERS, D), 0).mean()
    pos, neg = around(vec(70), 4, 1), around(vec(71), 6, 2)
    torch.testing.assert_close(
        trait_vector_from_sums(sum_count(pos), sum_count(neg)), trait_vector(pos, neg)
    )


def test_axis_from_means_weights_and_batches() -> None:
    default, roles = vec(80), torch.stack([vec(81), vec(82), vec(83)])
    torch.testing.assert_close(
        axis_from_means(default, roles),
        assistant_axis(default, {str(i): r for i, r in enumerate(roles)}),
    )
    weights = torch.tensor([1.0, 0.0, 3.0])  # role 1 left out, role 2 counted three times
    torch.testing.assert_close(
        axis_from_means(default, roles, weights), default - (roles[0] + 3 * roles[2]) / 4
    )
    batched = axis_from_means(torch.stack([default, -default]), torch.stack([roles, roles]))
    torch.testing.assert_close(batched[1], -default - roles.mean(0))
    with pytest.raises(PersonaAxisError, match="sum to zero"):
        axis_from_means(default, roles, torch.zeros(3))
