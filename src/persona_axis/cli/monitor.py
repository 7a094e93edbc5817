"""``persona-axis monitor``: per-turn projections of logged conversations, drift flags, alarms."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from persona_axis.cli.common import (
    AllowMismatchOption,
    DtypeOption,
    ModelOption,
    ProgressOption,
    console,
    errors,
    load_checked,
)

if TYPE_CHECKING:
    from persona_axis.drift.monitor import ConversationReading, MonitorResult

RESULTS_FILE = "monitor.json"


def monitor(
    files: Annotated[
        list[Path],
        typer.Argument(help="Conversation files: OpenAI messages, ShareGPT or transcript JSON."),
    ],
    bundle: Annotated[Path, typer.Option(help="AxisBundle directory (axis and calibration).")],
    out: Annotated[
        Path, typer.Option(help="Folder for monitor.json and one trajectory PNG per file.")
    ] = Path("monitor-out"),
    model: ModelOption = None,
    layers: Annotated[
        str | None,
        typer.Option(help="Band to report besides the target, e.g. 12:16; default: cap band."),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Flag turns below this projection (overrides the bundle).")
    ] = None,
    reference: Annotated[
        float | None, typer.Option(help="CUSUM reference: the typical Assistant projection.")
    ] = None,
    scale: Annotated[
        float | None, typer.Option(help="CUSUM scale: the spread of Assistant projections.")
    ] = None,
    threshold_percentile: Annotated[
        float, typer.Option(help="Default replies' percentile used as the flag threshold.")
    ] = 1.0,
    cusum_k: Annotated[float, typer.Option(min=0.0, help="CUSUM allowance per turn (scales).")] = (
        0.5
    ),
    cusum_h: Annotated[float, typer.Option(min=0.0, help="CUSUM decision limit (scales).")] = 4.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Conversations per forward pass.")] = 4,
    dtype: DtypeOption = "auto",
    allow_mismatch: AllowMismatchOption = False,
    turns: Annotated[
        bool, typer.Option(help="Print every assistant turn (else one line per conversation).")
    ] = True,
    fail_on_alarm: Annotated[
        bool, typer.Option(help="Exit with status 1 when any conversation raised an alarm.")
    ] = False,
    progress: ProgressOption = True,
) -> None:
    """Project every assistant turn on the Assistant Axis, flag drift and raise CUSUM alarms.

    One forward pass per conversation. Bad files or records are reported at the end (exit
    status 2) while the rest of the batch is still monitored.
    """
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.conversations import read_conversations
    from persona_axis.drift.monitor import DriftRule, parse_layers, with_overrides
    from persona_axis.drift.monitor import monitor as run_monitor

    axis_bundle = AxisBundle.load(bundle)
    rule = with_overrides(
        DriftRule.from_bundle(axis_bundle, percentile=threshold_percentile),
        threshold=threshold,
        reference=reference,
        scale=scale,
        k=cusum_k,
        h=cusum_h,
    )
    band = None if layers is None else parse_layers(layers, axis_bundle.shape[0])
    conversations, failures = [], []
    for file in files:
        found, bad = read_conversations(file)
        conversations += found
        failures += bad
    lm = load_checked(axis_bundle, model, dtype, allow_mismatch)
    result = run_monitor(
        lm,
        axis_bundle,
        conversations,
        band=band,
        rule=rule,
        batch_size=batch_size,
        progress=progress,
        bundle_label=str(bundle),
    )
    result.failures = failures + result.failures
    for reading in result.readings:
        _print_reading(console, reading, result, turns)
    paths = write_outputs(result, out)
    _print_summary(console, result, paths)
    if result.failures:
        errors.print(f"[bold red]{len(result.failures)} input(s) failed:[/]")
        for failure in result.failures:
            errors.print(f"  {failure}", soft_wrap=True, markup=False)
        raise typer.Exit(2)
    if fail_on_alarm and result.alarms:
        raise typer.Exit(1)


def write_outputs(result: MonitorResult, out: Path) -> list[Path]:
    """``out/monitor.json`` and ``out/<file stem>.png`` per input file with readings."""
    from persona_axis.report.plots import trajectories_from_monitor, trajectories_png

    paths = [result.save(out / RESULTS_FILE)]
    data = result.to_dict()
    by_source: dict[str, list] = {}
    for item in data["conversations"]:
        by_source.setdefault(item["source"], []).append(item)
    used: set[str] = set()
    for source, items in by_source.items():
        stem = Path(source).stem or "conversations"
        name, index = stem, 1
        while name in used:
            index += 1
            name = f"{stem}-{index}"
        used.add(name)
        png = trajectories_png(
            trajectories_from_monitor(items),
            title=f"{Path(source).name}: projection at layer {result.rule.layer}",
            threshold=result.rule.threshold,
            reference=result.rule.reference,
        )
        path = out / f"{name}.png"
        path.write_bytes(png)
        paths.append(path)
    return paths


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def _print_reading(console, reading: ConversationReading, result: MonitorResult, turns: bool):
    from rich.table import Table

    alarm = reading.alarm_turn
    status = f"[red]ALARM at turn {alarm}[/]" if alarm else "[green]no alarm[/]"
    flag = reading.first_flag_turn
    flags = f", first flag at turn {flag}" if flag else ""
    header = f"{reading.conversation.label}: {len(reading.turns)} turns, {status}{flags}"
    if not turns:
        values = " ".join(_fmt(v, ".3g") for v in reading.projections)
        console.print(f"{header}  [{values}]", soft_wrap=True)
        return
    table = Table(title=header, title_justify="left", show_edge=False, pad_edge=False)
    layer = result.rule.layer
    band = result.band
    band_label = f"band {band[0]}-{band[-1]}" if band else "band"
    for column in ("turn", "tokens", f"layer {layer}", f"{band_label} mean", "flag", "CUSUM"):
        table.add_column(column, justify="right")
    for turn in reading.turns:
        table.add_row(
            str(turn.turn),
            str(turn.n_tokens),
            _fmt(turn.projection),
            _fmt(turn.band_mean),
            "[red]below[/]" if turn.below_threshold else "",
            ("[red]" if turn.alarm else "") + _fmt(turn.cusum, ".2f"),
        )
    console.print(table)


def _print_summary(console, result: MonitorResult, paths: list[Path]) -> None:
    rule = result.rule
    console.print(
        f"[bold]{len(result.readings)}[/] conversation(s), "
        f"{result.timing.get('assistant_turns', 0)} assistant turns, "
        f"[bold]{len(result.alarms)}[/] alarm(s); "
        f"{result.timing.get('seconds_per_conversation', 0):.2f} s per conversation"
    )
    console.print(
        f"[dim]rule at layer {rule.layer}: threshold {_fmt(rule.threshold)}, reference "
        f"{_fmt(rule.reference)}, scale {_fmt(rule.scale)}, k {rule.k:g}, h {rule.h:g} "
        f"({rule.source})[/]",
        soft_wrap=True,
    )
    console.print("wrote " + ", ".join(str(p) for p in paths), soft_wrap=True)
