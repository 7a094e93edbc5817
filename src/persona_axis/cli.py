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
