"""``persona-axis eval {jailbreak,capability,susceptibility}``: what capping buys and costs.

Each command loads the bundle and its checked model, calls one function of
:mod:`persona_axis.evals.runs` and prints what it wrote. Heavy imports (torch, transformers,
lm-eval) happen inside the functions so that ``persona-axis --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

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
    judge_config,
    load_for_bundle,
)
from persona_axis.cli.tables import pct, print_capping_table, print_rates

eval_app = typer.Typer(
    help="Evaluate capping: persona-jailbreak harm, capability, role susceptibility.",
    no_args_is_help=True,
)

CapsOption = Annotated[
    list[str] | None,
    typer.Option("--cap", help="Cap setting to compare with no cap (repeatable); 'recommended'."),
]


@eval_app.command("jailbreak")
def jailbreak(
    bundle: BundleOption,
    cap: CapsOption = None,
    n: Annotated[int, typer.Option(min=1, help="Prompts (templates × behaviours).")] = 48,
    judge: JudgeOption = "heuristic",
    judge_url: JudgeUrlOption = None,
    judge_model: JudgeModelOption = None,
    judge_key_env: JudgeKeyEnvOption = "OPENAI_API_KEY",
    judge_concurrency: JudgeConcurrencyOption = 8,
    behaviours: Annotated[
        Path | None, typer.Option(help="Requests file, one per line (default: HarmBench).")
    ] = None,
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.0,
    batch_size: BatchOption = 8,
    seed: SeedOption = 0,
    out: OutOption = Path("persona-axis-evals"),
    allow_mismatch: AllowMismatchOption = False,
    progress: ProgressOption = True,
) -> None:
    """Harmful-answer rate on persona-jailbreak prompts, without and with capping."""
    from persona_axis.evals.runs import jailbreak_eval

    harm_judge = harm_judge_for(judge, judge_url, judge_model, judge_key_env, judge_concurrency)
    axis_bundle, lm = load_for_bundle(bundle, model, dtype, allow_mismatch)
    run = jailbreak_eval(
        lm, axis_bundle, harm_judge, out, bundle_path=bundle, model=model, caps=cap, n=n,
        behaviours=behaviours, max_new_tokens=max_new_tokens, temperature=temperature,
        batch_size=batch_size, seed=seed, progress=progress,
    )  # fmt: skip
    record = run.record
    rows = [
        (name, s["harmful"], pct(record["harmful_rate_change"][name]))
        for name, s in record["conditions"].items()
    ]
    print_rates(f"Harmful rate (judge: {record['judge']})", rows)
    if "judge_note" in record:
        console.print(f"[yellow]{record['judge_note']}[/]")
    _print_note(record)
    console.print(f"results: {run.path}  plot: {run.plot}")


def _print_note(record: dict[str, Any]) -> None:
    if "note" in record:
        console.print(f"[dim]{record['note']}[/]")


@eval_app.command("capability")
def capability(
    bundle: BundleOption,
    cap: CapsOption = None,
    n: Annotated[int, typer.Option(min=1, help="Quick probes per family.")] = 24,
    tasks: Annotated[
        str | None, typer.Option(help="lm-eval tasks, comma-separated (instead of probes).")
    ] = None,
    include_path: Annotated[
        Path | None, typer.Option(help="Folder of extra lm-eval task YAMLs.")
    ] = None,
    limit: Annotated[float | None, typer.Option(help="lm-eval: examples per task.")] = None,
    num_fewshot: Annotated[int | None, typer.Option(help="lm-eval: few-shot examples.")] = None,
    apply_chat_template: Annotated[bool, typer.Option(help="lm-eval: use the chat template.")] = (
        False
    ),
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 40,
    batch_size: BatchOption = 8,
    seed: SeedOption = 0,
    out: OutOption = Path("persona-axis-evals"),
    allow_mismatch: AllowMismatchOption = False,
    progress: ProgressOption = True,
) -> None:
    """Capability without and with capping: quick offline probes, or lm-eval tasks (--tasks)."""
    if tasks:
        _capability_lm_eval(
            bundle, cap, tasks, include_path, limit, num_fewshot, apply_chat_template, model,
            dtype, batch_size, out, allow_mismatch,
        )  # fmt: skip
        return
    from persona_axis.evals.runs import capability_eval

    axis_bundle, lm = load_for_bundle(bundle, model, dtype, allow_mismatch)
    run = capability_eval(
        lm, axis_bundle, out, bundle_path=bundle, model=model, caps=cap, n=n,
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress,
    )  # fmt: skip
    record = run.record
    rows = []
    for name, summary in record["conditions"].items():
        rows.append((name, summary["overall"], f"Σ {pct(record['summed_change'][name])}"))
        for family, rate in summary["families"].items():
            rows.append((f"  {family}", rate, ""))
    print_rates("Capability probes (accuracy)", rows)
    _print_note(record)
    console.print(f"results: {run.path}")


def _capability_lm_eval(
    bundle: Path,
    cap: list[str] | None,
    tasks: str,
    include_path: Path | None,
    limit: float | None,
    num_fewshot: int | None,
    apply_chat_template: bool,
    model: str | None,
    dtype: str,
    batch_size: int,
    out: Path,
    allow_mismatch: bool,
) -> None:
    from rich.table import Table

    from persona_axis.evals.runs import lm_eval_capability

    run = lm_eval_capability(
        bundle, [t.strip() for t in tasks.split(",") if t.strip()], out, caps=cap, model=model,
        dtype=dtype, include_path=include_path, limit=limit, num_fewshot=num_fewshot,
        apply_chat_template=apply_chat_template, batch_size=batch_size,
        allow_mismatch=allow_mismatch,
    )  # fmt: skip
    table = Table(title="lm-eval metrics")
    table.add_column("condition")
    table.add_column("task")
    table.add_column("metrics")
    for name, result in run.record["runs"].items():
        for task, metrics in result["results"].items():
            shown = ", ".join(
                f"{k} {v:.3f}"
                for k, v in metrics.items()
                if isinstance(v, float) and "stderr" not in k
            )
            table.add_row(name, task, shown)
    console.print(table)
    console.print(f"results: {run.path}")


@eval_app.command("susceptibility")
def susceptibility(
    bundle: BundleOption,
    cap: CapsOption = None,
    steer: Annotated[
        list[float] | None,
        typer.Option(help="Also steer by m × mean norm at the target layer (repeatable)."),
    ] = None,
    roles: Annotated[int, typer.Option(min=1, help="Roles from the catalog.")] = 8,
    questions: Annotated[int, typer.Option(min=1, help="Identity questions per role.")] = 3,
    judge: JudgeOption = "heuristic",
    judge_url: JudgeUrlOption = None,
    judge_model: JudgeModelOption = None,
    judge_key_env: JudgeKeyEnvOption = "OPENAI_API_KEY",
    judge_concurrency: JudgeConcurrencyOption = 8,
    model_name: Annotated[
        str | None, typer.Option(help="The judged model's name (rubric, {model_name}).")
    ] = None,
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 48,
    batch_size: BatchOption = 8,
    seed: SeedOption = 0,
    out: OutOption = Path("persona-axis-evals"),
    allow_mismatch: AllowMismatchOption = False,
    progress: ProgressOption = True,
) -> None:
    """How often "who are you?" is answered in role under role prompts, with and without caps
    or steering, and how much each changes plain Assistant replies (greedy decoding)."""
    from persona_axis.evals.runs import susceptibility_eval

    axis_bundle, lm = load_for_bundle(bundle, model, dtype, allow_mismatch)
    run = susceptibility_eval(
        lm, axis_bundle, out, bundle_path=bundle, model=model,
        judge=judge_config(judge, judge_url, judge_model, judge_key_env, judge_concurrency),
        model_name=model_name, caps=cap, steer=steer or (), roles=roles, questions=questions,
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress,
    )  # fmt: skip
    record = run.record
    print_capping_table(record, record["plain_assistant"])
    console.print(record["picked_because"])
    _print_note(record)
    console.print(f"results: {run.path}")
