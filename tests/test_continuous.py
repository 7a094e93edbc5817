"""Continuous batching: every row of a mixed, changing batch equals the request run alone.

"Alone" is the request on its own through the library
(:func:`~persona_axis.inference.telemetry.generate_with_telemetry`, a batch of one on the same
engine); tests/test_generation.py checks the engine against Hugging Face ``generate`` under
:func:`~persona_axis.inference.interventions.intervene`. Rows join at different
steps, stop at different lengths and carry every kind of intervention (cap floor and ceiling,
steering, ablation, prompt- and generated-only positions) or none.
"""

from __future__ import annotations

from collections.abc import Hashable

import pytest
import torch

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.continuous import ContinuousBatch, Finished, RowRequest, generate_rows
from persona_axis.inference.generation import Sampling
from persona_axis.inference.interventions import Intervention, InterventionSpec
from persona_axis.inference.rows import Probe
from persona_axis.inference.telemetry import generate_with_telemetry
from persona_axis.models import LoadedModel
from support.tiny_models import ARCHITECTURES, tiny_lm

TEXTS = [
    "Hello there",
    "What is two plus two?",
    "Tell me a story about a cat who lived in a lighthouse by the sea.",
    "Hi",
    "Why?",
    "Explain gravity in one sentence, please.",
]


def directions(lm: LoadedModel, seed: int) -> torch.Tensor:
    shape = (lm.shape.n_layers, lm.shape.hidden_size)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def mixed_specs(lm: LoadedModel, axis: torch.Tensor, band: list[int], steer_at: int) -> list:
    """None, a floor cap on ``band``, steering, ablate + ceiling + prompt-only steering, a cap
    and steering together, a generated-only addition."""
    other = directions(lm, 99)
    floors = [(layer, 0.5) for layer in band]
    return [
        None,
        InterventionSpec.floor_cap(axis, floors),
        InterventionSpec.steer(axis, steer_at, -4.0, 1.5),
        InterventionSpec(
            (
                Intervention(band[0], "ablate", other[band[0]], value=0.2),
                Intervention(band[-1], "cap", other[band[-1]], ceiling=-0.1),
                Intervention(steer_at, "add", axis[steer_at], coefficient=3.0, positions="prompt"),
            )
        ),
        InterventionSpec.floor_cap(axis, [(band[0], -1e6)])
        + InterventionSpec.steer(axis, steer_at, 2.0, 1.5),
        InterventionSpec(
            (Intervention(steer_at, "add", other[steer_at], 4.0, positions="generated"),)
        ),
    ]


def requests(lm, specs, probe, lengths) -> list[RowRequest]:
    out = []
    for key, (text, spec, n) in enumerate(zip(TEXTS, specs, lengths, strict=True)):
        prompt = lm.chat.render([{"role": "user", "content": text}], add_generation_prompt=True)
        out.append(RowRequest(key, prompt.input_ids, Sampling(max_new_tokens=n), spec, probe))
    return out


def run_staggered(lm, reqs: list[RowRequest], joins: dict[int, list[int]], max_rows: int):
    """Start with the requests not in ``joins``; add ``joins[step]`` before that step."""
    late = {key for keys in joins.values() for key in keys}

    def on_step(batch: ContinuousBatch, step: int) -> None:
        for key in joins.get(step, []):
            batch.add(reqs[key])

    return generate_rows(
        lm, [r for r in reqs if r.key not in late], max_rows=max_rows, on_step=on_step
    )


def check_alone(lm, reqs: list[RowRequest], done: dict[Hashable, Finished], axis, layers) -> None:
    assert sorted(done) == [r.key for r in reqs]
    for request in reqs:
        conversation = [{"role": "user", "content": TEXTS[int(request.key)]}]  # type: ignore[call-overload]
        [(reply, alone)] = generate_with_telemetry(
            lm,
            [conversation],
            axis,
            layers,
            spec=request.spec or InterventionSpec(),
            sampling=request.sampling,
        )
        got = done[request.key]
        where = f"request {request.key}"
        assert got.reply.token_ids == reply.token_ids, where
        assert (got.reply.text, got.reply.finished) == (reply.text, reply.finished), where
        if alone is None:
            assert got.telemetry is None, where
            continue
        mine = got.telemetry
        assert mine is not None and mine.n_tokens == alone.n_tokens, where
        assert mine.layers == alone.layers
        for ours, theirs in ((mine.before, alone.before), (mine.after, alone.after)):
            torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=0, atol=1e-4)
        assert (mine.touched is None) == (alone.touched is None), where
        if alone.touched is not None:
            assert mine.touched == pytest.approx(alone.touched, abs=1e-6)
            assert mine.touched_tokens == alone.touched_tokens
            assert mine.cap_layers is not None and alone.cap_layers is not None
            assert mine.cap_layers.keys() == alone.cap_layers.keys()
            for layer, pair in alone.cap_layers.items():
                assert mine.cap_layers[layer] == pytest.approx(pair, abs=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_row_of_a_changing_mixed_batch_equals_the_request_alone(arch: str) -> None:
    lm = tiny_lm(arch)
    axis = directions(lm, 0)
    reqs = requests(lm, mixed_specs(lm, axis, [1, 2], 2), Probe(axis, (2, 3)), [5, 9, 3, 12, 7, 6])
    done = run_staggered(lm, reqs, {2: [3], 4: [4, 5]}, max_rows=4)
    check_alone(lm, reqs, done, axis, [2, 3])


@pytest.mark.slow
def test_every_row_equals_the_request_alone_on_smollm2(smollm) -> None:
    axis = directions(smollm, 0)
    specs = mixed_specs(smollm, axis, [12, 13, 14, 15], 15)
    band = list(range(12, 20))
    floors = _median_floors(smollm, axis, band)
    specs[1] = InterventionSpec.floor_cap(axis, floors)  # a floor that binds about half the time
    reqs = requests(smollm, specs, Probe(axis, (15,)), [16, 24, 8, 32, 12, 20])
    done = run_staggered(smollm, reqs, {3: [3, 4], 9: [5]}, max_rows=8)
    check_alone(smollm, reqs, done, axis, [15])
    assert done[1].telemetry is not None and 0 < (done[1].telemetry.touched or 0) < 1


def _median_floors(lm, axis, band) -> list[tuple[int, float]]:
    from persona_axis.inference.telemetry import record_projections

    prompt = lm.chat.render([{"role": "user", "content": TEXTS[0]}], add_generation_prompt=True)
    with record_projections(lm, axis, band) as log, torch.no_grad():
        lm.model(input_ids=torch.tensor([prompt.input_ids]))
    medians = log.all_positions()[0].median(dim=0).values
    return [(layer, float(medians[i])) for i, layer in enumerate(band)]


def test_sampled_rows_depend_on_their_seed_only() -> None:
    lm = tiny_lm("qwen2")
    prompt = lm.chat.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    sampled = Sampling(max_new_tokens=8, temperature=0.9, top_p=0.8, seed=7)
    alone = generate_rows(lm, [RowRequest("s", prompt.input_ids, sampled)])["s"]
    crowd = [RowRequest(k, prompt.input_ids, Sampling(max_new_tokens=6)) for k in range(3)]
    mixed = generate_rows(lm, [*crowd, RowRequest("s", prompt.input_ids, sampled)])["s"]
    assert mixed.reply.token_ids == alone.reply.token_ids
    other = generate_rows(lm, [RowRequest("s", prompt.input_ids, Sampling(8, 0.9, 0.8, seed=8))])[
        "s"
    ]
    assert other.reply.token_ids != alone.reply.token_ids


def test_rows_leave_the_cache_and_cancelled_rows_stop() -> None:
    lm = tiny_lm("llama")
    reqs = requests(lm, [None] * 6, None, [2, 10, 10, 10, 10, 10])
    batch = ContinuousBatch(lm, max_rows=3)
    for request in reqs:
        batch.add(request)
    first = batch.step()
    assert first.kind == "prompt" and first.rows == 3 and len(batch.waiting) == 3
    assert batch.cancel(4) and not batch.cancel("missing")
    finished: dict[Hashable, Finished] = {}
    widths = []
    while not batch.idle:
        result = batch.step()
        finished.update({f.key: f for f in result.finished})
        if batch.rows and batch._mask is not None:
            widths.append(batch._mask.shape[1])
            # no column is padding for every row: the cache is as narrow as its longest row
            assert widths[-1] == max(row.length for row in batch.rows)
            assert len(batch.rows) <= 3
    assert sorted(finished) == [0, 1, 2, 3, 5]
    assert batch.cancel(1) is False  # finished requests are gone
    alone = generate_rows(lm, [reqs[3]])[3]
    assert finished[3].reply.token_ids == alone.reply.token_ids


def test_bad_requests_are_refused_when_added() -> None:
    lm = tiny_lm("llama")
    batch = ContinuousBatch(lm)
    with pytest.raises(PersonaAxisError, match="empty"):
        batch.add(RowRequest(0, []))
    wrong = InterventionSpec((Intervention(9, "add", torch.ones(64), coefficient=1.0),))
    with pytest.raises(PersonaAxisError, match="layers"):
        batch.add(RowRequest(0, [1, 2], spec=wrong))
    with pytest.raises(PersonaAxisError, match="max_rows"):
        ContinuousBatch(lm, max_rows=0)
    assert batch.idle
