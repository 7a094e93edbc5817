"""llama.cpp control vectors: what llama.cpp's loader requires, the layer numbering measured
against it (docs/interchange.md), the units of SCALE, and bundles from control vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from torch import Tensor

from persona_axis.axis.bundle import MEAN_NORM_KEY, AxisBundle
from persona_axis.axis.control_vector import (
    KEY_FINGERPRINT,
    KEY_MEAN_NORMS,
    KEY_MULTIPLE,
    KEY_SCALE_MEANING,
    KEY_TARGET_LAYER,
    bundle_from_control_vector,
    export_control_vector,
    read_control_vector,
    write_control_vector,
)
from persona_axis.drift.monitor import default_extra_layers
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.hooks import block_output
from persona_axis.inference.interventions import intervene
from persona_axis.inference.telemetry import record_projections
from persona_axis.models.layers import ModelShape
from support.bundles import make_bundle
from support.tiny_models import HIDDEN, N_LAYERS, tiny_lm

D = 16
SHAPE = ModelShape("LlamaForCausalLM", 6, D)


def _vectors(*layers: int, d: int = D, seed: int = 0) -> dict[int, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {layer: torch.randn(d, generator=generator) * 3.0 for layer in layers}


def _raw(path: Path, tensors: dict[str, np.ndarray], arch: str = "controlvector") -> Path:
    """A GGUF file written without our writer's checks (what other producers may write)."""
    writer = GGUFWriter(path, arch)
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_int32("controlvector.layer_count", len(tensors))
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _llamacpp_layers(path: Path, n_layer: int, scale: float = 1.0) -> dict[int, np.ndarray]:
    """What llama.cpp adds at each block ``il``, transcribed from its source (docs/interchange.md):
    ``common_control_vector_load_one`` puts ``direction.N · SCALE`` into row ``N − 1`` of a flat
    buffer; ``llama_adapter_cvec::apply`` copies row ``il − 1`` into ``tensors[il]`` for
    ``il = 1 … n_layer − 1``; ``build_cvec(cur, il)`` adds ``tensors[il]`` to block il's output."""
    reader = GGUFReader(path)
    n_embd, buffer = -1, np.zeros(0, dtype=np.float32)
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        assert prefix == "direction"
        layer_idx = int(index)
        assert layer_idx > 0  # the loader's "invalid (zero) direction tensor layer index"
        assert tensor.tensor_type == GGMLQuantizationType.F32
        assert len(tensor.shape) == 1
        n_embd = int(tensor.n_elements) if n_embd == -1 else n_embd
        assert tensor.n_elements == n_embd
        if buffer.size < n_embd * layer_idx:
            grown = np.zeros(n_embd * layer_idx, dtype=np.float32)
            grown[: buffer.size] = buffer
            buffer = grown
        buffer[n_embd * (layer_idx - 1) : n_embd * layer_idx] += tensor.data * scale
    return {
        il: buffer[n_embd * (il - 1) : n_embd * il]
        for il in range(1, n_layer)
        if n_embd * il <= buffer.size
    }


def _bundle(shape: ModelShape = SHAPE, *, seed: int = 0, fingerprint: str | None = None):
    norms = torch.rand(shape.n_layers, generator=torch.Generator().manual_seed(seed + 1)) * 10 + 1
    return make_bundle(shape, seed=seed, mean_norm=norms, fingerprint=fingerprint)


# -- the file format ----------------------------------------------------------------------------


def test_round_trip_keeps_layers_values_and_metadata(tmp_path: Path) -> None:
    directions = _vectors(5, 1, 4)
    path = write_control_vector(
        tmp_path / "cv.gguf", directions, model_hint="llama", metadata={"persona_axis.x": 0.1}
    )
    read, meta = read_control_vector(path)
    assert list(read) == [1, 4, 5]
    for layer, vector in directions.items():
        assert read[layer].dtype == torch.float32
        assert torch.equal(read[layer], vector)
    assert meta["general.architecture"] == "controlvector"
    assert meta["controlvector.model_hint"] == "llama"
    assert meta["controlvector.layer_count"] == 3
    assert meta["persona_axis.x"] == 0.1


def test_structure_is_what_the_llamacpp_loader_requires(tmp_path: Path) -> None:
    path = write_control_vector(tmp_path / "cv.gguf", _vectors(2, 7), model_hint="llama")
    assert path.read_bytes()[:4] == b"GGUF"
    reader = GGUFReader(path)
    kinds = {
        "general.architecture": GGUFValueType.STRING,
        "controlvector.model_hint": GGUFValueType.STRING,
        "controlvector.layer_count": GGUFValueType.INT32,  # as llama-cvector-generator writes
    }
    for key, kind in kinds.items():
        assert reader.fields[key].types == [kind]
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert [t.name for t in reader.tensors] == ["direction.2", "direction.7"]
    for tensor in reader.tensors:
        assert tensor.tensor_type == GGMLQuantizationType.F32
        assert [int(n) for n in tensor.shape] == [D]  # 1-D, ne[0] = n_embd


def test_our_layer_l_reaches_llamacpp_block_l(tmp_path: Path) -> None:
    """Measured against llama.cpp (docs/interchange.md): our layer L must land in tensors[L],
    which build_cvec adds to block L's output; unnamed layers get zeros."""
    directions = _vectors(3, 4)
    path = write_control_vector(tmp_path / "cv.gguf", directions, model_hint="llama")
    added = _llamacpp_layers(path, n_layer=6, scale=-0.5)
    assert set(added) == {1, 2, 3, 4}
    assert not added[1].any() and not added[2].any()
    for layer, vector in directions.items():
        np.testing.assert_allclose(added[layer], -0.5 * vector.numpy())


@pytest.mark.parametrize(
    ("directions", "n_layers", "message"),
    [
        ({}, None, "No layers"),
        ({0: torch.ones(D), 3: torch.ones(D)}, None, "Layer 0 cannot be written"),
        ({-1: torch.ones(D)}, None, "negative"),
        ({6: torch.ones(D)}, 6, "outside the model's 6 layers"),
        ({1: torch.ones(D), 2: torch.ones(D + 1)}, None, "different sizes"),
        ({1: torch.ones(2, D)}, None, "1-D"),
        ({1: torch.full((D,), float("nan"))}, None, "NaN"),
        ({True: torch.ones(D)}, None, "integers"),
    ],
)
def test_write_refuses(tmp_path: Path, directions, n_layers, message: str) -> None:
    with pytest.raises(PersonaAxisError, match=message):
        write_control_vector(tmp_path / "cv.gguf", directions, model_hint="x", n_layers=n_layers)
    assert not (tmp_path / "cv.gguf").exists()


def _f32(n: int = D) -> np.ndarray:
    return np.ones(n, dtype=np.float32)


@pytest.mark.parametrize(
    ("tensors", "arch", "message"),
    [
        ({"direction.1": _f32()}, "llama", "not a control vector"),
        ({"direction.0": _f32()}, "controlvector", "layer 0"),
        ({"direction.3": _f32(), "direction.03": _f32()}, "controlvector", "repeats layer 3"),
        ({"direction.1": _f32(), "direction.2": _f32(D + 2)}, "controlvector", "the others"),
        ({"direction.1": _f32().astype(np.float16)}, "controlvector", "needs F32"),
        ({"direction.1": np.ones((2, D), np.float32)}, "controlvector", "1-D"),
        ({"blk.0.attn_q.weight": _f32()}, "controlvector", "direction.<layer>"),
        ({"direction.+3": _f32()}, "controlvector", "direction.<layer>"),
        ({"direction.2": np.full(D, np.inf, np.float32)}, "controlvector", "infinite"),
        ({}, "controlvector", "no direction tensors"),
    ],
)
def test_read_refuses(tmp_path: Path, tensors: dict, arch: str, message: str) -> None:
    path = _raw(tmp_path / "bad.gguf", tensors, arch=arch)
    with pytest.raises(PersonaAxisError, match=message):
        read_control_vector(path)


def test_read_refuses_what_is_not_gguf(tmp_path: Path) -> None:
    (tmp_path / "not.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(PersonaAxisError, match="not a readable GGUF"):
        read_control_vector(tmp_path / "not.gguf")
    with pytest.raises(PersonaAxisError, match="No file"):
        read_control_vector(tmp_path / "missing.gguf")


def test_read_a_cvector_generator_file(tmp_path: Path) -> None:
    """llama-cvector-generator writes layers 1..n-1 and layer_count = n - 1."""
    tensors = {f"direction.{i}": np.full(D, i, np.float32) for i in range(1, 30)}
    read, meta = read_control_vector(_raw(tmp_path / "gen.gguf", tensors))
    assert list(read) == list(range(1, 30))
    assert float(read[17][0]) == 17.0
    assert meta["controlvector.layer_count"] == 29


# -- export: units and layers -------------------------------------------------------------------


def test_export_writes_multiple_times_mean_norm_times_unit_axis(tmp_path: Path) -> None:
    bundle = _bundle(fingerprint="sha256:abc")
    path = export_control_vector(bundle, tmp_path / "cv.gguf", layers=[1, 4], multiple=0.5)
    read, meta = read_control_vector(path)
    assert list(read) == [1, 4]
    norms = bundle.mean_norms()
    for layer in (1, 4):
        expected = 0.5 * norms[layer] * bundle.unit_axis(layer)
        torch.testing.assert_close(read[layer], expected)
        assert float(read[layer].norm()) == pytest.approx(0.5 * float(norms[layer]), rel=1e-5)
    assert meta[KEY_MULTIPLE] == 0.5
    assert meta[KEY_MEAN_NORMS] == pytest.approx([float(norms[1]), float(norms[4])])
    assert "SCALE s adds s * 0.5 * mean_norm_L * unit_axis_L" in meta[KEY_SCALE_MEANING]
    assert meta[KEY_FINGERPRINT] == "sha256:abc"
    assert meta["controlvector.model_hint"] == "tiny"


def test_export_defaults_to_the_target_layer_and_refuses_layer_zero(tmp_path: Path) -> None:
    bundle = _bundle()
    read, meta = read_control_vector(export_control_vector(bundle, tmp_path / "cv.gguf"))
    assert list(read) == [bundle.target_layer] == [3]
    assert meta[KEY_TARGET_LAYER] == 3
    with pytest.raises(PersonaAxisError, match=r"Layer 0 cannot be exported.*--layers 1:6"):
        export_control_vector(bundle, tmp_path / "zero.gguf", layers=[0, 1])
    with pytest.raises(PersonaAxisError, match="non-zero finite"):
        export_control_vector(bundle, tmp_path / "zero.gguf", multiple=0.0)
    assert not (tmp_path / "zero.gguf").exists()


def test_export_needs_mean_norms_or_the_model(tmp_path: Path) -> None:
    bundle = AxisBundle.create({"axis": torch.randn(6, D)}, model_shape=SHAPE, model_id="x")
    with pytest.raises(PersonaAxisError, match="pass the model"):
        export_control_vector(bundle, tmp_path / "cv.gguf")


def test_scale_in_llamacpp_equals_our_steer(tmp_path: Path) -> None:
    """SCALE s on an exported file adds what ``bundle.intervention(steer=s)`` adds: the
    llama.cpp transcription, applied as a hook on block L, gives the same logits."""
    lm = tiny_lm("llama")
    shape = ModelShape("LlamaForCausalLM", N_LAYERS, HIDDEN)
    bundle = _bundle(shape, seed=3)
    ids = torch.tensor([[1, 5, 9, 200, 31, 7]])
    with torch.no_grad():
        plain = lm.model(ids).logits
        with intervene(lm, bundle.intervention(steer=-1.5)):
            ours = lm.model(ids).logits
    path = export_control_vector(bundle, tmp_path / "cv.gguf")
    added = _llamacpp_layers(path, n_layer=N_LAYERS, scale=-1.5)
    layer = bundle.target_layer
    vector = torch.from_numpy(added[layer].copy())

    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (block_output(output) + vector, *output[1:])
        return output + vector

    handle = lm.stack.layers[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            theirs = lm.model(ids).logits
    finally:
        handle.remove()
    assert (ours - plain).abs().max() > 1e-2  # the steering does something
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


# -- import: a bundle from a control vector -----------------------------------------------------


def test_import_of_our_export_is_usable_at_its_layers_only(tmp_path: Path) -> None:
    bundle = _bundle(fingerprint="sha256:abc")
    path = export_control_vector(bundle, tmp_path / "cv.gguf", layers=[2, 3], multiple=2.0)
    imported = bundle_from_control_vector(path, model_shape=SHAPE, model_id="tiny")
    assert imported.axis_layers == [2, 3]
    assert imported.target_layer == 3
    assert imported.fingerprint == "sha256:abc"  # carried: the bundle refuses other weights
    for layer in (2, 3):
        torch.testing.assert_close(imported.unit_axis(layer), bundle.unit_axis(layer))
        assert float(imported.mean_norms()[layer]) == pytest.approx(
            float(bundle.mean_norms()[layer])
        )
    for layer in (0, 1, 4, 5):  # absent: zero rows, refused wherever a direction is needed
        assert not imported.axis[layer].any()
        with pytest.raises(PersonaAxisError, match="zero"):
            imported.unit_axis(layer)
    assert imported.manifest["imported_from"]["layers"] == [2, 3]
    saved = AxisBundle.load(imported.save(tmp_path / "bundle"))
    again = export_control_vector(saved, tmp_path / "again.gguf", layers=[2, 3], multiple=2.0)
    first, second = read_control_vector(path)[0], read_control_vector(again)[0]
    for layer in (2, 3):
        torch.testing.assert_close(second[layer], first[layer])
    with pytest.raises(PersonaAxisError, match="zero"):
        export_control_vector(saved, tmp_path / "absent.gguf", layers=[4])


def test_import_of_a_foreign_file_picks_the_layer_nearest_the_middle(tmp_path: Path) -> None:
    path = _raw(tmp_path / "gen.gguf", {"direction.1": _f32(), "direction.4": _f32() * 2})
    imported = bundle_from_control_vector(path, model_shape=SHAPE, model_id="x")
    assert imported.target_layer == 4  # nearest n_layers // 2 = 3; ties go to the lower layer
    assert MEAN_NORM_KEY not in imported.vectors  # steering estimates norms on the model
    assert imported.fingerprint is None
    tie = _raw(tmp_path / "tie.gguf", {"direction.2": _f32(), "direction.4": _f32()})
    assert bundle_from_control_vector(tie, model_shape=SHAPE, model_id="x").target_layer == 2


@pytest.mark.parametrize(
    ("shape", "fingerprint", "message"),
    [
        (ModelShape("LlamaForCausalLM", 6, D + 1), None, "hidden size is 17"),
        (ModelShape("LlamaForCausalLM", 3, D), None, r"steers layers \[3\]"),
        (SHAPE, "sha256:other", "exported for weights sha256:abc"),
    ],
)
def test_import_refuses_a_file_for_another_model(tmp_path: Path, shape, fingerprint, message):
    path = export_control_vector(
        _bundle(fingerprint="sha256:abc"), tmp_path / "cv.gguf", layers=[1, 3]
    )
    with pytest.raises(PersonaAxisError, match=message):
        bundle_from_control_vector(path, model_shape=shape, model_id="x", fingerprint=fingerprint)


def test_an_imported_partial_axis_monitors_at_its_layers_and_refuses_others(tmp_path) -> None:
    lm = tiny_lm("llama")
    shape = ModelShape("LlamaForCausalLM", N_LAYERS, HIDDEN)
    path = export_control_vector(_bundle(shape), tmp_path / "cv.gguf", layers=[1, 2])
    imported = bundle_from_control_vector(path, model_shape=shape, model_id="tiny")
    assert imported.target_layer == 2
    assert default_extra_layers(imported) == [1, 2]  # the target ± 2, where the axis is defined
    ids = torch.tensor([[1, 5, 9, 200]])
    with record_projections(lm, imported.axis, [1, 2]) as log, torch.no_grad():
        lm.model(ids)
    assert torch.isfinite(log.all_positions()).all()
    with (
        pytest.raises(PersonaAxisError, match=r"zero at layers \[3\]"),
        record_projections(lm, imported.axis, [2, 3]),
    ):
        pass
    assert imported.intervention(steer=1.0).layers == [2]  # the exported mean norm is kept
    imported.manifest["target_layer"] = 3
    with pytest.raises(PersonaAxisError, match="zero"):
        imported.intervention(steer=1.0)
