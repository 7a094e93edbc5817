"""The AxisBundle: the on-disk artifact that every downstream stage reads.

A bundle is a directory of three files:

- ``vectors.safetensors``: float32 tensors. ``axis`` [n_layers, d] (required, unnormalised,
  pointing toward the Assistant), ``default`` [n_layers, d], ``role/<name>`` and ``trait/<name>``
  [n_layers, d]; other keys are free-form extras (``stats/mean_norm`` [n_layers], cap directions
  ``capdir/<name>`` [d] ...).
- ``manifest.json``: format version, the model (id, revision, weight fingerprint, architecture,
  n_layers, hidden size), the layer convention, the target layer, library version, and free-form
  provenance (catalog and its hash, sampling, judge, counts, timings).
- ``caps.json``: named cap settings, ``{name: CapSetting.to_dict()}``; optional.

Layer L is the output of decoder block L, 0-based (= Hugging Face ``hidden_states[L + 1]``). Caps
are floors along a unit direction, by default the unit axis of their layer: a cap setting whose
``notes["direction_keys"]`` is present names, per threshold, the vector holding its direction
(a [d] vector, or a row of an [n_layers, d] one). :meth:`AxisBundle.cap_floors` resolves this, so
consumers never read the notes themselves.

Saving writes into a hidden sibling directory and renames it into place, so an interrupted save
never leaves a half-written bundle at the target path. Loading validates everything and raises
:class:`PersonaAxisError` with the fix. Nothing is ever unpickled: reference ``.pt`` files are read
with ``torch.load(weights_only=True)``.

Bundles from the reference project's published files: :mod:`persona_axis.axis.reference`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from persona_axis import files
from persona_axis._version import __version__
from persona_axis.axis.calibrate import (
    CAP_RULE,
    CapSetting,
    ProjectionCalibration,
    default_recommendation,
)
from persona_axis.errors import PersonaAxisError
from persona_axis.models.fingerprint import try_weight_fingerprint
from persona_axis.models.layers import ModelShape
from persona_axis.models.layers import model_shape as shape_of

if TYPE_CHECKING:
    from persona_axis.inference.interventions import InterventionSpec
    from persona_axis.models.loading import LoadedModel

FORMAT = "persona-axis bundle"
FORMAT_VERSION = 1
LAYER_CONVENTION = "decoder block output, 0-based; = HF hidden_states[L+1]"
VECTORS_FILE = "vectors.safetensors"
MANIFEST_FILE = "manifest.json"
CAPS_FILE = "caps.json"
BUNDLE_FILES = frozenset({VECTORS_FILE, MANIFEST_FILE, CAPS_FILE})
LAYERWISE_KEYS = ("axis", "default")
LAYERWISE_PREFIXES = ("role/", "role_somewhat/", "trait/")
DIRECTION_KEYS_NOTE = "direction_keys"
MEAN_NORM_KEY = "stats/mean_norm"
MONITOR_CALIBRATION_KEY = "monitor_calibration"
RECOMMENDED = "recommended"
NO_CAP = "none"
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


class BundleMismatchWarning(UserWarning):
    """A bundle is applied to a model it was not built for, because the caller allowed it."""


@dataclass
class AxisBundle:
    """Vectors, manifest and named cap settings for one model; validated on construction.

    ``vectors`` are stored as contiguous float32 CPU tensors. Build a new bundle with
    :meth:`create`, which writes the manifest; read one with :meth:`load`.
    """

    vectors: dict[str, Tensor]
    manifest: dict[str, Any]
    caps: dict[str, CapSetting] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = {key: _as_float32(key, value) for key, value in self.vectors.items()}
        self.manifest = dict(self.manifest)
        _check_manifest(self.manifest)
        self._check_vectors()
        self.caps = dict(self.caps)
        for name, setting in self.caps.items():
            if name != setting.name:
                raise PersonaAxisError(
                    f"Cap setting stored under {name!r} is named {setting.name!r}; store each "
                    "setting under its own name (use AxisBundle.add_cap)."
                )
            self._check_cap(setting)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        vectors: Mapping[str, Tensor],
        *,
        model_shape: ModelShape,
        model_id: str | None,
        revision: str | None = None,
        fingerprint: str | None = None,
        target_layer: int | None = None,
        caps: Mapping[str, CapSetting] | None = None,
        extras: Mapping[str, Any] | None = None,
    ) -> AxisBundle:
        """A new bundle with a manifest describing ``model_shape`` and this library version.

        ``target_layer`` defaults to ``n_layers // 2``. ``extras`` are JSON-serialisable
        provenance entries stored at the top level of the manifest (``catalog``,
        ``catalog_hash``, ``sampling``, ``judge``, ``counts``, ``timings``, ...).
        """
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
        manifest: dict[str, Any] = {
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
        return cls(vectors=dict(vectors), manifest=manifest, caps=dict(caps or {}))

    # -- accessors ----------------------------------------------------------------------------

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

    # -- caps ---------------------------------------------------------------------------------

    def cap(self, name: str) -> CapSetting:
        """The cap setting called ``name``; unknown names list what is available."""
        if name not in self.caps:
            available = ", ".join(sorted(self.caps)) or "none"
            raise PersonaAxisError(
                f"No cap setting {name!r} in this bundle; available: {available}. Pick an "
                "available name, or get settings from persona-axis build (it calibrates them) "
                "or persona-axis import (a reference capping config)."
            )
        return self.caps[name]

    def add_cap(self, setting: CapSetting, *, replace: bool = False) -> None:
        """Add (or with ``replace=True`` overwrite) a cap setting, validated against the bundle."""
        if setting.name in self.caps and not replace:
            raise PersonaAxisError(
                f"Cap setting {setting.name!r} already exists; pass replace=True to overwrite it."
            )
        self._check_cap(setting)
        self.caps[setting.name] = setting

    def cap_floors(self, name: str) -> list[tuple[int, Tensor, float]]:
        """``[(layer, unit direction [d] float32, floor)]`` of setting ``name``, in its order.

        Apply at each listed layer, every position: ``p = <h, u>``; where ``p < floor``,
        ``h ← h + (floor − p)·u``. ``u`` is the unit axis unless the setting names another
        direction (imported reference caps whose vector is not the negated axis).
        """
        setting = self.cap(name)
        keys = setting.notes.get(DIRECTION_KEYS_NOTE)
        floors = []
        for index, item in enumerate(setting.thresholds):
            key = "axis" if keys is None else keys[index]
            floors.append((item.layer, self._direction(key, item.layer), item.threshold))
        return floors

    # -- recommended cap, calibration, interventions -------------------------------------------

    @property
    def recommended_cap(self) -> str | None:
        """Name of the recommended cap setting.

        The manifest's ``recommended_cap`` when it names a stored setting; else the one
        documented fallback, :func:`~persona_axis.axis.calibrate.default_recommendation` (the
        stored setting nearest p75 on a band near 70% depth); None without cap settings.
        """
        named = self.manifest.get("recommended_cap")
        if isinstance(named, str) and named in self.caps:
            return named
        return default_recommendation(list(self.caps.values()), self.shape[0])

    def resolve_cap(self, cap: str | None) -> str | None:
        """A cap argument as a stored setting name: None or ``"none"`` give None (no cap);
        ``"recommended"`` gives :attr:`recommended_cap`; other names must be stored."""
        if cap is None or cap == NO_CAP:
            return None
        if cap == RECOMMENDED:
            name = self.recommended_cap
            if name is None:
                raise PersonaAxisError(
                    "This bundle has no cap settings, so it has no recommended cap; pass 'none', "
                    "or use a bundle from persona-axis build (it calibrates caps) or one imported "
                    "with its capping config (persona-axis import)."
                )
            return name
        self.cap(cap)  # raises with the available names
        return cap

    @property
    def calibration(self) -> ProjectionCalibration | None:
        """The build's projection percentiles per layer and rollout kind (None when the bundle
        records none, e.g. an imported axis)."""
        return ProjectionCalibration.from_manifest(self.manifest)

    @property
    def monitor_calibration(self) -> dict[str, Any] | None:
        """The drift monitor's calibration (manifest ``monitor_calibration``, written by
        ``persona-axis calibrate-monitor``; read by
        :class:`persona_axis.drift.calibration.MonitorCalibration`), or None."""
        value = self.manifest.get(MONITOR_CALIBRATION_KEY)
        return dict(value) if isinstance(value, dict) else None

    def set_monitor_calibration(self, data: Mapping[str, Any]) -> None:
        """Store a monitor calibration (plain JSON) in the manifest; :meth:`save` writes it."""
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PersonaAxisError(f"A monitor calibration must be plain JSON ({exc}).") from exc
        self.manifest[MONITOR_CALIBRATION_KEY] = dict(data)

    def mean_norms(self, lm: LoadedModel | None = None) -> Tensor:
        """``[n_layers]`` mean residual norm ``‖h‖`` per layer (the steering scale): the stored
        ``stats/mean_norm``, else estimated on ``lm`` over our short sample chats."""
        stored = self.vectors.get(MEAN_NORM_KEY)
        if stored is not None:
            return stored
        if lm is None:
            raise PersonaAxisError(
                "This bundle stores no mean residual norm; pass the model (lm=...) to estimate it."
            )
        from persona_axis.inference.interventions import mean_residual_norms, norm_samples

        return mean_residual_norms(lm, norm_samples())

    def intervention(
        self,
        cap: str | None = None,
        steer: float | None = None,
        *,
        lm: LoadedModel | None = None,
    ) -> InterventionSpec:
        """The one spec builder from a bundle setting.

        ``cap`` (see :meth:`resolve_cap`) gives its floors along +axis at every position;
        ``steer`` m adds ``m · n̄_L · â_L`` at the target layer L (n̄_L from :meth:`mean_norms`;
        positive m pushes toward the Assistant). Caps come first, in layer order.
        """
        from persona_axis.inference.interventions import InterventionSpec

        spec = InterventionSpec()
        name = self.resolve_cap(cap)
        if name is not None:
            spec = spec + InterventionSpec.from_floors(self.cap_floors(name))
        if steer is not None:
            layer = self.target_layer
            norm = float(self.mean_norms(lm)[layer])
            spec = spec + InterventionSpec.steer(self.axis, layer, steer, norm)
        return spec

    @contextmanager
    def capping(
        self,
        lm: LoadedModel,
        cap: str | None = RECOMMENDED,
        steer: float | None = None,
        *,
        allow_mismatch: bool = False,
    ) -> Iterator[InterventionSpec]:
        """Check that this bundle fits ``lm``'s weights, then cap (and steer) ``lm`` while the
        context is open: ``with bundle.capping(lm): lm.model.generate(...)``. Hooks are removed
        on every exit."""
        from persona_axis.inference.interventions import intervene

        spec = self.checked_intervention(lm, cap, steer, allow_mismatch=allow_mismatch)
        with intervene(lm, spec):
            yield spec

    def checked_intervention(
        self,
        lm: LoadedModel,
        cap: str | None = RECOMMENDED,
        steer: float | None = None,
        *,
        allow_mismatch: bool = False,
    ) -> InterventionSpec:
        """:meth:`check_against` ``lm``'s weights, then :meth:`intervention`: the spec every
        bundle-aware caller applies (``capping``, chat sessions, ``persona_axis.generate``)."""
        self.check_against(lm.model, allow_mismatch=allow_mismatch)
        return self.intervention(cap, steer, lm=lm)

    # -- model checks -------------------------------------------------------------------------

    def check_model(
        self, shape: ModelShape, fingerprint: str | None = None, *, allow_mismatch: bool = False
    ) -> None:
        """Refuse a model this bundle was not built for.

        A different ``n_layers`` or hidden size always raises: the vectors cannot apply. A
        different architecture name or weight fingerprint raises unless ``allow_mismatch`` is set,
        in which case it warns (:class:`BundleMismatchWarning`). A fingerprint is only compared
        when both the bundle and the caller know one.
        """
        ours = self.model_shape
        built_for = _describe(self.model_id, ours)
        given = _describe(None, shape, "the model")
        if (ours.n_layers, ours.hidden_size) != (shape.n_layers, shape.hidden_size):
            raise PersonaAxisError(
                f"Bundle built for {built_for} cannot be applied to {given}: layer count or "
                "hidden size differ, so its vectors do not fit (allow_mismatch does not override "
                "this). Use a bundle built for this model, or build one with the pipeline."
            )
        problems = []
        if ours.architecture != shape.architecture:
            problems.append(f"architecture {ours.architecture} vs {shape.architecture}")
        if self.fingerprint and fingerprint and self.fingerprint != fingerprint:
            problems.append(f"weight fingerprint {self.fingerprint} vs {fingerprint}")
        if not problems:
            return
        message = (
            f"Bundle built for {built_for} does not match {given}: {'; '.join(problems)}. The "
            "axis of one model is meaningless for different weights."
        )
        if not allow_mismatch:
            raise PersonaAxisError(
                f"{message} Use a bundle built for this model, or pass allow_mismatch=True "
                "(CLI: --allow-mismatch) if you know the weights are equivalent."
            )
        warnings.warn(
            f"{message} Continuing because allow_mismatch=True.", BundleMismatchWarning, 2
        )

    def check_against(self, model: nn.Module, *, allow_mismatch: bool = False) -> None:
        """:meth:`check_model` with the shape and (if readable) fingerprint of ``model``."""
        self.check_model(
            shape_of(model),
            try_weight_fingerprint(model) if self.fingerprint else None,
            allow_mismatch=allow_mismatch,
        )

    # -- disk ---------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the bundle to ``directory`` (replacing a bundle there); returns the path.

        Files are written into a hidden sibling directory, the manifest last, and the directory
        is renamed into place. A directory holding anything but bundle files is not replaced.
        """
        target = Path(directory)
        if target.exists():
            if not target.is_dir():
                raise PersonaAxisError(f"{target} is a file; pass a directory path for the bundle.")
            foreign = sorted({p.name for p in target.iterdir()} - BUNDLE_FILES)
            if foreign:
                raise PersonaAxisError(
                    f"{target} holds files that are not part of a bundle ({foreign[:5]}); "
                    "save the bundle to a new or empty directory."
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        )
        try:
            save_file(
                _owning_copies(self.vectors),
                str(staging / VECTORS_FILE),
                metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)},
            )
            _fsync(staging / VECTORS_FILE)
            caps = {name: setting.to_dict() for name, setting in sorted(self.caps.items())}
            files.write_json(staging / CAPS_FILE, caps, indent=2, sort_keys=True)
            files.write_json(staging / MANIFEST_FILE, self.manifest, indent=2, sort_keys=True)
            _swap_into_place(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> AxisBundle:
        """Read and validate a bundle written by :meth:`save` (a build directory works too: its
        ``bundle/`` is read)."""
        root = bundle_directory(directory)
        if not root.is_dir():
            raise PersonaAxisError(
                f"No bundle directory at {root}; pass the directory written by AxisBundle.save "
                "(it holds manifest.json and vectors.safetensors)."
            )
        missing = [name for name in (MANIFEST_FILE, VECTORS_FILE) if not (root / name).is_file()]
        if missing:
            raise PersonaAxisError(
                f"{root} is not a complete bundle: {', '.join(missing)} missing. Re-run the step "
                "that wrote it, or point at the right directory."
            )
        manifest = _read_json(root / MANIFEST_FILE)
        if not isinstance(manifest, dict):
            raise PersonaAxisError(f"{root / MANIFEST_FILE} must hold a JSON object; re-save it.")
        _check_manifest(manifest)
        vectors = _read_vectors(root / VECTORS_FILE)
        caps_path = root / CAPS_FILE
        caps_data = _read_json(caps_path) if caps_path.is_file() else {}
        if not isinstance(caps_data, dict) or not all(
            isinstance(v, dict) for v in caps_data.values()
        ):
            raise PersonaAxisError(
                f"{caps_path} must map setting names to setting objects; re-save the bundle."
            )
        try:
            caps = {name: CapSetting.from_dict(data) for name, data in caps_data.items()}
            return cls(vectors=vectors, manifest=manifest, caps=caps)
        except PersonaAxisError as exc:
            raise PersonaAxisError(f"Bundle at {root} is invalid: {exc}") from exc

    # -- validation helpers -------------------------------------------------------------------

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

    def _check_cap(self, setting: CapSetting) -> None:
        if setting.rule != CAP_RULE:
            raise PersonaAxisError(
                f"Cap setting {setting.name!r} has rule {setting.rule!r}; bundles hold only "
                f"{CAP_RULE!r} (convert reference ceilings with "
                "persona_axis.axis.reference.import_reference_capping)."
            )
        for item in setting.thresholds:
            self._check_layer(item.layer, f"cap setting {setting.name!r}")
        keys = setting.notes.get(DIRECTION_KEYS_NOTE)
        if keys is None:
            return
        if not isinstance(keys, list) or len(keys) != len(setting.thresholds):
            raise PersonaAxisError(
                f"Cap setting {setting.name!r}: notes[{DIRECTION_KEYS_NOTE!r}] must list one "
                "vector key per threshold."
            )
        for key, item in zip(keys, setting.thresholds, strict=True):
            self._direction(key, item.layer)

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


def bundle_directory(path: str | os.PathLike[str]) -> Path:
    """The directory holding a bundle: ``path`` itself, or its ``bundle/`` when ``path`` is a
    build directory (from ``persona-axis build --out DIR``)."""
    root = Path(path)
    if not (root / MANIFEST_FILE).is_file() and (root / "bundle" / MANIFEST_FILE).is_file():
        return root / "bundle"
    return root


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


def _describe(model_id: str | None, shape: ModelShape, fallback: str = "an unnamed model") -> str:
    name = model_id or fallback
    return (
        f"{name} ({shape.architecture}, {shape.n_layers} layers, hidden size {shape.hidden_size})"
    )


def _check_manifest(manifest: Mapping[str, Any]) -> None:
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


def _owning_copies(vectors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Tensors that each own their storage (safetensors refuses shared or partial storage)."""
    seen: set[int] = set()
    result = {}
    for key, value in vectors.items():
        storage = value.untyped_storage()
        shared = storage.data_ptr() in seen or storage.nbytes() != value.numel() * 4
        seen.add(storage.data_ptr())
        result[key] = value.clone() if shared else value
    return result


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is moved aside first."""
    if not target.exists():
        staging.rename(target)
        return
    retired = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
    target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def _read_json(path: Path) -> Any:
    return files.read_json(
        path, fix="the bundle is damaged. Restore the file or re-save the bundle"
    )


def _read_vectors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise PersonaAxisError(
            f"{path} is not a readable safetensors file ({exc}); the bundle is damaged. Re-save it."
        ) from exc
