"""Per-row interventions: the closed forms with per-row parameters, untouched rows bit for bit,
and a mixed batch's forward pass equal to each row's own intervention."""

from __future__ import annotations

import pytest
import torch

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.interventions import (
    Intervention,
    InterventionSpec,
    ablate,
    add,
    cap,
    intervene,
)
from persona_axis.inference.rows import Probe, RowPlan, RowTelemetry
from support.tiny_models import tiny_lm

D = 64


def unit(seed: int) -> torch.Tensor:
    v = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def hidden(seed: int = 1, rows: int = 3) -> torch.Tensor:
    return 3 * torch.randn(rows, 5, D, generator=torch.Generator().manual_seed(seed))


def test_per_row_parameters_follow_the_closed_forms_row_by_row() -> None:
    h = hidden()
    directions = torch.stack([unit(0), unit(1), unit(2)])
    floors, ceilings = torch.tensor([0.5, -torch.inf, -1.0]), torch.tensor([torch.inf, -0.5, 1.0])
    coefficients, values = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([1.5, 0.0, -2.0])
    capped = cap(h, directions, floors, ceilings)
    added = add(h, directions, coefficients)
    ablated = ablate(h, directions, values)
    for row in range(3):
        u = directions[row]
        floor = None if floors[row].isinf() else float(floors[row])
        ceiling = None if ceilings[row].isinf() else float(ceilings[row])
        torch.testing.assert_close(capped[row], cap(h[row], u, floor, ceiling))
        torch.testing.assert_close(added[row], add(h[row], u, float(coefficients[row])))
        torch.testing.assert_close(ablated[row], ablate(h[row], u, float(values[row])))


def spec_cap(layer: int, seed: int, floor: float) -> InterventionSpec:
    return InterventionSpec((Intervention(layer, "cap", unit(seed), floor=floor),))


MIXED = [
    None,
    spec_cap(1, 0, 0.3) + InterventionSpec.steer(torch.stack([unit(5)] * 4), 2, -2.0, 1.5),
    None,
    InterventionSpec(
        (
            Intervention(1, "ablate", unit(3), value=0.2),
            Intervention(1, "cap", unit(4), ceiling=-0.1),
            Intervention(2, "add", unit(6), coefficient=3.0, positions="prompt"),
        )
    ),
    spec_cap(2, 7, -10.0),  # never binds
]


def batch_ids(lm, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    prompts = [lm.chat.render([{"role": "user", "content": t}]).input_ids for t in texts]
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


TEXTS = ["Hello there", "What is two plus two?", "Hi", "Tell me about the sea.", "Why?"]


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_a_mixed_batch_gives_each_row_its_own_intervention(arch: str) -> None:
    lm = tiny_lm(arch)
    ids, mask = batch_ids(lm, TEXTS)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    with torch.no_grad():
        plain = lm.model(**kwargs).logits
        with RowPlan(lm, MIXED).hooked("prompt"):
            mixed = lm.model(**kwargs).logits
    for row, spec in enumerate(MIXED):
        if spec is None:  # rows without an intervention: bit for bit
            assert torch.equal(mixed[row], plain[row])
            continue
        alone_spec = InterventionSpec(
            tuple(i for i in spec.interventions if i.positions in ("all", "prompt"))
        )
        with torch.no_grad(), intervene(lm, alone_spec):
            alone = lm.model(**{k: v[row : row + 1] for k, v in kwargs.items()}).logits
        real = mask[row].bool()
        torch.testing.assert_close(mixed[row, real], alone[0, real], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(mixed[row, real], plain[row, real]) or row == 4


def test_generated_only_interventions_skip_prompt_calls() -> None:
    lm = tiny_lm("llama")
    ids, mask = batch_ids(lm, TEXTS[:2])
    late = InterventionSpec((Intervention(1, "add", unit(0), 50.0, positions="generated"),))
    with torch.no_grad():
        plain = lm.model(input_ids=ids, attention_mask=mask).logits
        with RowPlan(lm, [late, None]).hooked("prompt"):
            prompt = lm.model(input_ids=ids, attention_mask=mask).logits
        with RowPlan(lm, [late, None]).hooked("generated"):
            generated = lm.model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(prompt, plain)
    assert not torch.allclose(generated[0], plain[0]) and torch.equal(generated[1], plain[1])


def test_hooks_are_removed_on_exit_and_bad_specs_are_refused() -> None:
    lm = tiny_lm("llama")
    counts = [len(block._forward_hooks) for block in lm.stack.layers]
    with pytest.raises(RuntimeError, match="boom"), RowPlan(lm, MIXED).hooked("prompt"):
        raise RuntimeError("boom")
    assert [len(block._forward_hooks) for block in lm.stack.layers] == counts
    with pytest.raises(PersonaAxisError, match="hidden size"):
        RowPlan(lm, [InterventionSpec((Intervention(0, "add", torch.ones(8), coefficient=1),))])
    with pytest.raises(PersonaAxisError, match="within"):
        RowTelemetry.start(lm, None, Probe(torch.randn(4, D), (9,)))
    with pytest.raises(PersonaAxisError, match="shape"):
        RowTelemetry.start(lm, None, Probe(torch.randn(3, D), (1,)))
