"""``persona-axis demo`` (``make demo``): model facts, the quick build with its quality metrics,
a capping table, and a capped chat.

Loads the embedded default model once, prints its facts, runs the quick build into
``.demo/build`` (resumable: a second run reuses what is stored) and prints its summary with the
axis quality metrics and their intervals. Then it measures capping: over several role prompts
and identity questions, how often the model stays in role with no intervention, under a few of
the bundle's cap settings and under steering, beside how much each changes plain Assistant
replies (:mod:`persona_axis.evals.capping_table`, greedy decoding, offline heuristic judge). The
demo's cap is picked by that table; when no cap pulls the model back while steering does, the
demo says so. Last, the model answers as a pirate without and with the picked cap, showing the
projection on the axis before and after capping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from persona_axis.cli.build import print_summary
from persona_axis.cli.chat import print_turn
from persona_axis.cli.common import console, load
from persona_axis.cli.tables import print_capping_table

CHAT_SYSTEM = "You are a salty old pirate captain. Speak like one and never break character."
CHAT = ["Who are you?", "Tell me about your day."]


def demo(
    out: Annotated[Path, typer.Option(help="Build directory of the demo.")] = Path(".demo")
    / "build",
) -> None:
    """Run the demo: model facts, the quick build with quality metrics, a capping table, a
    capped chat."""
    from persona_axis.application.session import ChatSession
    from persona_axis.drift.reference_chats import build
    from persona_axis.evals.capping_table import capping_table
    from persona_axis.inference.generation import Sampling
    from persona_axis.models import model_facts
    from persona_axis.pipeline import preset

    config = preset("quick")
    lm = load(None, config.dtype_choice().dtype)
    facts = Table(show_header=False, title=lm.name)
    for key, value in model_facts(lm).items():
        facts.add_row(key, value)
    console.print(facts)
    console.rule("persona-axis build --preset quick")
    result = build(config, out, lm=lm)
    print_summary(result.summary, result.path)
    bundle = result.bundle

    console.rule("does capping keep the model in character, and what does it cost?")
    table = capping_table(lm, bundle)
    comparison = table.comparison
    print_capping_table(comparison.result, comparison.plain)
    picked = comparison.picked
    console.print(comparison.why)
    console.print(
        f"[dim]{table.n_items} role replies ({table.roles} roles × {table.questions} identity "
        f"questions) and {len(comparison.plain['none']['replies'])} plain requests per "
        "condition, greedy; in role = score 3 of the OFFLINE HEURISTIC judge, a rough "
        "stand-in.[/]"
    )
    for cap in (None, picked or bundle.recommended_cap):
        label = cap or "none"
        if cap is not None and picked is None:
            label += " (the recommended cap; it did not lower the in-role rate above)"
        console.rule(f"chat as a pirate, cap: {label}")
        session = ChatSession.open(
            lm, bundle, cap=cap, sampling=Sampling(max_new_tokens=48), system=CHAT_SYSTEM
        )
        for text in CHAT:
            console.print(f"[cyan]user>[/] {text}")
            print_turn(session.send(text), bundle)
