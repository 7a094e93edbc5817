"""The vLLM engine's pieces that need no vLLM: per-token operations equal the HF engine's per-row
ones, the residual pair's replacement keeps untouched tokens bit for bit, and the prefix-cache
salt separates interventions. Runs in both environments."""

from __future__ import annotations

import pytest
import torch

from persona_axis.errors import PersonaAxisError
from persona_axis.inference.interventions import Intervention, InterventionSpec
from persona_axis.inference.rows import RowOp
from persona_axis.inference.vllm.residual import decoder_layers, replaced, residual_pair, stream
from persona_axis.inference.vllm.salt import cache_salt
from persona_axis.inference.vllm.tokens import apply_to_tokens

D = 16


def unit(seed: int) -> torch.Tensor:
    v = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@pytest.mark.parametrize(
    "items",
    [
        {
            0: Intervention(0, "cap", unit(0), floor=0.5),
            2: Intervention(0, "cap", unit(1), floor=-2.0),
        },
        {1: Intervention(0, "add", unit(2), coefficient=3.0, positions="generated")},
        {0: Intervention(0, "ablate", unit(3), value=0.2, positions="prompt")},
        {2: Intervention(0, "cap", unit(4), floor=-0.1, ceiling=0.3)},
    ],
)
def test_per_token_operation_equals_the_per_row_one(items) -> None:
    """Rows of 4, 1 and 3 tokens flattened as vLLM runs them (row 1 decoding, the others
    prefilling): each token gets what the HF engine's row operation gives it in that phase."""
    op = RowOp.build(items[next(iter(items))].kind, items, batch=3)
    lengths, phases = [4, 1, 3], ["prompt", "generated", "prompt"]
    rows = [3 * torch.randn(1, n, D, generator=torch.Generator().manual_seed(n)) for n in lengths]
    flat = torch.cat([row[0] for row in rows])
    slots = torch.tensor([r for r, n in enumerate(lengths) for _ in range(n)])
    generated = torch.tensor([phases[r] == "generated" for r in slots.tolist()])
    got = apply_to_tokens(op, flat, slots, generated)
    start = 0
    for index, (row, phase) in enumerate(zip(rows, phases, strict=True)):
        batch = torch.zeros(3, row.shape[1], D)
        batch[index] = row[0]
        want = op.apply(batch, phase)[index]
        torch.testing.assert_close(got[start : start + row.shape[1]], want, rtol=1e-6, atol=1e-6)
        if not bool(op.phases[phase][index]):  # not acting: untouched bit for bit
            assert torch.equal(got[start : start + row.shape[1]], row[0])
        start += row.shape[1]


def test_replaced_pair_sums_to_the_stream_bit_for_bit() -> None:
    h, r = torch.randn(5, D), torch.randn(5, D)
    x = stream(h, r)
    new_h, new_r = replaced(x)
    assert torch.equal(new_h + new_r, h + r) and not new_r.any()


def test_other_layer_conventions_are_refused() -> None:
    with pytest.raises(PersonaAxisError, match="not the pair"):
        residual_pair(torch.zeros(2, D), 3)
    with pytest.raises(PersonaAxisError, match="decoder layers"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_cache_salt_separates_interventions_and_only_them() -> None:
    axis = torch.stack([unit(seed) for seed in range(4)])
    cap = InterventionSpec.floor_cap(axis, [(1, 0.5), (2, 0.5)])
    assert cache_salt(None) is None and cache_salt(InterventionSpec()) is None
    assert cache_salt(cap) == cache_salt(
        InterventionSpec.floor_cap(axis.clone(), [(1, 0.5), (2, 0.5)])
    )
    others = [
        InterventionSpec.floor_cap(axis, [(1, 0.5), (2, 0.6)]),
        InterventionSpec.floor_cap(axis, [(1, 0.5), (2, 0.5)], positions="generated"),
        InterventionSpec.floor_cap(axis.flip(-1), [(1, 0.5), (2, 0.5)]),
        InterventionSpec.floor_cap(axis, [(2, 0.5), (1, 0.5)]),
        InterventionSpec.steer(axis, 1, 0.5, 1.0),
    ]
    salts = {cache_salt(spec) for spec in [cap, *others]}
    assert len(salts) == 6 and all(s is not None and s.startswith("persona-axis:") for s in salts)
