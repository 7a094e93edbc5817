"""The engine's sampler (``sample_tokens``): the nucleus it samples is transformers' top-p
nucleus, the draws follow the nucleus's renormalised probabilities, and a row's token depends
on its own generator only."""

from __future__ import annotations

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from persona_axis.inference.continuous import NUCLEUS_CANDIDATES, sample_tokens


def generators(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def hf_nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The probabilities transformers' own warpers sample from, ``[rows, vocab]``."""
    scores = TemperatureLogitsWarper(temperature)(None, logits)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("spread", [1.0, 8.0])
def test_draws_follow_the_nucleus_of_transformers_warpers(top_p: float, spread: float) -> None:
    # spread 1: a flat vocabulary whose nucleus is far beyond the top candidates (full sort);
    # spread 8: a peaked one whose nucleus lies among them.
    vocab, draws, temperature = 300, 6000, 0.7
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(5)) * spread
    expected = hf_nucleus(logits, temperature, top_p)[0]
    counts = torch.zeros(vocab)
    stream = generators(1)
    for _ in range(draws):
        counts[sample_tokens(logits, temperature, top_p, stream)[0]] += 1
    assert bool((counts[expected == 0] == 0).all()), "a token outside the nucleus was drawn"
    frequent = expected > 0.02
    observed = counts[frequent] / draws
    # four binomial standard deviations per token
    limit = 4 * (expected[frequent] * (1 - expected[frequent]) / draws).sqrt()
    assert bool(((observed - expected[frequent]).abs() <= limit).all())
    if spread == 1.0 and top_p >= 0.9:
        assert int((expected > 0).sum()) > NUCLEUS_CANDIDATES  # the full-sort path ran


def test_each_row_depends_on_its_own_generator_only() -> None:
    logits = torch.randn(6, 500, generator=torch.Generator().manual_seed(1))
    together = sample_tokens(logits, 1.0, 0.95, generators(6, seed=40))
    alone = [
        sample_tokens(logits[i : i + 1], 1.0, 0.95, generators(1, seed=40 + i))[0] for i in range(6)
    ]
    assert together == alone
    others = sample_tokens(logits, 1.0, 0.95, generators(6, seed=90))
    assert others != together


def test_a_certain_token_is_always_chosen() -> None:
    logits = torch.full((3, 100), -1e4)
    logits[torch.arange(3), torch.tensor([7, 0, 99])] = 0.0
    for top_p in (0.1, 1.0):
        assert sample_tokens(logits, 0.5, top_p, generators(3)) == [7, 0, 99]


@pytest.mark.parametrize("vocab", [40, 3 * NUCLEUS_CANDIDATES])
def test_float_noise_that_swaps_near_ties_leaves_the_draws(vocab: int) -> None:
    # Eight near-equal tokens (mass 0.85), one clear token (0.1) and a tail: the nucleus at
    # top_p 0.9 is those nine whatever the noise, but a last-bit change (another thread count
    # or instruction set) reorders the eight. The draws must not move with their rank.
    probs = torch.full((vocab,), 0.05 / (vocab - 9))
    probs[torch.arange(8) * 3] = 0.85 / 8 * (1 + 1e-6 * torch.arange(8))
    probs[1] = 0.1
    logits = probs.log().expand(500, vocab).contiguous()
    noise = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3)) * 1e-5
    clean = sample_tokens(logits, 1.0, 0.9, generators(500))
    noisy = sample_tokens(logits + noise, 1.0, 0.9, generators(500))
    assert set(clean) <= {1, *range(0, 24, 3)}
    assert clean == noisy
