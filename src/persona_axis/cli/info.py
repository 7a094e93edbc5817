"""``persona-axis info``: architecture, layers and chat-template facts of a model."""

from __future__ import annotations

from rich.table import Table

from persona_axis.cli.common import DtypeOption, ModelOption, console, load


def info(model: ModelOption = None, dtype: DtypeOption = "auto") -> None:
    """Architecture, layers, hidden size, target layer and chat-template facts of a model."""
    from persona_axis.models import model_facts

    lm = load(model, dtype)
    table = Table(show_header=False, title=lm.name)
    for key, value in model_facts(lm).items():
        table.add_row(key, value)
    console.print(table)
