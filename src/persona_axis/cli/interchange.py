"""``persona-axis export`` and ``persona-axis import``: the axis in other tools' formats.

Shells over :mod:`persona_axis.axis.interchange`, which holds the formats (docs/interchange.md):
``gguf-control-vector``, llama.cpp's ``--control-vector-scaled`` file; ``reference``, the
reference project's published ``assistant_axis.pt``, ``default_vector.pt`` and
``capping_config.pt``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from persona_axis.axis.interchange import CONTROL_VECTOR, FORMATS
from persona_axis.cli.common import (
    AllowMismatchOption,
    BundleOption,
    DtypeOption,
    ModelOption,
    console,
    errors,
    load,
    load_checked,
    parse_layers,
)

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.models.layers import ModelShape

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
            help="gguf: layers to steer, a range like 14:18 (half-open) or a list like 14,16; "
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
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.axis.interchange import (
        REFERENCE,
        check_format,
        export_axis,
        export_needs_model,
    )

    check_format(format_name)
    axis_bundle = AxisBundle.load(bundle)
    chosen = None if layers is None else parse_layers(layers, axis_bundle.shape[0])
    lm = None
    if export_needs_model(axis_bundle, format_name):
        lm = load_checked(axis_bundle, model, dtype, allow_mismatch)
    paths = export_axis(axis_bundle, format_name, out, layers=chosen, scale=scale, lm=lm)
    if format_name == REFERENCE:
        console.print("wrote " + ", ".join(str(p) for p in paths), soft_wrap=True)
        return
    path = paths[0]
    multiple = 1.0 if scale is None else scale
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
    from persona_axis.axis.interchange import ImportSources, import_axis

    sources = ImportSources(file, axis, default, capping, target_layer)
    sources.check(format_name)
    shape, model_id, weights = _model_identity(model, revision, dtype, fingerprint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new = import_axis(
            format_name,
            sources,
            model_shape=shape,
            model_id=model_id,
            revision=revision,
            fingerprint=weights,
        )
    for warning in caught:
        errors.print(f"[yellow]warning:[/] {warning.message}", soft_wrap=True, markup=True)
    path = new.save(out)
    _print_summary(new, path)


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
