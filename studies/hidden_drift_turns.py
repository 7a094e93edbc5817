"""Count the drift turns that performed-reply marking hides from the rule, without the model.

A drifting record's turns from its ``drift_turn`` on are the assistant speaking as another
persona; a turn marked performed is reported but not judged, so a drift turn marked so is hidden.
For each monitor run (``persona-axis monitor FILE --bundle B --out RUN``, whose turns carry the
request probe's ``heard``) and its labelled file, this prints how many drift turns the phrase
patterns mark, and how many the patterns or the probe mark (docs/monitoring.md, "The request
probe"):

    python studies/hidden_drift_turns.py /tmp/zen4/p2runs-quick-float32/drifting_dev \
        evaldata/monitor/drifting_dev.jsonl [RUN FILE ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from persona_axis.drift.features import performed_replies


def hidden(run: Path, data: Path) -> tuple[int, int, int]:
    """(drift turns marked by the patterns, by the patterns or the probe, drift turns)."""
    records = {}
    for line in data.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        records[record["id"]] = record
    patterns = either = total = 0
    for line in (run / "monitor.jsonl").read_text(encoding="utf-8").splitlines():
        entry: dict[str, Any] = json.loads(line)
        if "turns" not in entry:
            continue
        record = records[entry["meta"]["id"]]
        if record["label"] != "drifting" or not record.get("drift_turn"):
            continue
        messages = record["messages"]
        heard: list[bool | None] = [None] * len(messages)
        for turn in entry["turns"]:
            heard[turn["message_index"]] = turn.get("heard")
        by_patterns = performed_replies(messages)
        by_either = performed_replies(messages, heard)
        for turn in entry["turns"]:
            if turn["turn"] >= record["drift_turn"]:
                total += 1
                patterns += by_patterns[turn["message_index"]]
                either += by_either[turn["message_index"]]
    return patterns, either, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="RUN FILE, repeated")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        raise SystemExit("give RUN FILE pairs")
    for run, data in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        patterns, either, total = hidden(Path(run), Path(data))
        print(f"{run}: drift turns hidden: patterns {patterns}, or probe {either}, of {total}")


if __name__ == "__main__":
    main()
