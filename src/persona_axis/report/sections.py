"""The sections of the report page: axis quality, persona space, roles along the axis, cap
thresholds (from the bundle), and drift trajectories (from ``persona-axis monitor`` and
``persona-axis simulate`` results). Missing parts of a bundle are stated, not invented.
Projections are on the unit axis at the target layer unless said otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_axis.errors import PersonaAxisError
from persona_axis.report import plots
from persona_axis.report.html import escape, image, number, table

if TYPE_CHECKING:
    from persona_axis.axis.bundle import AxisBundle


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PersonaAxisError(f"Cannot read the {what} file {path}: {exc.strerror}.") from exc
    except json.JSONDecodeError as exc:
        raise PersonaAxisError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); pass the {what} file "
            "written by persona-axis."
        ) from exc
    if not isinstance(data, dict):
        raise PersonaAxisError(f"{path} is not a {what} file (expected a JSON object).")
    return data


def load_result(path: str | Path, kind: str) -> dict[str, Any]:
    """A ``monitor`` or ``simulation`` result file, checked by its format tag."""
    data = _read_json(path, f"{kind} results")
    if data.get("format") != f"persona-axis {kind}":
        command = "simulate" if kind == "simulation" else kind
        raise PersonaAxisError(
            f"{path} is not a persona-axis {kind} result ({kind}.json from persona-axis {command})."
        )
    return data


def rankings_of(bundle: AxisBundle) -> dict[str, Any] | None:
    """The manifest's rankings, else computed from the vectors when roles are stored."""
    stored = bundle.manifest.get("rankings")
    if isinstance(stored, dict):
        return stored
    roles = bundle.roles()
    if not roles and not bundle.traits():
        return None
    from persona_axis.axis.vectors import cosine_by_layer, project

    layer = bundle.target_layer
    traits = bundle.traits()
    return {
        "layer": layer,
        "default_projection": float(project(bundle.default[layer], bundle.axis, layer))
        if "default" in bundle.vectors
        else None,
        "roles_by_projection": sorted(
            ((n, float(project(v[layer], bundle.axis, layer))) for n, v in roles.items()),
            key=lambda item: -item[1],
        ),
        "traits_by_cosine": sorted(
            ((n, float(cosine_by_layer(v, bundle.axis)[layer])) for n, v in traits.items()),
            key=lambda item: -item[1],
        ),
    }


def space_section(manifest: dict[str, Any]) -> str:
    space = manifest.get("space")
    if not isinstance(space, dict) or not space.get("loadings"):
        return (
            '<section class="card"><h2>Persona space</h2><p class="note">This bundle holds no '
            "persona space (imported axes have none); build one with "
            "<code>persona-axis build</code>.</p></section>"
        )
    ratios = space.get("explained_variance_ratio") or []
    scatter = plots.persona_space_png(
        space["names"], space["loadings"], space.get("default_loading"), ratios, space["layer"]
    )
    parts = [
        '<section class="card"><h2>Persona space</h2>',
        f'<p class="lede">PCA of the role vectors at layer {escape(space["layer"])} (mean-centred, '
        "not scaled). PC1 is signed so the default Assistant lies at its positive end; the "
        "paper finds PC1 is the Assistant-likeness direction in every model.</p>",
        image(scatter, "Persona space: roles on PC1 and PC2, the default marked"),
    ]
    if ratios:
        parts.append(image(plots.variance_png(ratios), "Explained variance per component"))
        needed = space.get("components_for_70pct")
        parts.append(
            f'<p class="note">Components for 70% of the variance: {number(needed)}; PC1 explains '
            f"{ratios[0]:.1%}.</p>"
        )
    by_layer = space.get("cos_axis_pc1_by_layer")
    if by_layer:
        parts.append(
            image(
                plots.line_png(
                    by_layer,
                    title="cos(axis, PC1) per layer",
                    xlabel="layer (decoder block output, 0-based)",
                    ylabel="cosine",
                ),
                "Cosine of the axis with PC1 per layer",
            )
        )
    parts.append("</section>")
    return "".join(parts)


def quality_section(manifest: dict[str, Any]) -> str:
    """The build's axis quality (manifest ``quality``): figures at the target layer with their
    intervals, why that layer, the warnings, and every layer's estimates."""
    from persona_axis.axis.quality import METRICS

    quality = manifest.get("quality")
    head = '<section class="card"><h2>Axis quality</h2>'
    if not isinstance(quality, dict):
        return (
            head + '<p class="note">This bundle records no quality metrics (imported axes and '
            "bundles from older builds have none); <code>persona-axis validate BUILD_DIR</code> "
            "recomputes them from a build directory.</p></section>"
        )
    target = quality.get("target_layer") or {}
    parts = [head]
    if "unavailable" in quality:
        parts.append(f'<p class="alarm">Not assessed: {escape(quality["unavailable"])}</p>')
        return "".join([*parts, "</section>"])
    layer = int(target.get("layer", manifest.get("target_layer", 0)))
    parts.append(
        f'<p class="lede">At the target layer {layer} ({escape(target.get("reason", ""))}). '
        "Stability: cosine between axes built from two disjoint halves of the questions, or "
        "of the roles. Held-out separation: default against in-role replies, each projected on "
        "the axis built without its question block. Intervals: bootstrap 95% "
        "(docs/axis-quality.md).</p>"
    )
    rows = []
    for key, label, spec in METRICS:
        value = quality[key]["estimate"][layer]
        low, high = quality[key]["ci95"][layer]
        rows.append(
            [escape(label), number(value, spec), f"{number(low, spec)} – {number(high, spec)}"]
        )
    parts.append(table(["metric", "estimate", "95% interval"], rows, {1}))
    for warning in quality.get("warnings") or []:
        css = "note" if str(warning).startswith("note") else "alarm"
        parts.append(f'<p class="{css}">{escape(warning)}</p>')
    per_layer = [
        [
            f"<b>{index}</b>" if index == layer else str(index),
            *(number(quality[key]["estimate"][index], spec) for key, _, spec in METRICS),
        ]
        for index in range(len(quality["heldout_auroc"]["estimate"]))
    ]
    parts.append(
        "<details><summary>every layer</summary>"
        + table(["layer", *(label for _, label, _ in METRICS)], per_layer, {1, 2, 3, 4, 5, 6})
        + "</details>"
    )
    parts.append("</section>")
    return "".join(parts)


def rankings_section(rankings: dict[str, Any] | None) -> str:
    if rankings is None:
        return (
            '<section class="card"><h2>Roles and traits along the axis</h2><p class="note">No '
            "role or trait vectors in this bundle.</p></section>"
        )
    parts = ['<section class="card"><h2>Roles and traits along the axis</h2>']
    roles = [(str(n), float(v)) for n, v in rankings.get("roles_by_projection") or []]
    default = rankings.get("default_projection")
    if roles:
        parts.append(
            f'<p class="lede">Projection of each role vector on the unit axis at layer '
            f"{escape(rankings.get('layer'))}; higher = more Assistant-like. The dashed line is "
            "the default (Assistant) vector.</p>"
        )
        marker = ("default", float(default)) if default is not None else None
        png = plots.ranked_bars_png(
            roles, title="Roles along the axis", xlabel="projection", marker=marker
        )
        parts.append(image(png, "Role projections on the axis"))
    traits = [(str(n), float(v)) for n, v in rankings.get("traits_by_cosine") or []]
    if traits:
        parts.append(
            '<p class="lede">Cosine of each trait vector (positive minus negative prompt) with '
            "the axis: the top bars are traits of the Assistant end, the bottom bars those of "
            "the far end.</p>"
        )
        png = plots.ranked_bars_png(
            traits, title="Trait cosines with the axis (both ends)", xlabel="cosine"
        )
        parts.append(image(png, "Trait cosines with the axis"))
        ends = min(5, len(traits) // 2) or len(traits)
        rows = [
            [escape(n), number(c)]
            for n, c in traits[:ends] + (traits[-ends:] if len(traits) > 1 else [])
        ]
        parts.append(table(["trait", "cosine"], rows, {1}))
    parts.append("</section>")
    return "".join(parts)


def caps_section(bundle: AxisBundle) -> str:
    manifest = bundle.manifest
    if not bundle.caps:
        return (
            '<section class="card"><h2>Cap thresholds</h2><p class="note">This bundle has no '
            "cap settings.</p></section>"
        )
    recommended = manifest.get("recommended_cap")
    chosen = _charted_caps(bundle, recommended)
    settings = {
        name: [(t.layer, t.threshold) for t in bundle.caps[name].thresholds] for name in chosen
    }
    found = bundle.projection_percentiles
    lines: dict[str, list[float]] = {}
    if found is not None:
        for index, pct in enumerate(found.percentiles):
            lines[f"all replies p{pct:g}"] = [row[index] for row in found.all_rollouts]
    png = plots.caps_png(settings, lines, bundle.shape[0], highlight=recommended)
    rows = []
    for name, setting in sorted(bundle.caps.items()):
        label = escape(name) + (" <b>(recommended)</b>" if name == recommended else "")
        floors = ", ".join(f"{t.layer}: {t.threshold:.2f}" for t in setting.thresholds)
        rows.append([label, number(setting.percentile, "g"), escape(floors)])
    return "".join(
        [
            '<section class="card"><h2>Cap thresholds per layer</h2>',
            '<p class="lede">Floors along +axis: at each capped layer and every token, a '
            "projection below the floor is raised to it. Grey lines: percentiles of the "
            "per-response projections of all build rollouts, per layer. The chart shows the "
            "settings at the recommended cap's percentile (all when there are few); the table "
            "lists every setting.</p>",
            image(png, "Cap thresholds per layer"),
            table(["setting", "percentile", "layer: floor"], rows, {1}),
            "</section>",
        ]
    )


def _charted_caps(bundle: AxisBundle, recommended: str | None, limit: int = 8) -> list[str]:
    """Cap settings worth a line: all when few, else those sharing the recommended
    percentile (one per layer range), the recommended one included."""
    names = sorted(bundle.caps)
    if len(names) <= limit:
        return names
    target = bundle.caps[recommended].percentile if recommended in bundle.caps else None
    same = [n for n in names if bundle.caps[n].percentile == target] or names
    if recommended in bundle.caps and recommended not in same:
        same.append(recommended)
    return same[:limit]


def monitor_section(path: str | Path, data: dict[str, Any]) -> str:
    conversations = data.get("conversations") or []
    rule = data.get("rule") or {}
    parts = [
        '<section class="card"><h2>Drift in monitored conversations: '
        f"{escape(Path(path).name)}</h2>",
        f'<p class="lede">Per assistant turn, the projection at layer {escape(data.get("layer"))}. '
        "Dashed dark grey: flag threshold; dotted grey: Assistant reference; crosses: flagged "
        f"turns; triangles: CUSUM alarms (k={number(rule.get('k'), 'g')}, "
        f"h={number(rule.get('h'), 'g')}).</p>",
    ]
    if conversations:
        png = plots.trajectories_png(
            plots.trajectories_from_monitor(conversations),
            title=f"Monitored conversations ({len(conversations)})",
            threshold=rule.get("threshold"),
            reference=rule.get("reference"),
        )
        parts.append(image(png, "Projection per turn of monitored conversations"))
        rows = []
        for item in conversations:
            alarm = item.get("alarm_turn")
            rows.append(
                [
                    escape(item.get("id") or f"{item['source']} {item['position']}"),
                    number(item.get("n_turns")),
                    number(item.get("min_projection"), ".2f"),
                    number(item.get("first_flag_turn")),
                    f'<span class="alarm">turn {alarm}</span>' if alarm else "none",
                ]
            )
        parts.append(
            table(["conversation", "turns", "lowest", "first flag", "alarm"], rows, {1, 2, 3})
        )
    else:
        parts.append('<p class="note">No conversation was monitored.</p>')
    failures = data.get("failures") or []
    if failures:
        parts.append(f'<p class="note">{len(failures)} input(s) failed and are not shown.</p>')
    parts.append("</section>")
    return "".join(parts)


def simulation_section(data: dict[str, Any]) -> str:

    settings = data.get("settings") or {}
    parts = [
        '<section class="card"><h2>Simulated drift by domain</h2>',
        f'<p class="lede">{escape(settings.get("conversations_per_domain"))} conversation(s) per '
        f"domain, up to {escape(settings.get('turns'))} turns, simulated user "
        f"{escape(data.get('user'))}; the target has no system prompt. Mean projection at layer "
        f"{escape(data.get('layer'))} before capping, ± standard error; turns reached by fewer "
        f"than {escape(settings.get('min_conversations'))} conversations are dropped.</p>",
        image(plots.simulation_png(data), "Simulated drift per domain, with and without capping"),
    ]
    rows = []
    for arm, domains in (data.get("aggregate") or {}).items():
        for domain, series in domains.items():
            first = series[0]["mean"] if series else None
            last = series[-1]["mean"] if series else None
            change = None if first is None or last is None else last - first
            rows.append(
                [
                    escape(arm),
                    escape(domain),
                    number(first, ".2f"),
                    number(last, ".2f"),
                    number(change, "+.2f"),
                ]
            )
    parts.append(table(["arm", "domain", "first turn", "last turn", "change"], rows, {2, 3, 4}))
    parts.append("</section>")
    return "".join(parts)
