"""``persona-axis monitor``: per-turn projections of logged conversations, alert levels, alarms."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from persona_axis.cli.common import (
    AllowMismatchOption,
    DtypeOption,
    ModelOption,
    ProgressOption,
    console,
    errors,
    load_checked,
    parse_layers,
)

if TYPE_CHECKING:
    from rich.console import Console

    from persona_axis.drift.conversations import Conversation, ReadFailure
    from persona_axis.drift.readings import ConversationReading
    from persona_axis.drift.rule import Level

RESULTS_FILE = "monitor.json"
JOURNAL_FILE = "monitor.jsonl"
PLOTTED = 40  # most conversations drawn per file (those alerting first)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def monitor(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Conversation files: OpenAI messages, ShareGPT or transcript JSON/JSONL."
        ),
    ],
    bundle: Annotated[Path, typer.Option(help="AxisBundle directory (axis, caps and drift rule).")],
    out: Annotated[
        Path,
        typer.Option(help="Folder for monitor.jsonl (as results finish), monitor.json and plots."),
    ] = Path("monitor-out"),
    model: ModelOption = None,
    layers: Annotated[
        str | None,
        typer.Option(
            help="Layers to report besides the target, e.g. 12:16 or 12,14, or '' for none; "
            "default: the recommended cap's layers."
        ),
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
        float | None,
        typer.Option(
            help="Use the build's default-reply levels with this percentile as the "
            "flag threshold instead of the benign profile."
        ),
    ] = None,
    cusum_k: Annotated[
        float | None, typer.Option(min=0.0, help="CUSUM allowance per turn (scales).")
    ] = None,
    cusum_h: Annotated[
        float | None, typer.Option(min=0.0, help="CUSUM decision limit (scales).")
    ] = None,
    watch_limit: Annotated[
        float | None,
        typer.Option(min=0.0, help="Watch a turn this many scales below its expected level."),
    ] = None,
    warning_limit: Annotated[
        float | None,
        typer.Option(min=0.0, help="Warning when the EWMA of the alarm input reaches this."),
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(
            min=16,
            help="Most tokens one turn is read with, context included; "
            "default: the model's trained positions minus 1/16.",
        ),
    ] = None,
    keep: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.95,
            help="Share of the window kept as context when a long "
            "conversation moves to a new window.",
        ),
    ] = 0.25,
    chunk_tokens: Annotated[
        int, typer.Option(min=1, help="Tokens per forward call (bounds attention memory).")
    ] = 1024,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Short conversations per forward pass.")
    ] = 8,
    dtype: DtypeOption = "auto",
    allow_mismatch: AllowMismatchOption = False,
    turns: Annotated[
        bool, typer.Option(help="Print every assistant turn (else one line per conversation).")
    ] = True,
    fail_on_alarm: Annotated[
        bool, typer.Option(help="Exit with status 1 when any conversation raised an alarm.")
    ] = False,
    restart: Annotated[
        bool, typer.Option(help="Start out/monitor.jsonl afresh instead of resuming it.")
    ] = False,
    progress: ProgressOption = True,
) -> None:
    """Project every assistant turn on the Assistant Axis and raise watch / warning / alarm
    levels.

    Long conversations are read turn by turn with at most --window tokens of context (a
    warning says when context was cut); JSONL logs are streamed; each result is appended to
    out/monitor.jsonl as it finishes, so running the same command again after a kill resumes.
    Bad files or records are reported at the end (exit status 2) while the rest is monitored.
    """
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.context import ContextPolicy
    from persona_axis.drift.journal import Journal
    from persona_axis.drift.monitor import Monitor
    from persona_axis.drift.profile import drift_rule

    axis_bundle = AxisBundle.load(bundle)
    rule = drift_rule(axis_bundle, percentile=threshold_percentile, k=cusum_k, h=cusum_h)
    rule = rule.with_overrides(
        threshold=threshold,
        reference=reference,
        scale=scale,
        watch=watch_limit,
        warning=warning_limit,
    )
    extra_layers = None if layers is None else parse_layers(layers, axis_bundle.shape[0])
    lm = load_checked(axis_bundle, model, dtype, allow_mismatch)
    runner = Monitor.create(
        lm,
        axis_bundle,
        extra_layers=extra_layers,
        rule=rule,
        policy=ContextPolicy(window, keep, chunk_tokens),
        batch_size=batch_size,
    )
    settings = runner.result(str(bundle)).header()
    journal_path = out / JOURNAL_FILE
    with Journal(journal_path, settings, restart=restart) as journal:
        skipped = len(journal.done)
        records = (
            item for item in _records(files) if (item.source, item.position) not in journal.done
        )
        seconds, done = _run(runner, records, journal, _total(files, skipped), progress, turns)
    summary = summarise(journal_path, settings, seconds, done)
    paths = write_outputs(summary, out)
    _print_summary(console, summary, paths, skipped)
    failures = summary["failures"]
    if failures:
        errors.print(f"[bold red]{len(failures)} input(s) failed:[/]")
        for failure in failures:
            line = f"  {failure['source']} {failure['position']}: {failure['error']}"
            errors.print(line, soft_wrap=True, markup=False)
        raise typer.Exit(2)
    if fail_on_alarm and any(c.get("alarm_turn") for c in summary["conversations"]):
        raise typer.Exit(1)


def _records(files: Sequence[Path]) -> Iterator[Conversation | ReadFailure]:
    from persona_axis.drift.conversations import iter_conversations

    return itertools.chain.from_iterable(iter_conversations(file) for file in files)


def _total(files: Sequence[Path], skipped: int) -> int | None:
    """Records still to do when every file is JSONL (counted by lines), else None."""
    if not all(f.suffix.lower() in JSONL_SUFFIXES and f.is_file() for f in files):
        return None
    lines = 0
    for file in files:
        with file.open("rb") as handle:
            lines += sum(1 for line in handle if line.strip())
    return max(0, lines - skipped)


def _run(runner, records, journal, total: int | None, progress: bool, turns: bool):
    """Monitor ``records`` into ``journal``, printing each result; (seconds, conversations)."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from persona_axis.drift.conversations import ReadFailure

    columns = (
        TextColumn("monitor"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} conversations/s"),
    )
    started = time.perf_counter()
    done = 0
    with Progress(*columns, console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("monitor", total=total, rate="-")
        for item in runner.run(records):
            journal.write(item)
            if not isinstance(item, ReadFailure):
                done += 1
                _print_reading(console, item, runner.rule.layer, runner.extra_layers, turns)
            elapsed = time.perf_counter() - started
            bar.update(task, advance=1, rate=f"{done / elapsed:.2f}" if elapsed else "-")
    return time.perf_counter() - started, done


def summarise(journal_path: Path, settings: dict[str, Any], seconds: float, done: int) -> dict:
    """``monitor.json``'s content from the journal: settings, every conversation and failure,
    this run's timing, and the accuracy when records carry labels."""
    from persona_axis.drift.accuracy import evaluate
    from persona_axis.drift.journal import entries

    conversations: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for entry in entries(journal_path):
        kind = entry.pop("type")
        (conversations if kind == "conversation" else failures).append(entry)
    summary: dict[str, Any] = {
        **settings,
        "conversations": conversations,
        "failures": failures,
        "timing": {
            "seconds": round(seconds, 3),
            "conversations": done,
            "seconds_per_conversation": round(seconds / max(1, done), 4),
        },
    }
    rule = settings["rule"]
    levels: list[Level] = ["alarm", "watch"]
    if rule.get("warning") is not None:
        levels.insert(1, "warning")
    accuracy = evaluate(conversations, k=rule["k"], ewma_lambda=rule["ewma_lambda"], levels=levels)
    if accuracy is not None:
        summary["accuracy"] = accuracy
    return summary


def write_outputs(summary: dict[str, Any], out: Path) -> list[Path]:
    """``out/monitor.json`` and ``out/<file stem>.png`` per input file with readings (at most
    :data:`PLOTTED` conversations each, those alerting first)."""
    from persona_axis.files import write_atomic, write_json
    from persona_axis.report.plots import trajectories_from_monitor, trajectories_png

    write_json(out / RESULTS_FILE, summary, indent=1)
    paths = [out / RESULTS_FILE]
    by_source: dict[str, list] = {}
    for item in summary["conversations"]:
        by_source.setdefault(item["source"], []).append(item)
    used: set[str] = set()
    rule = summary["rule"]
    for source, items in by_source.items():
        stem = Path(source).stem or "conversations"
        name, index = stem, 1
        while name in used:
            index += 1
            name = f"{stem}-{index}"
        used.add(name)
        shown = sorted(items, key=lambda c: c.get("alarm_turn") or 10**9)[:PLOTTED]
        png = trajectories_png(
            trajectories_from_monitor(shown),
            title=f"{Path(source).name}: projection at layer {summary['layer']}",
            threshold=rule.get("threshold"),
            reference=None if rule.get("baseline") else rule.get("reference"),
        )
        paths.append(write_atomic(out / f"{name}.png", partial(Path.write_bytes, data=png)))
    return paths


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


LEVEL_STYLE = {"alarm": "red", "warning": "dark_orange", "watch": "yellow", "none": "green"}


def _print_reading(
    console: Console, reading: ConversationReading, layer: int, extra: list[int], turns: bool
) -> None:
    from rich.table import Table

    alarm = reading.alarm_turn
    level = reading.level
    status = (
        f"[red]ALARM at turn {alarm}[/]"
        if alarm
        else f"[{LEVEL_STYLE[level]}]{'no alarm' if level == 'none' else level}[/]"
    )
    flag = reading.first_flag_turn
    flags = f", first flag at turn {flag}" if flag else ""
    header = f"{reading.conversation.label}: {len(reading.turns)} turns, {status}{flags}"
    if reading.warning:
        header += f"\n  [dark_orange]{reading.warning}[/]"
    if not turns:
        values = " ".join(_fmt(v, ".3g") for v in reading.projections)
        console.print(f"{header}  [{values}]", soft_wrap=True)
        return
    console.print(header, soft_wrap=True)
    table = Table(show_edge=False, pad_edge=False)
    extra_label = f"layers {extra[0]}-{extra[-1]} mean" if extra else "extra layers mean"
    columns = (
        "turn",
        "tokens",
        "kind",
        f"layer {layer}",
        "expected",
        "z",
        extra_label,
        "CUSUM",
        "level",
        "context",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for turn in reading.turns:
        context = turn.context
        seen = (
            "" if context is None else f"{context.context_tokens}" + (" cut" if context.cut else "")
        )
        table.add_row(
            str(turn.turn),
            str(turn.n_tokens),
            turn.kind,
            _fmt(turn.projection),
            _fmt(turn.verdict.expected),
            _fmt(turn.verdict.z, ".2f"),
            _fmt(turn.extra_layers_mean),
            _fmt(turn.verdict.cusum, ".2f"),
            f"[{LEVEL_STYLE[turn.level]}]{turn.level}[/]" if turn.level != "none" else "",
            seen,
        )
    console.print(table)


def _print_summary(console: Console, summary: dict, paths: list[Path], skipped: int) -> None:
    rule = summary["rule"]
    conversations = summary["conversations"]
    timing = summary["timing"]
    alarms = sum(1 for c in conversations if c.get("alarm_turn"))
    cut = sum(1 for c in conversations if c.get("warning"))
    resumed = f" ({skipped} done by an earlier run)" if skipped else ""
    console.print(
        f"[bold]{len(conversations)}[/] conversation(s){resumed}, "
        f"{sum(c['n_turns'] for c in conversations)} assistant turns, "
        f"[bold]{alarms}[/] alarm(s), {cut} with context cut; this run: "
        f"{timing['conversations']} in {timing['seconds']:.1f} s "
        f"({timing['seconds_per_conversation']:.2f} s per conversation)",
        soft_wrap=True,
    )
    console.print(
        f"[dim]rule at layer {rule['layer']}: reference {_fmt(rule['reference'])}, scale "
        f"{_fmt(rule['scale'])}, watch z ≥ {_fmt(rule['watch'])}, k {rule['k']:g}, h "
        f"{rule['h']:g} ({rule['source']})[/]",
        soft_wrap=True,
    )
    accuracy = summary.get("accuracy")
    if accuracy:
        _print_accuracy(console, accuracy)
    console.print("wrote " + ", ".join(str(p) for p in paths), soft_wrap=True)


def _print_accuracy(console: Console, accuracy: dict[str, Any]) -> None:
    from rich.table import Table

    def rate(entry: dict[str, Any]) -> str:
        if not entry["n"]:
            return "—"
        low, high = entry["ci95"]
        return f"{entry['hits']}/{entry['n']} = {entry['rate']:.1%} ({low:.1%}–{high:.1%})"

    table = Table(
        title=f"accuracy on labelled records ({accuracy['n_benign']} benign, "
        f"{accuracy['n_drifting']} drifting; Wilson 95%)",
        title_justify="left",
    )
    for column in ("level", "false alarms", "detections", "median turn", "median delay", "early"):
        table.add_column(column, justify="right")
    for level, entry in accuracy["by_level"].items():
        table.add_row(
            level,
            rate(entry["false_alarms"]),
            rate(entry["detections"]),
            _fmt(entry["median_detection_turn"], "g"),
            _fmt(entry["median_delay_turns"], "g"),
            str(entry["early_detections"]),
        )
    console.print(table)
