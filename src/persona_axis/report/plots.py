"""Charts as PNG bytes, drawn with matplotlib's object API on the Agg canvas (no pyplot state,
no display needed). Every function returns the encoded PNG; callers write it to a file or embed
it in HTML. Projections are on the unit axis (residual-stream units, + = Assistant)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_axis import files

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
ASSISTANT = "#1f6fb2"
AWAY = "#c2452d"
MUTED = "#7a7a7a"
THRESHOLD = "#3a3a3a"
PALETTE = ["#1f6fb2", "#c2452d", "#2a9d5c", "#8e5bb5", "#d08a1c", "#3b8ea5", "#a0522d", "#5a5a5a"]


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches on the Agg canvas, constrained layout."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return figure


def png_bytes(figure: Figure) -> bytes:
    """``figure`` encoded as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def save_png(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG file at ``path`` (atomically, parents created)."""
    data = png_bytes(figure)
    return files.write_atomic(path, lambda temporary: temporary.write_bytes(data))


def _style(ax: Axes) -> None:
    ax.grid(True, alpha=0.3, linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


@dataclass
class Trajectory:
    """One line of a drift chart: ``values[i]`` at assistant turn ``turns[i]`` (None = gap)."""

    label: str
    turns: list[int]
    values: list[float | None]
    flagged: list[int] = field(default_factory=list)  # turns below the threshold
    alarm_turn: int | None = None
    interval: tuple[list[float], list[float]] | None = None  # lower and upper edge per turn


def trajectories_png(
    lines: Sequence[Trajectory],
    *,
    title: str,
    threshold: float | None = None,
    reference: float | None = None,
    ylabel: str = "projection on the axis",
    ax_width: float = 7.5,
) -> bytes:
    """Per-turn projections of several conversations; threshold, reference and alarms marked."""
    figure = new_figure(ax_width, 4.0)
    ax = figure.add_subplot()
    _draw_trajectories(ax, lines, threshold, reference)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("assistant turn")
    ax.set_ylabel(ylabel)
    return png_bytes(figure)


def _draw_trajectories(
    ax: Axes,
    lines: Sequence[Trajectory],
    threshold: float | None,
    reference: float | None,
    *,
    legend: bool = True,
) -> None:
    _style(ax)
    many = len(lines) > len(PALETTE)
    for index, line in enumerate(lines):
        color = PALETTE[index % len(PALETTE)]
        ys = [math.nan if v is None else v for v in line.values]
        label = None if many else line.label
        style = "-" if many else ["-", "--", "-.", ":"][index % 4]
        ax.plot(
            line.turns,
            ys,
            marker="o",
            markersize=3.5,
            linewidth=1.4,
            linestyle=style,
            color=color,
            label=label,
        )
        if line.interval is not None:
            low, high = line.interval
            ax.fill_between(line.turns, low, high, color=color, alpha=0.15, linewidth=0)
        flagged = [(t, y) for t, y in zip(line.turns, ys, strict=True) if t in set(line.flagged)]
        if flagged:
            xs = [t for t, _ in flagged]
            ax.scatter(xs, [y for _, y in flagged], marker="x", s=36, color=AWAY, zorder=3)
        if line.alarm_turn is not None and line.alarm_turn in line.turns:
            y = ys[line.turns.index(line.alarm_turn)]
            ax.scatter([line.alarm_turn], [y], marker="v", s=80, color=AWAY, zorder=4)
    if threshold is not None:
        ax.axhline(threshold, color=THRESHOLD, linestyle="--", linewidth=1, label="flag threshold")
    if reference is not None:
        ax.axhline(reference, color=MUTED, linestyle=":", linewidth=1, label="Assistant reference")
    turns = sorted({t for line in lines for t in line.turns})
    if turns and len(turns) <= 20:
        ax.set_xticks(turns)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best", frameon=False)


def panels_png(
    panels: Mapping[str, Sequence[Trajectory]],
    *,
    title: str,
    threshold: float | None = None,
    reference: float | None = None,
) -> bytes:
    """One trajectory panel per key (e.g. per drift domain), sharing the y axis."""
    names = list(panels)
    columns = min(2, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    figure = new_figure(5.2 * columns, 3.3 * rows)
    axes = figure.subplots(rows, columns, sharey=True, squeeze=False)
    for index, name in enumerate(names):
        ax = axes[index // columns][index % columns]
        _draw_trajectories(ax, panels[name], threshold, reference, legend=index == 0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("turn")
        if index % columns == 0:
            ax.set_ylabel("projection on the axis")
    for index in range(len(names), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    figure.suptitle(title, fontsize=11)
    return png_bytes(figure)


def simulation_png(data: Mapping[str, Any]) -> bytes:
    """One panel per domain, one line per arm (mean ± standard error of the pre-cap projection),
    from a simulation result (``simulation.json``: ``aggregate``, ``layer``, ``threshold``,
    ``reference``)."""
    panels: dict[str, list[Trajectory]] = {}
    for arm, domains in data["aggregate"].items():
        for domain, rows in domains.items():
            panels.setdefault(domain, []).append(
                Trajectory(
                    label=arm,
                    turns=[row["turn"] for row in rows],
                    values=[row["mean"] for row in rows],
                    interval=(
                        [row["mean"] - row["sem"] for row in rows],
                        [row["mean"] + row["sem"] for row in rows],
                    ),
                )
            )
    return panels_png(
        panels,
        title=f"Simulated drift at layer {data['layer']} (mean ± s.e. across conversations)",
        threshold=data.get("threshold"),
        reference=data.get("reference"),
    )


def persona_space_png(
    names: Sequence[str],
    loadings: Sequence[Sequence[float]],
    default_loading: Sequence[float] | None,
    explained: Sequence[float],
    layer: int,
    *,
    max_labels: int = 40,
) -> bytes:
    """Roles on PC1/PC2 of the persona space; the default (Assistant) as a star.

    With one component only, roles lie on a line (PC2 = 0). ``name@somewhat`` points (score-2
    role vectors) are drawn hollow. Labels go to every role up to ``max_labels`` roles, else to
    the extremes of PC1.
    """
    figure = new_figure(7.5, 5.6)
    ax = figure.add_subplot()
    _style(ax)
    xs = [row[0] for row in loadings]
    ys = [row[1] if len(row) > 1 else 0.0 for row in loadings]
    somewhat = [name.endswith("@somewhat") for name in names]
    full = [i for i, s in enumerate(somewhat) if not s]
    partial = [i for i, s in enumerate(somewhat) if s]
    ax.scatter(
        [xs[i] for i in full],
        [ys[i] for i in full],
        s=26,
        color=AWAY,
        alpha=0.8,
        label="roles (in role)",
    )
    if partial:
        ax.scatter(
            [xs[i] for i in partial],
            [ys[i] for i in partial],
            s=26,
            facecolors="none",
            edgecolors=AWAY,
            alpha=0.7,
            label="roles (somewhat)",
        )
    if default_loading is not None:
        dy = default_loading[1] if len(default_loading) > 1 else 0.0
        ax.scatter(
            [default_loading[0]],
            [dy],
            marker="*",
            s=260,
            color=ASSISTANT,
            edgecolors="black",
            linewidths=0.6,
            zorder=5,
            label="default (Assistant)",
        )
        ax.annotate(
            "Assistant",
            (default_loading[0], dy),
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=9,
            fontweight="bold",
            color=ASSISTANT,
        )
    order = sorted(range(len(names)), key=lambda i: xs[i])
    labelled = set(order) if len(names) <= max_labels else set(order[:10] + order[-10:])
    for i in sorted(labelled):
        ax.annotate(
            names[i].removesuffix("@somewhat"),
            (xs[i], ys[i]),
            xytext=(3, 3),
            textcoords="offset points",
            fontsize=7,
            color="#333333",
        )
    pc1 = f"PC1 ({explained[0]:.0%} of variance)" if explained else "PC1"
    pc2 = f"PC2 ({explained[1]:.0%})" if len(explained) > 1 else "PC2 (none: one component)"
    ax.set_xlabel(pc1 + "  → Assistant")
    ax.set_ylabel(pc2)
    ax.set_title(f"Persona space at layer {layer}", fontsize=11)
    ax.legend(fontsize=8, loc="best", frameon=False)
    return png_bytes(figure)


def variance_png(ratios: Sequence[float], max_components: int = 20) -> bytes:
    """Explained variance ratio per component (bars) and cumulative (line), 70% marked."""
    shown = list(ratios[:max_components])
    figure = new_figure(6.0, 3.4)
    ax = figure.add_subplot()
    _style(ax)
    positions = list(range(1, len(shown) + 1))
    ax.bar(positions, shown, color=ASSISTANT, alpha=0.8, label="per component")
    cumulative = []
    total = 0.0
    for value in shown:
        total += value
        cumulative.append(total)
    ax.plot(positions, cumulative, color=AWAY, marker="o", markersize=3, label="cumulative")
    ax.axhline(0.7, color=MUTED, linestyle=":", linewidth=1, label="70%")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(positions)
    ax.set_xlabel("principal component")
    ax.set_ylabel("fraction of role variance")
    ax.set_title("Explained variance of the persona space", fontsize=11)
    ax.legend(fontsize=8, frameon=False, loc="center right")
    return png_bytes(figure)


def ranked_bars_png(
    items: Sequence[tuple[str, float]],
    *,
    title: str,
    xlabel: str,
    n_each: int = 12,
    marker: tuple[str, float] | None = None,
) -> bytes:
    """Horizontal bars of the ``n_each`` highest and lowest items (both ends of the axis).

    ``items`` are ``(name, value)`` sorted high to low; high values are the Assistant end.
    ``marker`` draws a labelled vertical line (e.g. the default's projection).
    """
    ranked = sorted(items, key=lambda item: -item[1])
    if len(ranked) > 2 * n_each:
        ranked = ranked[:n_each] + ranked[-n_each:]
    figure = new_figure(6.8, max(2.4, 0.26 * len(ranked) + 1.2))
    ax = figure.add_subplot()
    _style(ax)
    names = [name for name, _ in ranked][::-1]
    values = [value for _, value in ranked][::-1]
    colors = [ASSISTANT if value >= (marker[1] if marker else 0.0) else AWAY for value in values]
    ax.barh(range(len(values)), values, color=colors, alpha=0.85)
    ax.set_yticks(range(len(values)), names, fontsize=8)
    if marker is not None:
        ax.axvline(marker[1], color="black", linewidth=1, linestyle="--", label=marker[0])
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    else:
        ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    return png_bytes(figure)


def caps_png(
    settings: Mapping[str, Sequence[tuple[int, float]]],
    percentile_lines: Mapping[str, Sequence[float]],
    n_layers: int,
    highlight: str | None = None,
) -> bytes:
    """Cap floors per layer (one line per setting, ``highlight`` drawn thick) over the
    projection percentiles per layer; the view spans layer 0 to just past the deepest cap."""
    figure = new_figure(7.5, 4.2)
    ax = figure.add_subplot()
    _style(ax)
    deepest = max((layer for points in settings.values() for layer, _ in points), default=0)
    stop = min(n_layers, deepest + 3)
    shown: list[float] = []
    for index, (label, values) in enumerate(percentile_lines.items()):
        part = list(values[:stop])
        shown += part
        ax.plot(
            range(len(part)),
            part,
            color=MUTED,
            linewidth=0.9,
            linestyle=[":", "--", "-.", "-"][index % 4],
            label=label,
            alpha=0.8,
        )
    for index, (name, points) in enumerate(settings.items()):
        xs = [layer for layer, _ in points]
        ys = [value for _, value in points]
        shown += ys
        ax.plot(
            xs,
            ys,
            marker="o",
            markersize=3.5 if name != highlight else 5,
            linewidth=1.4 if name != highlight else 3.0,
            color=PALETTE[index % len(PALETTE)],
            label=name + (" (recommended)" if name == highlight else ""),
        )
    if shown:
        low, high = min(shown), max(shown)
        margin = 0.08 * (high - low or 1.0)
        ax.set_ylim(low - margin, high + margin)
    ax.set_xlabel("layer (decoder block output, 0-based)")
    ax.set_ylabel("floor / projection on the axis")
    ax.set_title("Cap thresholds per layer (floors along +axis)", fontsize=11)
    ax.legend(fontsize=7, frameon=False, ncol=2, loc="best")
    return png_bytes(figure)


def line_png(values: Sequence[float], *, title: str, xlabel: str, ylabel: str) -> bytes:
    """A single series against its index (e.g. cos(axis, PC1) per layer)."""
    figure = new_figure(6.0, 3.0)
    ax = figure.add_subplot()
    _style(ax)
    ax.plot(range(len(values)), list(values), color=ASSISTANT, marker="o", markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    return png_bytes(figure)


def trajectories_from_monitor(conversations: Sequence[Mapping[str, Any]]) -> list[Trajectory]:
    """:class:`Trajectory` lines from ``monitor.json``'s ``conversations`` entries."""
    lines = []
    for item in conversations:
        turns = [turn["turn"] for turn in item["turns"]]
        label = str(item.get("id") or f"{Path(item['source']).name} {item['position']}")
        lines.append(
            Trajectory(
                label=label if len(label) <= 40 else "…" + label[-39:],
                turns=turns,
                values=[turn["projection"] for turn in item["turns"]],
                flagged=[turn["turn"] for turn in item["turns"] if turn.get("below_threshold")],
                alarm_turn=item.get("alarm_turn"),
            )
        )
    return lines
