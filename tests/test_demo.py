"""The demo's small axis: real rollouts, a valid bundle, floors calibrated on the band."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import tiny_lm
from persona_axis import demo
from persona_axis.axis import project
from persona_axis.bundle import AxisBundle


def test_demo_bundle_is_built_from_rollouts_and_reloads(tmp_path: Path, monkeypatch) -> None:
    lm = tiny_lm("llama")
    monkeypatch.setattr(demo, "BAND", (1, 3))
    monkeypatch.setattr(demo, "QUESTIONS", demo.QUESTIONS[:2])
    built = demo.build_demo_bundle(lm, tmp_path / "bundle", batch_size=8)
    loaded = AxisBundle.load(tmp_path / "bundle")
    loaded.check_against(lm.model)
    roles = loaded.roles()
    assert sorted(roles) == sorted(demo.ROLES)
    # the axis is the default minus the equal-weight mean of the role vectors
    expected = loaded.default - torch.stack(list(roles.values())).mean(0)
    torch.testing.assert_close(loaded.axis, expected)
    assert set(loaded.caps) == {"layers_1:3-p75", "layers_1:3-p50"}
    p75, p50 = loaded.cap("layers_1:3-p75"), loaded.cap("layers_1:3-p50")
    assert p75.layers == [1, 2]
    assert all(
        a.threshold >= b.threshold for a, b in zip(p75.thresholds, p50.thresholds, strict=True)
    )
    assert loaded.vectors["stats/mean_norm"].shape == (4,)
    assert torch.equal(built.axis, loaded.axis)
    # the default vector sits at the Assistant end of its own axis
    default_projection = project(loaded.default, loaded.axis)
    role_projection = torch.stack([project(v, loaded.axis) for v in roles.values()]).mean(0)
    assert (default_projection > role_projection).all()
