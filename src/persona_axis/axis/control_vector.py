"""The Assistant Axis as a llama.cpp control vector (``--control-vector-scaled FILE:SCALE``).

The file format (llama.cpp's ``common_control_vector_load_one``; docs/interchange.md): a GGUF
file with ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (str) and
``controlvector.layer_count`` (int32, the number of tensors), and one float32 1-D tensor
``direction.N`` of size ``[n_embd]`` per steered layer. llama.cpp reads no metadata at all; it
adds ``SCALE · direction.N`` to the output of decoder block ``N`` (0-based) at every position,
prompt and generated, and adds nothing at layers the file does not name.

Layer numbering, measured against llama.cpp itself (docs/interchange.md): **our layer L (the
output of decoder block L, docs/method.md) is llama.cpp's ``direction.L``**, not ``L + 1``.
``direction.0`` makes llama.cpp reject the whole file (it logs an error and generates
*unsteered*, exit status 0), so block 0 cannot be exported; ``direction.N`` with
``N >= n_layers`` is silently ignored there, and refused here.

Units: :func:`export_control_vector` writes ``direction.L = M · n̄_L · â_L`` (``n̄_L`` the mean
residual norm, ``â_L`` the unit axis, ``M`` the ``multiple``), so llama.cpp's ``SCALE = s`` adds
``s · M · n̄_L · â_L``: with ``M = 1``, SCALE is our steering multiple (``persona-axis chat
--steer s``), positive toward the Assistant. Each exported layer adds its own vector, so
steering a range of k layers pushes roughly k times as hard as one layer.

:func:`bundle_from_control_vector` reads such a file (ours or another producer's) into a bundle.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from torch import Tensor

from persona_axis import files
from persona_axis._version import __version__
from persona_axis.axis.bundle import MEAN_NORM_KEY, AxisBundle
from persona_axis.axis.reference import file_record
from persona_axis.errors import PersonaAxisError
from persona_axis.models.layers import ModelShape

if TYPE_CHECKING:
    from persona_axis.models.loading import LoadedModel

FORMAT_NAME = "gguf-control-vector"
ARCHITECTURE = "controlvector"
KEY_ARCHITECTURE = "general.architecture"
KEY_MODEL_HINT = f"{ARCHITECTURE}.model_hint"
KEY_LAYER_COUNT = f"{ARCHITECTURE}.layer_count"
TENSOR_PREFIX = "direction."
LLAMACPP_LAYER_OFFSET = 0
"""llama.cpp's ``direction.N`` for our layer L is ``N = L + LLAMACPP_LAYER_OFFSET`` (measured)."""

# Our own keys (llama.cpp ignores every key): what the numbers mean and where they came from.
KEY_SCALE_MEANING = "persona_axis.scale_meaning"
KEY_MULTIPLE = "persona_axis.multiple"
KEY_LAYERS = "persona_axis.layers"
KEY_MEAN_NORMS = "persona_axis.mean_norms"
KEY_TARGET_LAYER = "persona_axis.target_layer"
KEY_LAYER_CONVENTION = "persona_axis.layer_convention"
KEY_VERSION = "persona_axis.version"
KEY_MODEL_ID = "persona_axis.model_id"
KEY_MODEL_ARCHITECTURE = "persona_axis.architecture"
KEY_N_LAYERS = "persona_axis.n_layers"
KEY_HIDDEN_SIZE = "persona_axis.hidden_size"
KEY_FINGERPRINT = "persona_axis.fingerprint"
LAYER_CONVENTION = "direction.N is added to the output of decoder block N (0-based) = our layer N"

_TENSOR_NAME = re.compile(r"direction\.(\d+)")


def to_llamacpp_layer(layer: int) -> int:
    """llama.cpp's ``direction.N`` index for our layer ``layer`` (decoder block output)."""
    return layer + LLAMACPP_LAYER_OFFSET


def from_llamacpp_layer(index: int) -> int:
    """Our layer for llama.cpp's ``direction.index``."""
    return index - LLAMACPP_LAYER_OFFSET


# -- the file format ----------------------------------------------------------------------------


def write_control_vector(
    path: str | os.PathLike[str],
    directions: Mapping[int, Tensor],
    *,
    model_hint: str,
    n_layers: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``directions`` (our layer L → vector ``[d]`` in residual-stream units, already
    scaled) as a llama.cpp control vector, atomically; returns the path.

    Each vector is stored as float32 ``direction.L``, in increasing L. ``model_hint`` is
    informational (llama.cpp never reads it). ``n_layers``, when given, refuses layers llama.cpp
    would silently ignore. ``metadata`` adds key/value fields (str, int, float, bool, or lists
    of one of them); llama.cpp ignores them.

    Raises :class:`PersonaAxisError` for no directions, a non-integer, negative, zero (llama.cpp
    rejects ``direction.0``) or out-of-range layer, a vector that is not 1-D and finite, or
    vectors of different sizes.
    """
    if not directions:
        raise PersonaAxisError("No layers to write; pass at least one layer (not layer 0).")
    vectors = {
        _checked_layer(key, n_layers): _as_vector(key, value) for key, value in directions.items()
    }
    sizes = sorted({vector.shape[0] for vector in vectors.values()})
    if len(sizes) != 1:
        raise PersonaAxisError(f"Directions have different sizes {sizes}; every one must be [d].")

    def write(temporary: Path) -> None:
        writer = GGUFWriter(temporary, ARCHITECTURE)  # general.architecture = "controlvector"
        try:
            writer.add_string(KEY_MODEL_HINT, model_hint)
            writer.add_int32(KEY_LAYER_COUNT, len(vectors))  # as llama-cvector-generator writes
            for key, value in (metadata or {}).items():
                _add_field(writer, key, value)
            for layer in sorted(vectors):
                writer.add_tensor(f"{TENSOR_PREFIX}{to_llamacpp_layer(layer)}", vectors[layer])
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    return files.write_atomic(path, write)


def read_control_vector(path: str | os.PathLike[str]) -> tuple[dict[int, Tensor], dict[str, Any]]:
    """Read a llama.cpp control vector: ``({our layer L: vector [d] float32}, metadata)``.

    ``direction.N`` becomes layer ``L = N`` (module docstring). ``metadata`` holds every
    key/value field except GGUF's own ``GGUF.*`` bookkeeping.

    Stricter than llama.cpp, which accepts some files it then misreads or ignores: raises
    :class:`PersonaAxisError` for an unreadable file, ``general.architecture`` other than
    ``"controlvector"``, no tensors, a tensor not named ``direction.<digits>``, layer 0, two
    tensors for one layer (llama.cpp would sum them), a tensor that is not float32 or not 1-D,
    tensors of different sizes, or non-finite values.
    """
    source = Path(path)
    if not source.is_file():
        raise PersonaAxisError(f"No file at {source}; pass the path of a control vector .gguf.")
    try:
        reader = GGUFReader(source)
    except Exception as exc:  # gguf raises ValueError, struct errors, OSError ... on bad files
        raise PersonaAxisError(
            f"{source} is not a readable GGUF file ({exc}); pass a llama.cpp control vector."
        ) from exc
    metadata = {
        key: _field_value(reader, key) for key in reader.fields if not key.startswith("GGUF.")
    }
    if metadata.get(KEY_ARCHITECTURE) != ARCHITECTURE:
        raise PersonaAxisError(
            f"{source} is not a control vector: general.architecture is "
            f"{metadata.get(KEY_ARCHITECTURE)!r}, not {ARCHITECTURE!r} (a model file?)."
        )
    if not reader.tensors:
        raise PersonaAxisError(f"{source} holds no direction tensors; nothing to import.")
    directions: dict[int, Tensor] = {}
    size: int | None = None
    for tensor in reader.tensors:
        where = f"{source}: tensor {tensor.name!r}"
        match = _TENSOR_NAME.fullmatch(tensor.name)
        if match is None:
            raise PersonaAxisError(
                f"{where} is not named 'direction.<layer>'; not a control vector."
            )
        index = int(match.group(1))
        if index == 0:
            raise PersonaAxisError(
                f"{where} is for layer 0, which llama.cpp rejects; fix the file."
            )
        layer = from_llamacpp_layer(index)
        if layer in directions:
            raise PersonaAxisError(f"{where} repeats layer {index}; keep one tensor per layer.")
        if tensor.tensor_type != GGMLQuantizationType.F32:
            raise PersonaAxisError(f"{where} is {tensor.tensor_type.name}; llama.cpp needs F32.")
        shape = [int(n) for n in tensor.shape]
        if len(shape) != 1:
            raise PersonaAxisError(f"{where} has shape {shape}; llama.cpp needs 1-D [n_embd].")
        if size is not None and shape[0] != size:
            raise PersonaAxisError(f"{where} has {shape[0]} values, the others {size}.")
        size = shape[0]
        data = np.array(tensor.data, dtype=np.float32, copy=True).reshape(size)
        if not np.isfinite(data).all():
            raise PersonaAxisError(f"{where} holds NaN or infinite values.")
        directions[layer] = torch.from_numpy(data)
    return dict(sorted(directions.items())), metadata


# -- bundle <-> control vector ------------------------------------------------------------------


def export_control_vector(
    bundle: AxisBundle,
    path: str | os.PathLike[str],
    *,
    layers: Sequence[int] | None = None,
    multiple: float = 1.0,
    lm: LoadedModel | None = None,
) -> Path:
    """Write ``bundle``'s axis as a llama.cpp control vector: ``direction.L = M · n̄_L · â_L``
    for each of ``layers`` (default: the bundle's target layer alone), ``M = multiple``.

    So llama.cpp's ``--control-vector-scaled FILE:s`` adds ``s · M · n̄_L · â_L`` at block L's
    output: with ``M = 1`` and the target layer, exactly ``persona-axis chat --steer s``.
    ``n̄_L`` is :meth:`AxisBundle.mean_norms` (stored by ``build``; else estimated on ``lm``).
    The file records in its metadata what SCALE means, the multiple, the mean norms and the
    model. Layer 0 is refused (llama.cpp cannot steer block 0's output).
    """
    if not math.isfinite(multiple) or multiple == 0:
        raise PersonaAxisError(f"--scale must be a non-zero finite number, not {multiple!r}.")
    n_layers = bundle.shape[0]
    chosen = sorted(set([bundle.target_layer] if layers is None else layers))
    if 0 in chosen:
        raise PersonaAxisError(
            "Layer 0 cannot be exported: llama.cpp rejects direction.0 (block 0's output cannot "
            "be steered by a control vector) and then silently generates unsteered. Choose "
            f"layers from 1 to {n_layers - 1}, e.g. --layers 1:{n_layers}."
        )
    norms = bundle.mean_norms(lm)
    directions = {}
    for layer in chosen:
        unit = bundle.unit_axis(layer)  # raises for a layer outside the model or without an axis
        norm = float(norms[layer])
        if not math.isfinite(norm) or norm <= 0:
            raise PersonaAxisError(
                f"The bundle has no mean residual norm at layer {layer} ({norm}); pass the model "
                "(--model) so it can be estimated, or export the layers the bundle has."
            )
        directions[layer] = multiple * norm * unit
    shape = bundle.model_shape
    metadata: dict[str, Any] = {
        KEY_SCALE_MEANING: (
            f"SCALE s adds s * {multiple:g} * mean_norm_L * unit_axis_L to the output of decoder "
            "block L (0-based) at every position; positive s pushes toward the Assistant"
            + (" (s = the persona-axis steering multiple)" if multiple == 1 else "")
        ),
        KEY_MULTIPLE: float(multiple),
        KEY_LAYERS: chosen,
        KEY_MEAN_NORMS: [float(norms[layer]) for layer in chosen],
        KEY_TARGET_LAYER: bundle.target_layer,
        KEY_LAYER_CONVENTION: LAYER_CONVENTION,
        KEY_VERSION: __version__,
        KEY_MODEL_ARCHITECTURE: shape.architecture,
        KEY_N_LAYERS: shape.n_layers,
        KEY_HIDDEN_SIZE: shape.hidden_size,
    }
    if bundle.model_id is not None:
        metadata[KEY_MODEL_ID] = bundle.model_id
    if bundle.fingerprint is not None:
        metadata[KEY_FINGERPRINT] = bundle.fingerprint
    return write_control_vector(
        path,
        directions,
        model_hint=bundle.model_id or shape.architecture,
        n_layers=n_layers,
        metadata=metadata,
    )


def bundle_from_control_vector(
    path: str | os.PathLike[str],
    *,
    model_shape: ModelShape,
    model_id: str | None,
    revision: str | None = None,
    fingerprint: str | None = None,
) -> AxisBundle:
    """A bundle whose axis is the control vector at ``path``, for the model of ``model_shape``.

    Each ``direction.L`` becomes ``axis[L]`` as stored (its sign is what positive SCALE pushes
    toward; for our own files, the Assistant). **Layers the file does not name are zero rows**:
    every use of the unit axis there (monitoring, steering, capping, export) raises
    :class:`PersonaAxisError` instead of dividing by zero; the layers the file has work as in
    any bundle. The target layer is the one our export recorded, else the file's layer nearest
    ``n_layers // 2``. Our own files also restore ``stats/mean_norm`` at their layers (zero
    elsewhere), so steering keeps the exported units, and their weight fingerprint, so the
    bundle refuses other weights later (``fingerprint``, when given, must equal it).

    Raises :class:`PersonaAxisError` when the file's vector size is not the model's hidden size,
    it names a layer the model does not have, or its fingerprint differs from ``fingerprint``.
    """
    directions, metadata = read_control_vector(path)
    n_layers, hidden = model_shape.n_layers, model_shape.hidden_size
    size = next(iter(directions.values())).shape[0]
    if size != hidden:
        raise PersonaAxisError(
            f"{path} holds vectors of size {size}, but the model's hidden size is {hidden}; the "
            "control vector was made for another model. Pass the model it was made for (--model)."
        )
    beyond = [layer for layer in directions if layer >= n_layers]
    if beyond:
        raise PersonaAxisError(
            f"{path} steers layers {beyond}, but the model has {n_layers} (0..{n_layers - 1}); "
            "the control vector was made for another model. Pass the model it was made for."
        )
    recorded_weights = metadata.get(KEY_FINGERPRINT)
    if fingerprint is not None and recorded_weights not in (None, fingerprint):
        raise PersonaAxisError(
            f"{path} was exported for weights {recorded_weights}, but the model's are "
            f"{fingerprint}: the axis of one model is meaningless for other weights. Pass the "
            "model it was exported from."
        )
    layers = list(directions)
    axis = torch.zeros(n_layers, hidden)
    for layer, vector in directions.items():
        axis[layer] = vector
    vectors = {"axis": axis}
    if metadata.get(KEY_LAYERS) == layers and len(metadata.get(KEY_MEAN_NORMS, [])) == len(layers):
        norms = torch.zeros(n_layers)
        norms[layers] = torch.tensor(metadata[KEY_MEAN_NORMS], dtype=torch.float32)
        vectors[MEAN_NORM_KEY] = norms
    recorded = metadata.get(KEY_TARGET_LAYER)
    target = (
        recorded
        if recorded in directions
        else min(layers, key=lambda layer: (abs(layer - model_shape.target_layer), layer))
    )
    provenance = {
        "format": FORMAT_NAME,
        "files": {"control_vector": file_record(path)},
        "layers": layers,
        "metadata": _json_metadata(metadata),
        "absent_layers": "zero rows of the axis: unusable there (errors, never a division by 0)",
    }
    return AxisBundle.create(
        vectors,
        model_shape=model_shape,
        model_id=model_id,
        revision=revision,
        fingerprint=fingerprint or recorded_weights,
        target_layer=int(target),
        extras={"imported_from": provenance},
    )


# -- helpers ------------------------------------------------------------------------------------


def _checked_layer(key: Any, n_layers: int | None) -> int:
    if not isinstance(key, int | np.integer) or isinstance(key, bool):
        raise PersonaAxisError(f"Layer keys must be integers, not {key!r}.")
    layer = int(key)
    if layer < 0:
        raise PersonaAxisError(f"Layer {layer} is negative; layers are 0-based block outputs.")
    if to_llamacpp_layer(layer) == 0:
        raise PersonaAxisError(
            "Layer 0 cannot be written: llama.cpp rejects direction.0 and never steers block 0."
        )
    if n_layers is not None and layer >= n_layers:
        raise PersonaAxisError(
            f"Layer {layer} is outside the model's {n_layers} layers (0..{n_layers - 1}); "
            "llama.cpp would silently ignore it."
        )
    return layer


def _as_vector(layer: Any, value: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().to("cpu", torch.float32).numpy()
    array = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
    if array.ndim != 1 or array.shape[0] == 0:
        raise PersonaAxisError(
            f"The direction for layer {layer} must be a non-empty 1-D vector [d], not shape "
            f"{tuple(array.shape)}."
        )
    if not np.isfinite(array).all():
        raise PersonaAxisError(f"The direction for layer {layer} holds NaN or infinite values.")
    return array


def _add_field(writer: GGUFWriter, key: str, value: Any) -> None:
    if key in {KEY_ARCHITECTURE, KEY_MODEL_HINT, KEY_LAYER_COUNT}:
        raise PersonaAxisError(f"Metadata key {key!r} is written by the format itself.")
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, int):
        writer.add_int32(key, value)
    elif isinstance(value, float):
        writer.add_float64(key, value)
    elif isinstance(value, list | tuple) and value:
        writer.add_array(key, list(value))
    else:
        raise PersonaAxisError(
            f"Metadata {key!r} = {value!r}: use a str, int, float, bool or a non-empty list."
        )


def _field_value(reader: GGUFReader, key: str) -> Any:
    field = reader.fields[key]
    if field.types and field.types[0] == GGUFValueType.ARRAY:
        return list(field.contents())
    return field.contents()


def _json_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The file's fields as JSON for the manifest: non-finite floats become None."""

    def clean(value: Any) -> Any:
        if isinstance(value, list):
            return [clean(item) for item in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return {key: clean(value) for key, value in metadata.items()}
