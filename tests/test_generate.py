"""``pa.generate``: capped turns from a bundle in one call, weight-checked, equal to the parts
it is made of; the bundle-aware ``generate_with_telemetry``; the lazy API names."""

from __future__ import annotations

import warnings

import pytest
import torch

import persona_axis as pa
from persona_axis.application.session import generate_turns
from persona_axis.axis.bundle import BundleMismatchWarning
from persona_axis.errors import PersonaAxisError
from persona_axis.inference import telemetry
from persona_axis.models.fingerprint import weight_fingerprint
from persona_axis.models.layers import ModelShape
from persona_axis.models.loading import LoadedModel
from support.bundles import cap_setting, make_bundle
from support.tiny_models import tiny_lm

CHATS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "user", "content": "Tell me a story about a lighthouse."}],
]
SAMPLING = pa.Sampling(max_new_tokens=6)
STRONG = "layers_1:3-p75"


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return tiny_lm("llama")


@pytest.fixture(scope="module")
def bundle(lm) -> pa.AxisBundle:
    strong = cap_setting(STRONG, {1: 50.0, 2: 50.0})  # floors far above any projection
    return make_bundle(
        lm,
        caps=[strong],
        recommended=STRONG,
        mean_norm=1.5,
        target_layer=2,
        fingerprint=weight_fingerprint(lm.model),
    )


def test_generate_equals_its_parts_and_caps_by_default(lm, bundle) -> None:
    turns = pa.generate(lm, bundle, CHATS, sampling=SAMPLING)
    spec = bundle.intervention(STRONG)
    parts = generate_turns(lm, CHATS, spec, SAMPLING, bundle)
    assert [t.reply.token_ids for t in turns] == [t.reply.token_ids for t in parts]
    for turn, part in zip(turns, parts, strict=True):
        assert turn.touched == part.touched == 1.0  # every value was below the floors
        assert turn.after == pytest.approx(part.after, abs=1e-5)
        assert turn.after is not None and turn.after >= 50.0 - 1e-3  # target layer 2 is capped
    uncapped = pa.generate(lm, bundle, CHATS, cap="none", sampling=SAMPLING)
    assert all(t.touched is None and t.before == pytest.approx(t.after) for t in uncapped)
    assert pa.generate(lm, bundle, [], sampling=SAMPLING) == []


def test_generate_checks_the_weights(lm, bundle) -> None:
    other = make_bundle(lm, fingerprint="sha256:" + "0" * 64, caps=list(bundle.caps.values()))
    with pytest.raises(PersonaAxisError, match="weight fingerprint"):
        pa.generate(lm, other, CHATS, cap="none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pa.generate(lm, other, CHATS[:1], cap="none", sampling=SAMPLING, allow_mismatch=True)
    assert any(issubclass(w.category, BundleMismatchWarning) for w in caught)
    wrong_shape = make_bundle(ModelShape("LlamaForCausalLM", 4, 32))
    with pytest.raises(PersonaAxisError, match="cannot be applied"):
        pa.generate(lm, wrong_shape, CHATS, cap="none", allow_mismatch=True)


def test_generate_with_telemetry_takes_a_bundle_or_an_axis(lm, bundle) -> None:
    spec = bundle.intervention(STRONG)
    from_bundle = pa.generate_with_telemetry(lm, CHATS, bundle, spec=spec, sampling=SAMPLING)
    from_axis = telemetry.generate_with_telemetry(
        lm, CHATS, bundle.axis, [2], spec=spec, sampling=SAMPLING
    )
    for (reply, got), (same, want) in zip(from_bundle, from_axis, strict=True):
        assert reply.token_ids == same.token_ids and got is not None and want is not None
        assert got.layers == (2,) and torch.allclose(
            torch.tensor(got.before + got.after), torch.tensor(want.before + want.after)
        )
    with pytest.raises(PersonaAxisError, match="layers"):
        pa.generate_with_telemetry(lm, CHATS, bundle.axis)


def test_lazy_api_names_show_in_dir() -> None:
    names = dir(pa)
    for name in ("generate", "wrap", "ChatSession", "monitor", "AxisBundle", "__version__"):
        assert name in names
        assert getattr(pa, name) is not None
