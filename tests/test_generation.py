"""Batched replies, and response activations pooled inside the generation pass.

Parity: the activations pooled while generating equal a teacher-forced capture of the same
tokens (prompt + reply) within float rounding, for left-padded batches of mixed lengths.
"""

from __future__ import annotations

import pytest
import torch

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.capture import pool_spans
from persona_axis.inference.generation import Sampling, generate_replies, stop_ids
from persona_axis.models import LoadedModel
from support.tiny_models import ARCHITECTURES, tiny_lm

PROMPTS = [
    [{"role": "user", "content": "Who are you?"}],
    [
        {"role": "system", "content": "You are a grumpy lighthouse keeper on a stormy coast."},
        {"role": "user", "content": "What do you think about visitors who arrive unannounced?"},
    ],
    [{"role": "user", "content": "Name a colour."}],
]


def teacher_forced(lm: LoadedModel, replies, layers, transform=None) -> list[torch.Tensor]:
    """Span means over each reply's own tokens, re-run as prompt + reply in a fresh pass."""
    sequences, spans = [], []
    for messages, reply in zip(PROMPTS, replies, strict=True):
        prompt = lm.chat.render(messages, add_generation_prompt=True).input_ids
        sequences.append(prompt + reply.token_ids)
        spans.append([((len(prompt), len(prompt) + len(reply.token_ids)),)])
    pooled = pool_spans(lm, sequences, spans, layers, batch_size=1, transform=transform)
    return [p[0] for p in pooled]


def check_parity(lm: LoadedModel, sampling: Sampling) -> list:
    layers = list(range(lm.shape.n_layers))
    replies = generate_replies(lm, PROMPTS, sampling, pool_layers=layers)
    assert all(r.token_ids for r in replies), "every test reply needs content tokens"
    expected = teacher_forced(lm, replies, layers)
    norms = teacher_forced(lm, replies, layers, lambda t: t.norm(dim=-1, keepdim=True))
    for reply, want, want_norm in zip(replies, expected, norms, strict=True):
        assert reply.activations is not None and reply.norms is not None
        cos = torch.nn.functional.cosine_similarity(reply.activations, want, dim=-1)
        assert cos.min() >= 0.9999, cos.min()
        scale = want.abs().max(dim=-1).values[:, None]
        assert ((reply.activations - want).abs() / scale).max() < 1e-4
        torch.testing.assert_close(reply.norms, want_norm[:, 0], rtol=1e-4, atol=1e-5)
    return replies


@pytest.mark.slow
def test_pooled_in_generation_equals_teacher_forced_capture_on_smollm(smollm) -> None:
    replies = check_parity(smollm, Sampling(max_new_tokens=24))
    # A ragged batch: "Name a colour." ends early (18 tokens here), the others run to the
    # limit, so the parity above covers rows that stop while others still generate.
    assert {r.finished for r in replies} == {True, False}
    assert all(len(r.token_ids) == 24 for r in replies if not r.finished)
    assert all(len(r.token_ids) < 24 for r in replies if r.finished)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_pooled_in_generation_equals_teacher_forced_capture_on_tiny_models(arch: str) -> None:
    check_parity(tiny_lm(arch), Sampling(max_new_tokens=6, temperature=1.0, seed=3))


@pytest.mark.slow
def test_pooling_leaves_the_replies_unchanged(smollm) -> None:
    sampling = Sampling(max_new_tokens=10, temperature=0.7, top_p=0.9, seed=11)
    plain = generate_replies(smollm, PROMPTS, sampling)
    pooled = generate_replies(smollm, PROMPTS, sampling, pool_layers=[3, 15])
    assert [r.token_ids for r in plain] == [r.token_ids for r in pooled]
    assert all(r.activations is None for r in plain)
    assert all(tuple(r.activations.shape) == (2, 576) for r in pooled if r.token_ids)


@pytest.mark.slow
def test_replies_cut_by_the_limit_keep_every_fed_token(smollm) -> None:
    replies = generate_replies(smollm, PROMPTS[:2], Sampling(max_new_tokens=3), pool_layers=[0])
    for reply in replies:
        assert len(reply.token_ids) == 3 and not reply.finished
        assert reply.activations is not None


@pytest.mark.slow
def test_seeded_sampling_repeats_and_seeds_differ(smollm) -> None:
    def run(seed: int) -> list[list[int]]:
        sampling = Sampling(max_new_tokens=8, temperature=1.0, seed=seed)
        return [r.token_ids for r in generate_replies(smollm, PROMPTS, sampling)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_bad_layers_and_sampling_are_refused() -> None:
    with pytest.raises(PersonaAxisError, match="out of range"):
        generate_replies(tiny_lm("llama"), PROMPTS, Sampling(max_new_tokens=2), pool_layers=[99])
    with pytest.raises(PersonaAxisError, match="max_new_tokens"):
        Sampling(max_new_tokens=0)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_engine_replies_equal_hf_generate_under_intervene(arch: str) -> None:
    """The generation engine against the independent reference: Hugging Face ``generate`` on
    each conversation alone under :func:`~persona_axis.inference.interventions.intervene` (a
    cap and a generated-only addition), greedy, same tokens."""
    from persona_axis.inference.interventions import Intervention, InterventionSpec, intervene

    lm = tiny_lm(arch)
    shape = (lm.shape.n_layers, lm.shape.hidden_size)
    axis = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    spec = InterventionSpec.floor_cap(axis, [(1, 0.5), (2, 0.5)]) + InterventionSpec(
        (Intervention(2, "add", axis[2], coefficient=3.0, positions="generated"),)
    )
    sampling = Sampling(max_new_tokens=6)
    ours = generate_replies(lm, PROMPTS, sampling, spec=spec)
    for messages, reply in zip(PROMPTS, ours, strict=True):
        ids = torch.tensor([lm.chat.render(messages, add_generation_prompt=True).input_ids])
        with intervene(lm, spec), torch.no_grad():
            out = lm.model.generate(ids, generation_config=sampling.config(lm))
        new = out[0, ids.shape[1] :].tolist()
        stop = next((i for i, token in enumerate(new) if token in set(stop_ids(lm))), len(new))
        assert reply.token_ids == new[:stop]
        assert reply.finished == (stop < len(new))
