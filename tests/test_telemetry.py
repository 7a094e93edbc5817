"""Projections read during generation equal those of a teacher-forced pass; pre/post capping."""

from __future__ import annotations

import pytest
import torch

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.interventions import InterventionSpec, intervene
from persona_axis.inference.telemetry import record_projections
from support.tiny_models import tiny_lm

D = 64


def generate(lm, ids: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        return lm.model.generate(
            ids,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
        )


def test_generation_records_equal_teacher_forced_records() -> None:
    lm = tiny_lm("llama")
    axis = torch.randn(4, D, generator=torch.Generator().manual_seed(0))
    chat = lm.chat.render([{"role": "user", "content": "Hello there."}], add_generation_prompt=True)
    ids = torch.tensor([chat.input_ids])
    with record_projections(lm, axis, [1, 3]) as live:
        out = generate(lm, ids, 6)
    with record_projections(lm, axis, [1, 3]) as forced, torch.no_grad():
        lm.model(input_ids=out[:, :-1])  # the last sampled token is never fed back
    assert live.tracker.prompt_length == ids.shape[1]
    assert live.generated().shape == (1, 5, 2)
    torch.testing.assert_close(live.all_positions(), forced.all_positions(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        states = lm.model(input_ids=out[:, :-1], output_hidden_states=True).hidden_states
    # layer 1 = HF hidden_states[2]
    torch.testing.assert_close(
        forced.all_positions()[0, :, 0],
        states[2][0] @ (axis[1] / axis[1].norm()),
        rtol=1e-5,
        atol=1e-5,
    )


def test_pre_and_post_stages_bracket_a_cap() -> None:
    lm = tiny_lm("qwen3")
    axis = torch.randn(4, D, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor(
        [lm.chat.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True).input_ids]
    )
    with record_projections(lm, axis, [2]) as plain, torch.no_grad():
        lm.model(input_ids=ids)
    floor = float(plain.all_positions().median())
    spec = InterventionSpec.floor_cap(axis, [(2, floor)])
    with (
        record_projections(lm, axis, [2], stage="pre") as pre,
        intervene(lm, spec),
        record_projections(lm, axis, [2], stage="post") as post,
        torch.no_grad(),
    ):
        lm.model(input_ids=ids)
    before, after = pre.all_positions(), post.all_positions()
    torch.testing.assert_close(before, plain.all_positions())
    torch.testing.assert_close(after, before.clamp(min=floor), rtol=1e-5, atol=1e-5)
    assert (before < floor).any()


def test_bad_layers_are_refused() -> None:
    lm = tiny_lm("llama")
    with (
        pytest.raises(PersonaAxisError, match="within"),
        record_projections(lm, torch.randn(4, D), [4]),
    ):
        pass


def test_generate_with_telemetry_batches_like_single_calls() -> None:
    from persona_axis.inference.generation import Sampling
    from persona_axis.inference.telemetry import generate_with_telemetry

    lm = tiny_lm("llama")
    axis = torch.randn(4, D, generator=torch.Generator().manual_seed(2))
    chats = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "A much longer question about the weather today?"}],
    ]
    sampling = Sampling(max_new_tokens=5)
    batched = generate_with_telemetry(lm, chats, axis, [3, 1], sampling=sampling)
    for chat, (reply, telemetry) in zip(chats, batched, strict=True):
        ((alone_reply, alone),) = generate_with_telemetry(
            lm, [chat], axis, [1, 3], sampling=sampling
        )
        assert reply.token_ids == alone_reply.token_ids
        assert telemetry is not None and alone is not None
        assert telemetry.layers == (1, 3) and telemetry.n_tokens == len(reply.token_ids)
        torch.testing.assert_close(
            torch.tensor(telemetry.before), torch.tensor(alone.before), rtol=1e-4, atol=1e-5
        )
        assert telemetry.to_dict()["before"] == list(telemetry.before)
    first = batched[0][1]
    assert first is not None
    with pytest.raises(PersonaAxisError, match="Layer 2 was not recorded"):
        first.at(2)
