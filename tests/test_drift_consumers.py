"""One drift rule everywhere: ``monitor``, ``simulate``, the server's telemetry (which the web
page shows) and the on-drift cap all read the same conversation to the same levels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from persona_axis.axis.bundle import AxisBundle
from persona_axis.cli import app
from persona_axis.drift.chat import DriftChat
from persona_axis.drift.features import Baseline
from persona_axis.drift.gate import ON_DRIFT, arming
from persona_axis.drift.live import LiveDrift
from persona_axis.drift.monitor import monitor
from persona_axis.drift.profile import BenignProfile, drift_rule
from persona_axis.drift.request_probe import MANIFEST_KEY, VECTOR_KEY
from persona_axis.drift.simulate import UNCAPPED, SimulationSettings, simulate
from persona_axis.inference.generation import Sampling
from persona_axis.models import LoadedModel, load_model
from persona_axis.serve.app import create_app
from persona_axis.serve.runner import background_server
from support.tiny_axis import tiny_axis

pytestmark = pytest.mark.slow

USER_TURNS = ["Hello there", "Tell me about the sea.", "And the moon?", "Why?", "Go on."]
# Levels are compared, not projections: a reply's projection in the server's telemetry comes
# from its generation pass (the sampled tokens), monitor's from the re-tokenized text, and a
# random tiny model's replies do not round-trip (its first token keeps a leading space that the
# reply text strips), so the two differ by more than float rounding here.


class EchoUser:
    """A simulated user that always asks for more."""

    name = "echo"

    def complete(
        self, conversations: Sequence[Sequence[dict]], *, max_tokens: int, temperature: float = 0
    ) -> list[str]:
        return [f"Go on, more please ({len(view)})." for view in conversations]


def greedy(*domains: str) -> SimulationSettings:
    """One greedy four-turn conversation per domain, short replies."""
    return SimulationSettings(
        domains=domains,
        turns=4,
        conversations_per_domain=1,
        max_new_tokens=8,
        temperature=0.0,
        min_conversations=1,
    )


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return load_model(tiny_axis().model)


@pytest.fixture(scope="module")
def bundle(lm: LoadedModel) -> AxisBundle:
    """The tiny bundle with a benign profile sharp enough that levels vary turn to turn, and
    without its request probe: fitted on a random tiny model (cross-validated accuracy about
    0.67), it hears four of this chat's five requests as requests for a piece, which leaves
    those turns unjudged and the gate unarmed. Live and logged readings agree with a probe
    too: tests/test_request_probe.py."""
    bundle = AxisBundle.load(tiny_axis().bundle)
    bundle.manifest.pop(MANIFEST_KEY)
    bundle.vectors.pop(VECTOR_KEY)
    base = drift_rule(bundle)
    assert base.reference is not None and base.scale is not None
    tight = BenignProfile(
        bundle.target_layer,
        Baseline(base.reference, {}),
        scale=base.scale / 20,
        change_scale=base.scale / 20,
        limits={"watch": 2.0, "warning": 1.0, "ewma_lambda": 0.5, "k": 0.5, "h": 3.0},
    )
    bundle.set_benign_profile(tight.to_dict())
    return bundle


def chat_with_server(base: str, cap: str = "none") -> tuple[list[dict[str, str]], list[Any]]:
    """Talk through ``USER_TURNS`` like a client (history in every request); the messages and
    each reply's telemetry."""
    messages: list[dict[str, str]] = []
    telemetry = []
    for text in USER_TURNS:
        messages.append({"role": "user", "content": text})
        body = {"messages": messages, "max_tokens": 8, "persona_axis": {"cap": cap}}
        response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60).json()
        messages.append(
            {"role": "assistant", "content": response["choices"][0]["message"]["content"]}
        )
        telemetry.append(response["persona_axis"])
    return messages, telemetry


@pytest.fixture(scope="module")
def served(lm: LoadedModel, bundle: AxisBundle) -> Any:
    app = create_app(lm, bundle, default_cap="none", max_tokens_limit=16)
    with background_server(app) as base:
        yield base


def test_server_monitor_and_the_rule_agree_on_a_conversation(lm, bundle, served) -> None:
    messages, telemetry = chat_with_server(served)
    reading = monitor(lm, bundle, [messages]).readings[0]
    assert [t["drift_reading"]["level"] for t in telemetry] == [t.level for t in reading.turns]
    assert len({t.level for t in reading.turns}) >= 2  # the check is not vacuous
    for sent, read in zip(telemetry, reading.turns, strict=True):
        assert sent["drift"] == (read.level == "alarm")
        assert sent["drift_reading"]["turn"] == read.turn
    # the page draws the server's level: telemetry is the only source of what it shows
    info = httpx.get(f"{served}/v1/persona_axis").json()
    assert info["rule"]["h"] == 3.0 and info["rule"]["relative"] is True


def test_simulate_levels_are_the_monitors(lm, bundle) -> None:
    result = simulate(lm, bundle, EchoUser(), greedy("coding", "therapy"))
    readings = monitor(lm, bundle, result.as_conversations()).readings
    assert len(readings) == len(result.conversations)
    for conversation, reading in zip(result.conversations, readings, strict=True):
        assert [t.level for t in conversation.turns] == [t.level for t in reading.turns]


def test_on_drift_caps_exactly_where_the_gate_is_armed(lm, bundle, served) -> None:
    messages, telemetry = chat_with_server(served, cap=ON_DRIFT)
    cap = bundle.recommended_cap
    for index, sent in enumerate(telemetry):
        history = messages[: 2 * index + 1]  # the request: earlier turns and the user message
        gate = arming(LiveDrift.read(lm, bundle, history).verdicts())
        assert sent["on_drift"]["armed"] == gate.armed
        assert sent["cap"] == (cap if gate.armed else None)
    assert any(t["on_drift"]["armed"] for t in telemetry)  # the gate fired in this chat
    assert not telemetry[0]["on_drift"]["armed"]  # never on a first reply

    result = simulate(lm, bundle, EchoUser(), greedy("coding"), cap=ON_DRIFT)
    gated = [c for c in result.conversations if c.arm == ON_DRIFT]
    assert gated and all(c.arm in {UNCAPPED, ON_DRIFT} for c in result.conversations)
    for conversation in gated:
        messages = conversation.target_messages()
        for index, turn in enumerate(conversation.turns):
            prefix = messages[: 2 * index]
            assert turn.capped == arming(LiveDrift.read(lm, bundle, prefix).verdicts()).armed


def test_a_chat_session_reads_levels_and_gates_the_cap_like_the_server(lm, bundle) -> None:
    chat = DriftChat.open(lm, bundle, cap=ON_DRIFT, sampling=Sampling(max_new_tokens=8))
    replies = [chat.send(text) for text in USER_TURNS]
    reading = monitor(lm, bundle, [chat.history]).readings[0]
    assert [r.level for r in replies] == [t.level for t in reading.turns]
    for index, reply in enumerate(replies):
        prefix = chat.history[: 2 * index + 1]
        assert reply.capped == arming(LiveDrift.read(lm, bundle, prefix).verdicts()).armed
        assert reply.other is None
    assert any(r.capped for r in replies) and not replies[0].capped


def test_chat_compare_shows_both_replies_with_their_projections(bundle, tmp_path) -> None:
    saved = bundle.save(tmp_path / "bundle")
    args = ["chat", "--model", str(tiny_axis().model), "--bundle", str(saved), "--compare"]
    result = CliRunner().invoke(app, [*args, "--max-new-tokens", "6", "-u", "Hi", "-u", "Why?"])
    assert result.exit_code == 0, result.output
    assert result.output.count("with the cap") == 2 and "without the cap" in result.output
    assert result.output.count("before") >= 4  # each side of each turn has its projection
    assert "level " in result.output
    capped = DriftChat.open(load_model(tiny_axis().model), bundle, compare=True)
    reply = capped.send("Hi")
    assert not reply.capped and reply.other is not None  # no --cap: compared with the cap
    assert reply.other.touched is not None and reply.turn.touched is None
