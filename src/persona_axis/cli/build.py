"""``persona-axis build``: compute the Assistant Axis into a resumable build directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from persona_axis.cli.common import (
    JudgeConcurrencyOption,
    JudgeKeyEnvOption,
    JudgeModelOption,
    JudgeUrlOption,
    ModelOption,
    console,
    judge_config,
    load,
)

OptInt = Annotated[int | None, typer.Option(min=0)]


def build(
    out: Annotated[
        Path, typer.Option(help="Build directory (resumable); bundle goes in out/bundle.")
    ],
    model: ModelOption = None,
    preset: Annotated[
        str, typer.Option(help="quick (minutes), standard (≈20 min on 2 CPU cores) or paper (GPU).")
    ] = "quick",
    catalog: Annotated[
        Path | None, typer.Option(help="Catalog folder (ours or the reference layout).")
    ] = None,
    roles: Annotated[int | None, typer.Option("--roles", min=1, help="Number of roles.")] = None,
    prompts_per_role: Annotated[int | None, typer.Option(min=1)] = None,
    questions: Annotated[int | None, typer.Option("--questions", min=1)] = None,
    traits: Annotated[int | None, typer.Option("--traits", min=0)] = None,
    pairs_per_trait: Annotated[int | None, typer.Option(min=1)] = None,
    trait_questions: Annotated[int | None, typer.Option(min=1)] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0)] = None,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="float32, bfloat16, float16 or auto (bfloat16 where the CPU has AMX or "
            "AVX-512-BF16 or the GPUs support it, else float32; the manifest says which)."
        ),
    ] = None,
    model_name: Annotated[str | None, typer.Option(help="Name filled into {model_name}.")] = None,
    judge: Annotated[
        str | None, typer.Option(help="heuristic (offline, rough), none, openai or hf.")
    ] = None,
    judge_url: JudgeUrlOption = None,
    judge_model: JudgeModelOption = None,
    judge_key_env: JudgeKeyEnvOption = "OPENAI_API_KEY",
    judge_concurrency: JudgeConcurrencyOption = 8,
    min_role_rollouts: Annotated[int | None, typer.Option(min=1)] = None,
    target_layer: Annotated[
        int | None,
        typer.Option(min=0, help="Read the axis at this layer (default: chosen by evidence)."),
    ] = None,
    token_percentile_rollouts: Annotated[
        int | None,
        typer.Option(min=0, help="Rollouts sampled for the per-token projection percentiles."),
    ] = None,
    token_calibration_rollouts: Annotated[
        int | None, typer.Option(min=0, hidden=True, help="Old name of the option above.")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="'hf': generate with Hugging Face; 'vllm': with the vLLM engine (run from the "
            "vLLM environment, `make install-vllm`)."
        ),
    ] = "hf",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    workers: Annotated[
        int, typer.Option(min=1, help="Ray workers for generation (each loads the model).")
    ] = 1,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address (e.g. ray://head:10001); else local.")
    ] = None,
    gpus_per_worker: Annotated[
        float, typer.Option(min=0.0, help="GPUs per Ray worker (device_map='auto' over them).")
    ] = 0.0,
) -> None:
    """Compute the Assistant Axis: generate, judge, vectors, axis, persona space, caps.

    --workers N (or --ray-address) shards generation over Ray actors; the result equals a
    one-process build's, and a killed worker's batches are redone by a fresh one."""
    from persona_axis.drift.reference_chats import build as run_build
    from persona_axis.pipeline import preset as get_preset

    config = get_preset(preset).with_overrides(
        model=model,
        catalog=None if catalog is None else str(catalog),
        n_roles=roles,
        prompts_per_role=prompts_per_role,
        n_questions=questions,
        n_traits=traits,
        pairs_per_trait=pairs_per_trait,
        trait_questions=trait_questions,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        dtype=dtype,
        model_name=model_name,
        judge=judge_config(judge, judge_url, judge_model, judge_key_env, judge_concurrency),
        min_role_rollouts=min_role_rollouts,
        target_layer=target_layer,
        token_percentile_rollouts=(
            token_calibration_rollouts
            if token_percentile_rollouts is None
            else token_percentile_rollouts
        ),
        engine=engine,
        progress=progress,
        workers=workers,
        ray_address=ray_address,
        gpus_per_worker=gpus_per_worker,
    )
    if config.engine == "vllm":
        from persona_axis.inference.vllm import require_vllm

        require_vllm()  # before loading anything
    lm = load(config.model if config.model != "default" else None, config.dtype_choice().dtype)
    result = run_build(config, out, lm=lm)
    print_summary(result.summary, result.path)


def print_summary(summary: dict[str, Any], path: Path) -> None:
    """The figures to look at first after a build."""
    table = Table(show_header=False, title=f"Assistant Axis of {summary['model']}")
    table.add_row("bundle", str(path))
    reason = summary.get("target_reason")
    table.add_row("target layer", f"{summary['target_layer']}" + (f" ({reason})" if reason else ""))
    if summary.get("dtype"):
        dtype = summary["dtype"]
        table.add_row("dtype", f"{dtype['dtype']} ({dtype['reason']})")
    table.add_row("roles kept", str(summary["roles_kept"]))
    table.add_row("default projection", f"{summary['default_projection']:.2f}")
    for label, key in (
        ("most Assistant-like roles", "top_roles"),
        ("furthest roles", "bottom_roles"),
    ):
        table.add_row(label, ", ".join(f"{n} {p:.2f}" for n, p in summary[key]))
    table.add_row("cos(axis, PC1)", f"{summary['cos_axis_pc1']:.3f}")
    table.add_row("PC1 variance explained", f"{summary['pc1_variance']:.1%}")
    if summary["traits_top"]:
        for label, key in (
            ("traits toward Assistant", "traits_top"),
            ("traits away", "traits_bottom"),
        ):
            table.add_row(label, ", ".join(f"{n} {c:+.2f}" for n, c in summary[key]))
    table.add_row("cap settings", ", ".join(summary["caps"]))
    table.add_row("recommended cap", str(summary["recommended_cap"]))
    if summary.get("benign_profile"):
        table.add_row("drift monitor's benign profile", summary["benign_profile"])
    if summary.get("request_probe"):
        table.add_row("drift monitor's request probe", summary["request_probe"])
    table.add_row(
        "stage times (s)", ", ".join(f"{k} {v:.1f}" for k, v in summary["timings"].items())
    )
    console.print(table)
    if "quality" in summary:
        print_quality(summary["quality"], summary["target_layer"], summary["warnings"])
    else:
        for warning in summary.get("warnings", []):
            console.print(f"[bold red]{warning}[/]")


def print_quality(
    figures: dict[str, tuple[float, float, float]], layer: int, warnings: list[str]
) -> None:
    """The axis quality metrics at ``layer`` with their bootstrap 95% intervals, then the
    warnings (docs/axis-quality.md)."""
    from persona_axis.axis.quality import METRICS

    table = Table(title=f"Axis quality at layer {layer} (bootstrap 95% intervals)")
    for column in ("metric", "estimate", "95% interval"):
        table.add_column(column)
    for key, label, spec in METRICS:
        value, low, high = figures[key]
        table.add_row(label, format(value, spec), f"{low:{spec}} – {high:{spec}}")
    console.print(table)
    for warning in warnings:
        style = "dim" if warning.startswith("note") else "bold red"
        console.print(f"[{style}]{warning}[/]")
