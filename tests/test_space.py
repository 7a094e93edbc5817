"""Persona space on role vectors lying exactly on a known line or plane."""

from __future__ import annotations

import pytest
import torch

from persona_axis.axis.space import axis_pc1_cosine, persona_space
from persona_axis.axis.vectors import assistant_axis
from persona_axis.errors import PersonaAxisError

N_LAYERS, D, LAYER = 3, 6, 1


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


CENTER = torch.randn(D, generator=_gen(0))
U = torch.nn.functional.normalize(torch.randn(D, generator=_gen(1)), dim=0)
# a second unit direction orthogonal to U
_W = torch.randn(D, generator=_gen(2))
V = torch.nn.functional.normalize(_W - (_W @ U) * U, dim=0)


def roles_at(points: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Role vectors [L, d] whose row LAYER is the given point; other layers are random."""
    roles = {}
    for i, point in enumerate(points):
        vector = torch.randn(N_LAYERS, D, generator=_gen(100 + i))
        vector[LAYER] = point
        roles[f"role{i}"] = vector
    return roles


def with_layer(point: torch.Tensor) -> torch.Tensor:
    vector = torch.zeros(N_LAYERS, D)
    vector[LAYER] = point
    return vector


TS = [-2.0, -1.0, 0.5, 1.0, 4.0]
LINE = roles_at([CENTER + t * U for t in TS])


def test_line_gives_one_component_along_it_with_default_end_positive() -> None:
    space = persona_space(LINE, LAYER, default=with_layer(CENTER + 10 * U))
    assert space.names == ("role0", "role1", "role2", "role3", "role4")
    assert space.components.shape == (4, D)  # n_roles - 1
    assert space.components.dtype == torch.float32
    torch.testing.assert_close(space.explained_variance_ratio[0], torch.tensor(1.0))
    torch.testing.assert_close(
        space.explained_variance_ratio[1:], torch.zeros(3), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(space.components[0], U, atol=1e-5, rtol=0)
    mean_t = sum(TS) / len(TS)
    torch.testing.assert_close(space.mean, CENTER + mean_t * U)
    torch.testing.assert_close(space.loadings[:, 0], torch.tensor(TS) - mean_t, atol=1e-5, rtol=0)
    assert space.default_loading is not None
    torch.testing.assert_close(space.default_loading[0], torch.tensor(10 - mean_t))
    assert space.components_for(0.7) == 1


def test_default_at_the_other_end_flips_pc1() -> None:
    space = persona_space(LINE, LAYER, default=with_layer(CENTER - 10 * U))
    torch.testing.assert_close(space.components[0], -U, atol=1e-5, rtol=0)
    assert space.default_loading is not None
    assert float(space.default_loading[0]) > 0
    unsigned = persona_space(LINE, LAYER)
    assert unsigned.default_loading is None
    assert abs(float(unsigned.components[0] @ U)) == pytest.approx(1.0, abs=1e-5)


# corners of a 3 x 1 diamond: variance along U is 9 times the variance along V
PLANE = roles_at([CENTER + 3 * U, CENTER - 3 * U, CENTER + V, CENTER - V])


def test_plane_gives_known_unscaled_variance_ratios() -> None:
    space = persona_space(PLANE, LAYER, default=with_layer(CENTER + U))
    ratios = space.explained_variance_ratio
    torch.testing.assert_close(ratios[:2], torch.tensor([0.9, 0.1]))  # 18 : 2, not scaled
    torch.testing.assert_close(ratios[2], torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(space.components[0], U, atol=1e-5, rtol=0)
    assert abs(float(space.components[1] @ V)) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(space.mean, CENTER)
    assert space.components_for(0.7) == 1
    assert space.components_for(0.9) == 1
    assert space.components_for(0.95) == 2
    assert space.components_for(1.0) == 2


def test_transform_matches_loadings_and_places_new_points() -> None:
    space = persona_space(PLANE, LAYER)
    points = torch.stack([v[LAYER] for v in PLANE.values()])
    torch.testing.assert_close(space.transform(points), space.loadings)
    coords = space.transform((CENTER + 2 * U - 5 * V).double())
    assert coords.shape == (3,)
    assert coords.dtype == torch.float32
    sign1 = float(torch.sign(space.components[0] @ U))
    sign2 = float(torch.sign(space.components[1] @ V))
    torch.testing.assert_close(coords[:2], torch.tensor([2 * sign1, -5 * sign2]), atol=1e-5, rtol=0)
    with pytest.raises(PersonaAxisError, match="layer"):
        space.transform(torch.zeros(N_LAYERS, D + 1))


def test_components_for_refuses_unreachable_or_bad_fraction() -> None:
    space = persona_space(PLANE, LAYER, n_components=1)
    assert space.components.shape == (1, D)
    with pytest.raises(PersonaAxisError, match="n_components"):
        space.components_for(0.95)
    with pytest.raises(PersonaAxisError):
        space.components_for(0.0)


def test_axis_pc1_cosine_on_the_line() -> None:
    default = with_layer(CENTER + 10 * U)
    space = persona_space(LINE, LAYER, default=default)
    axis = assistant_axis(default, LINE)
    assert axis_pc1_cosine(axis, space) == pytest.approx(1.0, abs=1e-5)
    assert axis_pc1_cosine(-axis, space) == pytest.approx(-1.0, abs=1e-5)
    with pytest.raises(PersonaAxisError):
        axis_pc1_cosine(axis[:, :-1], space)


@pytest.mark.parametrize(
    ("roles", "layer", "n_components", "default"),
    [
        ({"only": torch.zeros(N_LAYERS, D)}, LAYER, None, None),  # one role
        (PLANE, N_LAYERS, None, None),  # layer out of range
        (PLANE, LAYER, 5, None),  # more components than roles
        (PLANE, LAYER, 0, None),
        (PLANE, LAYER, None, torch.zeros(N_LAYERS, D + 1)),  # default shape mismatch
        ({**PLANE, "odd": torch.zeros(N_LAYERS, D + 1)}, LAYER, None, None),
    ],
)
def test_persona_space_refuses_bad_input(
    roles: dict[str, torch.Tensor],
    layer: int,
    n_components: int | None,
    default: torch.Tensor | None,
) -> None:
    with pytest.raises(PersonaAxisError):
        persona_space(roles, layer, n_components=n_components, default=default)
