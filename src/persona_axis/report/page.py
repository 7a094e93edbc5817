"""Assemble the report page from a bundle and optional monitor and simulation results.

Sections: the model and key figures; the axis quality metrics (stability, held-out separation,
persona-space structure, each with its bootstrap 95% interval, and the warnings); the persona
space (PC1/PC2 scatter of roles with the default marked) and its explained variance; roles
along the axis; trait cosines with the axis at both ends; cos(axis, PC1) per layer; cap
thresholds per layer over the projection percentiles; drift trajectories from
``persona-axis monitor`` and ``persona-axis simulate`` results. Missing parts of a bundle
(imported axes have no persona space) are stated, not invented. All projections are on the
unit axis at the target layer unless said otherwise. The sections are built in
:mod:`~persona_axis.report.sections`, the HTML pieces in :mod:`~persona_axis.report.html`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from persona_axis._version import __version__
from persona_axis.report.html import STYLE, escape, figures, number
from persona_axis.report.sections import (
    caps_section,
    load_result,
    monitor_section,
    quality_section,
    rankings_of,
    rankings_section,
    simulation_section,
    space_section,
)


def build_report(
    bundle_dir: str | Path,
    *,
    monitor_files: Sequence[str | Path] = (),
    simulation_file: str | Path | None = None,
) -> str:
    """The report page as one HTML string (module doc)."""
    from persona_axis.axis.bundle import AxisBundle

    monitors = [(path, load_result(path, "monitor")) for path in monitor_files]
    simulation = None if simulation_file is None else load_result(simulation_file, "simulation")
    bundle = AxisBundle.load(bundle_dir)
    manifest = bundle.manifest
    model = manifest["model"]
    space = manifest.get("space") or {}
    rankings = rankings_of(bundle)
    counts = manifest.get("counts") or {}
    ratios = space.get("explained_variance_ratio") or []
    key = [
        ("target layer", escape(bundle.target_layer)),
        ("layers × hidden size", f"{escape(model['n_layers'])} × {escape(model['hidden_size'])}"),
        ("roles in the axis", number(counts.get("roles_kept", len(bundle.roles())))),
        ("cos(axis, PC1) at the target layer", number(space.get("cos_axis_pc1"))),
        ("PC1 variance explained", f"{ratios[0]:.1%}" if ratios else "—"),
        ("recommended cap", escape(manifest.get("recommended_cap") or "—")),
    ]
    title = f"Assistant Axis report: {model.get('id') or 'unknown model'}"
    sections = [
        quality_section(manifest),
        space_section(manifest),
        rankings_section(rankings),
        caps_section(bundle),
        *(monitor_section(path, data) for path, data in monitors),
    ]
    if simulation is not None:
        sections.append(simulation_section(simulation))
    judge = (manifest.get("judge") or {}).get("name", "—")
    created = manifest.get("created_utc", "—")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body><main>",
            f"<h1>{escape(title)}</h1>",
            f'<p class="lede">{escape(model.get("architecture"))}; bundle built '
            f"{escape(created)} with judge {escape(judge)}. Layer L is the output of decoder "
            "block L (0-based); projections are on the unit axis; higher = more "
            "Assistant-like.</p>",
            figures(key),
            *sections,
            f"<footer>persona-axis {escape(__version__)}, report written {escape(now)} "
            f"from {escape(bundle_dir)}.</footer>",
            "</main></body></html>",
        ]
    )


def write_report(
    bundle_dir: str | Path,
    out: str | Path,
    *,
    monitor_files: Sequence[str | Path] = (),
    simulation_file: str | Path | None = None,
) -> Path:
    """Write :func:`build_report` to ``out`` (parents created); returns the path."""
    page = build_report(bundle_dir, monitor_files=monitor_files, simulation_file=simulation_file)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target
