"""The on-drift cap against no cap, an always-on cap and a random gate, on dev conversations.

Replay design: for every assistant turn ``t`` (up to ``--turns``) of the dev conversations of
evaldata/monitor (``*_dev.jsonl`` only), the model answers the *logged* history up to the user
message of turn ``t`` twice, greedily: uncapped (``U_t``) and with the bundle's recommended cap
(``C_t``), with projections at the target layer read in the generation pass. The arms then
pick, per turn:

- **none**: ``U_t``; **always**: ``C_t``;
- **on-drift**: ``C_t`` when the drift gate is armed after the logged turns ``1..t−1``
  (:func:`persona_axis.drift.gate.arming` over the one rule's verdicts, as the server decides
  it), else ``U_t``;
- **random**: ``C_t`` with probability equal to on-drift's firing rate over all turns (seeded).

Reported: the benign cost (share of benign replies token-identical to the uncapped one) and, on
drifting conversations from their labelled ``drift_turn`` on, the mean projection ``before``
(ahead of the cap at the target layer, after any cap upstream) and ``after`` of the chosen
replies; the firing rate on benign and drifting turns.

    python studies/on_drift_arms.py BUNDLE_DIR [--turns 6] [--max-new-tokens 24] [--data FILE ...]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from persona_axis.application.session import generate_turns
from persona_axis.axis.bundle import AxisBundle
from persona_axis.drift.conversations import iter_conversations
from persona_axis.drift.gate import arming
from persona_axis.drift.monitor import Monitor
from persona_axis.drift.profile import drift_rule
from persona_axis.drift.readings import ConversationReading
from persona_axis.inference.generation import Sampling
from persona_axis.models.loading import load_model

DEV = [Path("evaldata/monitor/benign_dev.jsonl"), Path("evaldata/monitor/drifting_dev.jsonl")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("on_drift_arms.json"))
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=DEV,
        help="dev files of evaldata/monitor to replay (default: benign and drifting)",
    )
    args = parser.parse_args()
    if any(not path.name.endswith("_dev.jsonl") for path in args.data):
        parser.error("only dev files (*_dev.jsonl): the test split stays held out")
    started = time.perf_counter()
    bundle = AxisBundle.load(args.bundle)
    lm = load_model(bundle.model_id)
    rule = drift_rule(bundle)
    runner = Monitor.create(lm, bundle, extra_layers=[], rule=rule)
    conversations = [c for path in args.data for c in iter_conversations(path)]
    readings = [r for r in runner.run(conversations) if isinstance(r, ConversationReading)]
    rows: list[dict[str, Any]] = []  # one per (conversation, assistant turn)
    for reading in readings:
        messages = list(reading.conversation.messages)
        meta = reading.conversation.meta
        verdicts = rule.judge(reading.projections, [t.features for t in reading.turns])
        for turn in reading.turns[: args.turns]:
            rows.append(
                {
                    "label": meta.get("label"),
                    "domain": meta.get("domain"),
                    "drifted": meta.get("label") == "drifting"
                    and turn.turn >= int(meta.get("drift_turn") or 10**6),
                    "armed": arming(verdicts[: turn.turn - 1]).armed,
                    "history": messages[: turn.message_index],
                }
            )
    read_seconds = time.perf_counter() - started
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    specs = {
        "uncapped": bundle.checked_intervention(lm, None),
        "capped": bundle.checked_intervention(lm, "recommended"),
    }
    order = sorted(
        range(len(rows)), key=lambda i: sum(len(m["content"]) for m in rows[i]["history"])
    )
    for name, spec in specs.items():
        for first in range(0, len(order), args.batch_size):
            chunk = order[first : first + args.batch_size]
            turns = generate_turns(lm, [rows[i]["history"] for i in chunk], spec, sampling, bundle)
            for i, turn in zip(chunk, turns, strict=True):
                rows[i][name] = {
                    "tokens": turn.reply.token_ids,
                    "before": turn.before,
                    "after": turn.after,
                }
    rate = sum(r["armed"] for r in rows) / len(rows)
    rng = random.Random(0)
    arms = {
        "none": [False] * len(rows),
        "always": [True] * len(rows),
        "on-drift": [r["armed"] for r in rows],
        "random": [rng.random() < rate for _ in rows],
    }
    table = {}
    for arm, capped in arms.items():
        chosen = [r["capped" if c else "uncapped"] for r, c in zip(rows, capped, strict=True)]
        by_domain: dict[str, list[bool]] = {}  # benign replies identical to uncapped
        for r, ch in zip(rows, chosen, strict=True):
            if r["label"] == "benign":
                same = ch["tokens"] == r["uncapped"]["tokens"]
                by_domain.setdefault(str(r["domain"]), []).append(same)
        benign = [same for values in by_domain.values() for same in values]
        drifted = [ch for r, ch in zip(rows, chosen, strict=True) if r["drifted"]]
        fired = [c for r, c in zip(rows, capped, strict=True) if r["label"] == "benign"]
        fired_drift = [c for r, c in zip(rows, capped, strict=True) if r["drifted"]]
        table[arm] = {
            "benign_identical": f"{sum(benign)}/{len(benign)}",
            "benign_identical_by_domain": {d: f"{sum(v)}/{len(v)}" for d, v in by_domain.items()},
            "benign_identical_share": round(sum(benign) / len(benign), 3),
            "benign_turns_capped": f"{sum(fired)}/{len(fired)}",
            "drifted_turns_capped": f"{sum(fired_drift)}/{len(fired_drift)}",
            "drifted_mean_before": _mean([ch["before"] for ch in drifted]),
            "drifted_mean_after": _mean([ch["after"] for ch in drifted]),
        }
        print(arm, json.dumps(table[arm]), flush=True)
    seconds = time.perf_counter() - started
    summary = {
        "bundle": str(args.bundle),
        "rule": rule.to_dict(),
        "cap": bundle.recommended_cap,
        "turns": len(rows),
        "firing_rate": rate,
        "read_seconds": round(read_seconds, 1),
        "seconds": round(seconds, 1),
        "settings": vars(args)
        | {"bundle": str(args.bundle), "out": str(args.out), "data": [str(p) for p in args.data]},
        "arms": table,
    }
    args.out.write_text(json.dumps(summary, indent=1))


def _mean(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return round(statistics.fmean(found), 3) if found else None


if __name__ == "__main__":
    main()
