"""The benign profile every build ships: our reference chats, read by the build's model
(persona_axis.drift.reference_chats)."""

from __future__ import annotations

import json
import statistics

import pytest

from persona_axis.axis.bundle import AxisBundle
from persona_axis.drift.calibrate_monitor import benign_turns
from persona_axis.drift.features import performed_replies
from persona_axis.drift.profile import BenignProfile, drift_rule, robust_spread
from persona_axis.drift.reference_chats import (
    REFERENCE_LIMITS,
    SOURCE_KIND,
    reference_conversations,
    reference_digest,
    reference_path,
    reference_profile,
)
from persona_axis.models import load_model
from persona_axis.pipeline.describe import summarize
from support.tiny_axis import tiny_axis


def test_reference_chats_are_benign_assistant_conversations() -> None:
    records = [json.loads(line) for line in reference_path().read_text("utf-8").splitlines()]
    conversations = reference_conversations()
    assert len(conversations) == len(records) == 24
    assert len({r["id"] for r in records}) == 24
    assert sorted(r["topic"] for r in records) == ["everyday"] * 12 + ["hard"] * 12
    for record, conversation in zip(records, conversations, strict=True):
        assert record["label"] == "benign"
        assert 4 <= conversation.n_assistant <= 8, record["id"]
        # none of them asks for another voice: every turn counts toward the profile
        assert not any(performed_replies(conversation.messages)), record["id"]


def test_reference_profile_is_their_median_and_spread() -> None:
    lm = load_model(tiny_axis().model)
    bundle = AxisBundle.load(tiny_axis().bundle)
    profile = reference_profile(lm, bundle)
    turns, failures = benign_turns(lm, bundle, reference_conversations())
    values = [t.projection for t in turns]
    assert not failures and len(values) >= 24 * 4
    assert profile.layer == bundle.target_layer and not profile.relative
    assert profile.baseline.coefficients == {}
    assert profile.baseline.intercept == pytest.approx(statistics.median(values), abs=1e-5)
    center = profile.baseline.intercept
    assert profile.scale == pytest.approx(robust_spread([x - center for x in values]), rel=1e-5)
    assert dict(profile.limits) == REFERENCE_LIMITS
    (source,) = profile.provenance["sources"]
    assert source == {
        "kind": SOURCE_KIND,
        "conversations": 24,
        "turns": len(values),
        "sha256": reference_digest(),
    }
    # stored in the bundle, it is the rule every consumer takes
    bundle.set_benign_profile(profile.to_dict())
    rule = drift_rule(bundle)
    assert rule.reference == pytest.approx(center, abs=1e-5) and rule.scale == profile.scale
    assert not rule.relative and SOURCE_KIND in rule.source
    assert (rule.k, rule.h) == (REFERENCE_LIMITS["k"], REFERENCE_LIMITS["h"])


def test_every_build_ships_the_reference_profile() -> None:
    bundle = AxisBundle.load(tiny_axis().bundle)  # built by persona_axis.build
    stored = BenignProfile.from_bundle(bundle)
    assert stored is not None and not stored.relative
    assert stored.provenance["sources"][0]["kind"] == SOURCE_KIND
    assert stored.layer == bundle.target_layer
    assert "finish" in bundle.manifest["timings"]
    line = summarize(bundle)["benign_profile"]  # printed after every build
    assert line.startswith(f"from 24 {SOURCE_KIND}: level ") and "alarm k 2.5, h 2" in line
