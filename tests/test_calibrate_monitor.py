"""The benign profile (calibrate-monitor): content features, the fitted baseline and spread,
storage in the bundle
with provenance, the rule the monitor takes from it, generated benign chats and the command."""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_axis.axis.bundle import AxisBundle
from persona_axis.cli import app
from persona_axis.drift.benign_chats import chat_data, hold_chats, plan_scripts
from persona_axis.drift.calibrate_monitor import BenignTurn, fit_benign_profile, make_benign_profile
from persona_axis.drift.features import Baseline, TurnFeatures
from persona_axis.drift.monitor import monitor
from persona_axis.drift.profile import BenignProfile, drift_rule
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.generation import Sampling
from persona_axis.models import load_model
from support.tiny_axis import tiny_axis

runner = CliRunner()

CODE_REPLY = "Here you go:\n```python\nfor i in range(3):\n    print(i)\n```\nDone."
LIST_REPLY = "Steps:\n- open the box\n- take it out\n1. plug it in\n2) switch it on"


def test_turn_features_describe_code_lists_and_length() -> None:
    code = TurnFeatures.of(CODE_REPLY, n_tokens=30, turn=2)
    assert 0.5 < code.code < 1 and code.kind == "code"
    lists = TurnFeatures.of(LIST_REPLY, n_tokens=20, turn=1)
    assert lists.code == 0 and lists.lists == pytest.approx(4 / 5) and lists.kind == "lists"
    assert TurnFeatures.of("word " * 200, 200, 1).kind == "prose"
    assert TurnFeatures.of("Sure.", 2, 1).kind == "short"
    assert TurnFeatures.of("", 0, 1).values() == {
        "code": 0.0,
        "lists": 0.0,
        "log_tokens": 0.0,
        "log_turn": 0.0,
    }
    assert TurnFeatures.of("```never closed\ncode", 5, 3).code == 1.0


def test_baseline_checks_and_expectation() -> None:
    baseline = Baseline(10.0, {"code": -4.0, "log_turn": 1.0})
    features = TurnFeatures.of(CODE_REPLY, 30, turn=3)
    assert baseline.expected(features) == pytest.approx(10 - 4 * features.code + math.log(3))
    assert Baseline.from_dict(baseline.to_dict()) == baseline
    with pytest.raises(PersonaAxisError, match="Unknown baseline features"):
        Baseline(0.0, {"colour": 1.0})
    with pytest.raises(PersonaAxisError, match="malformed"):
        Baseline.from_dict({"intercept": 1.0})


def synthetic_turns(n: int = 300, seed: int = 0) -> list[BenignTurn]:
    """Projection = 20 − 6·code − 3·lists + 0.5·log_tokens + noise(sd 1), turns in chats of 6."""
    rng = random.Random(seed)
    turns = []
    for i in range(n):
        code, lists = rng.choice([(0.0, 0.0), (0.7, 0.0), (0.0, 0.6), (0.3, 0.3)])
        features = TurnFeatures(
            turn=i % 6 + 1, n_tokens=rng.randint(5, 400), code=code, lists=lists
        )
        value = 20 - 6 * code - 3 * lists + 0.5 * features.values()["log_tokens"]
        turns.append(BenignTurn(value + rng.gauss(0, 1), features, f"chat {i // 6}"))
    return turns


def test_fit_recovers_the_content_effects_and_the_spread() -> None:
    fitted = fit_benign_profile(synthetic_turns(), layer=2, provenance={"sources": []})
    coefficients = fitted.baseline.coefficients
    assert coefficients["code"] == pytest.approx(-6, abs=0.5)
    assert coefficients["lists"] == pytest.approx(-3, abs=0.5)
    assert coefficients["log_tokens"] == pytest.approx(0.5, abs=0.2)
    assert abs(coefficients["log_turn"]) < 0.4
    assert fitted.scale == pytest.approx(1.0, rel=0.2)
    assert fitted.effects["n_turns"] == 300 and fitted.effects["n_conversations"] == 50
    assert set(fitted.effects["kind"]) <= {"code", "lists", "prose", "short"}
    assert fitted.effects["between_conversation_share"] < 0.35  # independent noise
    with pytest.raises(PersonaAxisError, match="at least 12"):
        fit_benign_profile(synthetic_turns(5), layer=2)


def test_logs_set_the_level_and_share_the_content_effects() -> None:
    own = [replace(t, projection=t.projection + 10, source="generated") for t in synthetic_turns()]
    logs = [
        replace(t, source="logs.jsonl", conversation=f"log {t.conversation}")
        for t in synthetic_turns(120, seed=5)
    ]
    fitted = fit_benign_profile(own + logs, layer=2)
    alone = fit_benign_profile(logs, layer=2)
    assert fitted.baseline.intercept == pytest.approx(alone.baseline.intercept, abs=1.0)
    assert fitted.baseline.coefficients["code"] == pytest.approx(-6, abs=0.5)
    assert fitted.scale == pytest.approx(1.0, rel=0.25)  # the logs' spread, not the mixture's
    generated_only = fit_benign_profile(own, layer=2)
    assert generated_only.baseline.intercept == pytest.approx(30, abs=1.0)


def test_a_fitted_rule_does_not_read_code_as_drift() -> None:
    fitted = fit_benign_profile(synthetic_turns(), layer=2)
    rule = fitted.rule()
    assert rule.relative and rule.change_scale == fitted.change_scale
    assert fitted.change_scale == pytest.approx(math.sqrt(2), rel=0.25)  # two unit noises
    prose = TurnFeatures(turn=1, n_tokens=100, code=0.0, lists=0.0)
    code = TurnFeatures(turn=2, n_tokens=100, code=0.7, lists=0.0)
    typical_prose = 20 + 0.5 * math.log(100)
    typical_code = typical_prose - 6 * 0.7  # code sits 4.2 lower, i.e. about 3 change units
    first, second = rule.judge([typical_prose, typical_code], [prose, code])
    assert first.change is None and first.z is None and first.shortfall == pytest.approx(0, abs=0.3)
    assert abs(second.change or 0) < 0.3 and second.level == "none"
    prose_again = replace(prose, turn=2)  # the same fall with no code to explain it
    one_turn_anchor = replace(rule, anchor_turns=1)  # the default anchor averages two turns
    _, fallen = one_turn_anchor.judge([typical_prose, typical_code], [prose, prose_again])
    assert (fallen.change or 0) > 2.5 and (fallen.cusum or 0) > 0.5
    unfloored = replace(rule, anchor_floor=None)  # the anchor, about −2.1, is near the floor
    _, halved = unfloored.judge([typical_prose, typical_code], [prose, prose_again])
    assert halved.change == pytest.approx((fallen.change or 0) / 2)
    assert rule.k == 2.0 and rule.h == 2.0 and rule.warning == 2.0 and rule.anchor_turns == 2
    assert rule.anchor_floor == 2.0
    assert "benign profile" in rule.source
    assert fitted.rule(h=9.0).h == 9.0


def test_stored_profile_round_trips_and_is_preferred(tmp_path: Path) -> None:
    bundle = AxisBundle.load(tiny_axis().bundle)
    layer = bundle.target_layer
    fitted = fit_benign_profile(
        synthetic_turns(), layer=layer, provenance={"sources": [{"kind": "x"}]}
    )
    bundle.set_benign_profile(fitted.to_dict())
    bundle.save(tmp_path / "b")
    loaded = AxisBundle.load(tmp_path / "b")
    assert BenignProfile.from_bundle(loaded) == BenignProfile.from_dict(fitted.to_dict())
    rule = drift_rule(loaded)
    assert rule.baseline == fitted.baseline and rule.scale == fitted.scale
    legacy = drift_rule(loaded, percentile=1)  # asking for the build's levels
    assert legacy.baseline is None and "default replies" in legacy.source
    assert drift_rule(loaded, layer - 1).baseline is None  # profiled at another layer
    with pytest.raises(PersonaAxisError, match="plain JSON"):
        loaded.set_benign_profile({"scale": math.nan})
    broken = {**fitted.to_dict(), "format_version": 99}
    with pytest.raises(PersonaAxisError, match="calibrate-monitor again"):
        BenignProfile.from_dict(broken)


def test_scripts_cover_every_domain_with_all_kinds_of_follow_up() -> None:
    data = chat_data()
    n = sum(len(d["openers"]) for d in data["domains"].values())
    scripts = plan_scripts(n, 6, seed=1)
    assert {s.domain for s in scripts[: len(data["domains"])]} == set(data["domains"])
    assert len({s.user_messages[0] for s in scripts}) == n  # every opener once
    kinds = {k for s in scripts for k in s.kinds}
    assert kinds == {"opener", "code", "list", "prose", "short"}
    assert plan_scripts(5, 3, seed=1) == plan_scripts(5, 3, seed=1)
    longer = plan_scripts(5, 6, seed=1)
    assert all(
        short.user_messages == long.user_messages[:3]
        for short, long in zip(plan_scripts(5, 3, seed=1), longer, strict=True)
    )
    assert all(len(s.user_messages) == 3 for s in plan_scripts(5, 3))
    with pytest.raises(PersonaAxisError):
        plan_scripts(0, 3)


@pytest.mark.slow
def test_chats_resume_from_the_checkpoint_and_the_profile_is_fitted(tmp_path: Path) -> None:
    lm = load_model(tiny_axis().model)
    bundle = AxisBundle.load(tiny_axis().bundle)
    sampling = Sampling(max_new_tokens=6)
    scripts = plan_scripts(4, 3)
    checkpoint = tmp_path / "chats.partial.json"
    first = hold_chats(lm, scripts, sampling, batch_size=2, checkpoint=checkpoint)
    assert [len(c.messages) for c in first] == [6] * 4
    assert all(
        c.messages[0]["content"] == s.user_messages[0] for c, s in zip(first, scripts, strict=True)
    )
    again = hold_chats(lm, scripts, sampling, checkpoint=checkpoint)  # nothing left to generate
    assert [c.messages for c in again] == [c.messages for c in first]
    with pytest.raises(PersonaAxisError, match="other settings"):
        hold_chats(lm, scripts, Sampling(max_new_tokens=7), checkpoint=checkpoint)
    log = tmp_path / "mine.jsonl"
    log.write_text(
        "\n".join(json.dumps({"messages": list(c.messages)}) for c in first) + "\n{bad\n"
    )
    profile, failures = make_benign_profile(
        lm, bundle, generated=4, turns=3, sampling=sampling, logs=[log], out=tmp_path
    )
    assert [f.position for f in failures] == ["line 5"]
    kinds = [s["kind"] for s in profile.provenance["sources"]]
    assert kinds == ["generated", "logs"]
    assert profile.provenance["sources"][1]["conversations"] == 4
    assert profile.effects["n_turns"] <= 24
    assert (tmp_path / "benign_chats.jsonl").is_file()


@pytest.mark.slow
def test_calibrate_monitor_command_stores_it_and_monitor_uses_it(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_axis().bundle, bundle)
    out = tmp_path / "cal"
    args = ["calibrate-monitor", "--bundle", str(bundle), "--out", str(out), "--no-progress"]
    args += ["--conversations", "6", "--turns", "3", "--max-new-tokens", "6"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "expected projection =" in result.output and "stored the benign profile" in result.output
    stored = AxisBundle.load(bundle).benign_profile
    assert stored is not None and stored["provenance"]["sources"][0]["conversations"] == 6
    assert json.loads((out / "benign_profile.json").read_text()) == stored
    lm = load_model(tiny_axis().model)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": CODE_REPLY}]
    data = monitor(lm, AxisBundle.load(bundle), [chat]).to_dict()
    assert "benign profile" in data["rule"]["source"]
    assert data["conversations"][0]["turns"][0]["kind"] == "code"
    assert data["conversations"][0]["turns"][0]["expected"] is not None
