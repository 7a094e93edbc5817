"""Which out-of-the-box monitor calibration works: the rules a bundle can carry, on dev only.

Reads the dev split of evaldata/monitor (``*_dev.jsonl``; the test files are never opened)
once with the monitor (projections and content features per turn do not depend on the rule),
then judges every conversation with each candidate rule and scores it with
:func:`persona_axis.drift.accuracy.evaluate`:

- ``percentile (old)``: the build's default-reply percentiles, CUSUM k 0.5, h 4, no warning level
  (what a fresh bundle used before it carried a monitor calibration);
- ``build``: :meth:`BenignProfile.from_build` (the build's default replies, no extra cost;
  the alarm on the shortfall), and two variants: the alarm on the change since the first turn,
  in units of the spread of differences between replies or of ``scale``;
- ``chats``: a calibration fitted on benign chats the model holds itself, when ``--chats``
  names a ``benign_profile.json`` written by ``persona-axis calibrate-monitor``.

    python studies/monitor_calibration_dev.py BUNDLE_DIR [--chats DIR/benign_profile.json]
        [--readings EARLIER_OUT.json]   # judge saved readings instead of reading again
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from persona_axis.axis.bundle import AxisBundle
from persona_axis.drift.accuracy import evaluate
from persona_axis.drift.conversations import Conversation, iter_conversations
from persona_axis.drift.features import TurnFeatures
from persona_axis.drift.monitor import Monitor
from persona_axis.drift.profile import BenignProfile, drift_rule
from persona_axis.drift.readings import ConversationReading, TurnReading
from persona_axis.drift.rule import DriftRule
from persona_axis.models.loading import load_model

DEV = [Path("evaldata/monitor/benign_dev.jsonl"), Path("evaldata/monitor/drifting_dev.jsonl")]


def saved_readings(path: Path) -> list[ConversationReading]:
    """The readings a run saved (``readings`` of its output): projections and features."""
    out = []
    for saved in json.loads(path.read_text())["readings"]:
        features = [None if f is None else TurnFeatures(**f) for f in saved["features"]]
        turns = [
            TurnReading(i + 1, 2 * i + 1, f.n_tokens if f else 0, x, {}, features=f)
            for i, (x, f) in enumerate(zip(saved["projections"], features, strict=True))
        ]
        out.append(ConversationReading(Conversation((), meta=saved["meta"]), turns))
    return out


def rejudge(readings: list[ConversationReading], rule: DriftRule) -> list[dict]:
    """The readings' monitor.json entries under ``rule`` (projections as read)."""
    entries = []
    for reading in readings:
        verdicts = rule.judge(reading.projections, [t.features for t in reading.turns])
        turns = [
            type(t)(
                **{
                    **t.__dict__,
                    "level": v.level,
                    "cusum": v.cusum,
                    "ewma": v.ewma,
                    "change": v.change,
                    "z": v.z,
                    "shortfall": v.shortfall,
                    "below_threshold": v.below_threshold,
                    "expected": v.expected,
                }
            )
            for t, v in zip(reading.turns, verdicts, strict=True)
        ]
        entries.append(ConversationReading(reading.conversation, turns).to_dict())
    return entries


def summary(result: dict) -> dict:
    """Per level: false alarms and detections as ``hits/n``."""
    return {
        level: {
            key: f"{row[key]['hits']}/{row[key]['n']}" for key in ("false_alarms", "detections")
        }
        for level, row in result["by_level"].items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--chats", type=Path)
    parser.add_argument("--out", type=Path, default=Path("monitor_calibration_dev.json"))
    parser.add_argument(
        "--readings", type=Path, help="Judge the readings an earlier run saved (no model)."
    )
    args = parser.parse_args()
    bundle = AxisBundle.load(args.bundle)
    started = time.perf_counter()
    if args.readings is not None:
        readings = saved_readings(args.readings)
    else:
        runner = Monitor.create(load_model(bundle.model_id), bundle, extra_layers=[])
        conversations = [c for path in DEV for c in iter_conversations(path)]
        readings = [r for r in runner.run(conversations) if isinstance(r, ConversationReading)]
    seconds = time.perf_counter() - started
    old = DriftRule.from_bundle(bundle, h=4.0, k=0.5)
    rules = {"percentile (old)": DriftRule(**{**old.__dict__, "warning": None})}
    build = BenignProfile.from_build(bundle)
    if build is not None:
        shipped = build.rule()
        rules["build, shortfall alarm"] = shipped
        rules["build, change alarm"] = replace(shipped, relative=True)
        rules["build, change alarm, change scale = scale"] = replace(
            shipped, relative=True, change_scale=shipped.scale
        )
    if args.chats is not None:
        chats = BenignProfile.from_dict(json.loads(args.chats.read_text()))
        rules["chats"] = chats.rule()
        rules["chats, shortfall alarm"] = replace(chats.rule(), relative=False)
    rules["drift_rule (shipped)"] = drift_rule(bundle)
    results = {}
    for name, rule in rules.items():
        scored = evaluate(rejudge(readings, rule), k=rule.k, ewma_lambda=rule.ewma_lambda)
        results[name] = {"rule": rule.to_dict(), "accuracy": scored}
        print(name, json.dumps(summary(scored)), flush=True)
    dump = [
        {
            "meta": r.conversation.meta,
            "projections": r.projections,
            "features": [None if t.features is None else t.features.__dict__ for t in r.turns],
        }
        for r in readings
    ]
    args.out.write_text(
        json.dumps({"read_seconds": seconds, "results": results, "readings": dump}, indent=1)
    )


if __name__ == "__main__":
    main()
