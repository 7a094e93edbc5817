"""``persona-axis chat``: chat with a model, capped or steered, with each reply's projection."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from persona_axis.cli.common import (
    AllowMismatchOption,
    DtypeOption,
    ModelOption,
    console,
    load,
    model_for,
)
from persona_axis.errors import PersonaAxisError

if TYPE_CHECKING:
    from persona_axis.application.session import Turn
    from persona_axis.axis.bundle import AxisBundle


def chat(
    model: ModelOption = None,
    bundle: Annotated[
        Path | None, typer.Option(help="AxisBundle directory (for projections, caps, steering).")
    ] = None,
    cap: Annotated[
        str | None,
        typer.Option(help="Cap setting of the bundle's caps.json, 'recommended' or 'none'."),
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
    allow_mismatch: AllowMismatchOption = False,
) -> None:
    """Chat with a model; each reply shows its projection on the axis before and after capping."""
    from persona_axis.application.session import ChatSession
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.inference.generation import Sampling

    if (cap not in (None, "none") or steer is not None) and bundle is None:
        raise PersonaAxisError("--cap and --steer need --bundle DIR (an AxisBundle).")
    axis_bundle = AxisBundle.load(bundle) if bundle is not None else None
    lm = load(model_for(axis_bundle, model), dtype)
    session = ChatSession.open(
        lm,
        axis_bundle,
        cap=cap,
        steer=steer,
        sampling=Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed),
        system=system,
        allow_mismatch=allow_mismatch,
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
        print_turn(session.send(text), session.bundle)


def print_turn(turn: Turn, bundle: AxisBundle | None) -> None:
    """The reply and, with a bundle, its projection before and after capping."""
    console.print(f"[green]assistant>[/] {turn.reply.text}")
    if turn.before is None or bundle is None:
        return
    line = f"  axis @ layer {bundle.target_layer}: before {turn.before:.2f}  after {turn.after:.2f}"
    if turn.touched is not None:
        line += f"  (cap raised {100 * turn.touched:.0f}% of token×layer values)"
    console.print(f"[dim]{line}[/]")


def _stdin_lines() -> Iterator[str]:
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            console.print("[cyan]you>[/] ", end="")
        line = sys.stdin.readline()
        if not line or line.strip() in {"/quit", "/exit"}:
            return
        if line.strip():
            yield line.strip()
