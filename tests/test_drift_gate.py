"""The on-drift gate's hysteresis, and the benign profile every build ships with."""

from __future__ import annotations

import pytest

from persona_axis.axis.bundle import AxisBundle
from persona_axis.drift.features import Baseline
from persona_axis.drift.gate import RELEASE, arming
from persona_axis.drift.profile import DEFAULT_LIMITS, BenignProfile, drift_rule
from persona_axis.drift.rule import (
    DEFAULT_ANCHOR_FLOOR,
    DEFAULT_H,
    DEFAULT_WARNING,
    DriftRule,
    TurnVerdict,
)
from persona_axis.pipeline.monitor_sample import SAMPLE_KEY
from support.tiny_axis import tiny_axis


def verdict(level: str, ewma: float | None) -> TurnVerdict:
    return TurnVerdict(None, None, None, None, ewma, None, None, level)  # type: ignore[arg-type]


def test_the_gate_arms_at_warning_and_releases_below_the_release_level() -> None:
    turns = [
        verdict("none", None),  # anchor
        verdict("none", 1.5),
        verdict("warning", 2.1),  # arms: reply 4 on is capped
        verdict("none", 1.6),  # still above RELEASE: stays armed
        verdict("none", None),  # a turn without content leaves it as it is
        verdict("none", RELEASE),  # at the release level: released
        verdict("alarm", 0.4),  # the CUSUM alarm arms it again
    ]
    states = [arming(turns[:n]) for n in range(len(turns) + 1)]
    assert [s.armed for s in states] == [False, False, False, True, True, True, False, True]
    assert states[3].since == 3 and states[6].since is None and states[7].since == 7
    assert states[-1].fired == (3, 4, 5, 7)
    assert states[-1].to_dict() == {"armed": True, "since_turn": 7, "armed_after": [3, 4, 5, 7]}


def test_one_default_per_limit() -> None:
    assert DEFAULT_LIMITS["h"] == DEFAULT_H == DriftRule(0, 0.0, 1.0).h
    assert DEFAULT_LIMITS["warning"] == DEFAULT_WARNING == DriftRule(0, 0.0, 1.0).warning
    floor = DEFAULT_LIMITS["anchor_floor"]
    assert floor == DEFAULT_ANCHOR_FLOOR == DriftRule(0, 0.0, 1.0).anchor_floor


def test_a_profile_stores_its_anchor_floor_and_older_ones_get_the_default() -> None:
    profile = BenignProfile(0, Baseline(1.0, {}), 1.0, 1.0, {"anchor_floor": 3.0})
    assert profile.rule().anchor_floor == 3.0
    stored = BenignProfile.from_dict(profile.to_dict())
    assert stored.rule().anchor_floor == 3.0
    older = profile.to_dict()
    del older["limits"]["anchor_floor"]  # stored before the floor existed
    assert BenignProfile.from_dict(older).rule().anchor_floor == DEFAULT_ANCHOR_FLOOR


@pytest.mark.slow
def test_without_the_reference_profile_a_build_falls_back_to_its_default_replies() -> None:
    bundle = AxisBundle.load(tiny_axis().bundle)
    assert bundle.benign_profile is not None  # the reference profile (test_reference_chats)
    del bundle.manifest["benign_profile"]  # as in bundles built before it existed
    sample = bundle.manifest[SAMPLE_KEY]
    assert sample["layer"] == bundle.target_layer
    n_default = sum(len(group) for group in sample["projections"])
    assert 2 <= n_default <= bundle.manifest["counts"]["default"]
    assert [len(g) for g in sample["projections"]] == [len(g) for g in sample["n_tokens"]]
    shipped = BenignProfile.from_build(bundle)
    assert shipped is not None and shipped.layer == bundle.target_layer
    values = [x for group in sample["projections"] for x in group]
    assert min(values) <= shipped.baseline.intercept <= max(values)
    assert shipped.scale > 0 and shipped.change_scale > 0 and not shipped.baseline.coefficients
    rule = drift_rule(bundle)
    assert not rule.relative and rule.baseline == shipped.baseline and rule.h == DEFAULT_H
    assert "build default replies" in rule.source
    assert BenignProfile.from_dict(shipped.to_dict()) == shipped  # it can be stored too
    del bundle.manifest[SAMPLE_KEY]
    older = drift_rule(bundle)  # older bundles: the build's percentile rule
    assert older.baseline is None and "default replies' p1" in older.source


def test_calibrate_monitor_defaults_are_the_librarys() -> None:
    from persona_axis.cli import calibrate_monitor as cli
    from persona_axis.drift import calibrate_monitor as library

    for name in ("DEFAULT_CONVERSATIONS", "DEFAULT_TURNS", "DEFAULT_NEW_TOKENS"):
        assert getattr(cli, name) == getattr(library, name)
