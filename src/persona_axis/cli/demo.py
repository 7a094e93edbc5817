"""``persona-axis demo`` (``make demo``): model facts, the quick build, and a capped chat.

Loads the embedded default model once, prints its facts, runs the quick build into
``.demo/build`` (resumable: a second run reuses what is stored), prints the build summary, then
lets the model answer as a pirate without and with the bundle's recommended cap, showing the
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

CHAT_SYSTEM = "You are a salty old pirate captain. Speak like one and never break character."
CHAT = ["Who are you?", "Tell me about your day."]


def demo(
    out: Annotated[Path, typer.Option(help="Build directory of the demo.")] = Path(".demo")
    / "build",
) -> None:
    """Run the demo: model facts, the quick build of the Assistant Axis, a capped chat."""
    from persona_axis.inference.generation import Sampling
    from persona_axis.inference.session import ChatSession
    from persona_axis.models import model_facts
    from persona_axis.pipeline import build, preset

    config = preset("quick")
    lm = load(None, config.dtype)
    facts = Table(show_header=False, title=lm.name)
    for key, value in model_facts(lm).items():
        facts.add_row(key, value)
    console.print(facts)
    console.rule("persona-axis build --preset quick")
    result = build(config, out, lm=lm)
    print_summary(result.summary, result.path)
    bundle = result.bundle
    for cap in (None, bundle.recommended_cap):
        console.rule(f"chat as a pirate, cap: {cap or 'none'}")
        session = ChatSession.open(
            lm, bundle, cap=cap, sampling=Sampling(max_new_tokens=48), system=CHAT_SYSTEM
        )
        for text in CHAT:
            console.print(f"[cyan]user>[/] {text}")
            print_turn(session.send(text), bundle)
