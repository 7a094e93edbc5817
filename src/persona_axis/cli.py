"""The ``persona-axis`` command line: one Typer app, one sub-command per user job.

User errors (:class:`PersonaAxisError`) print one line on stderr, without a traceback, and exit
with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from persona_axis.errors import PersonaAxisError

app = typer.Typer(
    help="Compute, monitor and stabilise the Assistant Axis of chat models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="HF model id or local path; default: embedded SmolLM2."),
]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")]


def _load(model: str | None, dtype: str):
    import transformers

    from persona_axis.models import load_model

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    with console.status(f"Loading {model or 'the default model'}..."):
        return load_model(model, dtype=dtype)


@app.command()
def info(model: ModelOption = None, dtype: DtypeOption = "auto") -> None:
    """Architecture, layers, hidden size, target layer and chat-template facts of a model."""
    lm = _load(model, dtype)
    shape = lm.shape
    table = Table(show_header=False, title=lm.name)
    rows = {
        "architecture": shape.architecture,
        "decoder layers": str(shape.n_layers),
        "hidden size": str(shape.hidden_size),
        "target layer": f"{shape.target_layer} (n_layers // 2; layer L = block L output)",
        "dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch."),
        "system role": "yes" if lm.chat.supports_system else "no (folded into first user turn)",
        "thinking switch": "yes (rendered off)" if lm.chat.thinking_switch else "no",
        "source": lm.source,
    }
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)


@app.command()
def chat(
    model: ModelOption = None,
    bundle: Annotated[
        Path | None, typer.Option(help="AxisBundle directory (for projections, caps, steering).")
    ] = None,
    cap: Annotated[
        str | None, typer.Option(help="Cap setting name from the bundle's caps.json, or 'none'.")
    ] = None,
    steer: Annotated[
        float | None,
        typer.Option(help="Steer at the target layer by m × mean residual norm (+ = Assistant)."),
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    message: Annotated[
        list[str] | None,
        typer.Option(
            "--message", "-u", help="Scripted user message (repeatable); else read stdin."
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 96,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.0,
    seed: int = 0,
    dtype: DtypeOption = "auto",
    allow_mismatch: Annotated[
        bool, typer.Option(help="Use a bundle built for different weights (warns).")
    ] = False,
) -> None:
    """Chat with a model; each reply shows its projection on the axis before and after capping."""
    from persona_axis.bundle import AxisBundle
    from persona_axis.generation import Sampling
    from persona_axis.interventions import InterventionSpec
    from persona_axis.session import ChatSession, mean_norms

    if (cap or steer is not None) and bundle is None and cap != "none":
        raise PersonaAxisError("--cap and --steer need --bundle DIR (an AxisBundle).")
    axis_bundle = AxisBundle.load(bundle) if bundle is not None else None
    lm = _load(model, dtype)
    spec = InterventionSpec()
    if axis_bundle is not None:
        axis_bundle.check_against(lm.model, allow_mismatch=allow_mismatch)
        if cap and cap != "none":
            spec = spec + InterventionSpec.from_floors(axis_bundle.cap_floors(cap))
        if steer is not None:
            target = axis_bundle.target_layer
            norm = float(mean_norms(lm, axis_bundle)[target])
            spec = spec + InterventionSpec.steer(axis_bundle.axis, target, steer, norm)
    session = ChatSession(
        lm,
        bundle=axis_bundle,
        spec=spec,
        sampling=Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed),
        system=system,
    )
    label = ", ".join(
        filter(
            None, [f"cap {cap}" if cap else "", f"steer {steer:+g}" if steer is not None else ""]
        )
    )
    console.print(f"[bold]{lm.name}[/]  intervention: {label or 'none'}")
    echo = bool(message) or not sys.stdin.isatty()  # an interactive user sees their own typing
    for text in message if message else _stdin_lines():
        if echo:
            console.print(f"[cyan]user>[/] {text}")
        turn = session.send(text)
        console.print(f"[green]assistant>[/] {turn.reply.text}")
        if turn.before is not None and axis_bundle is not None:
            line = (
                f"  axis @ layer {axis_bundle.target_layer}: before {turn.before:.2f}  "
                f"after {turn.after:.2f}"
            )
            if turn.touched is not None:
                line += f"  (cap raised {100 * turn.touched:.0f}% of token×layer values)"
            console.print(f"[dim]{line}[/]")


OptInt = Annotated[int | None, typer.Option(min=0)]


@app.command()
def build(
    out: Annotated[
        Path, typer.Option(help="Build directory (resumable); bundle goes in out/bundle.")
    ],
    model: ModelOption = None,
    preset: Annotated[
        str, typer.Option(help="quick (≈3 min on 2 CPU cores) or paper (GPU).")
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
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16, float16 or auto.")] = None,
    model_name: Annotated[str | None, typer.Option(help="Name filled into {model_name}.")] = None,
    judge: Annotated[
        str | None, typer.Option(help="heuristic (offline, rough), none, openai or hf.")
    ] = None,
    judge_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://host:8000/v1.")
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="Judge model name or HF path.")] = None,
    judge_key_env: Annotated[str, typer.Option(help="Env var holding the judge API key.")] = (
        "OPENAI_API_KEY"
    ),
    judge_concurrency: Annotated[int, typer.Option(min=1)] = 8,
    min_role_rollouts: Annotated[int | None, typer.Option(min=1)] = None,
    token_calibration_rollouts: OptInt = None,
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
    from persona_axis.pipeline import build as run_build
    from persona_axis.pipeline import judge_settings
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
        judge=judge_settings(judge, judge_url, judge_model, judge_key_env, judge_concurrency),
        min_role_rollouts=min_role_rollouts,
        token_calibration_rollouts=token_calibration_rollouts,
        progress=progress,
        workers=workers,
        ray_address=ray_address,
        gpus_per_worker=gpus_per_worker,
    )
    lm = _load(config.model if config.model != "default" else None, config.dtype)
    result = run_build(config, out, lm=lm)
    print_summary(result.summary, result.path)


def print_summary(summary: dict, path: Path) -> None:
    """The figures to look at first after a build."""
    table = Table(show_header=False, title=f"Assistant Axis of {summary['model']}")
    table.add_row("bundle", str(path))
    table.add_row("target layer", str(summary["target_layer"]))
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
    table.add_row(
        "stage times (s)", ", ".join(f"{k} {v:.1f}" for k, v in summary["timings"].items())
    )
    console.print(table)


# -- sub-commands defined in their own modules are registered below (one line each) --------
from persona_axis.serve.command import serve  # noqa: E402

app.command()(serve)
from persona_axis.evals.commands import eval_app, sweep  # noqa: E402

app.add_typer(eval_app, name="eval")
app.command()(sweep)
from persona_axis.monitor_command import monitor  # noqa: E402
from persona_axis.report_command import report  # noqa: E402
from persona_axis.simulate_command import simulate  # noqa: E402

app.command()(monitor)
app.command()(simulate)
app.command()(report)


def _stdin_lines():
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            console.print("[cyan]you>[/] ", end="")
        line = sys.stdin.readline()
        if not line or line.strip() in {"/quit", "/exit"}:
            return
        if line.strip():
            yield line.strip()


def fail(exc: PersonaAxisError) -> NoReturn:
    """Print a user error as one line on stderr and exit with status 2."""
    errors.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
    raise SystemExit(2) from None


def main() -> None:
    """Console entry point: run the app, turning user errors into one clear line."""
    try:
        app()
    except PersonaAxisError as exc:
        fail(exc)


if __name__ == "__main__":
    main()
