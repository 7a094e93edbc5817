"""The axis in other tools' formats: the registry of formats, each with its export and import.

Formats (docs/interchange.md): ``gguf-control-vector``, llama.cpp's ``--control-vector-scaled``
file (:mod:`~persona_axis.axis.control_vector`); ``reference``, the reference project's
published ``assistant_axis.pt``, ``default_vector.pt`` and ``capping_config.pt``
(:mod:`~persona_axis.axis.reference`). ``persona-axis export`` and ``import`` are shells over
:func:`export_axis` and :func:`import_axis`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.models.layers import ModelShape
    from persona_axis.models.loading import LoadedModel

CONTROL_VECTOR = "gguf-control-vector"
REFERENCE = "reference"
FORMATS = (CONTROL_VECTOR, REFERENCE)


def check_format(format_name: str) -> None:
    """Refuse a format name that is not in :data:`FORMATS`."""
    if format_name not in FORMATS:
        raise PersonaAxisError(f"Unknown format {format_name!r}; use one of: {', '.join(FORMATS)}.")


def export_needs_model(bundle: AxisBundle, format_name: str) -> bool:
    """Whether exporting ``bundle`` as ``format_name`` needs the model: a control vector needs
    mean residual norms, which bundles from ``build`` store and imported ones may not."""
    from persona_axis.axis.bundle import MEAN_NORM_KEY

    check_format(format_name)
    return format_name == CONTROL_VECTOR and MEAN_NORM_KEY not in bundle.vectors


def export_axis(
    bundle: AxisBundle,
    format_name: str,
    out: str | Path,
    *,
    layers: Sequence[int] | None = None,
    scale: float | None = None,
    lm: LoadedModel | None = None,
) -> list[Path]:
    """Write ``bundle``'s axis as ``format_name`` to ``out`` (a .gguf file, or a folder for
    ``reference``); the files written.

    Control vector only: ``layers`` to steer (default: the target layer), ``scale`` the
    multiple M of the mean residual norm (default 1), ``lm`` for the norms when the bundle
    lacks them (:func:`export_needs_model`)."""
    check_format(format_name)
    if format_name == REFERENCE:
        if layers is not None or scale is not None:
            raise PersonaAxisError(
                "--layers and --scale apply to --format gguf-control-vector only; the reference "
                "layout holds the whole axis and the cap settings."
            )
        from persona_axis.axis.reference import export_reference

        return export_reference(bundle, out)
    from persona_axis.axis.control_vector import export_control_vector

    multiple = 1.0 if scale is None else scale
    return [export_control_vector(bundle, out, layers=layers, multiple=multiple, lm=lm)]


@dataclass(frozen=True)
class ImportSources:
    """The files an import reads: ``file`` (a control vector .gguf), or for ``reference``
    ``axis`` (required), ``default`` and ``capping`` (optional), and ``target_layer`` (the
    layer to read the reference axis at; default ``n_layers // 2``)."""

    file: Path | None = None
    axis: Path | None = None
    default: Path | None = None
    capping: Path | None = None
    target_layer: int | None = None

    def check(self, format_name: str) -> None:
        """Refuse sources that ``format_name`` does not take, or a missing required one."""
        check_format(format_name)
        if format_name == CONTROL_VECTOR:
            reference_only = (self.axis, self.default, self.capping, self.target_layer)
            if any(value is not None for value in reference_only):
                raise PersonaAxisError(
                    "--axis, --default, --capping and --target-layer belong to --format "
                    "reference; a control vector is given as the file argument."
                )
            if self.file is None:
                raise PersonaAxisError(
                    "Give the control vector file: persona-axis import FILE.gguf --format "
                    "gguf-control-vector --model M --out DIR."
                )
            return
        if self.file is not None:
            raise PersonaAxisError(
                f"--format reference takes its files as options (--axis, --default, --capping), "
                f"not the argument {self.file}."
            )
        if self.axis is None:
            raise PersonaAxisError(
                "--format reference needs --axis assistant_axis.pt (the reference axis file)."
            )


def import_axis(
    format_name: str,
    sources: ImportSources,
    *,
    model_shape: ModelShape,
    model_id: str,
    revision: str | None = None,
    fingerprint: str | None = None,
) -> AxisBundle:
    """A new bundle from ``sources`` in ``format_name`` for the model of ``model_shape``
    (recorded as ``model_id``, ``revision`` and weight ``fingerprint``); not saved."""
    sources.check(format_name)
    if format_name == CONTROL_VECTOR:
        from persona_axis.axis.control_vector import bundle_from_control_vector

        assert sources.file is not None
        return bundle_from_control_vector(
            sources.file,
            model_shape=model_shape,
            model_id=model_id,
            revision=revision,
            fingerprint=fingerprint,
        )
    from persona_axis.axis.reference import bundle_from_reference

    assert sources.axis is not None
    return bundle_from_reference(
        sources.axis,
        sources.capping,
        model_shape=model_shape,
        model_id=model_id,
        default_path=sources.default,
        revision=revision,
        fingerprint=fingerprint,
        target_layer=sources.target_layer,
    )
