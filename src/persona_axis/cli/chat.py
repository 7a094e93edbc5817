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
    from persona_axis.drift.chat import DriftChat, DriftReply

ON_DRIFT = "on-drift"  # persona_axis.drift.gate.ON_DRIFT (imported lazily with the library)


def chat(
    model: ModelOption = None,
    bundle: Annotated[
        Path | None, typer.Option(help="AxisBundle directory (for projections, caps, steering).")
    ] = None,
    cap: Annotated[
        str | None,
        typer.Option(
            help="Cap setting of the bundle's caps.json, 'recommended', 'none' or 'on-drift' "
            "(the recommended cap only while the drift rule has the conversation armed)."
        ),
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Answer every message with and without the cap, side by side (needs --bundle).",
        ),
    ] = False,
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
    """Chat with a model; each reply shows its projection on the axis before and after capping
    and, with a bundle, the drift rule's level for it."""
    from persona_axis.application.session import ChatSession
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.chat import DriftChat
    from persona_axis.inference.generation import Sampling

    if (cap not in (None, "none") or steer is not None or compare) and bundle is None:
        raise PersonaAxisError("--cap, --steer and --compare need --bundle DIR (an AxisBundle).")
    axis_bundle = AxisBundle.load(bundle) if bundle is not None else None
    lm = load(model_for(axis_bundle, model), dtype)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    session: ChatSession | DriftChat
    if axis_bundle is None:
        session = ChatSession.open(lm, None, sampling=sampling, system=system)
    else:
        session = DriftChat.open(
            lm,
            axis_bundle,
            cap=cap,
            steer=steer,
            compare=compare,
            sampling=sampling,
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
        if isinstance(session, DriftChat):
            print_drift_reply(session.send(text), session)
        else:
            print_turn(session.send(text), None)


def print_drift_reply(reply: DriftReply, session: DriftChat) -> None:
    """The reply with its projection and level; in compare mode the other answer beside it."""
    if reply.other is None:
        print_turn(reply.turn, session.bundle, level=reply.level, gate=_gate(reply, session))
        return
    from rich.table import Table

    table = Table(show_lines=True, expand=True)
    turns = (reply.turn, reply.other) if reply.capped else (reply.other, reply.turn)
    table.add_column("with the cap")
    table.add_column("without the cap")
    table.add_row(*(t.reply.text for t in turns))
    table.add_row(*(_projection(t, session.bundle) for t in turns))
    console.print(table)
    console.print(
        f"[dim]  level {reply.level}{_gate(reply, session)}; the conversation goes on "
        f"with the {'capped' if reply.capped else 'uncapped'} reply[/]"
    )


def _gate(reply: DriftReply, session: DriftChat) -> str:
    if session.cap != ON_DRIFT:
        return ""
    return "; on-drift: armed, capped" if reply.capped else "; on-drift: not armed"


def _projection(turn: Turn, bundle: AxisBundle) -> str:
    if turn.before is None:
        return "no reply tokens"
    return f"axis @ layer {bundle.target_layer}: before {turn.before:.2f}  after {turn.after:.2f}"


def print_turn(
    turn: Turn, bundle: AxisBundle | None, *, level: str | None = None, gate: str = ""
) -> None:
    """The reply and, with a bundle, its projection before and after capping at the target
    layer (and, where the cap acts on other layers, the mean over them of each capped layer's
    projection on its own axis), and its level."""
    console.print(f"[green]assistant>[/] {turn.reply.text}")
    if turn.before is None or bundle is None:
        return
    line = f"  axis @ layer {bundle.target_layer}: before {turn.before:.2f}  after {turn.after:.2f}"
    if turn.touched is not None:
        line += f"  (cap raised {100 * turn.touched:.0f}% of token×layer values)"
    if turn.cap_layers and bundle.target_layer not in turn.cap_layers:
        # the cap acts elsewhere, so before = after here: show it where it acts
        layers = sorted(turn.cap_layers)
        pairs = [turn.cap_layers[layer] for layer in layers]
        was, now = (sum(pair[i] for pair in pairs) / len(pairs) for i in (0, 1))
        line += f"  capped layers {layers[0]}–{layers[-1]}: before {was:.2f}  after {now:.2f}"
    if level is not None:
        line += f"  level {level}{gate}"
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
