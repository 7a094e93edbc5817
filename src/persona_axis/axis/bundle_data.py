"""The data of an AxisBundle: vectors, manifest and cap settings, validated, with accessors.

- ``vectors``: float32 CPU tensors. ``axis`` [n_layers, d] (required, unnormalised, pointing
  toward the Assistant), ``default`` [n_layers, d], ``role/<name>`` and ``trait/<name>``
  [n_layers, d]; other keys are free-form extras (``stats/mean_norm`` [n_layers], cap
  directions ``capdir/<name>`` [d] ...).
- ``manifest``: format version, the model (id, revision, weight fingerprint, architecture,
  n_layers, hidden size), the layer convention, the target layer, library version, and
  free-form provenance (catalog and its hash, sampling, judge, counts, timings).
- ``caps``: named cap settings (validated by :mod:`persona_axis.axis.bundle_caps`).

Layer L is the output of decoder block L, 0-based (= Hugging Face ``hidden_states[L + 1]``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
from torch import Tensor

from persona_axis._version import __version__
from persona_axis.axis.calibrate import CapSetting
from persona_axis.errors import PersonaAxisError
from persona_axis.models.layers import ModelShape

FORMAT = "persona-axis bundle"
FORMAT_VERSION = 1
LAYER_CONVENTION = "decoder block output, 0-based; = HF hidden_states[L+1]"
LAYERWISE_KEYS = ("axis", "default")
LAYERWISE_PREFIXES = ("role/", "role_somewhat/", "trait/")
MEAN_NORM_KEY = "stats/mean_norm"
RESERVED_MANIFEST_KEYS = frozenset(
    {
        "format",
        "format_version",
        "library_version",
        "created_utc",
        "model",
        "layer_convention",
        "target_layer",
    }
)
RENAMED_MANIFEST_KEYS = {
    "calibration": "projection_percentiles",
    "monitor_calibration": "benign_profile",
}
"""Manifest entries older bundles wrote under other names: old name → today's. The build's
percentile tables were called "calibration" and the drift monitor's benign profile
"monitor_calibration"; :func:`upgrade_manifest` renames them on load, and a save writes
today's names."""
RENAMED_PERCENTILE_KEYS = {"bands": "cap_layer_ranges"}
"""Likewise inside the ``projection_percentiles`` entry."""


@dataclass
class BundleData:
    """Vectors, manifest and named cap settings for one model; validated on construction.

    ``vectors`` are stored as contiguous float32 CPU tensors.
    """

    vectors: dict[str, Tensor]
    manifest: dict[str, Any]
    caps: dict[str, CapSetting] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = {key: _as_float32(key, value) for key, value in self.vectors.items()}
        self.manifest = upgrade_manifest(self.manifest)
        check_manifest(self.manifest)
        self._check_vectors()
        self.caps = dict(self.caps)

    @property
    def axis(self) -> Tensor:
        """The unnormalised Assistant Axis [n_layers, d], float32; + = more Assistant-like."""
        return self.vectors["axis"]

    @property
    def default(self) -> Tensor:
        """Mean response activation under the default prompts [n_layers, d], float32."""
        if "default" not in self.vectors:
            raise PersonaAxisError(
                "This bundle has no 'default' vector (imported axes may lack it); rebuild it with "
                "persona-axis build, or import the reference default_vector.pt with it "
                "(persona-axis import --format reference --default FILE)."
            )
        return self.vectors["default"]

    def roles(self) -> dict[str, Tensor]:
        """Role name -> role vector [n_layers, d]."""
        return self._prefixed("role/")

    def traits(self) -> dict[str, Tensor]:
        """Trait name -> trait vector [n_layers, d] (positive minus negative prompt means)."""
        return self._prefixed("trait/")

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, d)`` of every layer-wise vector."""
        n_layers, hidden = self.axis.shape
        return int(n_layers), int(hidden)

    @property
    def model_shape(self) -> ModelShape:
        """Architecture, depth and width of the model this bundle was built for."""
        model = self.manifest["model"]
        return ModelShape(
            architecture=str(model["architecture"]),
            n_layers=int(model["n_layers"]),
            hidden_size=int(model["hidden_size"]),
        )

    @property
    def model_id(self) -> str | None:
        """Model id (HF id or local path) recorded at build time, if any."""
        value = self.manifest["model"].get("id")
        return None if value is None else str(value)

    @property
    def fingerprint(self) -> str | None:
        """Weight fingerprint recorded at build time (``"sha256:..."``), if any."""
        value = self.manifest["model"].get("fingerprint")
        return None if value is None else str(value)

    @property
    def target_layer(self) -> int:
        """Layer where the axis is read by default; ``n_layers // 2`` unless the manifest says."""
        value = self.manifest.get("target_layer")
        return self.shape[0] // 2 if value is None else int(value)

    @property
    def axis_layers(self) -> list[int]:
        """Layers where the axis is defined: all of them for a built bundle; an imported
        control vector leaves the layers its file does not name as zero rows, which every use
        of the unit axis refuses (docs/interchange.md)."""
        return [int(layer) for layer in torch.nonzero(self.axis.norm(dim=-1) > 0).flatten()]

    def unit_axis(self, layer: int) -> Tensor:
        """â_L = a_L / ‖a_L‖, float32 [d], for decoder block ``layer`` (0-based)."""
        self._check_layer(layer, "unit_axis")
        return _unit(self.axis[layer], f"axis[{layer}]")

    def _prefixed(self, prefix: str) -> dict[str, Tensor]:
        return {
            key[len(prefix) :]: value
            for key, value in sorted(self.vectors.items())
            if key.startswith(prefix)
        }

    def _check_vectors(self) -> None:
        model = self.manifest["model"]
        expected = (int(model["n_layers"]), int(model["hidden_size"]))
        if "axis" not in self.vectors:
            raise PersonaAxisError(
                f"Bundle has no 'axis' vector (keys: {sorted(self.vectors)[:8]}); every bundle "
                "needs one. Build one (persona-axis build) or import one (persona-axis import)."
            )
        for key, value in self.vectors.items():
            layerwise = key in LAYERWISE_KEYS or key.startswith(LAYERWISE_PREFIXES)
            if layerwise and tuple(value.shape) != expected:
                raise PersonaAxisError(
                    f"Vector {key!r} has shape {tuple(value.shape)} but the manifest says "
                    f"[n_layers={expected[0]}, hidden_size={expected[1]}]; the vectors and "
                    "manifest come from different models. Rebuild the bundle."
                )
        if not torch.isfinite(self.axis).all():
            raise PersonaAxisError("The axis holds NaN or inf values; recompute it.")

    def _check_layer(self, layer: int, what: str) -> None:
        n_layers = self.shape[0]
        if not 0 <= layer < n_layers:
            raise PersonaAxisError(
                f"{what}: layer {layer} is out of range; layers are decoder block outputs "
                f"0..{n_layers - 1} (0-based)."
            )

    def _direction(self, key: str, layer: int) -> Tensor:
        """Unit direction named ``key`` at ``layer``: a [d] vector or row ``layer`` of a matrix."""
        if key not in self.vectors:
            raise PersonaAxisError(
                f"Cap direction {key!r} is not among the bundle vectors; the bundle is "
                "incomplete: re-import or re-calibrate the cap setting."
            )
        value = self.vectors[key]
        hidden = self.shape[1]
        if tuple(value.shape) == (hidden,):
            return _unit(value, key)
        if tuple(value.shape) == self.shape:
            return _unit(value[layer], f"{key}[{layer}]")
        raise PersonaAxisError(
            f"Cap direction {key!r} has shape {tuple(value.shape)}; expected [{hidden}] or "
            f"{list(self.shape)}. Re-import the cap setting."
        )


def new_manifest(
    model_shape: ModelShape,
    *,
    model_id: str | None,
    revision: str | None,
    fingerprint: str | None,
    target_layer: int | None,
    extras: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A manifest describing ``model_shape`` and this library version, with ``extras`` (plain
    JSON provenance) at its top level; ``target_layer`` defaults to ``n_layers // 2``."""
    extras = dict(extras or {})
    clash = RESERVED_MANIFEST_KEYS & set(extras)
    if clash:
        raise PersonaAxisError(
            f"Manifest extras {sorted(clash)} would overwrite reserved entries; rename them "
            f"(reserved: {sorted(RESERVED_MANIFEST_KEYS)})."
        )
    try:
        json.dumps(extras, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PersonaAxisError(
            f"Manifest extras are not plain JSON ({exc}); pass only str, numbers, bools, "
            "None, lists and dicts with string keys."
        ) from exc
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "id": model_id,
            "revision": revision,
            "fingerprint": fingerprint,
            "architecture": model_shape.architecture,
            "n_layers": model_shape.n_layers,
            "hidden_size": model_shape.hidden_size,
        },
        "layer_convention": LAYER_CONVENTION,
        "target_layer": model_shape.target_layer if target_layer is None else target_layer,
        **extras,
    }


def upgrade_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` with entries written under older names
    (:data:`RENAMED_MANIFEST_KEYS`) moved to today's; where both names are present, today's
    entry wins and the old one is dropped."""
    upgraded = dict(manifest)
    for old, new in RENAMED_MANIFEST_KEYS.items():
        if old in upgraded:
            value = upgraded.pop(old)
            upgraded.setdefault(new, value)
    table = upgraded.get("projection_percentiles")
    if isinstance(table, Mapping):
        table = dict(table)
        for old, new in RENAMED_PERCENTILE_KEYS.items():
            if old in table:
                table.setdefault(new, table.pop(old))
        upgraded["projection_percentiles"] = table
    return upgraded


def check_manifest(manifest: Mapping[str, Any]) -> None:
    """Refuse a manifest of an unknown or newer format version, or without the model's shape."""
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PersonaAxisError(
            f"Manifest has no integer format_version (got {version!r}); it was not written by "
            "persona-axis or is damaged. Re-save the bundle."
        )
    if version > FORMAT_VERSION:
        raise PersonaAxisError(
            f"Bundle format version {version} is newer than this persona-axis understands "
            f"({FORMAT_VERSION}); upgrade persona-axis (pip install -U persona-axis)."
        )
    if version < 1:
        raise PersonaAxisError(f"Bundle format version {version} is unknown; re-save the bundle.")
    model = manifest.get("model")
    needed = {"architecture": str, "n_layers": int, "hidden_size": int}
    if not isinstance(model, Mapping) or not all(
        isinstance(model.get(key), kind) for key, kind in needed.items()
    ):
        raise PersonaAxisError(
            "Manifest 'model' entry must give architecture (str), n_layers (int) and "
            "hidden_size (int); build bundles with AxisBundle.create."
        )
    target = manifest.get("target_layer")
    if target is not None and not (isinstance(target, int) and 0 <= target < model["n_layers"]):
        raise PersonaAxisError(
            f"Manifest target_layer {target!r} is not a layer in 0..{model['n_layers'] - 1}."
        )


def _as_float32(key: str, value: Tensor) -> Tensor:
    if not isinstance(value, Tensor):
        raise PersonaAxisError(f"Vector {key!r} is a {type(value).__name__}, not a tensor.")
    if value.is_meta:
        raise PersonaAxisError(f"Vector {key!r} is on the meta device and holds no values.")
    return value.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _unit(vector: Tensor, what: str) -> Tensor:
    norm = vector.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise PersonaAxisError(
            f"{what} has zero or non-finite norm and no direction; recompute it."
        )
    return vector / norm
