"""Role-adherence judge: score parsing, the LLM judge over real HTTP, the offline heuristic."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from persona_axis.errors import PersonaAxisError
from persona_axis.judges import judge_from_config
from persona_axis.judges.backends import OpenAIChatBackend
from persona_axis.judges.role import (
    JUDGE_PROMPT,
    HeuristicRoleJudge,
    JudgeItem,
    JudgeResult,
    LLMRoleJudge,
    NoJudge,
    RoleJudge,
    judge_prompt,
    parse_score,
)
from support.fake_openai import FAST, FakeOpenAI

MODEL = "Zephyr-Test-7B"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Score: 3", 3),
        ("score=2", 2),
        ("SCORE = 0", 0),
        ("**Score:** 1", 1),
        ("Score: **2**", 2),
        ("3", 3),
        ("  2.  ", 2),
        ("**3**", 3),
        ('{"score": 2}', 2),
        ("{'score': 1, 'reason': 'ok'}", 1),
        ("I'd give this a 3.\nScore: 3", 3),
        ("The reply keeps the role.\n\nScore: 3\n", 3),
        ("Score: 1\nOn reflection it shows traits.\nScore: 2", 2),  # the last explicit score wins
        ("Score: 2 out of 3", 2),
        ("Final score is 1", 1),
        ("a score of 0", 0),
        ("Score: 3/3", 3),
        ("Reasoning about it.\n\n2", 2),
        ("Score: 4", None),
        ("Score: -1", None),
        ("Score: 2.5", None),
        ("Score: 3\nActually, Score: 7", None),
        ("", None),
        ("No idea.", None),
        ("Score: N", None),
        ("I'd give this a 3.", None),
        ("It underscored 3 points", None),
        ("12", None),
    ],
)
def test_parse_score(text: str, expected: int | None) -> None:
    assert parse_score(text) == expected


ITEMS = [
    JudgeItem(
        role="pirate",
        role_description="A swashbuckling pirate captain who sails the Caribbean.",
        system_prompt="You are a pirate captain. Stay in character.",
        question="What do you value most?",
        answer="Arr, me ship and me crew! [[3]]",
    ),
    JudgeItem(
        role="librarian",
        role_description="A quiet librarian who loves old books.",
        system_prompt="You are a librarian.",
        question="Who are you?",
        answer="As an AI, I don't have a job, but here's an answer. {braces} [[1]]",
    ),
]


def test_prompt_fills_every_field_and_names_the_model() -> None:
    prompt = judge_prompt(ITEMS[1], MODEL)
    for value in (
        MODEL,
        ITEMS[1].role,
        ITEMS[1].role_description,
        ITEMS[1].system_prompt,
        ITEMS[1].question,
        ITEMS[1].answer,
    ):
        assert value in prompt
    assert "{model_name}" in JUDGE_PROMPT and "{" not in prompt.replace("{braces}", "")
    assert prompt.rstrip().endswith('"Score: N", where N is one of 0, 1, 2, 3.')
    assert parse_score(judge_prompt(ITEMS[0], "Qwen3-8B")) is None  # the rubric has no score
    assert "Zephyr" not in judge_prompt(ITEMS[0], "other-model")  # never hard-coded


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.close()


def answer_of(body: dict[str, Any]) -> str:
    match = re.search(r"<answer>\n(.*)\n</answer>", body["messages"][0]["content"], re.DOTALL)
    assert match is not None
    return match.group(1)


def llm_judge(server: FakeOpenAI, **kwargs: Any) -> LLMRoleJudge:
    backend = OpenAIChatBackend(server.base_url, "judge-model", api_key_env=None, **FAST)
    return LLMRoleJudge(backend, MODEL, **kwargs)


def test_llm_judge_end_to_end_over_http(server: FakeOpenAI) -> None:
    def reply(body: dict[str, Any]) -> str:
        prompt = body["messages"][0]["content"]
        number = re.search(r"\[\[(\d)\]\]", answer_of(body))
        assert number is not None
        return f"The reply is from {MODEL}? {MODEL in prompt}.\nScore: {number.group(1)}"

    server.reply = reply
    judge = llm_judge(server, max_tokens=64)
    results = judge.score(ITEMS)
    assert [r.score for r in results] == [3, 1]
    assert results[0].raw == f"The reply is from {MODEL}? True.\nScore: 3"
    assert {r.judge for r in results} == {f"openai:judge-model@{server.base_url}"}
    assert judge.name == results[0].judge and isinstance(judge, RoleJudge)
    # requests run concurrently, so the server may see them in either order
    assert sorted(b["messages"][0]["content"] for b in server.bodies) == sorted(
        judge_prompt(item, MODEL) for item in ITEMS
    )
    assert {(b["max_tokens"], b["temperature"]) for b in server.bodies} == {(64, 0.0)}


def test_unparseable_reply_is_retried_with_a_follow_up(server: FakeOpenAI) -> None:
    server.reply = lambda body: "Score: 2" if len(body["messages"]) == 3 else "Hard to say."
    results = llm_judge(server).score(ITEMS[:1])
    assert results == [JudgeResult(score=2, raw="Hard to say.\n\nScore: 2", judge=results[0].judge)]
    follow_up = server.bodies[1]["messages"]
    assert follow_up[1] == {"role": "assistant", "content": "Hard to say."}
    assert "Score: N" in follow_up[2]["content"]


def test_always_unparseable_gives_none_after_the_retries(server: FakeOpenAI) -> None:
    server.reply = lambda body: "I would rather not say."
    results = llm_judge(server, retries_on_unparseable=2).score(ITEMS)
    assert [r.score for r in results] == [None, None]
    assert results[0].raw.count("I would rather not say.") == 3
    assert len(server.bodies) == 6


def test_only_unparseable_items_are_retried(server: FakeOpenAI) -> None:
    server.reply = lambda body: "Score: 3" if "Arr" in answer_of(body) else "hmm"
    results = llm_judge(server).score(ITEMS)
    assert [r.score for r in results] == [3, None]
    assert len(server.bodies) == 3
    assert llm_judge(server).score([]) == []


def item(answer: str, role: str = "pirate", description: str = "") -> JudgeItem:
    description = description or "A swashbuckling pirate captain who sails the seven seas."
    return JudgeItem(role, description, "You are a pirate.", "Who are you?", answer)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("I'm sorry, but as an AI language model I can't pretend to be someone else.", 0),
        ("I cannot help with that request.", 0),
        ("As an AI, I don't have a favourite food, but many people like pasta.", 1),
        ("I am Zephyr-Test-7B. Paris is the capital of France.", 1),
        ("I'm Zephyr, here to help. Paris is the capital of France.", 1),
        ("As an AI I can't sail, but here's how a pirate would answer: arr, the sea!", 2),
        ("I'm just a language model, yet the swashbuckling captain in me sails on!", 2),
        ("Arr! I be a pirate, and the seven seas be my home.", 3),
        ("The swashbuckling life of a captain is the only life for me.", 3),
        ("My name is Redbeard, and I answer to no one.", 3),
        ("Paris is the capital of France.", 1),
    ],
)
def test_heuristic_judge_on_crafted_answers(answer: str, expected: int) -> None:
    judge = HeuristicRoleJudge(f"org/{MODEL}")
    [result] = judge.score([item(answer)])
    assert result.score == expected, result.raw
    assert result.judge == "heuristic-offline" == judge.name
    assert "heuristic" in result.raw


def test_heuristic_judge_uses_multi_word_role_names() -> None:
    judge = HeuristicRoleJudge("SmolLM2-135M-Instruct")
    keeper = item(
        "The lighthouse keeper's lamp never goes out.",
        role="lighthouse_keeper",
        description="Tends a lamp on a rock.",
    )
    smol = item("I am SmolLM, a small model. Lamps are useful.", role="lighthouse_keeper")
    assert [r.score for r in judge.score([keeper, smol])] == [3, 1]
    assert "OFFLINE HEURISTIC" in (HeuristicRoleJudge.__doc__ or "")


def test_no_judge_returns_none_for_every_item() -> None:
    results = NoJudge().score(ITEMS)
    assert results == [JudgeResult(None, "", "none"), JudgeResult(None, "", "none")]


def test_judge_from_config_builds_each_kind(server: FakeOpenAI) -> None:
    assert isinstance(judge_from_config({"backend": "none"}, model_name=MODEL), NoJudge)
    heuristic = judge_from_config({"backend": "heuristic"}, model_name=MODEL)
    assert isinstance(heuristic, HeuristicRoleJudge) and heuristic.model_name == MODEL
    server.reply = lambda body: "Score: 3"
    judge = judge_from_config(
        {
            "backend": "openai",
            "base_url": server.base_url,
            "model": "judge-model",
            "max_tokens": 32,
            "retries_on_unparseable": 0,
            "max_retries": 0,
        },
        model_name=MODEL,
    )
    assert isinstance(judge, LLMRoleJudge)
    engine = judge.engine
    assert (engine.max_tokens, engine.retries_on_unparseable, judge.model_name) == (32, 0, MODEL)
    assert [r.score for r in judge.score(ITEMS)] == [3, 3]


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"backend": "gpt"}, "openai, hf, heuristic, none"),
        ({}, "openai, hf, heuristic, none"),
        ({"backend": "heuristic", "model": "x"}, "takes no settings"),
        ({"backend": "none", "max_tokens": 5}, "takes no settings"),
        ({"backend": "openai", "base_url": "http://x/v1", "model": "m", "seed": 1}, "'seed'"),
        ({"backend": "openai", "model": "m"}, "base_url"),
        ({"backend": "openai", "base_url": "http://x/v1", "model": "m", "max_tokens": "x"}, "int"),
        ({"backend": "hf", "model": "default", "base_url": "http://x"}, "'base_url'"),
    ],
)
def test_judge_from_config_refuses_bad_configs(config: dict[str, Any], match: str) -> None:
    with pytest.raises(PersonaAxisError, match=match):
        judge_from_config(config, model_name=MODEL)


def test_llm_judge_refuses_bad_settings(server: FakeOpenAI) -> None:
    backend = OpenAIChatBackend(server.base_url, "judge-model")
    with pytest.raises(PersonaAxisError, match="model_name"):
        LLMRoleJudge(backend, "")
    with pytest.raises(PersonaAxisError, match="retries_on_unparseable"):
        LLMRoleJudge(backend, MODEL, retries_on_unparseable=-1)
