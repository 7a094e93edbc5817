"""Interventions: closed-form math, spec validation, hooks in forward and generate, cleanup."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
    mean_residual_norms,
)
from persona_axis.models import LoadedModel
from support.tiny_models import tiny_lm

D = 64


def unit(seed: int, d: int = D) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def hidden(seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (3 * torch.randn(2, 5, D, generator=torch.Generator().manual_seed(seed))).to(dtype)


# --- the pure math, against closed forms -------------------------------------------------


def test_add_is_h_plus_c_u() -> None:
    h, u = hidden(), unit(0)
    torch.testing.assert_close(add(h, u, 2.5), h + 2.5 * u)


def test_ablate_sets_the_projection_and_keeps_the_orthogonal_part() -> None:
    h, u = hidden(), unit(0)
    out = ablate(h, u, value=1.5)
    torch.testing.assert_close(out @ u, torch.full((2, 5), 1.5), rtol=0, atol=1e-5)
    rest = lambda x: x - (x @ u)[..., None] * u  # noqa: E731
    torch.testing.assert_close(rest(out), rest(h), rtol=0, atol=1e-5)
    torch.testing.assert_close(ablate(h, u), h - (h @ u)[..., None] * u)


@pytest.mark.parametrize(("floor", "ceiling"), [(0.5, None), (None, -0.5), (-1.0, 1.0)])
def test_cap_clamps_the_projection_and_leaves_other_tokens_bit_identical(floor, ceiling) -> None:
    h, u = hidden(), unit(0)
    p = h @ u
    out = cap(h, u, floor, ceiling)
    low = -torch.inf if floor is None else floor
    high = torch.inf if ceiling is None else ceiling
    expected = h + (p.clamp(low, high) - p)[..., None] * u  # closed form
    torch.testing.assert_close(out, expected)
    inside = (p >= low) & (p <= high)
    assert inside.any() and (~inside).any()  # the test data exercises both branches
    assert torch.equal(out[inside], h[inside])
    torch.testing.assert_close((out @ u)[~inside], p.clamp(low, high)[~inside], atol=1e-5, rtol=0)


def test_math_keeps_the_input_dtype_and_computes_in_float32() -> None:
    h, u = hidden(dtype=torch.bfloat16), unit(0)
    out = cap(h, u, floor=1.0)
    assert out.dtype == torch.bfloat16
    exact = cap(h.float(), u, floor=1.0)
    torch.testing.assert_close(out.float(), exact.to(torch.bfloat16).float())


# --- the declarative spec -----------------------------------------------------------------


def vectors(n_layers: int = 4) -> dict[str, torch.Tensor]:
    return {"axis": torch.stack([unit(i) * (i + 2) for i in range(n_layers)])}


def test_spec_from_dict_resolves_named_vectors_and_norm_multiples() -> None:
    spec = InterventionSpec.from_dict(
        {
            "interventions": [
                {
                    "layer": 1,
                    "kind": "cap",
                    "vector": "axis",
                    "floor": -2,
                    "positions": "generated",
                },
                {"layer": 2, "kind": "add", "vector": "axis", "norm_multiple": 0.5},
                {"layer": 3, "kind": "ablate", "vector": [1.0] + [0.0] * (D - 1)},
            ]
        },
        vectors=vectors(),
        mean_norms=torch.tensor([1.0, 2.0, 8.0, 4.0]),
    )
    capped, steered, ablated = spec.interventions
    torch.testing.assert_close(capped.direction, unit(1))  # row 1, normalised
    assert (capped.floor, capped.ceiling, capped.positions) == (-2.0, None, "generated")
    assert steered.coefficient == pytest.approx(4.0)  # 0.5 × mean norm 8 at layer 2
    assert ablated.direction[0] == 1.0 and spec.layers == [1, 2, 3]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"layer": 0, "kind": "cap", "vector": "axis", "floor": 1, "flor": 2}, "unknown keys"),
        ({"layer": 0, "kind": "cap", "vector": "axis", "coefficient": 1}, "unknown keys"),
        ({"layer": 0, "kind": "squash", "vector": "axis"}, "unknown kind"),
        ({"layer": 0, "kind": "cap", "vector": "axes", "floor": 1}, "unknown vector"),
        ({"layer": 9, "kind": "cap", "vector": "axis", "floor": 1}, "outside"),
        ({"layer": "1", "kind": "cap", "vector": "axis", "floor": 1}, "integer"),
        ({"layer": 0, "kind": "cap", "vector": "axis"}, "floor, a ceiling"),
        ({"layer": 0, "kind": "cap", "vector": "axis", "floor": 2, "ceiling": 1}, "above ceiling"),
        (
            {"layer": 0, "kind": "cap", "vector": "axis", "floor": 1, "positions": "some"},
            "positions",
        ),
        ({"layer": 0, "kind": "add", "vector": "axis"}, "exactly one"),
        ({"layer": 0, "kind": "add", "vector": "axis", "norm_multiple": 1}, "mean residual norm"),
        ({"layer": 0, "kind": "ablate", "vector": [0.0, 0.0]}, "zero"),
        ({"layer": 0, "kind": "cap", "vector": "axis", "floor": "high"}, "numbers"),
    ],
)
def test_spec_rejects_bad_items_with_clear_errors(item: dict, message: str) -> None:
    with pytest.raises(PersonaAxisError, match=message):
        InterventionSpec.from_dict({"interventions": [item]}, vectors=vectors())


def test_spec_rejects_unknown_top_level_keys() -> None:
    with pytest.raises(PersonaAxisError, match="top-level"):
        InterventionSpec.from_dict({"interventions": [], "layers": [1]})


def test_intervene_refuses_vectors_of_another_model() -> None:
    lm = tiny_lm("llama")
    wrong = InterventionSpec((Intervention(0, "add", unit(0, 32), coefficient=1.0),))
    with pytest.raises(PersonaAxisError, match="hidden size"), intervene(lm, wrong):
        pass
    deep = InterventionSpec((Intervention(7, "add", unit(0), coefficient=1.0),))
    with pytest.raises(PersonaAxisError, match=r"layers 0\.\.3"), intervene(lm, deep):
        pass


# --- hooks on a model ---------------------------------------------------------------------


@contextmanager
def read_outputs(lm: LoadedModel, layers: list[int]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Block outputs as the next block will see them (hooks registered last run last)."""
    seen: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = [
        lm.stack.layers[layer].register_forward_hook(
            lambda m, a, o, layer=layer: seen[layer].append(o.detach().clone())
        )
        for layer in layers
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def prompt_ids(lm: LoadedModel, text: str = "Tell me about the moon.") -> torch.Tensor:
    chat = lm.chat.render([{"role": "user", "content": text}], add_generation_prompt=True)
    return torch.tensor([chat.input_ids])


def logits(lm: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def thresholds_from(lm: LoadedModel, axis: torch.Tensor, layers: list[int], ids: torch.Tensor):
    """Per-layer floors at the 75th percentile of the uncapped projections (most tokens bind)."""
    with read_outputs(lm, layers) as seen, torch.no_grad():
        lm.model(input_ids=ids)
    return [
        (layer, float(torch.quantile(seen[layer][0] @ (axis[layer] / axis[layer].norm()), 0.75)))
        for layer in layers
    ]


def check_floor_holds(lm: LoadedModel, band: list[int], max_new_tokens: int) -> None:
    axis = torch.randn(
        lm.shape.n_layers, lm.shape.hidden_size, generator=torch.Generator().manual_seed(3)
    )
    ids = prompt_ids(lm)
    floors = thresholds_from(lm, axis, band, ids)
    spec = InterventionSpec.floor_cap(axis, floors)
    with intervene(lm, spec), read_outputs(lm, band) as seen, torch.no_grad():
        out = lm.model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            min_new_tokens=max_new_tokens,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    assert out.shape[1] == ids.shape[1] + max_new_tokens
    for layer, tau in floors:
        calls = seen[layer]
        assert len(calls) == max_new_tokens  # prompt pass + one per fed-back token
        projections = torch.cat([c.reshape(-1, lm.shape.hidden_size) for c in calls]) @ (
            axis[layer] / axis[layer].norm()
        )
        assert projections.shape[0] == ids.shape[1] + max_new_tokens - 1
        assert projections.min().item() >= tau - 1e-4 * max(1.0, abs(tau))


def test_floor_cap_holds_at_every_capped_layer_and_position_in_generate() -> None:
    check_floor_holds(tiny_lm("llama"), [1, 2], max_new_tokens=6)


@pytest.mark.slow
def test_floor_cap_holds_on_smollm2_in_generate(smollm) -> None:
    check_floor_holds(smollm, list(range(12, 20)), max_new_tokens=8)


def test_noop_specs_leave_logits_bit_identical_and_exit_restores_the_model() -> None:
    lm = tiny_lm("gemma2")
    ids = prompt_ids(lm)
    before = logits(lm, ids)
    with intervene(lm, InterventionSpec()):
        assert torch.equal(logits(lm, ids), before)
    never_binds = InterventionSpec.floor_cap(torch.randn(4, D), [(0, -1e30), (3, -1e30)])
    with intervene(lm, never_binds):
        assert torch.equal(logits(lm, ids), before)
    strong = InterventionSpec.steer(torch.randn(4, D), layer=1, multiple=4.0, mean_norm=10.0)
    with intervene(lm, strong):
        assert not torch.allclose(logits(lm, ids), before)
    assert torch.equal(logits(lm, ids), before)


def test_hooks_are_removed_when_the_body_raises() -> None:
    lm = tiny_lm("llama")
    ids = prompt_ids(lm)
    before = logits(lm, ids)
    counts = [len(b._forward_hooks) for b in lm.stack.layers]
    spec = InterventionSpec(
        (Intervention(2, "add", unit(0), coefficient=50.0, positions="generated"),)
    )
    with pytest.raises(RuntimeError, match="boom"), intervene(lm, spec):
        raise RuntimeError("boom")
    assert [len(b._forward_hooks) for b in lm.stack.layers] == counts
    assert not lm.stack.module._forward_pre_hooks
    assert torch.equal(logits(lm, ids), before)


def test_steering_adds_the_closed_form_vector_at_its_layer() -> None:
    lm = tiny_lm("qwen2")
    ids = prompt_ids(lm)
    axis = torch.randn(4, D)
    with read_outputs(lm, [1]) as plain, torch.no_grad():
        lm.model(input_ids=ids)
    steer = InterventionSpec.steer(axis, 1, multiple=-0.5, mean_norm=6.0)
    with intervene(lm, steer), read_outputs(lm, [1]) as steered, torch.no_grad():
        lm.model(input_ids=ids)
    expected = plain[1][0] + (-0.5 * 6.0) * axis[1] / axis[1].norm()
    torch.testing.assert_close(steered[1][0], expected)


def test_positions_split_prompt_and_generated_tokens_in_generate() -> None:
    lm = tiny_lm("llama")
    ids = prompt_ids(lm)
    u = unit(5)
    for positions, changed in (("generated", "generated"), ("prompt", "prompt")):
        spec = InterventionSpec(
            (Intervention(1, "add", u, coefficient=100.0, positions=positions),)
        )
        with intervene(lm, spec), read_outputs(lm, [0, 1]) as seen, torch.no_grad():
            lm.model.generate(
                ids,
                max_new_tokens=3,
                min_new_tokens=3,
                do_sample=False,
                pad_token_id=lm.tokenizer.pad_token_id,
            )
        # the change at layer 1 is exactly +100·u at the chosen positions, 0 elsewhere
        # (layer 0's output is what layer 1 adds its block update to, so compare deltas there)
        prompt_shift = _shift_along(seen, u, call=0)
        generated_shift = torch.cat([_shift_along(seen, u, call=i) for i in (1, 2)])
        hit, miss = (
            (generated_shift, prompt_shift)
            if changed == "generated"
            else (prompt_shift, generated_shift)
        )
        assert hit.min() > 50
        assert miss.abs().max() < 50


def _shift_along(seen: dict[int, list[torch.Tensor]], u: torch.Tensor, call: int) -> torch.Tensor:
    return ((seen[1][call] - seen[0][call]) @ u).flatten()


def test_capped_generation_equals_a_teacher_forced_capped_pass() -> None:
    lm = tiny_lm("mistral")
    ids = prompt_ids(lm)
    axis = torch.randn(4, D)
    spec = InterventionSpec.floor_cap(axis, thresholds_from(lm, axis, [1, 2], ids))
    with intervene(lm, spec), torch.no_grad():
        out = lm.model.generate(
            ids,
            max_new_tokens=5,
            min_new_tokens=5,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
        forced = lm.model(input_ids=out).logits
    predicted = forced[0, ids.shape[1] - 1 : -1].argmax(-1)
    assert torch.equal(predicted, out[0, ids.shape[1] :])


def test_mean_residual_norms_match_hf_hidden_states() -> None:
    lm = tiny_lm("phi3")
    conversation = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello, friend."},
    ]
    norms = mean_residual_norms(lm, [conversation])
    rendered = lm.chat.render(conversation)
    span = rendered.role_spans("assistant")[0]
    with torch.no_grad():
        states = lm.model(
            input_ids=torch.tensor([rendered.input_ids]), output_hidden_states=True
        ).hidden_states
    expected = [
        states[layer + 1][0, span.start : span.end].norm(dim=-1).mean() for layer in range(3)
    ]
    torch.testing.assert_close(norms[:3], torch.stack(expected), rtol=1e-5, atol=1e-5)
