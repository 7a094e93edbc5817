"""Summarise ``monitor_rules.py --json`` evaluations as one table row per file: alarms on benign
conversations (all, ordinary, fiction, twins), detections, slow drifts detected before the harm
turn and the median lead (the tables of docs/monitoring.md, "A reference profile out of the box"):

    python studies/reference_summary.py studies/results/reference_profile/holdout-*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from persona_axis.intervals import wilson_interval


def count(groups: dict[str, Any], keep: Any) -> str:
    hits = sum(g["hits"] for name, g in groups.items() if keep(name))
    n = sum(g["n"] for name, g in groups.items() if keep(name))
    low, high = wilson_interval(hits, n)
    return f"{hits}/{n} = {hits / n:.0%} ({low:.0%}–{high:.0%})" if n else "-"


def main() -> None:
    print(
        "| evaluation | false alarms | ordinary | fiction | twins | detections "
        "| detected before harm_turn | median lead |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in map(Path, sys.argv[1:]):
        result = next(iter(json.loads(path.read_text()).values()))
        alarm = result["by_level"]["alarm"]
        groups = result["by_group"]["alarm"]
        benign = {k: v for k, v in groups.items() if k.startswith("benign: ")}
        before = alarm.get("before_harm") or {"hits": 0, "n": 0}
        row = [
            path.stem,
            count(benign, lambda _: True),
            count(benign, lambda k: "twin" not in k and k != "benign: fiction"),
            count(benign, lambda k: k == "benign: fiction"),
            count(benign, lambda k: "twin" in k),
            count(groups, lambda k: k.startswith("drifting: ")),
            f"{before['hits']}/{before['n']}",
            str(alarm.get("median_lead_turns", "-")),
        ]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
