"""``persona-axis validate``: recompute a build's axis quality metrics from its stored rollouts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from persona_axis.cli.common import console


def validate(
    build_dir: Annotated[
        Path, typer.Argument(help="Build directory (the --out of persona-axis build).")
    ],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the metrics to this JSON file.")
    ] = None,
    fail_on_warning: Annotated[
        bool, typer.Option(help="Exit with status 1 when the axis is unstable or barely separates.")
    ] = False,
) -> None:
    """Axis quality (stability, held-out separation, persona space) with bootstrap 95%
    intervals, recomputed from the build directory's store; no model is loaded."""
    from persona_axis import files
    from persona_axis.axis.quality import summary_at, warnings_for
    from persona_axis.cli.build import print_quality
    from persona_axis.errors import PersonaAxisError
    from persona_axis.pipeline.stages import assess_build

    if not (build_dir / "work").is_dir() and (build_dir.parent / "work").is_dir():
        build_dir = build_dir.parent  # given the bundle inside a build directory
    quality = assess_build(build_dir)
    layer = quality["target_layer"]["layer"]
    console.print(f"target layer {layer}: {quality['target_layer']['reason']}")
    if "unavailable" in quality:
        raise PersonaAxisError(f"Cannot assess this build: {quality['unavailable']}")
    warnings = warnings_for(quality, layer)
    print_quality(summary_at(quality, layer), layer, warnings)
    manifest = build_dir / "bundle" / "manifest.json"
    if manifest.is_file():
        stored = files.read_json(manifest, fix="rerun persona-axis build").get("quality")
        same = stored == quality
        console.print(
            "the bundle's manifest holds the same figures"
            if same
            else "[bold red]the bundle's manifest holds other quality figures[/] (built by "
            "another version, or edited); rebuild the bundle to refresh them"
        )
    if json_out is not None:
        console.print(f"written: {files.write_json(json_out, quality)}")
    if fail_on_warning and any(not w.startswith("note") for w in warnings):
        raise typer.Exit(1)
