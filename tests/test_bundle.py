"""AxisBundle: round trip, validation, model checks, and import of the reference formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM

import persona_axis
from persona_axis import files
from persona_axis.axis import bundle as bundle_module
from persona_axis.axis.bundle import (
    LAYER_CONVENTION,
    AxisBundle,
    BundleMismatchWarning,
)
from persona_axis.axis.calibrate import CapSetting, LayerThreshold
from persona_axis.errors import PersonaAxisError
from persona_axis.models.fingerprint import weight_fingerprint
from persona_axis.models.layers import ModelShape, model_shape
from persona_axis.models.loading import load_model
from support.bundles import make_bundle
from support.tiny_models import build_tiny, styled_tokenizer

N_LAYERS, HIDDEN = 6, 16
SHAPE = ModelShape("LlamaForCausalLM", N_LAYERS, HIDDEN)


def _vectors(seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen)

    return {
        "axis": rand(N_LAYERS, HIDDEN),
        "default": rand(N_LAYERS, HIDDEN),
        "role/ghost": rand(N_LAYERS, HIDDEN),
        "role/accountant": rand(N_LAYERS, HIDDEN),
        "trait/dramatic": rand(N_LAYERS, HIDDEN),
        "stats/mean_norm": rand(N_LAYERS).abs(),
    }


def _cap(name: str = "layers_3:5-p75") -> CapSetting:
    return CapSetting(
        name=name,
        thresholds=(LayerThreshold(3, 0.1 + 1e-9), LayerThreshold(4, -2.75)),
        percentile=75.0,
        calibrated_on="all rollouts",
    )


def _bundle(**kwargs: object) -> AxisBundle:
    options: dict = {"model_shape": SHAPE, "model_id": "tiny/llama", "fingerprint": "sha256:ab"}
    options.update(kwargs)
    return AxisBundle.create(
        _vectors(),
        caps={"layers_3:5-p75": _cap()},
        extras={"catalog": "builtin-v1", "counts": {"ghost": {"3": 12}}, "timings": {"gen": 1.5}},
        **options,
    )


# -- construction and accessors ----------------------------------------------------------------


def test_create_writes_manifest() -> None:
    bundle = _bundle(revision="abc123")
    manifest = bundle.manifest
    assert manifest["format_version"] == bundle_module.FORMAT_VERSION
    assert manifest["library_version"] == persona_axis.__version__
    assert manifest["layer_convention"] == LAYER_CONVENTION
    assert manifest["model"] == {
        "id": "tiny/llama",
        "revision": "abc123",
        "fingerprint": "sha256:ab",
        "architecture": "LlamaForCausalLM",
        "n_layers": N_LAYERS,
        "hidden_size": HIDDEN,
    }
    assert manifest["target_layer"] == N_LAYERS // 2 == bundle.target_layer
    assert manifest["catalog"] == "builtin-v1"
    assert _bundle(target_layer=2).target_layer == 2


def test_accessors() -> None:
    bundle = _bundle()
    vectors = _vectors()
    assert bundle.shape == (N_LAYERS, HIDDEN)
    assert torch.equal(bundle.axis, vectors["axis"])
    assert torch.equal(bundle.default, vectors["default"])
    assert list(bundle.roles()) == ["accountant", "ghost"]
    assert torch.equal(bundle.roles()["ghost"], vectors["role/ghost"])
    assert list(bundle.traits()) == ["dramatic"]
    unit = bundle.unit_axis(2)
    assert torch.allclose(unit.norm(), torch.tensor(1.0))
    assert torch.allclose(unit * vectors["axis"][2].norm(), vectors["axis"][2])
    with pytest.raises(PersonaAxisError, match="0-based"):
        bundle.unit_axis(N_LAYERS)


def test_vectors_become_contiguous_float32_cpu() -> None:
    vectors = {key: value.double() for key, value in _vectors().items()}
    vectors["axis"] = vectors["axis"].t().contiguous().t()  # non-contiguous view
    bundle = AxisBundle.create(vectors, model_shape=SHAPE, model_id=None)
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in bundle.vectors.values())


def test_wrong_shape_and_missing_axis_are_refused() -> None:
    vectors = _vectors()
    vectors["role/ghost"] = torch.zeros(N_LAYERS, HIDDEN + 1)
    with pytest.raises(PersonaAxisError, match="role/ghost"):
        AxisBundle.create(vectors, model_shape=SHAPE, model_id=None)
    vectors = _vectors()
    del vectors["axis"]
    with pytest.raises(PersonaAxisError, match="no 'axis'"):
        AxisBundle.create(vectors, model_shape=SHAPE, model_id=None)


def test_extras_must_be_json_and_not_reserved() -> None:
    with pytest.raises(PersonaAxisError, match="reserved"):
        AxisBundle.create(_vectors(), model_shape=SHAPE, model_id=None, extras={"model": 1})
    with pytest.raises(PersonaAxisError, match="JSON"):
        AxisBundle.create(_vectors(), model_shape=SHAPE, model_id=None, extras={"x": object()})


def test_caps_lookup_add_and_floors() -> None:
    bundle = _bundle()
    with pytest.raises(PersonaAxisError, match=r"available: layers_3:5-p75"):
        bundle.cap("layers_0:2-p50")
    with pytest.raises(PersonaAxisError, match="replace=True"):
        bundle.add_cap(_cap())
    bundle.add_cap(_cap("layers_1:2-p50"))
    assert set(bundle.caps) == {"layers_3:5-p75", "layers_1:2-p50"}
    with pytest.raises(PersonaAxisError, match="out of range"):
        bundle.add_cap(CapSetting("bad", (LayerThreshold(N_LAYERS, 0.0),)))
    floors = bundle.cap_floors("layers_3:5-p75")
    assert [(layer, floor) for layer, _, floor in floors] == [(3, 0.1 + 1e-9), (4, -2.75)]
    assert torch.equal(floors[0][1], bundle.unit_axis(3))


# -- disk ---------------------------------------------------------------------------------------


def _bits(tensor: Tensor) -> Tensor:
    return tensor.view(torch.int32)


def test_save_load_round_trip_is_bit_exact(tmp_path: Path) -> None:
    bundle = _bundle()
    path = bundle.save(tmp_path / "bundle")
    assert sorted(p.name for p in path.iterdir()) == [
        "caps.json",
        "manifest.json",
        "vectors.safetensors",
    ]
    loaded = AxisBundle.load(path)
    assert loaded.vectors.keys() == bundle.vectors.keys()
    for key, value in bundle.vectors.items():
        assert torch.equal(_bits(loaded.vectors[key]), _bits(value)), key
    assert loaded.manifest == bundle.manifest
    assert loaded.caps == bundle.caps  # thresholds survive JSON exactly
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging left


def test_save_handles_views_of_one_storage(tmp_path: Path) -> None:
    stacked = torch.randn(3, N_LAYERS, HIDDEN)
    vectors = {"axis": stacked[0], "default": stacked[1], "role/x": stacked[2]}
    bundle = AxisBundle.create(vectors, model_shape=SHAPE, model_id=None)
    loaded = AxisBundle.load(bundle.save(tmp_path / "b"))
    assert torch.equal(loaded.vectors["role/x"], stacked[2])


def test_save_replaces_a_bundle_but_not_other_directories(tmp_path: Path) -> None:
    target = tmp_path / "b"
    _bundle().save(target)
    AxisBundle.create(_vectors(seed=1), model_shape=SHAPE, model_id="second").save(target)
    assert AxisBundle.load(target).model_id == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    with pytest.raises(PersonaAxisError, match="not part of a bundle"):
        _bundle().save(other)
    assert (other / "thesis.tex").read_text() == "keep me"


def test_interrupted_save_leaves_no_half_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "b"
    _bundle(model_id="old").save(target)

    def crash(path: Path, data: object, **options: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        _bundle(model_id="new").save(target)
    with pytest.raises(KeyboardInterrupt):
        _bundle().save(tmp_path / "fresh")
    monkeypatch.undo()
    assert AxisBundle.load(target).model_id == "old"  # the previous bundle is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no partial directories


def test_load_missing_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(PersonaAxisError, match="No bundle directory"):
        AxisBundle.load(tmp_path / "nope")
    path = _bundle().save(tmp_path / "b")
    (path / "manifest.json").unlink()
    with pytest.raises(PersonaAxisError, match=r"manifest\.json missing"):
        AxisBundle.load(path)


@pytest.mark.parametrize("name", ["manifest.json", "caps.json"])
def test_corrupt_json_names_the_file(tmp_path: Path, name: str) -> None:
    path = _bundle().save(tmp_path / "b")
    text = (path / name).read_text()
    (path / name).write_text(text[: len(text) // 2])
    with pytest.raises(PersonaAxisError, match=rf"{name}.*not valid JSON"):
        AxisBundle.load(path)


def test_corrupt_vectors_file(tmp_path: Path) -> None:
    path = _bundle().save(tmp_path / "b")
    (path / "vectors.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(PersonaAxisError, match=r"vectors\.safetensors"):
        AxisBundle.load(path)


def _edit_manifest(path: Path, edit: dict) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    for key, value in edit.items():
        section, _, field = key.partition(".")
        if field:
            manifest[section][field] = value
        else:
            manifest[section] = value
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"format_version": 99}, "upgrade persona-axis"),
        ({"format_version": "1"}, "integer format_version"),
        ({"model.hidden_size": HIDDEN * 2}, "different models"),
        ({"model.n_layers": "six"}, "n_layers"),
        ({"target_layer": N_LAYERS}, "target_layer"),
    ],
)
def test_load_validates_manifest(tmp_path: Path, edit: dict, message: str) -> None:
    path = _bundle().save(tmp_path / "b")
    _edit_manifest(path, edit)
    with pytest.raises(PersonaAxisError, match=message):
        AxisBundle.load(path)


def test_load_refuses_bundle_without_axis(tmp_path: Path) -> None:
    path = _bundle().save(tmp_path / "b")
    vectors = _vectors()
    del vectors["axis"]
    save_file(vectors, str(path / "vectors.safetensors"))
    with pytest.raises(PersonaAxisError, match="no 'axis'"):
        AxisBundle.load(path)


def test_load_refuses_caps_outside_the_model(tmp_path: Path) -> None:
    path = _bundle().save(tmp_path / "b")
    caps = json.loads((path / "caps.json").read_text())
    caps["layers_3:5-p75"]["thresholds"][0]["layer"] = N_LAYERS + 3
    (path / "caps.json").write_text(json.dumps(caps))
    with pytest.raises(PersonaAxisError, match="out of range"):
        AxisBundle.load(path)


# -- model checks -------------------------------------------------------------------------------


def test_check_model_shape_mismatch_always_refused() -> None:
    bundle = _bundle()
    bundle.check_model(SHAPE, "sha256:ab")
    other = ModelShape("LlamaForCausalLM", N_LAYERS, HIDDEN * 2)
    for allow in (False, True):
        with pytest.raises(PersonaAxisError) as info:
            bundle.check_model(other, allow_mismatch=allow)
        message = str(info.value)
        assert "tiny/llama" in message
        assert f"hidden size {HIDDEN}" in message and f"hidden size {HIDDEN * 2}" in message
        assert "allow_mismatch does not override" in message


def test_check_model_fingerprint_and_architecture() -> None:
    bundle = _bundle()
    with pytest.raises(PersonaAxisError, match=r"sha256:ab vs sha256:cd.*allow_mismatch=True"):
        bundle.check_model(SHAPE, "sha256:cd")
    with pytest.warns(BundleMismatchWarning, match="sha256:cd"):
        bundle.check_model(SHAPE, "sha256:cd", allow_mismatch=True)
    mistral = ModelShape("MistralForCausalLM", N_LAYERS, HIDDEN)
    with pytest.raises(PersonaAxisError, match="architecture"):
        bundle.check_model(mistral)
    bundle.check_model(SHAPE, None)  # nothing to compare: accepted


def _tiny_llama(seed: int, hidden: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    )
    return LlamaForCausalLM(config).eval()


def test_check_against_real_models() -> None:
    model = _tiny_llama(0)
    shape = model_shape(model)
    vectors = {"axis": torch.randn(shape.n_layers, shape.hidden_size)}
    bundle = AxisBundle.create(
        vectors, model_shape=shape, model_id="tiny", fingerprint=weight_fingerprint(model)
    )
    bundle.check_against(model)
    with pytest.raises(PersonaAxisError, match="weight fingerprint"):
        bundle.check_against(_tiny_llama(1))
    with pytest.raises(PersonaAxisError, match="hidden size 32"):
        bundle.check_against(_tiny_llama(0, hidden=32), allow_mismatch=True)


def test_a_build_directory_loads_its_bundle(tmp_path: Path) -> None:
    bundle = AxisBundle.create(
        {"axis": torch.ones(2, 3)}, model_shape=ModelShape("LlamaForCausalLM", 2, 3), model_id="m"
    )
    bundle.save(tmp_path / "bundle")
    assert torch.equal(AxisBundle.load(tmp_path).axis, bundle.axis)


def test_load_model_follows_the_one_model_rule_and_checks_the_weights(tmp_path: Path) -> None:
    directory = tmp_path / "tiny"
    build_tiny("llama").save_pretrained(directory)
    styled_tokenizer("chatml").save_pretrained(directory)
    other = tmp_path / "other"
    build_tiny("llama", seed=1).save_pretrained(other)
    styled_tokenizer("chatml").save_pretrained(other)
    fingerprint = weight_fingerprint(load_model(directory).model)
    bundle = make_bundle(load_model(directory), model_id=str(directory), fingerprint=fingerprint)
    lm = bundle.load_model()  # the bundle's model
    assert lm.name == str(directory) and weight_fingerprint(lm.model) == fingerprint
    with pytest.raises(PersonaAxisError, match="weight fingerprint"):
        bundle.load_model(other)  # the named model wins, and is checked
    with pytest.warns(BundleMismatchWarning):
        assert bundle.load_model(other, allow_mismatch=True).name == str(other)


def test_a_bundle_saved_before_the_split_loads_and_saves_the_same(tmp_path: Path) -> None:
    """tests/data/bundle-v1 was written by the single-module bundle (main at 6e93865)."""
    old = Path(__file__).parent / "data" / "bundle-v1"
    bundle = AxisBundle.load(old)
    generator = torch.Generator().manual_seed(21)
    for key in ("axis", "default", "role/pirate"):
        torch.testing.assert_close(bundle.vectors[key], torch.randn(4, 8, generator=generator))
    alt = torch.randn(8, generator=generator)
    assert (bundle.model_id, bundle.target_layer, bundle.recommended_cap) == (
        "tiny/old",
        2,
        "layers_1:3-p75",
    )
    [(layer, direction, floor)] = bundle.cap_floors("alt")
    assert (layer, floor) == (2, 1.5)
    torch.testing.assert_close(direction, alt / alt.norm())
    torch.testing.assert_close(bundle.mean_norms(), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    again = bundle.save(tmp_path / "again")
    for name in ("manifest.json", "caps.json"):
        assert (again / name).read_bytes() == (old / name).read_bytes()
    assert (
        load_file(again / "vectors.safetensors").keys()
        == load_file(old / "vectors.safetensors").keys()
    )


def test_a_manifest_with_the_old_names_loads_and_saves_with_todays(tmp_path: Path) -> None:
    """Bundles written before the renames stored the build's percentiles as ``calibration``
    (its layer ranges as ``bands``) and the monitor's benign profile as
    ``monitor_calibration``."""
    path = _bundle().save(tmp_path / "old")
    tables = {"percentiles": [1.0, 50.0], "per_response": [[0.1, 0.2]] * 6, "bands": [[3, 5]]}
    profile = {"format_version": 1, "layer": 3, "scale": 1.0}
    _edit_manifest(path, {"calibration": tables, "monitor_calibration": profile})
    loaded = AxisBundle.load(path)
    assert loaded.benign_profile == profile
    percentiles = loaded.projection_percentiles
    assert percentiles is not None and percentiles.percentiles == (1.0, 50.0)
    manifest = json.loads((loaded.save(tmp_path / "new") / "manifest.json").read_text())
    assert {"calibration", "monitor_calibration"}.isdisjoint(manifest)
    assert manifest["benign_profile"] == profile
    assert manifest["projection_percentiles"] == {
        "percentiles": [1.0, 50.0],
        "per_response": [[0.1, 0.2]] * 6,
        "cap_layer_ranges": [[3, 5]],
    }
