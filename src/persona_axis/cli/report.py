"""``persona-axis report``: one self-contained HTML page about a bundle and its drift results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from persona_axis.cli.common import console


def report(
    bundle: Annotated[Path, typer.Option(help="AxisBundle directory.")],
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("report.html"),
    monitor: Annotated[
        list[Path] | None,
        typer.Option("--monitor", help="monitor.json from persona-axis monitor (repeatable)."),
    ] = None,
    simulation: Annotated[
        Path | None, typer.Option(help="simulation.json from persona-axis simulate.")
    ] = None,
) -> None:
    """Write an HTML report: persona space, explained variance, roles and traits along the axis,
    cap thresholds per layer, and drift trajectories. Charts are embedded; no network needed."""
    from persona_axis.report import write_report

    path = write_report(bundle, out, monitor_files=monitor or [], simulation_file=simulation)
    size = path.stat().st_size / 1024
    console.print(f"wrote {path} ({size:.0f} KiB, self-contained)")
