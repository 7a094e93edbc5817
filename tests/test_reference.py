"""Import of the reference project's files: layouts, ceiling-to-floor conversion, safety."""

from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

import pytest
import torch
from torch import Tensor

from persona_axis.axis.bundle import AxisBundle
from persona_axis.axis.calibrate import LayerThreshold
from persona_axis.axis.reference import (
    bundle_from_reference,
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
