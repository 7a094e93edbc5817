"""``persona-axis export`` and ``persona-axis import``: the axis in other tools' formats.

Formats (docs/interchange.md): ``gguf-control-vector``, llama.cpp's ``--control-vector-scaled``
file; ``reference``, the reference project's published ``assistant_axis.pt``,
``default_vector.pt`` and ``capping_config.pt``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from persona_axis.cli.common import (
    AllowMismatchOption,
    BundleOption,
    DtypeOption,
    ModelOption,
    console,
    errors,
    load,
    load_checked,
)
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.models.layers import ModelShape

CONTROL_VECTOR = "gguf-control-vector"
REFERENCE = "reference"
FORMATS = (CONTROL_VECTOR, REFERENCE)

FormatOption = Annotated[str, typer.Option("--format", help=f"One of: {', '.join(FORMATS)}.")]


def export(
    format_name: FormatOption,
    bundle: BundleOption,
    out: Annotated[
        Path, typer.Option(help="The .gguf file (gguf-control-vector) or a folder (reference).")
    ],
    layers: Annotated[
        str | None,
        typer.Option(
            help="gguf: layers to steer, a band like 14:18 (half-open) or a list like 14,16; "
            "default: the target layer. Layer 0 cannot be exported."
        ),
    ] = None,
    scale: Annotated[
        float | None,
        typer.Option(
            help="gguf: M in direction.L = M × mean residual norm at L × unit axis, so that "
            "llama.cpp's SCALE s steers by s × M (default 1: SCALE = our --steer multiple)."
        ),
    ] = None,
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
    allow_mismatch: AllowMismatchOption = False,
) -> None:
    """Write a bundle's axis for another tool: a llama.cpp control vector, or the reference
    project's files.

    The model is loaded only when a control vector needs mean residual norms the bundle does
    not store (bundles from ``build`` store them).
    """
    from persona_axis.axis.bundle import MEAN_NORM_KEY, AxisBundle

    _check_format(format_name)
    axis_bundle = AxisBundle.load(bundle)
    if format_name == REFERENCE:
        if layers is not None or scale is not None:
            raise PersonaAxisError(
                "--layers and --scale apply to --format gguf-control-vector only; the reference "
                "layout holds the whole axis and the cap settings."
            )
        from persona_axis.axis.reference import export_reference

        paths = export_reference(axis_bundle, out)
        console.print("wrote " + ", ".join(str(p) for p in paths), soft_wrap=True)
        return

    from persona_axis.axis.control_vector import export_control_vector
    from persona_axis.drift.monitor import parse_layers

    chosen = None if layers is None else parse_layers(layers, axis_bundle.shape[0])
    lm = None
    if MEAN_NORM_KEY not in axis_bundle.vectors:
        lm = load_checked(axis_bundle, model, dtype, allow_mismatch)
    multiple = 1.0 if scale is None else scale
    path = export_control_vector(axis_bundle, out, layers=chosen, multiple=multiple, lm=lm)
    steered = [axis_bundle.target_layer] if chosen is None else chosen
    console.print(
        f"wrote {path}: direction.L = {multiple:g} × mean residual norm × unit axis at layers "
        f"{steered} (our layer L = llama.cpp direction.L)",
        soft_wrap=True,
    )
    console.print(
        f"llama.cpp: llama-cli -m MODEL.gguf --control-vector-scaled {path}:1.0  "
        f"(SCALE s adds s × {multiple:g} × mean norm along the axis; + toward the Assistant)",
        soft_wrap=True,
    )


def import_bundle(
    out: Annotated[Path, typer.Option(help="Bundle directory to write.")],
    file: Annotated[
        Path | None, typer.Argument(help="gguf-control-vector: the control vector .gguf file.")
    ] = None,
    format_name: FormatOption = CONTROL_VECTOR,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="The model the vectors belong to (HF id or local path; default: the embedded "
            "SmolLM2). Only its config is read, unless --fingerprint.",
        ),
    ] = None,
    axis: Annotated[
        Path | None, typer.Option(help="reference: assistant_axis.pt (the axis, required).")
    ] = None,
    default: Annotated[
        Path | None, typer.Option("--default", help="reference: default_vector.pt (optional).")
    ] = None,
    capping: Annotated[
        Path | None, typer.Option(help="reference: capping_config.pt (optional; its caps).")
    ] = None,
    target_layer: Annotated[
        int | None,
        typer.Option(help="reference: layer to read the axis at (default n_layers // 2)."),
    ] = None,
    fingerprint: Annotated[
        bool,
        typer.Option(
            help="Load the weights and record their fingerprint, so the bundle later refuses "
            "other weights (reads the whole model)."
        ),
    ] = False,
    revision: Annotated[
        str | None, typer.Option(help="Model revision (HF hub), read and recorded.")
    ] = None,
    dtype: DtypeOption = "auto",
) -> None:
    """Make a bundle from a llama.cpp control vector or from the reference project's files.

    The model's shape comes from its config alone (built on the meta device, no weights read),
    so importing the published axis of a 32B or 70B model takes seconds; --fingerprint loads the
    weights to record their fingerprint. The bundle then works with monitor, chat, serve and
    eval like a built one.
    """
    _check_format(format_name)
    if format_name == CONTROL_VECTOR:
        if (
            axis is not None
            or default is not None
            or capping is not None
            or target_layer is not None
        ):
            raise PersonaAxisError(
                "--axis, --default, --capping and --target-layer belong to --format reference; "
                "a control vector is given as the file argument."
            )
        if file is None:
            raise PersonaAxisError(
                "Give the control vector file: persona-axis import FILE.gguf --format "
                "gguf-control-vector --model M --out DIR."
            )
    else:
        if file is not None:
            raise PersonaAxisError(
                f"--format reference takes its files as options (--axis, --default, --capping), "
                f"not the argument {file}."
            )
        if axis is None:
            raise PersonaAxisError(
                "--format reference needs --axis assistant_axis.pt (the reference axis file)."
            )
    shape, model_id, weights = _model_identity(model, revision, dtype, fingerprint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new = _imported(
            format_name,
            file,
            axis,
            default,
            capping,
            target_layer,
            shape,
            (model_id, revision, weights),
        )
    for warning in caught:
        errors.print(f"[yellow]warning:[/] {warning.message}", soft_wrap=True, markup=True)
    path = new.save(out)
    _print_summary(new, path)


def _imported(
    format_name: str,
    file: Path | None,
    axis: Path | None,
    default: Path | None,
    capping: Path | None,
    target_layer: int | None,
    shape: ModelShape,
    identity: tuple[str, str | None, str | None],
) -> AxisBundle:
    """The bundle of ``format_name``; ``identity`` is (model id, revision, fingerprint)."""
    model_id, revision, weights = identity
    if format_name == CONTROL_VECTOR:
        from persona_axis.axis.control_vector import bundle_from_control_vector

        assert file is not None
        return bundle_from_control_vector(
            file, model_shape=shape, model_id=model_id, revision=revision, fingerprint=weights
        )
    from persona_axis.axis.reference import bundle_from_reference

    assert axis is not None
    return bundle_from_reference(
        axis,
        capping,
        model_shape=shape,
        model_id=model_id,
        default_path=default,
        revision=revision,
        fingerprint=weights,
        target_layer=target_layer,
    )


def _model_identity(
    model: str | None, revision: str | None, dtype: str, fingerprint: bool
) -> tuple[ModelShape, str, str | None]:
    """``(shape, model id, weight fingerprint or None)``; weights are read only for the
    fingerprint, else the shape comes from the config on the meta device."""
    from persona_axis.models.loading import load_model, load_shape, resolve_source

    if fingerprint:
        from persona_axis.models.fingerprint import weight_fingerprint

        lm = (
            load(model, dtype)
            if revision is None
            else load_model(model, dtype=dtype, revision=revision)
        )
        return lm.shape, lm.name, weight_fingerprint(lm.model)
    with console.status(f"Reading the config of {model or 'the default model'}..."):
        shape = load_shape(model, revision=revision)
    return shape, resolve_source(model)[1], None


def _check_format(format_name: str) -> None:
    if format_name not in FORMATS:
        raise PersonaAxisError(f"Unknown format {format_name!r}; use one of: {', '.join(FORMATS)}.")


def _print_summary(bundle: AxisBundle, path: Path) -> None:
    layers = bundle.axis_layers
    n_layers = bundle.shape[0]
    where = "all layers" if len(layers) == n_layers else f"layers {layers} (others absent)"
    caps = ", ".join(sorted(bundle.caps)) or "none"
    console.print(
        f"wrote bundle {path} for {bundle.model_id} ({n_layers} layers, hidden size "
        f"{bundle.shape[1]}): axis at {where}, target layer {bundle.target_layer}; cap settings: "
        f"{caps}; recommended: {bundle.recommended_cap or 'none'}",
        soft_wrap=True,
    )
    console.print(
        f"next: persona-axis monitor FILE --bundle {path}   or   persona-axis chat --bundle "
        f"{path}" + (" --cap recommended" if bundle.caps else " --steer 0.5"),
        soft_wrap=True,
    )
