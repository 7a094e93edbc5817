"""Drift simulation: our persona lists, the plan, the user's view, runs on a tiny model with a
scripted user and with the target playing the user, aggregation, outputs and the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from persona_axis.axis.bundle import AxisBundle
from persona_axis.cli import app
from persona_axis.drift.conversations import read_conversations
from persona_axis.drift.monitor import monitor
from persona_axis.drift.personas import DOMAINS, PERSONAS
from persona_axis.drift.simulate import (
    UNCAPPED,
    SimConversation,
    SimTurn,
    SimulationSettings,
    clean_user_text,
    plan_conversations,
    simulate,
)
from persona_axis.errors import PersonaAxisError
from persona_axis.judges.backends import ChatBackend, HFChatBackend
from persona_axis.models import LoadedModel, load_model
from support.tiny_axis import tiny_axis

runner = CliRunner()


class ScriptedUser:
    """A simulated user that answers from a script and records what it was shown."""

    name = "scripted"

    def __init__(self, silent: set[str] = frozenset()) -> None:
        self.silent = silent  # openers whose conversation the user ends after turn 1
        self.views: list[list[dict[str, str]]] = []

    def complete(
        self, conversations: Sequence[Sequence[dict]], *, max_tokens: int, temperature: float = 0
    ) -> list[str]:
        out = []
        for view in conversations:
            self.views.append(list(view))
            opened = any(opener in view[0]["content"] for opener in self.silent)
            out.append("" if opened else f'User: "Go on, tell me more ({len(view)})."')
        return out


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return load_model(tiny_axis().model)


@pytest.fixture(scope="module")
def bundle() -> AxisBundle:
    return AxisBundle.load(tiny_axis().bundle)


def test_persona_lists_cover_every_domain() -> None:
    assert DOMAINS == ("coding", "writing", "therapy", "philosophy") and set(PERSONAS) == set(
        DOMAINS
    )
    openers = [o for personas in PERSONAS.values() for p in personas for o in p.openers]
    assert len(set(openers)) == len(openers)  # no opener is shared
    for domain in DOMAINS:
        names = [p.name for p in PERSONAS[domain]]
        assert len(names) >= 6 and len(set(names)) == len(names)
        assert all(len(p.openers) >= 2 and p.description for p in PERSONAS[domain])


def test_plan_is_seeded_and_spreads_personas() -> None:
    settings = SimulationSettings(conversations_per_domain=8, turns=1)
    plan = plan_conversations(settings)
    assert [domain for domain, *_ in plan] == [d for d in DOMAINS for _ in range(8)]
    for domain in DOMAINS:
        chosen = [(persona, opener) for d, persona, opener in plan if d == domain]
        assert len({persona.name for persona, _ in chosen[:6]}) == 6  # all before repeats
        assert all(opener in persona.openers for persona, opener in chosen)
        assert len({opener for _, opener in chosen}) == 8  # a repeated persona opens anew
    assert plan == plan_conversations(settings)
    assert plan != plan_conversations(SimulationSettings(conversations_per_domain=8, seed=1))


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('  User: "Why is that?"  ', "Why is that?"),
        ("**User:** I see.\n\nAssistant: Great question!", "I see."),
        ("'Hmm.'", "Hmm."),
        ("   \n ", ""),
        ("Plain text", "Plain text"),
    ],
)
def test_clean_user_text(raw: str, clean: str) -> None:
    assert clean_user_text(raw) == clean


def test_settings_are_checked() -> None:
    with pytest.raises(PersonaAxisError, match="Unknown domain"):
        SimulationSettings(domains=("cooking",))
    with pytest.raises(PersonaAxisError, match="turns must be at least 1"):
        SimulationSettings(turns=0)


def test_the_user_sees_the_talk_from_its_side() -> None:
    conversation = SimConversation("therapy", "p", "a tired nurse", "I feel numb.", UNCAPPED)
    conversation.turns = [
        SimTurn(1, "I feel numb.", "That sounds hard.", 4, 0.1, 0.1, None),
        SimTurn(2, "It is.", "", 0, None, None, None),
    ]
    view = conversation.user_view()
    assert [m["role"] for m in view] == ["system", "user", "assistant", "user"]
    assert "a tired nurse" in view[0]["content"] and "I feel numb." in view[0]["content"]
    assert view[1]["content"] == "That sounds hard." and view[3]["content"] == "(no answer)"
    target = conversation.target_messages()
    assert [m["role"] for m in target] == ["user", "assistant", "user", "assistant"]


def test_simulation_with_and_without_a_cap(lm, bundle, tmp_path: Path) -> None:
    cap = bundle.manifest["recommended_cap"]
    settings = SimulationSettings(
        domains=("coding", "therapy"),
        conversations_per_domain=2,
        turns=3,
        max_new_tokens=4,
        user_max_tokens=4,
        min_conversations=2,
    )
    silent = {plan_conversations(settings)[2][2]}  # the first therapy opener
    user = ScriptedUser(silent)
    result = simulate(lm, bundle, user, settings, cap=cap)
    assert result.arms == [UNCAPPED, cap]
    assert len(result.conversations) == 8
    for conversation in result.conversations:
        assert conversation.target_messages()[0]["role"] == "user"  # no system prompt
        ended = conversation.opener in silent
        assert len(conversation.turns) == (1 if ended else 3) and conversation.ended_early == ended
        assert conversation.turns[0].user == conversation.opener
        if not ended:
            assert conversation.turns[1].user.startswith("Go on, tell me more")
        for turn in conversation.turns:
            assert turn.before is not None and turn.n_tokens > 0
            if conversation.arm == UNCAPPED:
                assert turn.after == turn.before and turn.touched is None
            else:
                assert turn.touched is not None
    assert all(view[0]["role"] == "system" for view in user.views)
    aggregate = result.aggregate()
    coding = aggregate[UNCAPPED]["coding"]
    assert [row["turn"] for row in coding] == [1, 2, 3] and coding[0]["n"] == 2
    values = [c.turns[0].before for c in result.conversations if c.arm == UNCAPPED][:2]
    assert coding[0]["mean"] == pytest.approx(sum(values) / 2)
    # therapy turns 2-3 were reached by one conversation only: dropped
    assert [row["turn"] for row in aggregate[cap]["therapy"]] == [1]
    paths = result.save(tmp_path)
    data = json.loads(paths[0].read_text())
    assert data["format"] == "persona-axis simulation" and data["cap"] == cap
    assert data["settings"]["domains"] == ["coding", "therapy"]
    assert paths[2].read_bytes().startswith(b"\x89PNG")
    found, failures = read_conversations(paths[1])
    assert failures == [] and len(found) == 8
    assert found[0].meta["arm"] == UNCAPPED and found[0].id == f"{UNCAPPED}/coding/0"
    readings = monitor(lm, bundle, found[:2]).readings
    assert [len(r.turns) for r in readings] == [3, 3]


def test_the_target_model_can_play_the_user(lm, bundle) -> None:
    user: ChatBackend = HFChatBackend(lm, seed=3)
    settings = SimulationSettings(
        domains=("philosophy",),
        conversations_per_domain=2,
        turns=2,
        max_new_tokens=3,
        user_max_tokens=5,
    )
    result = simulate(lm, bundle, user, settings)
    assert result.user == f"hf:{lm.name}" and result.arms == [UNCAPPED]
    assert all(len(c.turns) >= 1 for c in result.conversations)


def test_simulate_command(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ["simulate", "--bundle", str(tiny_axis().bundle), "--out", str(out)]
    args += ["--domains", "writing,therapy", "--conversations", "2", "--turns", "2"]
    args += ["--max-new-tokens", "3", "--user-max-tokens", "4", "--cap", "recommended"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Projection at layer" in result.output and "writing" in result.output
    for name in ("simulation.json", "conversations.jsonl", "simulation.png"):
        assert (out / name).is_file()
    data = json.loads((out / "simulation.json").read_text())
    assert set(data["aggregate"]) == {UNCAPPED, data["cap"]}
    bad = runner.invoke(app, [*args, "--cap", "layers_0:1-p3"])
    assert bad.exit_code != 0 and "No cap setting" in str(bad.exception)
    bad = runner.invoke(app, [*args[:-2], "--user-url", "http://127.0.0.1:9/v1"])
    assert bad.exit_code != 0 and "--user-url needs --user-model" in str(bad.exception)


@pytest.mark.slow
def test_simulate_on_the_default_model(smollm: LoadedModel, tmp_path: Path) -> None:
    shape = smollm.shape
    generator = torch.Generator().manual_seed(0)
    vectors = {
        "axis": torch.randn(shape.n_layers, shape.hidden_size, generator=generator),
        "default": torch.randn(shape.n_layers, shape.hidden_size, generator=generator),
    }
    path = AxisBundle.create(vectors, model_shape=shape, model_id=smollm.name).save(
        tmp_path / "bundle"
    )
    args = ["simulate", "--bundle", str(path), "--out", str(tmp_path / "sim"), "--no-progress"]
    args += ["--domains", "therapy,philosophy", "--conversations", "1", "--turns", "2"]
    args += ["--max-new-tokens", "8", "--user-max-tokens", "12", "--min-conversations", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "sim" / "simulation.json").read_text())
    assert data["user"] == f"hf:{smollm.name}" and data["threshold"] is not None
    for conversation in data["conversations"]:
        assert conversation["turns"][0]["reply"]
