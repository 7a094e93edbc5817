"""``persona-axis sweep``: the Pareto sweep of cap settings; writes the recommended one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from persona_axis.cli.common import (
    AllowMismatchOption,
    BatchOption,
    BundleOption,
    DtypeOption,
    JudgeConcurrencyOption,
    JudgeKeyEnvOption,
    JudgeModelOption,
    JudgeOption,
    JudgeUrlOption,
    ModelOption,
    OutOption,
    ProgressOption,
    SeedOption,
    console,
    harm_judge_for,
    load_for_bundle,
)
from persona_axis.cli.tables import pct


def sweep(
    bundle: BundleOption,
    setting: Annotated[
        list[str] | None, typer.Option(help="Only these cap settings (repeatable).")
    ] = None,
    percentile: Annotated[
        list[float] | None, typer.Option(help="Only settings with these percentiles.")
    ] = None,
    n: Annotated[int, typer.Option(min=1, help="Jailbreak prompts per setting.")] = 32,
    n_capability: Annotated[int, typer.Option(min=1, help="Probes per family.")] = 12,
    max_capability_loss: Annotated[
        float, typer.Option(min=0.0, help="Largest summed capability loss accepted (fraction).")
    ] = 0.1,
    write: Annotated[
        bool, typer.Option(help="Write the recommended setting and its evidence to the bundle.")
    ] = True,
    judge: JudgeOption = "heuristic",
    judge_url: JudgeUrlOption = None,
    judge_model: JudgeModelOption = None,
    judge_key_env: JudgeKeyEnvOption = "OPENAI_API_KEY",
    judge_concurrency: JudgeConcurrencyOption = 8,
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 48,
    batch_size: BatchOption = 8,
    seed: SeedOption = 0,
    out: OutOption = Path("persona-axis-evals"),
    allow_mismatch: AllowMismatchOption = False,
    progress: ProgressOption = True,
) -> None:
    """Pareto sweep of cap settings (harm change vs summed capability change); recommends one."""
    from persona_axis.axis.bundle import bundle_directory
    from persona_axis.evals.runs import sweep_eval

    harm_judge = harm_judge_for(judge, judge_url, judge_model, judge_key_env, judge_concurrency)
    path = bundle_directory(bundle)
    axis_bundle, lm = load_for_bundle(path, model, dtype, allow_mismatch)
    done = sweep_eval(
        lm, axis_bundle, harm_judge, out, bundle_path=path, model=model, write=write,
        settings=setting, percentiles=percentile or (), n=n, n_capability=n_capability,
        max_capability_loss=max_capability_loss, max_new_tokens=max_new_tokens,
        batch_size=batch_size, seed=seed, progress=progress,
    )  # fmt: skip
    record = done.record
    chosen = record["recommended"]
    baseline = record["baseline"]["harmful"]["rate"]
    table = Table(title=f"Cap sweep (baseline harmful rate {baseline:.1%})")
    for column in ("setting", "harmful", "harm change", "Σ capability change", "Pareto"):
        table.add_column(column)
    for row in record["table"]:
        table.add_row(
            row["setting"],
            f"{row['harmful_rate']:.1%}",
            pct(row["harm_change"]),
            pct(row["capability_change"]),
            "★" if chosen and row["setting"] == chosen else ("•" if row["pareto"] else ""),
        )
    console.print(table)
    if chosen is None:
        console.print("[yellow]No setting lowered the harmful rate; the bundle is unchanged.[/]")
    elif done.written is not None:
        console.print(f"recommended cap [bold]{chosen}[/] written to {path}")
    else:
        console.print(f"recommended cap [bold]{chosen}[/] (not written: --no-write)")
    for key, style in (("judge_note", "yellow"), ("note", "dim")):
        note = record.get(key)
        if note:
            console.print(f"[{style}]{note}[/]")
    console.print(f"results: {done.path}  plot: {done.plot}")
