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
    from persona_axis.cli.build import print_quality
    from persona_axis.errors import PersonaAxisError
    from persona_axis.pipeline.validate import validate_build

    checked = validate_build(build_dir)
    console.print(f"target layer {checked.layer}: {checked.reason}")
    if checked.unavailable is not None:
        raise PersonaAxisError(f"Cannot assess this build: {checked.unavailable}")
    print_quality(checked.figures, checked.layer, checked.warnings)
    if checked.matches_manifest is not None:
        console.print(
            "the bundle's manifest holds the same figures"
            if checked.matches_manifest
            else "[bold red]the bundle's manifest holds other quality figures[/] (built by "
            "another version, or edited); rebuild the bundle to refresh them"
        )
    if json_out is not None:
        console.print(f"written: {files.write_json(json_out, checked.quality)}")
    if fail_on_warning and checked.worrying:
        raise typer.Exit(1)
