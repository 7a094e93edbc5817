"""``persona-axis eval {jailbreak,capability,susceptibility}``: what capping buys and costs.

Heavy imports (torch, transformers, lm-eval) happen inside the functions so that
``persona-axis --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from persona_axis import files
from persona_axis.cli.common import (
    AllowMismatchOption,
    BatchOption,
    BundleOption,
    DtypeOption,
    JudgeConcurrencyOption,
    JudgeKeyEnvOption,
    JudgeModelOption,
    JudgeUrlOption,
    ModelOption,
    OutOption,
    ProgressOption,
    SeedOption,
    console,
    judge_config,
    load_for_bundle,
    model_for,
)

eval_app = typer.Typer(
    help="Evaluate capping: persona-jailbreak harm, capability, role susceptibility.",
    no_args_is_help=True,
)

CapsOption = Annotated[
    list[str] | None,
    typer.Option("--cap", help="Cap setting to compare with no cap (repeatable); 'recommended'."),
]
JudgeOption = Annotated[str, typer.Option(help="heuristic (OFFLINE, rough), openai or hf.")]


def _conditions(axis_bundle: Any, caps: list[str] | None) -> list[Any]:
    from persona_axis.evals.common import Condition, cap_condition

    conditions = [Condition("none")]
    for cap in caps or ["recommended"]:
        if cap != "none":
            conditions.append(cap_condition(axis_bundle, cap))
    return conditions


def make_harm_judge(
    judge: str, url: str | None, model: str | None, key_env: str, concurrency: int
) -> Any:
    """The harm judge the judge flags ask for (see :mod:`persona_axis.judges.factory`)."""
    from persona_axis.judges import harm_judge

    return harm_judge(judge_config(judge, url, model, key_env, concurrency) or {})


def result_meta(lm: Any, bundle: Path, model: str | None, **settings: Any) -> dict[str, Any]:
    """What every result file records besides its figures (and the small-model note)."""
    from persona_axis.evals.common import SMALL_MODEL_NOTE

    info: dict[str, Any] = {"model": lm.name, "bundle": str(bundle), "settings": settings}
    if model is None:
        info["note"] = SMALL_MODEL_NOTE
    return info


def _print_rates(title: str, rows: list[tuple[str, dict[str, Any], str]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("condition", "rate", "95% CI", "n", "change"):
        table.add_column(column)
    for name, summary, change in rows:
        rate = "n/a" if summary["rate"] is None else f"{summary['rate']:.1%}"
        low, high = summary["ci95"]
        table.add_row(name, rate, f"{low:.1%}–{high:.1%}", str(summary["n"]), change)
    console.print(table)


def pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f} pts"


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
    from persona_axis.evals.jailbreak import (
        load_behaviours,
        plot_jailbreak,
        run_jailbreak,
        sample_prompts,
    )
    from persona_axis.inference.generation import Sampling

    harm_judge = make_harm_judge(judge, judge_url, judge_model, judge_key_env, judge_concurrency)
    prompts = sample_prompts(n, seed=seed, behaviours=load_behaviours(behaviours))
    axis_bundle, lm = load_for_bundle(bundle, model, dtype, allow_mismatch)
    conditions = _conditions(axis_bundle, cap)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    result = run_jailbreak(
        lm, conditions, prompts, harm_judge, sampling, batch_size=batch_size, progress=progress
    )
    meta = result_meta(lm, bundle, model, n=n, seed=seed, max_new_tokens=max_new_tokens,
                 temperature=temperature, batch_size=batch_size)  # fmt: skip
    path = files.write_json(out / "jailbreak.json", {"eval": "jailbreak", **meta, **result})
    plot = plot_jailbreak(result, out / "jailbreak.png", title=f"{lm.name}: persona jailbreaks")
    rows = [
        (name, s["harmful"], pct(result["harmful_rate_change"][name]))
        for name, s in result["conditions"].items()
    ]
    _print_rates(f"Harmful rate (judge: {result['judge']})", rows)
    if "judge_note" in result:
        console.print(f"[yellow]{result['judge_note']}[/]")
    if "note" in meta:
        console.print(f"[dim]{meta['note']}[/]")
    console.print(f"results: {path}  plot: {plot}")


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
    from persona_axis.evals.capability import make_probes, run_capability
    from persona_axis.inference.generation import Sampling

    axis_bundle, lm = load_for_bundle(bundle, model, dtype, allow_mismatch)
    conditions = _conditions(axis_bundle, cap)
    probes = make_probes(n, seed=seed)
    sampling = Sampling(max_new_tokens=max_new_tokens, seed=seed)
    result = run_capability(
        lm, conditions, probes, sampling, batch_size=batch_size, progress=progress
    )
    meta = result_meta(lm, bundle, model, n_per_family=n, seed=seed, max_new_tokens=max_new_tokens)
    path = files.write_json(out / "capability.json", {"eval": "capability", **meta, **result})
    rows = []
    for name, summary in result["conditions"].items():
        rows.append((name, summary["overall"], f"Σ {pct(result['summed_change'][name])}"))
        for family, rate in summary["families"].items():
            rows.append((f"  {family}", rate, ""))
    _print_rates("Capability probes (accuracy)", rows)
    if "note" in meta:
        console.print(f"[dim]{meta['note']}[/]")
    console.print(f"results: {path}")


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

    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.evals.lm_eval_adapter import evaluate_tasks

    pretrained = model_for(AxisBundle.load(bundle), model) or "default"

    task_list = [t.strip() for t in tasks.split(",") if t.strip()]
    runs: dict[str, Any] = {}
    for name in ["none", *(cap or ["recommended"])]:
        args = {
            "pretrained": pretrained,
            "bundle": str(bundle),
            "cap": name,
            "dtype": dtype,
            "allow_mismatch": allow_mismatch,
        }
        results = evaluate_tasks(
            task_list,
            model_args=args,
            include_path=include_path,
            limit=int(limit) if limit is not None and limit >= 1 else limit,
            batch_size=batch_size,
            num_fewshot=num_fewshot,
            apply_chat_template=apply_chat_template,
        )
        runs[name] = {"results": results.get("results", {}), "n_samples": results.get("n-samples")}
    path = files.write_json(out / "capability_lm_eval.json", {"eval": "lm-eval", "runs": runs})
    table = Table(title="lm-eval metrics")
    table.add_column("condition")
    table.add_column("task")
    table.add_column("metrics")
    for name, run in runs.items():
        for task, metrics in run["results"].items():
            shown = ", ".join(
                f"{k} {v:.3f}"
                for k, v in metrics.items()
                if isinstance(v, float) and "stderr" not in k
            )
            table.add_row(name, task, shown)
    console.print(table)
    console.print(f"results: {path}")


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
    from persona_axis.catalog import load_catalog
    from persona_axis.evals.common import steer_condition
    from persona_axis.evals.susceptibility import (
        pick_cap,
        plain_assistant_change,
        run_susceptibility,
        sample_items,
    )
    from persona_axis.inference.generation import Sampling
    from persona_axis.judges import role_judge

    axis_bundle, lm = load_for_bundle(bundle, model, dtype, allow_mismatch)
    name = model_name or str(axis_bundle.manifest.get("model_name") or lm.name)
    config = judge_config(judge, judge_url, judge_model, judge_key_env, judge_concurrency)
    judge_used = role_judge(config or {"backend": "heuristic"}, name)
    conditions = _conditions(axis_bundle, cap)
    conditions += [steer_condition(lm, axis_bundle, m) for m in steer or []]
    items = sample_items(
        load_catalog(), n_roles=roles, n_questions=questions, seed=seed, model_name=name
    )
    sampling = Sampling(max_new_tokens=max_new_tokens, seed=seed)
    result = run_susceptibility(
        lm, conditions, items, judge_used, sampling, batch_size=batch_size, progress=progress
    )
    plain = plain_assistant_change(
        lm, conditions, sampling, batch_size=batch_size, progress=progress
    )
    choice, why = pick_cap(result, plain)
    meta = result_meta(lm, bundle, model, roles=roles, questions=questions, seed=seed,
                 max_new_tokens=max_new_tokens)  # fmt: skip
    record = {
        "eval": "susceptibility",
        **meta,
        **result,
        "plain_assistant": plain,
        "picked_cap": choice,
        "picked_because": why,
    }
    path = files.write_json(out / "susceptibility.json", record)
    print_capping_table(result, plain)
    console.print(why)
    if "note" in meta:
        console.print(f"[dim]{meta['note']}[/]")
    console.print(f"results: {path}")


def print_capping_table(result: dict[str, Any], plain: dict[str, Any]) -> None:
    """In-role rate per condition (with its change from no intervention) beside how much the
    condition changes plain Assistant replies."""
    from rich.table import Table

    table = Table(title=f"Staying in role vs changing the Assistant (judge: {result['judge']})")
    for column in (
        "condition",
        "in role",
        "95% CI",
        "n",
        "change",
        "plain replies unchanged",
        "plain similarity",
    ):
        table.add_column(column)
    for name, summary in result["conditions"].items():
        rate = summary["in_role"]
        low, high = rate["ci95"]
        kept = plain[name]["identical"]
        table.add_row(
            name,
            "n/a" if rate["rate"] is None else f"{rate['rate']:.0%}",
            f"{low:.0%}–{high:.0%}",
            str(rate["n"]),
            pct(result["in_role_change"][name]),
            f"{kept['k']}/{kept['n']}",
            f"{plain[name]['similarity']:.2f}",
        )
    console.print(table)
