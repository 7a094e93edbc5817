"""The format registry (persona_axis.axis.interchange) called from Python: export and import in
both formats, which exports need the model, and the sources each format refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from persona_axis.axis.interchange import (
    CONTROL_VECTOR,
    REFERENCE,
    ImportSources,
    export_axis,
    export_needs_model,
    import_axis,
)
from persona_axis.errors import PersonaAxisError
from persona_axis.models.layers import ModelShape
from support.bundles import make_bundle

SHAPE = ModelShape("LlamaForCausalLM", 6, 16)


def test_round_trips_through_both_formats(tmp_path: Path) -> None:
    bundle = make_bundle(SHAPE, default=0.3, mean_norm=2.0)
    assert not export_needs_model(bundle, CONTROL_VECTOR)
    assert export_needs_model(make_bundle(SHAPE), CONTROL_VECTOR)
    assert not export_needs_model(make_bundle(SHAPE), REFERENCE)

    paths = export_axis(bundle, REFERENCE, tmp_path / "ref")
    axis_file = next(p for p in paths if p.name == "assistant_axis.pt")
    back = import_axis(REFERENCE, ImportSources(axis=axis_file), model_shape=SHAPE, model_id="tiny")
    assert torch.allclose(back.axis, bundle.axis)

    (gguf,) = export_axis(bundle, CONTROL_VECTOR, tmp_path / "v.gguf", layers=[2, 3], scale=0.5)
    back = import_axis(CONTROL_VECTOR, ImportSources(file=gguf), model_shape=SHAPE, model_id="tiny")
    assert back.axis_layers == [2, 3]
    unit = torch.nn.functional.normalize
    assert torch.allclose(unit(back.axis[2], dim=0), unit(bundle.axis[2], dim=0), atol=1e-6)


def test_refusals(tmp_path: Path) -> None:
    bundle = make_bundle(SHAPE, mean_norm=2.0)
    with pytest.raises(PersonaAxisError, match="Unknown format 'onnx'"):
        export_axis(bundle, "onnx", tmp_path / "x")
    with pytest.raises(PersonaAxisError, match="apply to --format gguf-control-vector only"):
        export_axis(bundle, REFERENCE, tmp_path / "x", scale=2.0)
    with pytest.raises(PersonaAxisError, match="belong to --format reference"):
        ImportSources(file=tmp_path / "v.gguf", axis=tmp_path / "a.pt").check(CONTROL_VECTOR)
    with pytest.raises(PersonaAxisError, match="Give the control vector file"):
        ImportSources().check(CONTROL_VECTOR)
    with pytest.raises(PersonaAxisError, match="takes its files as options"):
        ImportSources(file=tmp_path / "v.gguf").check(REFERENCE)
    with pytest.raises(PersonaAxisError, match="needs --axis"):
        import_axis(REFERENCE, ImportSources(), model_shape=SHAPE, model_id="tiny")
