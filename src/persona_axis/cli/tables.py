"""The tables ``persona-axis eval``, ``sweep`` and ``demo`` print: rates with their Wilson 95%
intervals, and the capping table (staying in role vs changing the Assistant)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from persona_axis.cli.common import console


def pct(value: float | None) -> str:
    """A change of fractions in percentage points (``+1.5 pts``); empty for None."""
    return "" if value is None else f"{100 * value:+.1f} pts"


def print_rates(title: str, rows: list[tuple[str, dict[str, Any], str]]) -> None:
    """One row per ``(name, rate summary, change)``; a rate summary is
    :func:`~persona_axis.evals.common.rate_summary`'s."""
    table = Table(title=title)
    for column in ("condition", "rate", "95% CI", "n", "change"):
        table.add_column(column)
    for name, summary, change in rows:
        rate = "n/a" if summary["rate"] is None else f"{summary['rate']:.1%}"
        low, high = summary["ci95"]
        table.add_row(name, rate, f"{low:.1%}–{high:.1%}", str(summary["n"]), change)
    console.print(table)


def print_capping_table(result: dict[str, Any], plain: dict[str, Any]) -> None:
    """In-role rate per condition (with its change from no intervention) beside how much the
    condition changes plain Assistant replies."""
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
