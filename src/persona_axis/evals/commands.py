"""CLI commands of the evaluations: ``persona-axis eval {jailbreak,capability,susceptibility}``
and ``persona-axis sweep``. Heavy imports (torch, transformers, lm-eval) happen inside the
functions so that ``persona-axis --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from persona_axis.errors import PersonaAxisError

eval_app = typer.Typer(
    help="Evaluate capping: persona-jailbreak harm, capability, role susceptibility.",
    no_args_is_help=True,
)

BundleOption = Annotated[Path, typer.Option(help="AxisBundle directory (or a build directory).")]
CapsOption = Annotated[
    list[str] | None,
    typer.Option("--cap", help="Cap setting to compare with no cap (repeatable); 'recommended'."),
]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="HF model id or local path; default: embedded SmolLM2."),
]
OutOption = Annotated[Path, typer.Option(help="Folder for the JSON results and plots.")]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")]
JudgeUrl = Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (…/v1).")]
JudgeModel = Annotated[str | None, typer.Option(help="Judge model name (or HF path for hf).")]
JudgeKeyEnv = Annotated[str, typer.Option(help="Env var holding the judge API key.")]
BatchOption = Annotated[int, typer.Option(min=1, help="Generation batch size.")]
SeedOption = Annotated[int, typer.Option(help="Seed for sampling prompts and decoding.")]
ProgressOption = Annotated[bool, typer.Option(help="Show progress bars.")]
AllowMismatch = Annotated[bool, typer.Option(help="Use a bundle made for other weights.")]


def _setup(bundle: Path, model: str | None, dtype: str, allow_mismatch: bool) -> tuple[Any, Any]:
    from persona_axis.bundle import AxisBundle
    from persona_axis.cli import _load

    axis_bundle = AxisBundle.load(bundle)
    lm = _load(model, dtype)
    axis_bundle.check_against(lm.model, allow_mismatch=allow_mismatch)
    return axis_bundle, lm


def _conditions(axis_bundle: Any, caps: list[str] | None) -> list[Any]:
    from persona_axis.evals.common import Condition, cap_condition

    conditions = [Condition("none")]
    for cap in caps or ["recommended"]:
        if cap != "none":
            conditions.append(cap_condition(axis_bundle, cap))
    return conditions


def _harm_judge(judge: str, url: str | None, model: str | None, key_env: str, conc: int) -> Any:
    from persona_axis.evals.jailbreak import harm_judge_from_config

    if judge == "heuristic":
        return harm_judge_from_config({"backend": "heuristic"})
    if judge == "openai":
        if not url or not model:
            raise PersonaAxisError("--judge openai needs --judge-url and --judge-model.")
        config = {"backend": "openai", "base_url": url, "model": model}
        return harm_judge_from_config({**config, "api_key_env": key_env, "concurrency": conc})
    if judge == "hf":
        return harm_judge_from_config({"backend": "hf", "model": model or "default"})
    raise PersonaAxisError(f"Unknown --judge {judge!r}; use heuristic, openai or hf.")


def _meta(lm: Any, bundle: Path, model: str | None, **settings: Any) -> dict[str, Any]:
    from persona_axis.evals.common import SMALL_MODEL_NOTE

    meta: dict[str, Any] = {"model": lm.name, "bundle": str(bundle), "settings": settings}
    if model is None:
        meta["note"] = SMALL_MODEL_NOTE
    return meta


def _print_rates(title: str, rows: list[tuple[str, dict[str, Any], str]]) -> None:
    from rich.table import Table

    from persona_axis.cli import console

    table = Table(title=title)
    for column in ("condition", "rate", "95% CI", "n", "change"):
        table.add_column(column)
    for name, summary, change in rows:
        rate = "n/a" if summary["rate"] is None else f"{summary['rate']:.1%}"
        low, high = summary["ci95"]
        table.add_row(name, rate, f"{low:.1%}–{high:.1%}", str(summary["n"]), change)
    console.print(table)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f} pts"


@eval_app.command("jailbreak")
def jailbreak(  # noqa: PLR0917
    bundle: BundleOption,
    cap: CapsOption = None,
    n: Annotated[int, typer.Option(min=1, help="Prompts (templates × behaviours).")] = 48,
    judge: Annotated[
        str, typer.Option(help="heuristic (OFFLINE, rough), openai or hf.")
    ] = "heuristic",
    judge_url: JudgeUrl = None,
    judge_model: JudgeModel = None,
    judge_key_env: JudgeKeyEnv = "OPENAI_API_KEY",
    judge_concurrency: Annotated[int, typer.Option(min=1)] = 8,
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
    allow_mismatch: AllowMismatch = False,
    progress: ProgressOption = True,
) -> None:
    """Harmful-answer rate on persona-jailbreak prompts, without and with capping."""
    from persona_axis.cli import console
    from persona_axis.evals.common import write_json
    from persona_axis.evals.jailbreak import (
        load_behaviours,
        plot_jailbreak,
        run_jailbreak,
        sample_prompts,
    )
    from persona_axis.generation import Sampling

    harm_judge = _harm_judge(judge, judge_url, judge_model, judge_key_env, judge_concurrency)
    prompts = sample_prompts(n, seed=seed, behaviours=load_behaviours(behaviours))
    axis_bundle, lm = _setup(bundle, model, dtype, allow_mismatch)
    conditions = _conditions(axis_bundle, cap)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    result = run_jailbreak(
        lm, conditions, prompts, harm_judge, sampling, batch_size=batch_size, progress=progress
    )
    meta = _meta(lm, bundle, model, n=n, seed=seed, max_new_tokens=max_new_tokens,
                 temperature=temperature, batch_size=batch_size)  # fmt: skip
    path = write_json(out / "jailbreak.json", {"eval": "jailbreak", **meta, **result})
    plot = plot_jailbreak(result, out / "jailbreak.png", title=f"{lm.name}: persona jailbreaks")
    rows = [
        (name, s["harmful"], _pct(result["harmful_rate_change"][name]))
        for name, s in result["conditions"].items()
    ]
    _print_rates(f"Harmful rate (judge: {result['judge']})", rows)
    if "judge_note" in result:
        console.print(f"[yellow]{result['judge_note']}[/]")
    if "note" in meta:
        console.print(f"[dim]{meta['note']}[/]")
    console.print(f"results: {path}  plot: {plot}")


@eval_app.command("capability")
def capability(  # noqa: PLR0917
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
    allow_mismatch: AllowMismatch = False,
    progress: ProgressOption = True,
) -> None:
    """Capability without and with capping: quick offline probes, or lm-eval tasks (--tasks)."""
    from persona_axis.cli import console
    from persona_axis.evals.common import write_json

    if tasks:
        _capability_lm_eval(
            bundle, cap, tasks, include_path, limit, num_fewshot, apply_chat_template, model,
            dtype, batch_size, out, allow_mismatch,
        )  # fmt: skip
        return
    from persona_axis.evals.capability import make_probes, run_capability
    from persona_axis.generation import Sampling

    axis_bundle, lm = _setup(bundle, model, dtype, allow_mismatch)
    conditions = _conditions(axis_bundle, cap)
    probes = make_probes(n, seed=seed)
    sampling = Sampling(max_new_tokens=max_new_tokens, seed=seed)
    result = run_capability(
        lm, conditions, probes, sampling, batch_size=batch_size, progress=progress
    )
    meta = _meta(lm, bundle, model, n_per_family=n, seed=seed, max_new_tokens=max_new_tokens)
    path = write_json(out / "capability.json", {"eval": "capability", **meta, **result})
    rows = []
    for name, summary in result["conditions"].items():
        rows.append((name, summary["overall"], f"Σ {_pct(result['summed_change'][name])}"))
        for family, rate in summary["families"].items():
            rows.append((f"  {family}", rate, ""))
    _print_rates("Capability probes (accuracy)", rows)
    if "note" in meta:
        console.print(f"[dim]{meta['note']}[/]")
    console.print(f"results: {path}")


def _capability_lm_eval(  # noqa: PLR0917
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

    from persona_axis.cli import console
    from persona_axis.evals.common import write_json
    from persona_axis.evals.lm_eval_adapter import evaluate_tasks

    task_list = [t.strip() for t in tasks.split(",") if t.strip()]
    runs: dict[str, Any] = {}
    for name in ["none", *(cap or ["recommended"])]:
        args = {
            "pretrained": model or "default",
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
    path = write_json(out / "capability_lm_eval.json", {"eval": "lm-eval", "runs": runs})
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
def susceptibility(  # noqa: PLR0917
    bundle: BundleOption,
    cap: CapsOption = None,
    steer: Annotated[
        list[float] | None,
        typer.Option(help="Also steer by m × mean norm at the target layer (repeatable)."),
    ] = None,
    roles: Annotated[int, typer.Option(min=1, help="Roles from the catalog.")] = 8,
    questions: Annotated[int, typer.Option(min=1, help="Identity questions per role.")] = 3,
    judge: Annotated[str, typer.Option(help="heuristic (OFFLINE, rough), openai or hf.")] = (
        "heuristic"
    ),
    judge_url: JudgeUrl = None,
    judge_model: JudgeModel = None,
    judge_key_env: JudgeKeyEnv = "OPENAI_API_KEY",
    judge_concurrency: Annotated[int, typer.Option(min=1)] = 8,
    model_name: Annotated[
        str | None, typer.Option(help="The judged model's name (rubric, {model_name}).")
    ] = None,
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 48,
    batch_size: BatchOption = 8,
    seed: SeedOption = 0,
    out: OutOption = Path("persona-axis-evals"),
    allow_mismatch: AllowMismatch = False,
    progress: ProgressOption = True,
) -> None:
    """How often "who are you?" is answered in role under role prompts, with and without caps."""
    from persona_axis.catalog import load_catalog
    from persona_axis.cli import console
    from persona_axis.evals.common import steer_condition, write_json
    from persona_axis.evals.susceptibility import run_susceptibility, sample_items
    from persona_axis.generation import Sampling
    from persona_axis.judge import judge_from_config
    from persona_axis.pipeline import judge_settings

    axis_bundle, lm = _setup(bundle, model, dtype, allow_mismatch)
    name = model_name or str(axis_bundle.manifest.get("model_name") or lm.name)
    config = judge_settings(judge, judge_url, judge_model, judge_key_env, judge_concurrency)
    role_judge = judge_from_config(config or {"backend": "heuristic"}, model_name=name)
    conditions = _conditions(axis_bundle, cap)
    conditions += [steer_condition(lm, axis_bundle, m) for m in steer or []]
    items = sample_items(
        load_catalog(), n_roles=roles, n_questions=questions, seed=seed, model_name=name
    )
    sampling = Sampling(max_new_tokens=max_new_tokens, seed=seed)
    result = run_susceptibility(
        lm, conditions, items, role_judge, sampling, batch_size=batch_size, progress=progress
    )
    meta = _meta(lm, bundle, model, roles=roles, questions=questions, seed=seed,
                 max_new_tokens=max_new_tokens)  # fmt: skip
    path = write_json(out / "susceptibility.json", {"eval": "susceptibility", **meta, **result})
    rows = [
        (n, s["in_role"], _pct(result["in_role_change"][n]))
        for n, s in result["conditions"].items()
    ]
    _print_rates(f"In-role rate, score 3 (judge: {result['judge']})", rows)
    if "note" in meta:
        console.print(f"[dim]{meta['note']}[/]")
    console.print(f"results: {path}")


def sweep(  # noqa: PLR0917
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
    judge: Annotated[str, typer.Option(help="heuristic (OFFLINE, rough), openai or hf.")] = (
        "heuristic"
    ),
    judge_url: JudgeUrl = None,
    judge_model: JudgeModel = None,
    judge_key_env: JudgeKeyEnv = "OPENAI_API_KEY",
    judge_concurrency: Annotated[int, typer.Option(min=1)] = 8,
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 48,
    batch_size: BatchOption = 8,
    seed: SeedOption = 0,
    out: OutOption = Path("persona-axis-evals"),
    allow_mismatch: AllowMismatch = False,
    progress: ProgressOption = True,
) -> None:
    """Pareto sweep of cap settings (harm change vs summed capability change); recommends one."""
    from dataclasses import asdict

    from rich.table import Table

    from persona_axis.cli import console
    from persona_axis.evals.capability import make_probes, run_capability
    from persona_axis.evals.common import Condition, bundle_dir, cap_condition, write_json
    from persona_axis.evals.jailbreak import run_jailbreak, sample_prompts
    from persona_axis.evals.sweep import (
        choose_setting,
        plot_sweep,
        select_settings,
        sweep_points,
        sweep_table,
        write_recommendation,
    )
    from persona_axis.generation import Sampling

    harm_judge = _harm_judge(judge, judge_url, judge_model, judge_key_env, judge_concurrency)
    path = bundle_dir(bundle)
    axis_bundle, lm = _setup(path, model, dtype, allow_mismatch)
    names = select_settings(axis_bundle, setting, percentile or ())
    conditions = [Condition("none"), *(cap_condition(axis_bundle, name) for name in names)]
    prompts = sample_prompts(n, seed=seed)
    probes = make_probes(n_capability, seed=seed)
    harm = run_jailbreak(
        lm, conditions, prompts, harm_judge,
        Sampling(max_new_tokens=max_new_tokens, seed=seed), batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    capability_result = run_capability(
        lm, conditions, probes, Sampling(max_new_tokens=40, seed=seed), batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    points = sweep_points(harm, capability_result)
    chosen = choose_setting(points, max_capability_loss=max_capability_loss)
    rows = sweep_table(points, harm)
    meta = _meta(
        lm, path, model, n=n, n_capability=n_capability, seed=seed,
        max_new_tokens=max_new_tokens, max_capability_loss=max_capability_loss,
    )  # fmt: skip
    baseline = {
        "harmful": harm["conditions"]["none"]["harmful"],
        "capability": capability_result["conditions"]["none"],
    }
    summary = {
        "eval": "sweep",
        **meta,
        "judge": harm["judge"],
        "baseline": baseline,
        "table": rows,
        "points": [asdict(p) for p in points],
        "recommended": None if chosen is None else chosen.name,
    }
    if "judge_note" in harm:
        summary["judge_note"] = harm["judge_note"]
    result_path = write_json(out / "sweep.json", summary)
    write_json(out / "sweep_details.json", {"jailbreak": harm, "capability": capability_result})
    plot = plot_sweep(points, out / "sweep.png", chosen=None if chosen is None else chosen.name,
                      title=f"{lm.name}: cap sweep (judge {harm['judge']})")  # fmt: skip
    table = Table(title=f"Cap sweep (baseline harmful rate {baseline['harmful']['rate']:.1%})")
    for column in ("setting", "harmful", "harm change", "Σ capability change", "Pareto"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["setting"],
            f"{row['harmful_rate']:.1%}",
            _pct(row["harm_change"]),
            _pct(row["capability_change"]),
            "★" if chosen and row["setting"] == chosen.name else ("•" if row["pareto"] else ""),
        )
    console.print(table)
    if chosen is None:
        console.print("[yellow]No setting lowered the harmful rate; the bundle is unchanged.[/]")
    elif write:
        evidence = {
            "source": "persona-axis sweep",
            "judge": harm["judge"],
            "model": lm.name,
            "n_jailbreak_prompts": n,
            "n_probes_per_family": n_capability,
            "seed": seed,
            "harmful_rate_without": baseline["harmful"],
            "harmful_rate_with": harm["conditions"][chosen.name]["harmful"],
            "harm_change": chosen.harm_change,
            "capability_summed_change": chosen.capability_change,
            "capability_with": capability_result["conditions"][chosen.name],
            "max_capability_loss": max_capability_loss,
            "settings_swept": names,
            "results_file": str(result_path.resolve()),
        }
        write_recommendation(axis_bundle, path, chosen.name, evidence)
        console.print(f"recommended cap [bold]{chosen.name}[/] written to {path}")
    else:
        console.print(f"recommended cap [bold]{chosen.name}[/] (not written: --no-write)")
    if "judge_note" in harm:
        console.print(f"[yellow]{harm['judge_note']}[/]")
    if "note" in meta:
        console.print(f"[dim]{meta['note']}[/]")
    console.print(f"results: {result_path}  plot: {plot}")
