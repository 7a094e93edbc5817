"""The AxisBundle: the on-disk artifact that every downstream stage reads.

A bundle holds the vectors (``axis`` [n_layers, d] and more), a manifest describing the model
and provenance, and named cap settings. Its parts, one idea each:

- :mod:`~persona_axis.axis.bundle_data`: the data, its validation and accessors, the manifest;
- :mod:`~persona_axis.axis.bundle_caps`: cap settings, the recommended one, floors;
- :mod:`~persona_axis.axis.bundle_check`: the weight check against a model;
- :mod:`~persona_axis.axis.bundle_files`: the directory of files, atomic saves, checked loads;
- this module: :class:`AxisBundle` itself, which adds creation, saving and loading, and using
  the bundle on a model (mean norms, interventions, capping, loading its model).

Every public name of those parts is importable from here. Layer L is the output of decoder block
L, 0-based (= Hugging Face ``hidden_states[L + 1]``). Caps are floors along +axis. Nothing is
ever unpickled. Bundles from the reference project's published files:
:mod:`persona_axis.axis.reference`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from persona_axis.axis.bundle_caps import (
    DIRECTION_KEYS_NOTE,
    NO_CAP,
    RECOMMENDED,
    BundleCaps,
)
from persona_axis.axis.bundle_check import BundleMismatchWarning, check_fits
from persona_axis.axis.bundle_data import (
    FORMAT,
    FORMAT_VERSION,
    LAYER_CONVENTION,
    LAYERWISE_KEYS,
    LAYERWISE_PREFIXES,
    MEAN_NORM_KEY,
    RESERVED_MANIFEST_KEYS,
    new_manifest,
)
from persona_axis.axis.bundle_files import (
    BUNDLE_FILES,
    CAPS_FILE,
    MANIFEST_FILE,
    VECTORS_FILE,
    bundle_directory,
    read_bundle,
    write_bundle,
)
from persona_axis.axis.calibrate import CapSetting, ProjectionPercentiles
from persona_axis.errors import PersonaAxisError
from persona_axis.models.fingerprint import try_weight_fingerprint
from persona_axis.models.layers import ModelShape
from persona_axis.models.layers import model_shape as shape_of

if TYPE_CHECKING:
    from pathlib import Path

    from persona_axis.inference.interventions import InterventionSpec
    from persona_axis.models.loading import LoadedModel

__all__ = [
    "BENIGN_PROFILE_KEY",
    "BUNDLE_FILES",
    "CAPS_FILE",
    "DIRECTION_KEYS_NOTE",
    "FORMAT",
    "FORMAT_VERSION",
    "LAYERWISE_KEYS",
    "LAYERWISE_PREFIXES",
    "LAYER_CONVENTION",
    "MANIFEST_FILE",
    "MEAN_NORM_KEY",
    "NO_CAP",
    "RECOMMENDED",
    "RESERVED_MANIFEST_KEYS",
    "VECTORS_FILE",
    "AxisBundle",
    "BundleMismatchWarning",
    "bundle_directory",
]

BENIGN_PROFILE_KEY = "benign_profile"


class AxisBundle(BundleCaps):
    """Vectors, manifest and named cap settings for one model; validated on construction.

    ``vectors`` are stored as contiguous float32 CPU tensors. Build a new bundle with
    :meth:`create`, which writes the manifest; read one with :meth:`load`.
    """

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
        manifest = new_manifest(
            model_shape,
            model_id=model_id,
            revision=revision,
            fingerprint=fingerprint,
            target_layer=target_layer,
            extras=extras,
        )
        return cls(vectors=dict(vectors), manifest=manifest, caps=dict(caps or {}))

    # -- the build's projection percentiles and the drift monitor's benign profile ---------------

    @property
    def projection_percentiles(self) -> ProjectionPercentiles | None:
        """The build's projection percentiles per layer and rollout kind (None when the bundle
        records none, e.g. an imported axis)."""
        return ProjectionPercentiles.from_manifest(self.manifest)

    @property
    def benign_profile(self) -> dict[str, Any] | None:
        """The drift monitor's benign profile (manifest ``benign_profile``, written by
        ``persona-axis calibrate-monitor``; read by
        :class:`persona_axis.drift.profile.BenignProfile`), or None."""
        value = self.manifest.get(BENIGN_PROFILE_KEY)
        return dict(value) if isinstance(value, dict) else None

    def set_benign_profile(self, data: Mapping[str, Any]) -> None:
        """Store a benign profile (plain JSON) in the manifest; :meth:`save` writes it."""
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PersonaAxisError(f"A benign profile must be plain JSON ({exc}).") from exc
        self.manifest[BENIGN_PROFILE_KEY] = dict(data)

    # -- on a model: mean norms, interventions, capping, its model -----------------------------

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

    def load_model(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        dtype: str | torch.dtype | None = "auto",
        device: str | torch.device | None = None,
        device_map: str | dict[str, Any] | None = None,
        allow_mismatch: bool = False,
    ) -> LoadedModel:
        """Load the model this bundle is for and check it against the weights.

        The one model rule: ``model`` when given, else the model recorded in the manifest,
        else the embedded default. Options as in :func:`persona_axis.models.load_model`.
        """
        from persona_axis.models.loading import load_model

        lm = load_model(
            self.model_id if model is None else model,
            dtype=dtype,
            device=device,
            device_map=device_map,
        )
        self.check_against(lm.model, allow_mismatch=allow_mismatch)
        return lm

    # -- the weight check ----------------------------------------------------------------------

    def check_model(
        self, shape: ModelShape, fingerprint: str | None = None, *, allow_mismatch: bool = False
    ) -> None:
        """Refuse a model this bundle was not built for (:mod:`~persona_axis.axis.bundle_check`):
        a different ``n_layers`` or hidden size always raises; a different architecture name or
        weight fingerprint raises unless ``allow_mismatch`` is set, in which case it warns
        (:class:`BundleMismatchWarning`)."""
        check_fits(
            self.model_shape,
            shape,
            model_id=self.model_id,
            fingerprint=self.fingerprint,
            given_fingerprint=fingerprint,
            allow_mismatch=allow_mismatch,
        )

    def check_against(self, model: nn.Module, *, allow_mismatch: bool = False) -> None:
        """:meth:`check_model` with the shape and (if readable) fingerprint of ``model``."""
        self.check_model(
            shape_of(model),
            try_weight_fingerprint(model) if self.fingerprint else None,
            allow_mismatch=allow_mismatch,
        )

    # -- disk ----------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the bundle to ``directory`` (replacing a bundle there); returns the path.

        Files are written into a hidden sibling directory, the manifest last, and the directory
        is renamed into place. A directory holding anything but bundle files is not replaced.
        """
        caps = {name: setting.to_dict() for name, setting in sorted(self.caps.items())}
        return write_bundle(directory, self.vectors, self.manifest, caps)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> AxisBundle:
        """Read and validate a bundle written by :meth:`save` (a build directory works too: its
        ``bundle/`` is read)."""
        root, vectors, manifest, caps_data = read_bundle(directory)
        try:
            caps = {name: CapSetting.from_dict(data) for name, data in caps_data.items()}
            return cls(vectors=vectors, manifest=manifest, caps=caps)
        except PersonaAxisError as exc:
            raise PersonaAxisError(f"Bundle at {root} is invalid: {exc}") from exc
