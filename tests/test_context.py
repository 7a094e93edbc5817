"""The context policy for long conversations: windows, per-turn context records, the
once-per-conversation warning, KV-cache parity with one pass, and bounded work."""

from __future__ import annotations

import json

import pytest
import torch

from persona_axis.drift.context import ContextPolicy, default_window, plan_conversation
from persona_axis.drift.monitor import monitor
from persona_axis.drift.projections import project_plans, projections_from_tokens
from persona_axis.errors import PersonaAxisError
from persona_axis.models import LoadedModel
from support.tiny_models import tiny_lm

LAYERS = [1, 3]


def long_chat(turns: int = 8, system: bool = True) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You are a careful assistant."}] if system else []
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i}: " + "why " * (4 + 5 * i)})
        messages.append(
            {"role": "assistant", "content": f"Answer {i}: " + "because " * (8 + 3 * i)}
        )
    return messages


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return tiny_lm("llama")


def axis(lm: LoadedModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(lm.shape.n_layers, lm.shape.hidden_size, generator=generator)


def single_pass(lm: LoadedModel, messages) -> torch.Tensor:
    """Today's reading: one forward pass over the whole rendering."""
    rendered = lm.chat.render(messages)
    spans = [s.segments for s in rendered.role_spans("assistant") if s.segments]
    (values,) = projections_from_tokens(lm, axis(lm), [rendered.input_ids], [spans], LAYERS)
    return values


@pytest.mark.parametrize("chunk_tokens", [1, 13, 4096])
def test_a_conversation_that_fits_equals_one_pass(lm: LoadedModel, chunk_tokens: int) -> None:
    """Parity: turn by turn through the KV cache (or batched when short) = one pass."""
    messages = long_chat(5)
    policy = ContextPolicy(window=512, chunk_tokens=chunk_tokens).for_model(lm)
    plan = plan_conversation(lm.chat, messages, policy)
    assert len(plan.windows) == 1 and not plan.cut and plan.warning is None
    assert plan.single_pass == (chunk_tokens == 4096)
    assert [c.first_message for c in plan.contexts] == [0] * 5
    values = project_plans(lm, axis(lm), [plan], LAYERS)[0].projections
    torch.testing.assert_close(values, single_pass(lm, messages), rtol=1e-4, atol=1e-4)


def test_long_conversations_are_read_in_windows_that_fit(lm: LoadedModel) -> None:
    messages = long_chat(10)
    full = lm.chat.render(messages)
    policy = ContextPolicy(window=160, keep=0.25).for_model(lm)
    plan = plan_conversation(lm.chat, messages, policy)
    assert plan.n_tokens == len(full.input_ids) > 160
    assert len(plan.windows) > 2
    assert all(len(w.input_ids) <= 160 for w in plan.windows)
    assert sorted(t for w in plan.windows for t in w.turns) == list(range(10))
    # work stays linear: each token is read about 1 / (1 - keep) times, not once per turn
    assert sum(len(w.input_ids) for w in plan.windows) <= 2 * plan.n_tokens
    first, *later = plan.windows
    assert first.input_ids == full.input_ids[: len(first.input_ids)]  # a prefix, no cut
    cut = [c for c in plan.contexts if c.cut]
    assert cut and all(c.window > 0 and c.first_message > 1 for c in cut)
    assert not any(c.cut for c in plan.contexts if c.window == 0)
    for context in plan.contexts:  # new windows start at a user message
        assert context.first_message == 0 or messages[context.first_message]["role"] == "user"
    for window in later:  # the system message is kept at the start of every window
        assert lm.tokenizer.decode(window.input_ids).count("careful assistant") == 1
    for window in plan.windows:  # every pooled span is the turn's own content
        for turn, segments in zip(window.turns, window.spans, strict=True):
            text = lm.tokenizer.decode(
                [window.input_ids[i] for a, b in segments for i in range(a, b)]
            )
            assert text.strip() == messages[plan.contexts[turn].message_index]["content"].strip()
    assert plan.warning is not None and plan.warning.startswith("context cut:")
    assert f"{len(cut)} of 10 assistant turns" in plan.warning


def test_a_windowed_turn_equals_one_pass_over_its_window(lm: LoadedModel) -> None:
    messages = long_chat(8)
    plan = plan_conversation(
        lm.chat, messages, ContextPolicy(window=140, chunk_tokens=17).for_model(lm)
    )
    values = project_plans(lm, axis(lm), [plan], LAYERS)[0].projections
    for window in plan.windows:
        (direct,) = projections_from_tokens(
            lm, axis(lm), [window.input_ids], [window.spans], LAYERS
        )
        torch.testing.assert_close(values[window.turns], direct, rtol=1e-4, atol=1e-4)


def test_turns_longer_than_the_window_and_long_user_messages(lm: LoadedModel) -> None:
    messages = [
        {"role": "user", "content": "short"},
        {"role": "assistant", "content": "fine " * 10},
        {"role": "user", "content": "pasted " * 300},
        {"role": "assistant", "content": "summary " * 20},
        {"role": "user", "content": "go on"},
        {"role": "assistant", "content": "long " * 400},
        {"role": "user", "content": "and?"},
        {"role": "assistant", "content": ""},
    ]
    plan = plan_conversation(lm.chat, messages, ContextPolicy(window=100).for_model(lm))
    first, pasted, huge, _ = plan.contexts
    assert not first.cut and first.turn_tokens_dropped == 0
    assert pasted.cut and pasted.turn_tokens_dropped == 0  # the start of the user message went
    assert huge.cut and huge.turn_tokens_dropped > 250
    assert all(len(w.input_ids) <= 100 for w in plan.windows)
    assert [t for w in plan.windows for t in w.turns] == [0, 1, 2]  # the empty turn is not pooled
    assert "longer than the window" in (plan.warning or "")
    values = project_plans(lm, axis(lm), [plan], LAYERS)[0].projections
    assert torch.isfinite(values[:3]).all() and torch.isnan(values[3]).all()


def test_policy_defaults_and_checks(lm: LoadedModel) -> None:
    assert default_window(lm) == 512 - 512 // 16  # tiny models: 512 trained positions
    assert ContextPolicy().for_model(lm).window == 480
    with pytest.raises(PersonaAxisError, match="past the 512 positions"):
        ContextPolicy(window=600).for_model(lm)
    with pytest.raises(PersonaAxisError, match="keep"):
        ContextPolicy(keep=1.0)
    with pytest.raises(PersonaAxisError, match="at least 16"):
        ContextPolicy(window=8)


def test_monitor_records_context_per_turn_and_warns_once(lm: LoadedModel) -> None:
    from persona_axis.axis.bundle import AxisBundle

    bundle = AxisBundle.create({"axis": axis(lm)}, model_shape=lm.shape, model_id=lm.name)
    short = long_chat(2)
    result = monitor(lm, bundle, [short, long_chat(10)], policy=ContextPolicy(window=160))
    calm, cut = (reading.to_dict() for reading in result.readings)
    json.dumps(result.to_dict(), allow_nan=False)
    assert calm["warning"] is None and cut["warning"].startswith("context cut:")
    assert [t["context"]["cut"] for t in calm["turns"]] == [False, False]
    assert any(t["context"]["cut"] for t in cut["turns"])
    assert all(t["context"]["context_tokens"] > 0 for t in cut["turns"])
    assert result.to_dict()["context"] == {"window": 160, "keep": 0.25, "chunk_tokens": 1024}


@pytest.mark.slow
def test_default_model_parity_with_one_pass(smollm: LoadedModel) -> None:
    """SmolLM2, a real 14-turn conversation of ~2k tokens read through the KV cache in
    1,024-token chunks against one pass: ≤ 1e-4."""
    messages = []
    for i in range(7):
        messages.append({"role": "user", "content": f"Tell me fact number {i} about the sea, " * 6})
        messages.append(
            {"role": "assistant", "content": f"Fact {i}: the sea is deep and old. " * 20}
        )
    rendered = smollm.chat.render(messages)
    assert len(rendered.input_ids) > 1024
    policy = ContextPolicy().for_model(smollm)
    plan = plan_conversation(smollm.chat, messages, policy)
    assert not plan.single_pass and len(plan.windows) == 1
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(smollm.shape.n_layers, smollm.shape.hidden_size, generator=generator)
    ours = project_plans(smollm, vectors, [plan], [15])[0].projections
    spans = [s.segments for s in rendered.role_spans("assistant")]
    (whole,) = projections_from_tokens(smollm, vectors, [rendered.input_ids], [spans], [15])
    torch.testing.assert_close(ours, whole, rtol=1e-4, atol=1e-4)
