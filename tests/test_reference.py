"""The reference project's files: import (layouts, ceiling-to-floor conversion, safety) and
export in their layout (round trip, floor-to-ceiling)."""

from __future__ import annotations

import hashlib
import os
import shlex
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor

from persona_axis.axis.bundle import AxisBundle
from persona_axis.axis.calibrate import CapSetting, LayerThreshold
from persona_axis.axis.reference import (
    AXIS_FILE,
    CAPPING_FILE,
    DEFAULT_FILE,
    bundle_from_reference,
    export_reference,
    import_reference_capping,
    load_reference_axis,
)
from persona_axis.errors import PersonaAxisError
from persona_axis.models.layers import ModelShape

N_LAYERS, HIDDEN = 6, 16
SHAPE = ModelShape("LlamaForCausalLM", N_LAYERS, HIDDEN)


def _reference_ceiling(h: Tensor, v: Tensor, tau: float) -> Tensor:
    """The reference cap as its code computes it: ceiling along v / (|v| + 1e-8)."""
    direction = v / (v.norm() + 1e-8)
    excess = (h @ direction - tau).clamp(min=0.0)
    return h - excess[:, None] * direction


def _our_floor(h: Tensor, unit: Tensor, floor: float) -> Tensor:
    """docs/method.md: p = <h, u>; where p < floor, h += (floor - p) u."""
    shortfall = (floor - h @ unit).clamp(min=0.0)
    return h + shortfall[:, None] * unit


def _reference_config(axis: Tensor) -> tuple[dict, Tensor]:
    """A capping_config in the reference layout; layer 2 is -3.5 x axis, layer 3 is not."""
    noise = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(7))
    other = (-axis[3] / axis[3].norm() + 0.5 * noise / noise.norm()) * 9.0  # unnormalised
    name2, name3 = "layer_2/contrast_role_pos3_default1", "layer_3/contrast_role_pos3_default1"
    config = {
        "vectors": {
            name2: {"vector": -3.5 * axis[2], "layer": 2},
            name3: {"vector": other, "layer": 3},
        },
        "experiments": [
            {
                "id": "layers_2:4-p0.25",
                "interventions": [{"vector": name3, "cap": 1.25}, {"vector": name2, "cap": -0.5}],
            },
            {"id": "custom", "interventions": [{"vector": name3, "cap": torch.tensor(0.3)}]},
            {"id": "steer-only", "interventions": [{"vector": name2, "coeff": 2.0}]},
        ],
    }
    return config, other


def test_load_reference_axis_both_layouts(tmp_path: Path) -> None:
    axis = torch.randn(N_LAYERS, HIDDEN)
    torch.save(axis.to(torch.bfloat16), tmp_path / "bare.pt")
    torch.save({"axis": axis, "n_roles": 275, "default_mean": axis}, tmp_path / "dict.pt")
    torch.save({"vector": axis}, tmp_path / "wrong.pt")
    bare = load_reference_axis(tmp_path / "bare.pt")
    assert bare.dtype == torch.float32
    assert torch.equal(bare, axis.to(torch.bfloat16).float())
    assert torch.equal(load_reference_axis(tmp_path / "dict.pt"), axis)
    with pytest.raises(PersonaAxisError, match="without an entry 'axis'"):
        load_reference_axis(tmp_path / "wrong.pt")
    with pytest.raises(PersonaAxisError, match="No file"):
        load_reference_axis(tmp_path / "missing.pt")


def test_import_reference_capping_converts_names_and_directions(tmp_path: Path) -> None:
    axis = torch.randn(N_LAYERS, HIDDEN)
    config, other = _reference_config(axis)
    torch.save(config, tmp_path / "capping_config.pt")
    with pytest.warns(UserWarning, match="no cap interventions"):
        vectors, caps = import_reference_capping(tmp_path / "capping_config.pt", axis=axis)
    assert set(caps) == {"layers_2:4-p75", "custom"}
    setting = caps["layers_2:4-p75"]
    assert setting.percentile == 75.0
    assert setting.thresholds == (LayerThreshold(2, 0.5), LayerThreshold(3, -1.25))
    key3 = "capdir/layer_3/contrast_role_pos3_default1"
    assert setting.notes["direction_keys"] == ["axis", key3]
    assert setting.notes["reference_id"] == "layers_2:4-p0.25"
    assert set(vectors) == {key3}
    assert torch.allclose(vectors[key3], -other / other.norm())
    assert caps["custom"].percentile is None
    (only,) = caps["custom"].thresholds
    assert only.layer == 3
    assert only.threshold == pytest.approx(-0.3)


def test_imported_floor_equals_reference_ceiling(tmp_path: Path) -> None:
    axis = torch.randn(N_LAYERS, HIDDEN)
    config, _ = _reference_config(axis)
    torch.save(config, tmp_path / "capping_config.pt")
    torch.save(axis, tmp_path / "assistant_axis.pt")
    with pytest.warns(UserWarning):
        bundle = bundle_from_reference(
            tmp_path / "assistant_axis.pt",
            tmp_path / "capping_config.pt",
            model_shape=SHAPE,
            model_id="tiny",
        )
    bundle = AxisBundle.load(bundle.save(tmp_path / "bundle"))
    reference = {iv["vector"]: iv["cap"] for iv in config["experiments"][0]["interventions"]}
    by_layer = {entry["layer"]: name for name, entry in config["vectors"].items()}
    h = torch.randn(500, HIDDEN) * 3.0
    floors = bundle.cap_floors("layers_2:4-p75")
    assert [layer for layer, _, _ in floors] == [2, 3]
    for layer, unit, floor in floors:
        name = by_layer[layer]
        expected = _reference_ceiling(h, config["vectors"][name]["vector"], reference[name])
        ours = _our_floor(h, unit, floor)
        changed = (expected - h).abs().amax(dim=1) > 1e-4
        assert 50 < int(changed.sum()) < 450  # the cap bites on part of the batch only
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_from_reference_records_provenance(tmp_path: Path) -> None:
    axis = torch.randn(N_LAYERS, HIDDEN)
    torch.save(axis, tmp_path / "assistant_axis.pt")
    torch.save(axis * 0.5, tmp_path / "default_vector.pt")
    bundle = bundle_from_reference(
        tmp_path / "assistant_axis.pt",
        model_shape=SHAPE,
        model_id="Qwen/Qwen3-32B",
        default_path=tmp_path / "default_vector.pt",
    )
    files = bundle.manifest["imported_from"]["files"]
    assert set(files) == {"axis", "default"}
    digest = hashlib.sha256((tmp_path / "assistant_axis.pt").read_bytes()).hexdigest()
    assert files["axis"]["sha256"] == digest
    assert torch.equal(bundle.default, axis * 0.5)
    wrong = ModelShape("Qwen3ForCausalLM", N_LAYERS + 1, HIDDEN)
    with pytest.raises(PersonaAxisError, match="belongs to a different model"):
        bundle_from_reference(tmp_path / "assistant_axis.pt", model_shape=wrong, model_id="x")


def test_vector_toward_the_assistant_is_converted_with_a_warning(tmp_path: Path) -> None:
    axis = torch.randn(N_LAYERS, HIDDEN)
    config = {
        "vectors": {"up": {"vector": 2.0 * axis[1], "layer": 1}},
        "experiments": [{"id": "odd", "interventions": [{"vector": "up", "cap": 4.0}]}],
    }
    torch.save(config, tmp_path / "capping_config.pt")
    with pytest.warns(UserWarning, match="points toward the Assistant"):
        vectors, caps = import_reference_capping(tmp_path / "capping_config.pt", axis=axis)
    assert caps["odd"].thresholds == (LayerThreshold(1, -4.0),)
    assert torch.allclose(vectors["capdir/up"], -axis[1] / axis[1].norm())


def test_capping_config_for_another_model_is_refused(tmp_path: Path) -> None:
    axis = torch.randn(N_LAYERS, HIDDEN)
    config, _ = _reference_config(axis)
    torch.save(config, tmp_path / "capping_config.pt")
    with pytest.raises(PersonaAxisError, match="hidden size"):
        import_reference_capping(tmp_path / "capping_config.pt", axis=torch.randn(N_LAYERS, 8))
    torch.save({"experiments": []}, tmp_path / "not_config.pt")
    with pytest.raises(PersonaAxisError, match="not a reference capping config"):
        import_reference_capping(tmp_path / "not_config.pt")


class _Payload:
    """Pickles into a call of os.system: unpickling it would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    # The payload is live: calling what it reduces to does create a file.
    control = tmp_path / "control"
    function, args = _Payload(control).__reduce__()
    function(*args)
    assert control.exists()

    marker = tmp_path / "pwned"
    axis = torch.randn(N_LAYERS, HIDDEN)
    torch.save({"axis": axis, "extra": _Payload(marker)}, tmp_path / "assistant_axis.pt")
    torch.save(
        {
            "vectors": {"v": {"vector": axis[0], "layer": 0, "x": _Payload(marker)}},
            "experiments": [],
        },
        tmp_path / "capping_config.pt",
    )
    with pytest.raises(PersonaAxisError, match="weights_only"):
        load_reference_axis(tmp_path / "assistant_axis.pt")
    with pytest.raises(PersonaAxisError, match="Refused to load"):
        import_reference_capping(tmp_path / "capping_config.pt")
    with pytest.raises(PersonaAxisError, match="Refused to load"):
        bundle_from_reference(tmp_path / "assistant_axis.pt", model_shape=SHAPE, model_id="x")
    assert not marker.exists()


def test_damaged_reference_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "axis.pt").write_bytes(b"this is not a torch file")
    with pytest.raises(PersonaAxisError, match="download it again"):
        load_reference_axis(tmp_path / "axis.pt")


def test_export_reference_round_trips_axis_default_and_caps(tmp_path: Path) -> None:
    axis = torch.randn(N_LAYERS, HIDDEN)
    config, _ = _reference_config(axis)
    torch.save(config, tmp_path / "capping_config.pt")
    torch.save(axis, tmp_path / "assistant_axis.pt")
    torch.save(axis * 0.5, tmp_path / "default_vector.pt")
    with pytest.warns(UserWarning):
        imported = bundle_from_reference(
            tmp_path / "assistant_axis.pt",
            tmp_path / "capping_config.pt",
            model_shape=SHAPE,
            model_id="tiny",
            default_path=tmp_path / "default_vector.pt",
        )
    ours = CapSetting("layers_1:3-p90", (LayerThreshold(1, 0.25), LayerThreshold(2, -0.75)), 90.0)
    imported.add_cap(ours)
    out = tmp_path / "exported"
    paths = export_reference(imported, out)
    assert sorted(p.name for p in paths) == sorted([AXIS_FILE, DEFAULT_FILE, CAPPING_FILE])
    exported = torch.load(out / CAPPING_FILE, weights_only=True)  # plain tensors and containers
    ids = [experiment["id"] for experiment in exported["experiments"]]
    assert ids == ["custom", "layers_1:3-p0.1", "layers_2:4-p0.25"]  # by our name; original ids
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the export holds only caps: nothing to skip or warn on
        again = bundle_from_reference(
            out / AXIS_FILE,
            out / CAPPING_FILE,
            model_shape=SHAPE,
            model_id="tiny",
            default_path=out / DEFAULT_FILE,
        )
    assert torch.equal(again.axis, imported.axis)
    assert torch.equal(again.default, imported.default)
    assert set(again.caps) == set(imported.caps) == {"layers_2:4-p75", "custom", "layers_1:3-p90"}
    for name, setting in imported.caps.items():
        assert again.caps[name].percentile == setting.percentile
        for (l1, u1, f1), (l2, u2, f2) in zip(
            again.cap_floors(name), imported.cap_floors(name), strict=True
        ):
            assert l1 == l2 and f1 == pytest.approx(f2)
            torch.testing.assert_close(u1, u2)


def test_exported_ceiling_equals_our_floor(tmp_path: Path) -> None:
    axis = torch.randn(N_LAYERS, HIDDEN) * 4
    setting = CapSetting("layers_2:4-p75", (LayerThreshold(2, 0.5), LayerThreshold(3, -1.0)), 75.0)
    bundle = AxisBundle.create(
        {"axis": axis}, model_shape=SHAPE, model_id="x", caps={setting.name: setting}
    )
    paths = export_reference(bundle, tmp_path)
    assert [p.name for p in paths] == [AXIS_FILE, CAPPING_FILE]  # no default vector to write
    config = torch.load(tmp_path / CAPPING_FILE, weights_only=True)
    h = torch.randn(400, HIDDEN) * 3.0
    (experiment,) = config["experiments"]
    assert experiment["id"] == "layers_2:4-p0.25"
    for intervention, (layer, unit, floor) in zip(
        experiment["interventions"], bundle.cap_floors(setting.name), strict=True
    ):
        entry = config["vectors"][intervention["vector"]]
        assert entry["layer"] == layer
        torch.testing.assert_close(entry["vector"], -axis[layer])  # role - default, unnormalised
        expected = _reference_ceiling(h, entry["vector"], intervention["cap"])
        torch.testing.assert_close(_our_floor(h, unit, floor), expected, atol=1e-5, rtol=1e-5)


def test_export_reference_refuses_a_file_as_folder(tmp_path: Path) -> None:
    bundle = AxisBundle.create(
        {"axis": torch.randn(N_LAYERS, HIDDEN)}, model_shape=SHAPE, model_id="x"
    )
    (tmp_path / "file").write_text("x")
    with pytest.raises(PersonaAxisError, match="is a file"):
        export_reference(bundle, tmp_path / "file")
