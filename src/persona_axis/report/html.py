"""HTML pieces of the report page: its style sheet, escaping, numbers, tables, figures and
embedded PNG charts (no external resources)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1d1d1d; background: #f6f7f9; line-height: 1.45; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 32px 0 8px; border-bottom: 1px solid #d9dce1;
     padding-bottom: 4px; }
p.lede, p.note { color: #555; margin: 4px 0 12px; }
section.card { background: #fff; border: 1px solid #e1e4e8; border-radius: 8px;
               padding: 12px 18px 16px; margin: 14px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr));
        gap: 10px; margin: 12px 0; }
.figure { background: #fff; border: 1px solid #e1e4e8; border-radius: 8px; padding: 10px 14px; }
.figure .value { font-size: 1.35rem; font-weight: 600; }
.figure .label { color: #666; font-size: 0.85rem; }
img.chart { display: block; max-width: 100%; height: auto; margin: 8px auto; }
table { border-collapse: collapse; font-size: 0.88rem; margin: 8px 0; }
th, td { border-bottom: 1px solid #e6e8eb; padding: 4px 10px; text-align: left; }
th { background: #f0f2f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.alarm { color: #b3261e; font-weight: 600; }
footer { color: #777; font-size: 0.8rem; margin-top: 36px; }
"""


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="chart" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def number(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, spec)
    return escape(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: set[int]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            css = ' class="num"' if index in numeric else ""
            cells.append(f"<td{css}>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figures(items: Sequence[tuple[str, str]]) -> str:
    cells = "".join(
        f'<div class="figure"><div class="value">{value}</div>'
        f'<div class="label">{escape(label)}</div></div>'
        for label, value in items
    )
    return f'<div class="grid">{cells}</div>'
