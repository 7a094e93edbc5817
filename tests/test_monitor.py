"""Monitoring: CUSUM and drift rules on synthetic trajectories, per-turn projections against
HF hidden states, zero-extra-pass telemetry parity, failure isolation and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from persona_axis.application.session import ChatSession
from persona_axis.axis.bundle import AxisBundle
from persona_axis.cli import app
from persona_axis.cli.common import parse_layers
from persona_axis.drift.conversations import Conversation
from persona_axis.drift.monitor import (
    default_extra_layers,
    monitor,
    projections_from_tokens,
    turn_projections,
)
from persona_axis.drift.rule import DriftRule, cusum_lower
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.generation import Sampling
from persona_axis.inference.interventions import InterventionSpec, intervene
from persona_axis.inference.telemetry import generate_with_telemetry
from persona_axis.models import LoadedModel, load_model
from support.bundles import make_bundle
from support.tiny_axis import tiny_axis

runner = CliRunner()

CHAT = [
    {"role": "user", "content": "Hello there, who are you?"},
    {"role": "assistant", "content": "I am an assistant. How can I help you today?"},
    {"role": "user", "content": "Tell me a short story about the sea."},
    {"role": "assistant", "content": "Once a small boat sailed far out, and the waves sang."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You are welcome."},
]


# -- CUSUM and rules on synthetic trajectories (no model) ---------------------------------------


def rule(**changes) -> DriftRule:
    """A shortfall rule with CUSUM k = 0.5, h = 4 (the synthetic trajectories below are sized
    for them, not for the defaults) and no warning level."""
    settings = {"layer": 0, "reference": 0.0, "scale": 1.0, "watch": 2.0, "k": 0.5, "h": 4.0}
    settings["warning"] = None
    return DriftRule(**{**settings, **changes})


def alarm_turn(values: list[float | None], r: DriftRule) -> int | None:
    verdicts = r.judge(values)
    return next((i + 1 for i, v in enumerate(verdicts) if v.level == "alarm"), None)


def test_cusum_accumulates_shortfalls_beyond_the_allowance() -> None:
    values = [0.0, -1.5, -1.5, 0.5, -3.0]
    # z = reference - x: 0, 1.5, 1.5, -0.5, 3.0 ; minus k = 0.5 each
    assert cusum_lower(values, reference=0.0, scale=1.0, k=0.5) == [0.0, 1.0, 2.0, 1.0, 3.5]
    assert cusum_lower([-2.0, -2.0], reference=0.0, scale=2.0, k=0.0) == [1.0, 2.0]


@pytest.mark.parametrize(
    ("trajectory", "expected"),
    [
        ([0.0] * 15, None),  # steady at the Assistant reference
        ([0.4, -0.3, 0.2, -0.4, 0.1, -0.2, 0.3, -0.4, 0.0, 0.2, -0.3, 0.1, -0.1, 0.2, 0.0], None),
        ([-0.6] * 15, None),  # a small offset below the allowance never alarms
        ([0.0, 0.0, -1.5, -1.5, -1.5, -1.5, -1.5], 6),  # sustained 1.5-scale drop: 4th low turn
        ([0.0, -5.0, 0.0, 0.0], 2),  # one very low turn (z >= h + k) alarms at once
        ([-0.3 * t for t in range(15)], 8),  # a steady downward trend
        ([0.0, None, -2.5, None, -2.5], 5),  # turns without content are skipped
    ],
)
def test_alarm_turns_on_synthetic_trajectories(trajectory, expected) -> None:
    assert alarm_turn(trajectory, rule()) == expected


def test_recovery_lowers_the_statistic_and_flags_follow_the_threshold() -> None:
    r = rule()
    verdicts = r.judge([-3.0, -3.0, 2.0, 2.0, 2.0, None])
    assert [v.below_threshold for v in verdicts] == [True, True, False, False, False, None]
    assert [v.cusum for v in verdicts] == [2.5, 5.0, 2.5, 0.0, 0.0, None]
    assert [v.level for v in verdicts] == ["watch", "alarm", "none", "none", "none", "none"]
    assert r.threshold == -2.0
    no_threshold = rule(watch=None)
    assert no_threshold.judge([-9.0])[0].below_threshold is None


def test_watch_and_warning_limits_can_be_overridden() -> None:
    r = rule().with_overrides(watch=10.0, warning=0.8)
    assert (r.watch, r.warning, r.h) == (10.0, 0.8, rule().h)
    (verdict,) = r.judge([-3.0])  # shortfall 3: EWMA 0.9, CUSUM 2.5
    assert verdict.below_threshold is False and verdict.level == "warning"
    assert rule().judge([-3.0])[0].level == "watch"
    with pytest.raises(PersonaAxisError, match="not both"):
        rule().with_overrides(threshold=1.0, watch=2.0)


def test_rule_without_cusum_and_bad_settings() -> None:
    plain = DriftRule(layer=1, reference=None, scale=None)
    assert [v.level for v in plain.judge([0.0, 2.0])] == ["none", "none"]
    with pytest.raises(PersonaAxisError, match="give --reference and --scale"):
        plain.with_overrides(threshold=1.0)
    with pytest.raises(PersonaAxisError, match="both the CUSUM reference and scale"):
        DriftRule(layer=1, reference=1.0, scale=None)
    with pytest.raises(PersonaAxisError, match="positive"):
        rule(scale=0.0)
    with pytest.raises(PersonaAxisError, match="h > 0"):
        rule(h=0.0)
    with pytest.raises(PersonaAxisError, match="positive number"):
        cusum_lower([1.0], reference=0.0, scale=math.nan)


# -- rules from bundles -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle() -> AxisBundle:
    return AxisBundle.load(tiny_axis().bundle)


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return load_model(tiny_axis().model)


def test_rule_from_percentiles_uses_default_replies(bundle: AxisBundle) -> None:
    r = DriftRule.from_bundle(bundle)
    layer = bundle.target_layer
    table = bundle.manifest["projection_percentiles"]["per_response_by_kind"]["default"][layer]
    p1, p25, p50, p75 = table  # percentiles 1, 25, 50, 75
    assert r.layer == layer and r.threshold == pytest.approx(p1) and r.reference == p50
    assert r.scale == pytest.approx((p75 - p25) / 1.349)
    assert "default replies' p1" in r.source
    assert DriftRule.from_bundle(bundle, percentile=25).threshold == pytest.approx(p25)
    with pytest.raises(PersonaAxisError, match="not 5; pick one"):
        DriftRule.from_bundle(bundle, percentile=5)


def test_rule_falls_back_to_the_default_vector_then_to_none(bundle: AxisBundle) -> None:
    manifest = {k: v for k, v in bundle.manifest.items() if k != "projection_percentiles"}
    old = AxisBundle(vectors=bundle.vectors, manifest=manifest, caps=bundle.caps)
    r = DriftRule.from_bundle(old)
    layer = old.target_layer
    axis = old.axis[layer]
    reference = float(old.default[layer] @ (axis / axis.norm()))
    assert r.reference == pytest.approx(reference, rel=1e-5)
    assert r.threshold == pytest.approx(reference - float(axis.norm()) / 2, rel=1e-5)
    assert r.scale == pytest.approx(float(axis.norm()) / 4, rel=1e-5)
    bare = AxisBundle(vectors={"axis": old.axis}, manifest=manifest)
    none = DriftRule.from_bundle(bare)
    assert none.threshold is None and not none.has_cusum


def test_extra_layers_and_layer_parsing(bundle: AxisBundle) -> None:
    recommended = bundle.manifest["recommended_cap"]
    assert default_extra_layers(bundle) == bundle.caps[recommended].layers
    assert parse_layers("1:3", 4) == [1, 2] and parse_layers("3,1,1", 4) == [1, 3]
    for bad in ("2:9", "x", "5"):
        with pytest.raises(PersonaAxisError, match="Layers"):
            parse_layers(bad, 4)


# -- projections --------------------------------------------------------------------------------


def test_turn_projections_equal_hf_hidden_states(lm: LoadedModel, bundle: AxisBundle) -> None:
    layers = [0, 1, 2]  # HF's last hidden state comes after the final norm: not compared
    (values,) = turn_projections(lm, bundle.axis, [CHAT], layers)
    assert values.shape == (3, 3)
    rendered = lm.chat.render(CHAT)
    with torch.no_grad():
        states = lm.model(
            input_ids=torch.tensor([rendered.input_ids]), output_hidden_states=True
        ).hidden_states
    for turn, span in enumerate(rendered.role_spans("assistant")):
        for column, layer in enumerate(layers):
            mean = states[layer + 1][0, span.start : span.end].float().mean(dim=0)
            expected = float(mean @ bundle.unit_axis(layer))
            assert float(values[turn, column]) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    batched = turn_projections(lm, bundle.axis, [CHAT[:2], CHAT, CHAT[:4]], layers, batch_size=3)
    torch.testing.assert_close(batched[1], values, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(batched[0], values[:1], rtol=1e-4, atol=1e-6)


def test_monitor_isolates_bad_conversations(lm: LoadedModel, bundle: AxisBundle) -> None:
    conversations = [
        Conversation(tuple(CHAT), "a.json", "index 0"),
        Conversation(tuple(CHAT[:1]), "a.json", "index 1"),  # no assistant turn
        Conversation(
            ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}),
            "a.json",
            "index 2",
        ),
        Conversation((*CHAT[:4], {"role": "assistant", "content": ""}), "b.json", "line 3"),
    ]
    result = monitor(lm, bundle, conversations)
    assert [f.position for f in result.failures] == ["index 1", "index 2"]
    assert "nothing to monitor" in result.failures[0].error
    first, last = result.readings
    assert [t.message_index for t in first.turns] == [1, 3, 5]
    assert last.turns[-1].projection is None and last.turns[-1].n_tokens == 0
    assert last.turns[-1].verdict.cusum is None
    assert first.turns[0].extra_layers == {2: first.turns[0].projection}
    data = result.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["conversations"][1]["turns"][2]["projection"] is None
    # the requested story is performed (reported, not judged); "Thanks!" moves on
    assert [t["performed"] for t in data["conversations"][0]["turns"]] == [False, True, False]
    assert data["conversations"][0]["turns"][1]["z"] is None
    assert data["timing"]["conversations"] == 2


# -- live telemetry parity ----------------------------------------------------------------------


def continuation(lm: LoadedModel, conversation, reply) -> tuple[list[int], list]:
    prompt = lm.chat.render(conversation, add_generation_prompt=True).input_ids
    return prompt + reply.token_ids, [((len(prompt), len(prompt) + len(reply.token_ids)),)]


def test_live_telemetry_equals_a_separate_monitor_pass(lm: LoadedModel, bundle: AxisBundle) -> None:
    """Zero-extra-pass telemetry (read while generating) vs a teacher-forced monitor pass."""
    conversations = [CHAT[:1], CHAT[:3], CHAT[:5]]
    layers = [1, 2]
    sampling = Sampling(max_new_tokens=7, temperature=0.0)
    results = generate_with_telemetry(lm, conversations, bundle.axis, layers, sampling=sampling)
    for conversation, (reply, telemetry) in zip(conversations, results, strict=True):
        assert telemetry is not None and telemetry.n_tokens == len(reply.token_ids) > 0
        assert telemetry.before == telemetry.after and telemetry.touched is None
        sequence, spans = continuation(lm, conversation, reply)
        (forced,) = projections_from_tokens(lm, bundle.axis, [sequence], [spans], layers)
        torch.testing.assert_close(torch.tensor(telemetry.before), forced[0], rtol=1e-4, atol=1e-6)


def test_capped_telemetry_equals_a_capped_monitor_pass(lm: LoadedModel, bundle: AxisBundle) -> None:
    layers = [1, 2]
    (values,) = turn_projections(lm, bundle.axis, [CHAT], layers)
    floors = [(layer, float(values[:, i].max()) + 0.01) for i, layer in enumerate(layers)]
    spec = InterventionSpec.floor_cap(bundle.axis, floors)
    sampling = Sampling(max_new_tokens=5)
    ((reply, telemetry),) = generate_with_telemetry(
        lm, [CHAT[:3]], bundle.axis, layers, spec=spec, sampling=sampling
    )
    assert telemetry is not None and telemetry.touched is not None and telemetry.touched > 0
    for layer, floor in floors:  # every token is floored: the capped means sit at or above
        assert telemetry.at(layer)[1] >= floor - 1e-4
    sequence, spans = continuation(lm, CHAT[:3], reply)
    with intervene(lm, spec):
        (forced,) = projections_from_tokens(lm, bundle.axis, [sequence], [spans], layers)
    torch.testing.assert_close(torch.tensor(telemetry.after), forced[0], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_chat_telemetry_equals_monitor_on_the_default_model(smollm: LoadedModel) -> None:
    """The chat's live projection vs the monitor re-reading the same conversation as text."""
    bundle = make_bundle(smollm)
    session = ChatSession(smollm, bundle=bundle, sampling=Sampling(max_new_tokens=20))
    turns = [session.send("What is a good name for a cat?"), session.send("Why that one?")]
    (forced,) = turn_projections(smollm, bundle.axis, [session.history], [bundle.target_layer])
    rendered = smollm.chat.render(session.history)
    for turn, span, value in zip(turns, rendered.role_spans("assistant"), forced, strict=True):
        assert span.n_tokens == len(turn.reply.token_ids)  # the text re-tokenizes the same
        assert turn.before is not None
        assert float(value[0]) == pytest.approx(turn.before, rel=1e-4, abs=1e-4)


# -- command line -------------------------------------------------------------------------------


def test_monitor_command_writes_results_and_reports_failures(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps([CHAT, {"conversations": [{"from": "human", "value": "Hi"}]}]))
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"messages": CHAT[:4]}) + "\n{oops\n")
    out = tmp_path / "out"
    args = ["monitor", str(good), str(log), "--bundle", str(tiny_axis().bundle), "--out", str(out)]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "good.json index 0: 3 turns" in result.output
    assert "2 input(s) failed" in result.output
    assert f"{good} index 1: no assistant message" in result.output
    assert f"{log} line 2: not valid JSON" in result.output
    data = json.loads((out / "monitor.json").read_text())
    assert data["format"] == "persona-axis monitor" and len(data["conversations"]) == 2
    assert len(data["failures"]) == 2
    for name in ("good.png", "log.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_monitor_command_alarm_exit_status(tmp_path: Path) -> None:
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps(CHAT))
    args = ["monitor", str(chat), "--bundle", str(tiny_axis().bundle)]
    args += ["--no-progress", "--no-turns", "--fail-on-alarm"]
    calm = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--cusum-h", "1000"])
    assert calm.exit_code == 0, calm.output
    assert "no alarm" in calm.output
    # the build's default-reply levels (a shortfall rule: the shipped benign profile
    # watches the change since the first turns, which a reference does not move)
    overrides = ["--threshold-percentile", "1", "--threshold", "1000", "--reference", "1000"]
    overrides += ["--scale", "1"]
    alarmed = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), *overrides])
    assert alarmed.exit_code == 1, alarmed.output
    assert "ALARM at turn 1" in alarmed.output and "first flag at turn 1" in alarmed.output
    mixed = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])  # other settings
    assert mixed.exit_code != 0 and "other settings" in str(mixed.exception)
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "c"), "--threshold-percentile", "7"])
    assert bad.exit_code != 0 and "pick one" in str(bad.exception)


def test_a_killed_monitor_run_resumes_from_its_journal(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"id": f"c{i}", "messages": CHAT}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    args = ["monitor", str(log), "--bundle", str(tiny_axis().bundle), "--out", str(out)]
    args += ["--no-progress", "--no-turns", "--batch-size", "1"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    journal = out / "monitor.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    assert len(lines) == 4  # the settings, then one line per conversation as it finished
    journal.write_text("".join(lines[:2]) + lines[2][:25])  # killed while writing the second
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert "(1 done by an earlier run)" in resumed.output and "this run: 2 in" in resumed.output
    data = json.loads((out / "monitor.json").read_text())
    assert [c["id"] for c in data["conversations"]] == ["c0", "c1", "c2"]
    again = runner.invoke(app, [*args, "--restart"])
    assert "this run: 3 in" in again.output
    assert len(journal.read_text().splitlines()) == 4
