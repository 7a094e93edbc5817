"""The reference project's published files (github ``safety-research/assistant-axis``): import
them into a bundle, and export a bundle in their layout.

Everything is read with ``torch.load(weights_only=True)``: tensors and plain containers only,
never other pickled objects (which could run code). :func:`export_reference` writes only tensors
and plain containers, so its files load the same way.

Facts from the reference project (read, not copied):

- ``assistant_axis.pt`` holds the axis [n_layers, d], either as a bare tensor (the published
  files) or as a dict with key "axis". Same orientation as ours: default minus role means,
  + = more Assistant-like.
- ``default_vector.pt`` / role vectors: a bare tensor [n_layers, d], or a dict
  ``{"vector": tensor, "type": ..., "role": ...}``.
- ``capping_config.pt``: ``{"vectors": {name: {"vector": tensor [d], "layer": int}},
  "experiments": [{"id": "layers_46:54-p0.25", "interventions": [{"vector": name,
  "cap": float}, ...]}]}``; interventions without "cap" are not caps and are skipped there too.
  The stored vectors point along role − default (the negated axis), possibly unnormalised.
- Their cap is a CEILING along v̂ = v / (‖v‖ + 1e-8): p = <h, v̂>; h ← h − max(p − τ, 0)·v̂.
  With u = −v/‖v‖ this is exactly our floor ``<h, u> ≥ −τ``, up to the 1e-8 in their
  denominator (a relative 1e-8/‖v‖, below float32 resolution for any real vector). Their
  "p0.25" is the 25th percentile along role − default, i.e. the 75th percentile along +axis.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from persona_axis import files
from persona_axis.axis.bundle import DIRECTION_KEYS_NOTE, AxisBundle
from persona_axis.axis.calibrate import CapSetting, LayerThreshold, setting_name
from persona_axis.errors import PersonaAxisError
from persona_axis.models.layers import ModelShape

# -- import from the reference project ---------------------------------------------------------
#
REFERENCE_PROJECT = "github.com/safety-research/assistant-axis"
CAP_DIRECTION_PREFIX = "capdir/"
SAME_DIRECTION_TOL = 1e-8
AXIS_FILE = "assistant_axis.pt"
DEFAULT_FILE = "default_vector.pt"
CAPPING_FILE = "capping_config.pt"
_REFERENCE_ID = re.compile(r"layers_(\d+):(\d+)-p(\d+(?:\.\d+)?)")
_OUR_NAME = re.compile(r"(layers_\d+:\d+)-p(\d+(?:\.\d+)?)")


def bundle_from_reference(
    axis_path: str | os.PathLike[str],
    capping_path: str | os.PathLike[str] | None = None,
    *,
    model_shape: ModelShape,
    model_id: str | None,
    default_path: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    fingerprint: str | None = None,
    target_layer: int | None = None,
    extras: Mapping[str, Any] | None = None,
) -> AxisBundle:
    """A bundle from the reference project's ``assistant_axis.pt`` (and capping config).

    Thresholds are converted to floors (see :func:`import_reference_capping`); the manifest
    records the source files and their sha256. The reference's own target layer for Gemma 2
    27B is 22, not ``n_layers // 2``: pass ``target_layer`` where it matters.
    """
    axis = _fitting(load_reference_axis(axis_path), axis_path, model_shape)
    vectors: dict[str, Tensor] = {"axis": axis}
    sources = {"axis": file_record(axis_path)}
    if default_path is not None:
        vectors["default"] = _fitting(
            load_reference_vector(default_path), default_path, model_shape
        )
        sources["default"] = file_record(default_path)
    caps: dict[str, CapSetting] = {}
    if capping_path is not None:
        directions, caps = import_reference_capping(capping_path, axis=axis)
        vectors.update(directions)
        sources["capping"] = file_record(capping_path)
    provenance = {"imported_from": {"project": REFERENCE_PROJECT, "files": sources}}
    return AxisBundle.create(
        vectors,
        model_shape=model_shape,
        model_id=model_id,
        revision=revision,
        fingerprint=fingerprint,
        target_layer=target_layer,
        caps=caps,
        extras={**provenance, **dict(extras or {})},
    )


def _fitting(matrix: Tensor, path: str | os.PathLike[str], shape: ModelShape) -> Tensor:
    """``matrix`` when it is [n_layers, hidden_size] of the model ``shape``; else a clear error."""
    if tuple(matrix.shape) != (shape.n_layers, shape.hidden_size):
        raise PersonaAxisError(
            f"{path} holds a [{matrix.shape[0]}, {matrix.shape[1]}] tensor, but the model "
            f"({shape.architecture}) has {shape.n_layers} layers and hidden size "
            f"{shape.hidden_size}: the file belongs to a different model. Pass the model it was "
            "computed for (--model)."
        )
    return matrix


def load_reference_axis(path: str | os.PathLike[str]) -> Tensor:
    """The reference ``assistant_axis.pt`` as a float32 [n_layers, d] tensor (+ = Assistant)."""
    return _load_matrix(path, "axis", "the reference assistant_axis.pt")


def load_reference_vector(path: str | os.PathLike[str]) -> Tensor:
    """A reference default or role vector (bare tensor or ``{"vector": ...}``), [n_layers, d]."""
    return _load_matrix(path, "vector", "a reference role or default vector file")


def _load_matrix(path: str | os.PathLike[str], key: str, expected: str) -> Tensor:
    """A bare [n_layers, d] tensor, or the entry ``key`` of a dict holding one."""
    data = _safe_torch_load(path)
    if isinstance(data, dict):
        if key not in data:
            raise PersonaAxisError(
                f"{path} holds a dict without an entry {key!r} (keys: "
                f"{sorted(map(str, data))}); pass {expected}."
            )
        data = data[key]
    return _reference_matrix(data, path)


def import_reference_capping(
    path: str | os.PathLike[str],
    *,
    axis: Tensor | None = None,
    n_layers: int | None = None,
    hidden_size: int | None = None,
    same_direction_tol: float = SAME_DIRECTION_TOL,
) -> tuple[dict[str, Tensor], dict[str, CapSetting]]:
    """Convert a reference ``capping_config.pt`` into floor cap settings.

    Each intervention "ceiling τ along v at layer L" becomes a floor ``−τ`` along ``u = −v/‖v‖``
    at layer L. Where ``u`` is the unit ``axis[L]`` (1 − cos ≤ ``same_direction_tol``) the
    setting uses the bundle axis; otherwise ``u`` is returned as vector
    ``capdir/<reference vector name>`` [d] (unit, float32) and named in the setting's
    ``notes["direction_keys"]``. Without ``axis`` every direction is returned.

    Settings are renamed to our convention where the id parses and its layer range matches the
    interventions: ``layers_46:54-p0.25`` → ``layers_46:54-p75`` (a p-value ≤ 1 is a fraction
    along role − default, the reference's spelling). Other ids are kept verbatim.

    Returns ``(vectors, caps)``: the direction vectors to add to a bundle, and name → setting.
    """
    data = _safe_torch_load(path)
    if not (
        isinstance(data, dict)
        and isinstance(data.get("vectors"), dict)
        and isinstance(data.get("experiments"), list)
    ):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise PersonaAxisError(
            f"{path} is not a reference capping config: expected a dict with 'vectors' (name -> "
            "{'vector', 'layer'}) and 'experiments' (list); found " + f"{found}."
        )
    if axis is not None:
        if axis.ndim != 2:
            raise PersonaAxisError(f"axis must be [n_layers, d]; got {tuple(axis.shape)}.")
        n_layers, hidden_size = int(axis.shape[0]), int(axis.shape[1])
    directions = {
        str(name): _reference_direction(str(name), entry, n_layers, hidden_size, path)
        for name, entry in data["vectors"].items()
    }
    vectors: dict[str, Tensor] = {}
    caps: dict[str, CapSetting] = {}
    for index, experiment in enumerate(data["experiments"]):
        setting, used = _reference_setting(index, experiment, directions, axis, same_direction_tol)
        if setting is None:
            continue
        if setting.name in caps:
            raise PersonaAxisError(
                f"{path}: two experiments map to the cap setting name {setting.name!r}; "
                "rename one experiment id in the reference file."
            )
        caps[setting.name] = setting
        vectors.update(used)
    return vectors, caps


# -- export in the reference layout ------------------------------------------------------------


def export_reference(bundle: AxisBundle, directory: str | os.PathLike[str]) -> list[Path]:
    """Write ``bundle`` in the reference project's layout into ``directory``; returns the paths.

    - ``assistant_axis.pt``: the axis, a bare float32 tensor [n_layers, d] (+ = Assistant).
    - ``default_vector.pt``: the default vector [n_layers, d], when the bundle has one.
    - ``capping_config.pt``: every cap setting, when there are any, as reference ceilings: our
      floor ``τ`` along ``u`` becomes the ceiling ``−τ`` along ``v = −u``. ``v`` is the negated
      unnormalised axis row where the setting caps along the axis (as the reference stores
      role − default), else ``−u``. Setting ``layers_A:B-pP`` gets the id
      ``layers_A:B-p{(100 − P)/100}`` (the reference counts along role − default), or its
      original reference id when it was imported.

    :func:`bundle_from_reference` reads the three files back into an equal bundle.
    """
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise PersonaAxisError(f"{target} is a file; pass a directory for the reference files.")
    contents: dict[str, Any] = {AXIS_FILE: bundle.axis.clone()}
    if "default" in bundle.vectors:
        contents[DEFAULT_FILE] = bundle.default.clone()
    if bundle.caps:
        contents[CAPPING_FILE] = _reference_capping(bundle)
    return [
        files.write_atomic(target / name, partial(_save, data)) for name, data in contents.items()
    ]


def _save(data: Any, path: Path) -> None:
    buffer = io.BytesIO()  # bytes first: a full disk surfaces as an OSError (persona_axis.files)
    torch.save(data, buffer)
    path.write_bytes(buffer.getvalue())


def _reference_capping(bundle: AxisBundle) -> dict[str, Any]:
    """Our cap settings as a reference ``capping_config`` (ceilings along role − default)."""
    vectors: dict[str, dict[str, Any]] = {}
    experiments = []
    for name, setting in sorted(bundle.caps.items()):
        keys = setting.notes.get(DIRECTION_KEYS_NOTE) or ["axis"] * len(setting.thresholds)
        interventions = []
        for key, (layer, unit, floor) in zip(keys, bundle.cap_floors(name), strict=True):
            if key == "axis":
                vector_name, vector = f"layer_{layer}/negated_axis", -bundle.axis[layer]
            else:
                vector_name, vector = key.removeprefix(CAP_DIRECTION_PREFIX), -unit
            vectors[vector_name] = {"vector": vector.clone(), "layer": layer}
            interventions.append({"vector": vector_name, "cap": -floor})
        experiments.append({"id": _reference_id(setting), "interventions": interventions})
    return {"vectors": vectors, "experiments": experiments}


def _reference_id(setting: CapSetting) -> str:
    """The reference id of a setting: its imported id, else ours with the percentile counted
    along role − default as a fraction (``layers_14:18-p75`` → ``layers_14:18-p0.25``)."""
    imported = setting.notes.get("reference_id")
    if isinstance(imported, str):
        return imported
    match = _OUR_NAME.fullmatch(setting.name)
    if match is None:
        return setting.name
    return f"{match[1]}-p{round(1 - float(match[2]) / 100, 8):g}"


def _safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers, never objects."""
    source = Path(path)
    if not source.is_file():
        raise PersonaAxisError(f"No file at {source}; check the path to the reference .pt file.")
    try:
        return torch.load(source, weights_only=True, map_location="cpu")
    except Exception as exc:  # weights_only refusals are UnpicklingError; damage varies
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise PersonaAxisError(
            f"Refused to load {source} ({reason}). persona-axis reads .pt files with "
            "torch.load(weights_only=True) and never unpickles other objects, which could run "
            "code. If the file is damaged, download it again; if it holds other objects and you "
            "trust it, re-save only its tensors (torch.save({'axis': tensor}, path))."
        ) from exc


def _reference_matrix(data: Any, path: str | os.PathLike[str]) -> Tensor:
    if not isinstance(data, Tensor) or data.ndim != 2:
        shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise PersonaAxisError(f"{path} should hold a [n_layers, d] tensor; found {shape}.")
    matrix = data.detach().to(dtype=torch.float32).contiguous()
    if not torch.isfinite(matrix).all():
        raise PersonaAxisError(f"{path} holds NaN or inf values; download it again.")
    return matrix


def _reference_direction(
    name: str,
    entry: Any,
    n_layers: int | None,
    hidden_size: int | None,
    path: str | os.PathLike[str],
) -> tuple[int, Tensor]:
    """``(layer, u)`` with u = −v/‖v‖ float32 [d]: the floor direction of reference vector v."""
    vector = entry.get("vector") if isinstance(entry, dict) else None
    layer = entry.get("layer") if isinstance(entry, dict) else None
    if not isinstance(vector, Tensor) or vector.ndim != 1 or not isinstance(layer, int):
        raise PersonaAxisError(
            f"{path}: vector {name!r} must be {{'vector': 1-D tensor, 'layer': int}}."
        )
    if hidden_size is not None and vector.numel() != hidden_size:
        raise PersonaAxisError(
            f"{path}: vector {name!r} has length {vector.numel()}, but the axis/model hidden "
            f"size is {hidden_size}; the capping config belongs to another model."
        )
    if not 0 <= layer < (n_layers if n_layers is not None else layer + 1):
        raise PersonaAxisError(
            f"{path}: vector {name!r} sits at layer {layer}, which this model does not have "
            f"({n_layers} layers); the capping config belongs to another model."
        )
    wide = vector.detach().to(torch.float64)
    norm = wide.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise PersonaAxisError(f"{path}: vector {name!r} is zero or non-finite.")
    return layer, (-wide / norm).to(torch.float32)


def _reference_setting(
    index: int,
    experiment: Any,
    directions: Mapping[str, tuple[int, Tensor]],
    axis: Tensor | None,
    tol: float,
) -> tuple[CapSetting | None, dict[str, Tensor]]:
    """One reference experiment as a floor setting, plus the direction vectors it needs."""
    if not isinstance(experiment, dict) or not isinstance(experiment.get("interventions"), list):
        raise PersonaAxisError(
            f"Reference experiment #{index} must be a dict with an 'interventions' list."
        )
    ref_id = str(experiment.get("id", index))
    interventions = experiment["interventions"]
    capping = [iv for iv in interventions if isinstance(iv, dict) and "cap" in iv]
    if not capping:
        warnings.warn(
            f"Reference experiment {ref_id!r} has no cap interventions; skipped.", stacklevel=3
        )
        return None, {}
    entries: list[tuple[int, float, str, float | None]] = []
    used: dict[str, Tensor] = {}
    for iv in capping:
        vector_name = str(iv.get("vector"))
        if vector_name not in directions:
            raise PersonaAxisError(
                f"Reference experiment {ref_id!r} names vector {vector_name!r}, which is not in "
                "the config's 'vectors'; the file is inconsistent."
            )
        try:
            tau = float(iv["cap"])
        except (TypeError, ValueError) as exc:
            raise PersonaAxisError(
                f"Reference experiment {ref_id!r}: cap {iv['cap']!r} is not a number."
            ) from exc
        layer, direction = directions[vector_name]
        cos = None if axis is None else _cosine(direction, axis[layer])
        if cos is not None and cos < 0:
            warnings.warn(
                f"Reference vector {vector_name!r} points toward the Assistant (cosine "
                f"{-cos:.3f} with the axis), so its ceiling limits Assistant-likeness; imported "
                "faithfully as a floor along its negation.",
                stacklevel=3,
            )
        key = "axis" if cos is not None and 1 - cos <= tol else CAP_DIRECTION_PREFIX + vector_name
        if key != "axis":
            used[key] = direction
        entries.append((layer, -tau, key, cos))
    entries.sort(key=lambda entry: entry[0])
    name, percentile = _converted_name(ref_id, [entry[0] for entry in entries])
    notes: dict[str, Any] = {
        "source": REFERENCE_PROJECT,
        "reference_id": ref_id,
        "reference_rule": "ceiling tau along the stored role - default vector v / |v|; "
        "imported as floor -tau along -v / |v|",
    }
    if axis is not None:
        notes["cos_to_axis"] = [entry[3] for entry in entries]
    if any(entry[2] != "axis" for entry in entries):
        notes[DIRECTION_KEYS_NOTE] = [entry[2] for entry in entries]
    skipped = len(interventions) - len(capping)
    if skipped:
        notes["skipped_interventions"] = skipped
        warnings.warn(
            f"Reference experiment {ref_id!r}: {skipped} non-cap interventions were not imported.",
            stacklevel=3,
        )
    setting = CapSetting(
        name=name,
        thresholds=tuple(LayerThreshold(layer=e[0], threshold=e[1]) for e in entries),
        percentile=percentile,
        calibrated_on="reference capping config (percentile along role - default, as +axis)",
        notes=notes,
    )
    return setting, used


def _cosine(a: Tensor, b: Tensor) -> float:
    """Cosine of two [d] vectors, in float64 so that "the same direction" is decided exactly."""
    wide_a, wide_b = a.detach().double(), b.detach().double()
    return float(wide_a @ wide_b / (wide_a.norm() * wide_b.norm()))


def _converted_name(ref_id: str, layers: list[int]) -> tuple[str, float | None]:
    """Our setting name and +axis percentile for reference id ``layers_A:B-pQ``."""
    match = _REFERENCE_ID.fullmatch(ref_id)
    if match is None:
        return ref_id, None
    first, stop, value = int(match[1]), int(match[2]), float(match[3])
    fraction = value if value <= 1 else value / 100
    percentile = round(100 * (1 - fraction), 6)
    if layers != list(range(first, stop)):
        return ref_id, percentile
    return setting_name(first, stop, percentile), percentile


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Name, size and sha256 of an imported file, for the manifest."""
    source = Path(path)
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"name": source.name, "bytes": source.stat().st_size, "sha256": digest.hexdigest()}
