"""Span-mean capture: parity with Hugging Face's own hidden states, padding, early stop."""

from __future__ import annotations

import pytest
import torch

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.capture import (
    PoolingPlan,
    SpanPooler,
    pool_spans,
    pool_spans_chunked,
    response_activations,
)
from persona_axis.models import LoadedModel
from support.tiny_models import ARCHITECTURES, tiny_lm

CONVERSATIONS = [
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Teal."},
    ],
    [
        {"role": "system", "content": "You are a ship's cook who loves soup."},
        {"role": "user", "content": "What is for dinner tonight, and why?"},
        {"role": "assistant", "content": "Barley soup, because the sea is cold and so are we."},
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "content": "More soup, naturally, with extra pepper."},
    ],
    [
        {"role": "user", "content": "Say something kind."},
        {"role": "assistant", "content": "You are doing better than you think."},
    ],
]


def hf_reference(lm: LoadedModel, sequences, spans, padding_side: str) -> list[torch.Tensor]:
    """Masked means of HF ``hidden_states[L + 1]`` for the same padded batch and positions.

    The last layer is read by a hook on the last block, since HF's last hidden state comes
    after the final norm.
    """
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), lm.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    pads = []
    for row, seq in enumerate(sequences):
        pad = width - len(seq) if padding_side == "left" else 0
        ids[row, pad : pad + len(seq)] = torch.tensor(seq)
        mask[row, pad : pad + len(seq)] = 1
        pads.append(pad)
    last: list[torch.Tensor] = []
    handle = lm.stack.layers[-1].register_forward_hook(lambda m, a, o: last.append(o))
    try:
        with torch.no_grad():
            out = lm.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                output_hidden_states=True,
            )
    finally:
        handle.remove()
    layers = [*out.hidden_states[1:-1], last[0]]
    results = []
    for row, (row_spans, pad) in enumerate(zip(spans, pads, strict=True)):
        per_span = []
        for segments in row_spans:
            keep = torch.zeros(width, dtype=torch.bool)
            for a, b in segments:
                keep[pad + a : pad + b] = True
            per_span.append(torch.stack([h[row, keep].float().mean(0) for h in layers]))
        results.append(torch.stack(per_span))
    return results


def rendered_batch(lm: LoadedModel) -> tuple[list[list[int]], list[list]]:
    rendered = [lm.chat.render(c) for c in CONVERSATIONS]
    sequences = [r.input_ids for r in rendered]
    spans = [[s.segments for s in r.role_spans("assistant")] for r in rendered]
    # one more unit per sequence: the user turns pooled together
    for r, row in zip(rendered, spans, strict=True):
        row.append(tuple(seg for s in r.role_spans("user") for seg in s.segments))
    return sequences, spans


def assert_parity(lm: LoadedModel, padding_side: str) -> None:
    sequences, spans = rendered_batch(lm)
    ours = pool_spans(lm, sequences, spans, batch_size=3, padding_side=padding_side)
    reference = hf_reference(lm, sequences, spans, padding_side)
    for got, want in zip(ours, reference, strict=True):
        assert got.dtype == torch.float32
        assert got.shape == (len(want), lm.shape.n_layers, lm.shape.hidden_size)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_parity_with_hf_hidden_states_on_smollm2(smollm, padding_side: str) -> None:
    assert_parity(smollm, padding_side)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_parity_with_hf_hidden_states_on_tiny_models(arch: str, padding_side: str) -> None:
    assert_parity(tiny_lm(arch), padding_side)


@pytest.mark.slow
def test_padding_does_not_change_activations(smollm) -> None:
    sequences, spans = rendered_batch(smollm)
    alone = [pool_spans(smollm, [s], [p])[0] for s, p in zip(sequences, spans, strict=True)]
    for side in ("left", "right"):
        batched = pool_spans(smollm, sequences, spans, batch_size=3, padding_side=side)
        for got, want in zip(batched, alone, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_only_requested_layers_are_hooked_and_the_pass_stops_after_the_last() -> None:
    lm = tiny_lm("llama")
    sequences, spans = rendered_batch(lm)
    calls = {i: 0 for i in range(lm.shape.n_layers)}
    counters = [
        block.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, block in enumerate(lm.stack.layers)
    ]
    head_calls: list[int] = []
    head = lm.model.get_output_embeddings().register_forward_hook(
        lambda m, a, o: head_calls.append(1)
    )
    before = [len(b._forward_hooks) for b in lm.stack.layers]
    try:
        pooler = SpanPooler(lm, layers=[1, 0])
        with pooler.hooked():
            during = [len(b._forward_hooks) for b in lm.stack.layers]
            out = pooler.run(sequences, spans)
        assert [d - b for d, b in zip(during, before, strict=True)] == [1, 1, 0, 0]
        assert [len(b._forward_hooks) for b in lm.stack.layers] == before
    finally:
        for handle in [*counters, head]:
            handle.remove()
    assert calls == {0: 1, 1: 1, 2: 0, 3: 0}
    assert head_calls == []
    assert out[1].shape == (3, 2, lm.shape.hidden_size)
    full = pool_spans(lm, sequences, spans)
    torch.testing.assert_close(out[1], full[1][:, :2], rtol=1e-6, atol=1e-6)


def test_response_activations_pool_each_assistant_turn() -> None:
    lm = tiny_lm("qwen3")
    acts = response_activations(lm, CONVERSATIONS, layers=[2])
    assert [a.shape[0] for a in acts] == [1, 2, 1]
    rendered = lm.chat.render(CONVERSATIONS[1])
    turn = rendered.role_spans("assistant")[1]
    manual = pool_spans(lm, [rendered.input_ids], [[turn.segments]], layers=[2])[0]
    torch.testing.assert_close(acts[1][1:], manual)


def test_pooling_plan_weights_average_each_span() -> None:
    plan = PoolingPlan.build([[[(0, 2)], [(1, 3)]], [[(0, 1)]]], offsets=[0, 2], width=4)
    assert plan.token_index.tolist() == [0, 1, 2, 6]
    expected = torch.tensor([[0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 0, 1.0]])
    torch.testing.assert_close(plan.weights, expected)


def test_bad_requests_get_clear_errors() -> None:
    lm = tiny_lm("llama")
    with pytest.raises(PersonaAxisError, match="out of range"):
        SpanPooler(lm, layers=[4])
    with pytest.raises(PersonaAxisError, match="holds no tokens"):
        pool_spans(lm, [[1, 2, 3]], [[[(1, 1)]]])
    with pytest.raises(PersonaAxisError, match="one list per sequence"):
        pool_spans(lm, [[1, 2, 3]], [])
    with pytest.raises(PersonaAxisError, match="no assistant message"):
        response_activations(lm, [[{"role": "user", "content": "hi"}]])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chunked_pooling_with_a_kv_cache_equals_one_pass(arch: str) -> None:
    """Chunks of 7 tokens through a KV cache (spans crossing chunk ends, a chunk of context
    only) give the single pass's span means; Gemma's 8-token sliding window included."""
    lm = tiny_lm(arch)
    sequences, spans = rendered_batch(lm)
    sequence, units = sequences[1], spans[1]
    (whole,) = pool_spans(lm, [sequence], [units], layers=[0, 2])
    for chunk_tokens in (7, 1000):
        chunked = pool_spans_chunked(lm, sequence, units, [0, 2], chunk_tokens=chunk_tokens)
        torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)
    with pytest.raises(PersonaAxisError, match="holds no tokens"):
        pool_spans_chunked(lm, sequence, [((3, 3),)], [0])
