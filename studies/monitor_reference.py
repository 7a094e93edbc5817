"""Choose the limits of the reference-chat profile on dev over several builds at once.

Each build contributes its dev monitor runs and a monitor run of the reference chats read with
the same bundle (:mod:`persona_axis.drift.reference_chats`). For every CUSUM allowance k and
limit h (performed turns skipped, as the monitor does), this prints the false alarms,
detections and detections before the harm turn of every build, and keeps the settings whose
false alarms are at most 5% on every build, most detections on the worst build first:

    python studies/monitor_reference.py --data evaldata/monitor/*_dev.jsonl \
        --build /tmp/zen4/ref-quick-float32 /tmp/zen4/mon/*_dev \
        --build /tmp/zen4/ref-quick-bfloat16 /tmp/zen4/mon-bf16/*_dev [--json out.json]

(each ``--build`` names that build's reference run, then its dev runs).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from monitor_rules import pct, read_runs, reference_rule, rejudge

from persona_axis.drift.accuracy import evaluate
from persona_axis.drift.reference_chats import reference_path

KS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
HS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--build", nargs="+", action="append", required=True)
    parser.add_argument("--reference-data", type=Path, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = args.reference_data or Path(str(reference_path()))
    records = {}
    for path in args.data:
        for line in path.open():
            record = json.loads(line)
            records[record["id"]] = record
    builds = []
    for spec in args.build:
        reference, runs = spec[0], spec[1:]
        entries, _ = read_runs([Path(r) for r in runs])
        builds.append((reference, entries, reference_rule(Path(reference), data)))
    table: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for k in KS:
        for name, entries, rule in [(b[0], b[1], b[2]) for b in builds]:
            result = evaluate(
                rejudge(entries, records, replace(rule, k=k), mark=True), k=k, limits=HS
            )
            assert result is not None
            for row in result["tradeoff"]:
                table.setdefault((k, row["h"]), []).append({"build": name, **row})
    ok = [
        (key, rows)
        for key, rows in table.items()
        if all(r["false_alarms"]["rate"] <= 0.05 for r in rows)
    ]
    ok.sort(
        key=lambda item: (
            -min(r["detections"]["hits"] for r in item[1]),
            -sum(r.get("before_harm", {}).get("hits", 0) for r in item[1]),
        )
    )
    names = [b[0] for b in builds]
    print("builds: " + "; ".join(f"{i + 1} = {n}" for i, n in enumerate(names)))
    print("\n| k | h | build | false alarms | detections | detected before harm_turn |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (k, h), rows in ok:
        for i, row in enumerate(rows):
            before = pct(row["before_harm"]) if "before_harm" in row else "-"
            print(
                f"| {k:g} | {h:g} | {i + 1} | {pct(row['false_alarms'])} "
                f"| {pct(row['detections'])} | {before} |"
            )
    if args.json:
        args.json.write_text(
            json.dumps([{"k": k, "h": h, "builds": rows} for (k, h), rows in table.items()])
        )


if __name__ == "__main__":
    main()
