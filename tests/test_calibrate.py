"""Cap calibration against hand-computed and numpy percentiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from persona_axis.axis.calibrate import (
    CAP_RULE,
    CapSetting,
    calibrate_cap,
    calibrate_grid,
    default_recommendation,
    setting_name,
)
from persona_axis.errors import PersonaAxisError
from persona_axis.pipeline.config import default_cap_layer_ranges

N_ROLLOUTS, N_LAYERS = 11, 6
# column L holds 0..10 scaled by (L + 1) and shifted by L, rows shuffled
_ORDER = torch.randperm(N_ROLLOUTS, generator=torch.Generator().manual_seed(0))
_STEPS = torch.arange(N_ROLLOUTS, dtype=torch.float32)[_ORDER, None]
PROJ = _STEPS * torch.arange(1, N_LAYERS + 1) + torch.arange(N_LAYERS)


def thresholds(setting: CapSetting) -> list[float]:
    return [t.threshold for t in setting.thresholds]


def test_cap_thresholds_by_hand() -> None:
    setting = calibrate_cap(PROJ, (2, 5), 75, calibrated_on="all rollouts")
    # 75th percentile of 0..10 (linear) is 7.5; column L is 7.5 * (L + 1) + L
    assert setting.layers == [2, 3, 4]
    assert thresholds(setting) == pytest.approx([7.5 * 3 + 2, 7.5 * 4 + 3, 7.5 * 5 + 4])
    assert setting.name == "layers_2:5-p75"
    assert setting.percentile == 75.0
    assert setting.calibrated_on == "all rollouts"
    assert setting.rule == CAP_RULE
    assert setting.notes["n_rollouts"] == N_ROLLOUTS


@pytest.mark.parametrize("percentile", [0, 1, 25, 50, 62.5, 75, 100])
def test_cap_thresholds_match_numpy_linear(percentile: float) -> None:
    proj = torch.randn(97, N_LAYERS, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    setting = calibrate_cap(proj, range(0, N_LAYERS), percentile, calibrated_on="random")
    expected = np.percentile(proj.float().numpy(), percentile, axis=0, method="linear")
    np.testing.assert_allclose(thresholds(setting), expected, rtol=1e-6, atol=1e-6)


def test_p75_along_axis_is_p25_along_role_minus_default() -> None:
    along_axis = calibrate_cap(PROJ, (0, N_LAYERS), 75, "x")
    along_negated = calibrate_cap(-PROJ, (0, N_LAYERS), 25, "x")
    assert thresholds(along_axis) == pytest.approx([-t for t in thresholds(along_negated)])


def test_tuple_and_range_layer_ranges_agree_and_round_trip_through_dict() -> None:
    by_tuple = calibrate_cap(PROJ, (1, 4), 50, "x")
    assert calibrate_cap(PROJ, range(1, 4), 50, "x") == by_tuple
    assert CapSetting.from_dict(by_tuple.to_dict()) == by_tuple


def test_setting_name_keeps_its_format() -> None:
    assert setting_name(14, 18, 75) == "layers_14:18-p75"
    assert setting_name(0, 2, 12.5) == "layers_0:2-p12.5"


@pytest.mark.parametrize(
    ("layers", "percentile"),
    [
        ((2, 2), 75),  # empty range
        ((3, 2), 75),
        ((-1, 2), 75),
        ((2, N_LAYERS + 1), 75),  # past the last layer
        (range(0, 4, 2), 75),  # not contiguous
        ([2, 5], 75),  # a list is ambiguous (layers or a range?)
        ((2, 5, 7), 75),
        ((2.0, 5), 75),
        ((2, 5), -1),
        ((2, 5), 100.5),
        ((2, 5), float("nan")),
        ((2, 5), "75"),
    ],
)
def test_cap_refuses_bad_layers_and_percentiles(layers: object, percentile: object) -> None:
    with pytest.raises(PersonaAxisError):
        calibrate_cap(PROJ, layers, percentile, "x")  # type: ignore[arg-type]


def test_cap_refuses_bad_projections() -> None:
    with pytest.raises(PersonaAxisError, match="n_rollouts"):
        calibrate_cap(PROJ[:, 0], (0, 1), 75, "x")
    with pytest.raises(PersonaAxisError, match="n_rollouts"):
        calibrate_cap(PROJ[:0], (0, 1), 75, "x")
    with_nan = PROJ.clone()
    with_nan[3, 1] = float("nan")
    with pytest.raises(PersonaAxisError, match="NaN"):
        calibrate_cap(with_nan, (0, 2), 75, "x")
    assert calibrate_cap(with_nan, (2, 4), 75, "x").layers == [2, 3]  # other layers are fine


def test_grid_is_every_layer_range_times_percentile() -> None:
    grid = calibrate_grid(PROJ, [(0, 2), (3, 6)], [25, 75], "all rollouts")
    assert list(grid) == [
        "layers_0:2-p25",
        "layers_0:2-p75",
        "layers_3:6-p25",
        "layers_3:6-p75",
    ]
    assert grid["layers_3:6-p25"] == calibrate_cap(PROJ, (3, 6), 25, "all rollouts")
    assert thresholds(grid["layers_0:2-p25"]) == pytest.approx([2.5, 2.5 * 2 + 1])


def test_grid_refuses_empty_or_duplicate_points() -> None:
    with pytest.raises(PersonaAxisError):
        calibrate_grid(PROJ, [], [75], "x")
    with pytest.raises(PersonaAxisError):
        calibrate_grid(PROJ, [(0, 2)], [], "x")
    with pytest.raises(PersonaAxisError, match="twice"):
        calibrate_grid(PROJ, [(0, 2), range(0, 2)], [75], "x")


@pytest.mark.parametrize("n_layers", [6, 24, 30, 32, 64, 80])
def test_recommendation_on_the_build_grid_is_p75_on_the_layer_range_nearest_70_percent(
    n_layers: int,
) -> None:
    ranges = default_cap_layer_ranges(n_layers)
    projections = torch.arange(4 * n_layers, dtype=torch.float32).reshape(4, n_layers)
    grid = calibrate_grid(projections, ranges, [25, 50, 75, 99], "x")
    first, stop = min(ranges, key=lambda b: (abs(b[0] - 0.7 * n_layers), b[1] - b[0]))
    assert default_recommendation(list(grid.values()), n_layers) == setting_name(first, stop, 75)
    without_p75 = [s for s in grid.values() if s.percentile != 75]
    # nearest percentile to 75 first: 99 (24 away) before 50 (25 away)
    assert default_recommendation(without_p75, n_layers) == setting_name(first, stop, 99)
    assert default_recommendation([], n_layers) is None
