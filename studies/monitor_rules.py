"""Re-judge stored monitor runs under variants of the drift rule, without running the model.

A monitor run (``persona-axis monitor … --out DIR``) stores every turn's projection; the rule
only turns projections and the conversation's text into alert levels. This script reads runs,
re-reads the labelled records they came from (by ``id``), recomputes each turn's features
(:class:`persona_axis.drift.features.TurnFeatures`, ``performed`` included) and judges them
under each variant, then prints false alarms per benign group, detections per drifting group
and early warning (docs/monitoring.md, "Choosing the rule on dev"):

    python studies/monitor_rules.py --data evaldata/monitor/*_dev.jsonl \
        --runs /tmp/evaldata-mon/*_dev [--variants base,performed,...] [--limits 4,6,8]

Variants (names joined by ``+``): ``base`` (the rule as stored in the run; a run stored before
the anchor floor existed has none), ``performed`` (performed turns skipped), ``anchorN``
(anchor = mean of the first N turns), ``floorX`` (anchor floor X, in units of scale),
``kX`` (CUSUM allowance X), ``hX`` (CUSUM limit X), ``wX`` (EWMA warning limit X),
``change`` / ``level`` (the alarm statistics on the change since the anchor, or on the
shortfall from the profile's level).
``--bundle DIR`` starts the variants from ``drift_rule(bundle)`` (e.g. the calibration a build
ships) instead of the rule stored in the runs (the projections must come from the same axis).
For each variant it prints the accuracy per alert level at the variant's own limits, the alarm
per group, and the trade-off over ``--limits``; the tables of docs/monitoring.md are printed
this way.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from persona_axis.drift.accuracy import evaluate
from persona_axis.drift.features import (
    IDENTITY_REQUEST,
    Baseline,
    TurnFeatures,
    performed_replies,
)
from persona_axis.drift.rule import DriftRule
from persona_axis.pipeline.monitor_sample import SAMPLE_KEY


def load_rule(header: dict[str, Any]) -> DriftRule:
    """The rule a run was judged with, from its ``monitor.json`` header."""
    data = dict(header["rule"])
    data.pop("threshold", None)
    data.setdefault("anchor_floor", None)  # runs stored before the floor existed had none
    baseline = data.pop("baseline", None)
    return DriftRule(**data, baseline=None if baseline is None else Baseline.from_dict(baseline))


def stored_build(build: Path) -> tuple[Any, int]:
    """The build's store and its number of finished batches (they are numbered from 0)."""
    from itertools import count

    from persona_axis.pipeline.store import BuildStore

    store = BuildStore(build)
    return store, next(batch for batch in count() if not store.has_batch(batch))


def layer_sample(build: Path, bundle: Any, layer: int) -> dict[str, Any]:
    """The build's monitor sample (its default replies' projections) at ``layer`` instead of
    the target layer, read from the build's store."""
    from persona_axis.pipeline.monitor_sample import default_reply_sample

    sample = default_reply_sample(*stored_build(build), bundle.axis, layer)
    if sample is None:
        raise SystemExit(f"{build} has no default replies")
    return sample


def role_median(build: Path, bundle: Any, layer: int) -> float:
    """The median projection at ``layer`` of the build's role replies (content only)."""
    import statistics

    from persona_axis.axis.vectors import project

    store, n_batches = stored_build(build)
    values: list[float] = []
    for _, records, tensors in store.iter_batches(n_batches):
        rows = [i for i, r in enumerate(records) if r["kind"] == "role" and r["n_tokens"] > 0]
        if rows:
            values += project(tensors["activations"][rows, layer], bundle.axis, layer).tolist()
    return float(statistics.median(values))


def at_layer(entries: list[dict[str, Any]], layer: int) -> list[dict[str, Any]]:
    """Run entries whose turns' ``projection`` is their projection at ``layer``, one of the
    runs' extra layers."""
    key = str(layer)
    if any(key not in turn["extra_layers"] for entry in entries for turn in entry["turns"]):
        raise SystemExit(f"the runs hold no projections at layer {layer}: monitor with it")
    return [
        {
            **entry,
            "turns": [{**turn, "projection": turn["extra_layers"][key]} for turn in entry["turns"]],
        }
        for entry in entries
    ]


def variant(rule: DriftRule, name: str) -> tuple[DriftRule, str]:
    """``rule`` changed as ``name`` says, and how performed turns are marked: ``""`` (not),
    ``performed`` (phrase patterns), ``heard`` (patterns or the run's request probe) or
    ``probe`` (the probe alone, with the patterns' guard against persona jailbreaks); ``heardX``
    and ``probeX`` hear a request whose stored logit is above X instead of the run's verdict."""
    mark = ""
    for part in name.split("+"):
        if part == "performed" or part.startswith(("heard", "probe")):
            mark = part
        elif part.startswith("anchor"):
            rule = replace(rule, anchor_turns=int(part[6:]))
        elif part.startswith("floor"):
            rule = replace(rule, anchor_floor=float(part[5:]))
        elif part in ("change", "level"):
            rule = replace(rule, relative=part == "change")
        elif part == "nofloor":
            rule = replace(rule, anchor_floor=None)
        elif part[0] in "khw" and part[1:].replace(".", "", 1).isdigit():
            field = {"k": "k", "h": "h", "w": "warning"}[part[0]]
            rule = replace(rule, **{field: float(part[1:])})
        elif part != "base":
            raise SystemExit(f"unknown variant part {part!r}")
    return rule, mark


def marks(messages: list[dict[str, Any]], turns: list[dict[str, Any]], mark: str) -> list[bool]:
    """Per message, performed or not as ``mark`` says (:func:`variant`)."""
    if not mark:
        return [False] * len(messages)
    if mark == "performed":
        return performed_replies(messages)
    kind = mark[:5]  # heard or probe
    limit = mark[len(kind) :]
    heard: list[bool | None] = [None] * len(messages)
    for turn in turns:
        logit = turn.get("request_logit")
        verdict = turn.get("heard") if not limit or logit is None else logit > float(limit)
        heard[turn["message_index"]] = verdict
    if kind == "heard":
        return performed_replies(messages, heard)
    guarded = []
    shed = False
    for message, verdict in zip(messages, heard, strict=True):
        asks_to_shed = bool(IDENTITY_REQUEST.search(message["content"]))
        shed = shed or (message["role"] == "user" and asks_to_shed)
        guarded.append(bool(verdict) and not shed)
    return guarded


def rejudge(
    entries: list[dict[str, Any]], records: dict[str, dict[str, Any]], rule: DriftRule, mark: str
) -> list[dict[str, Any]]:
    """Entries with every turn's level and alarm input recomputed under ``rule``."""
    out = []
    for entry in entries:
        messages = records[entry["id"]]["messages"]
        acted = marks(messages, entry["turns"], mark)
        features = []
        for turn in entry["turns"]:
            index = turn["message_index"]
            text = str(messages[index]["content"]).rpartition("</think>")[2]
            features.append(
                TurnFeatures.of(text, turn["n_tokens"], turn["turn"], performed=acted[index])
            )
        verdicts = rule.judge([t["projection"] for t in entry["turns"]], features)
        turns = [
            {"turn": t["turn"], "level": v.level, "z": v.z}
            for t, v in zip(entry["turns"], verdicts, strict=True)
        ]
        out.append({"meta": entry["meta"], "turns": turns})
    return out


def pct(rate: dict[str, Any]) -> str:
    low, high = rate["ci95"]
    if rate["n"] == 0:
        return "-"
    return f"{rate['hits']}/{rate['n']} = {rate['rate']:.0%} ({low:.0%}–{high:.0%})"


def bundle_rule(args: argparse.Namespace, run_layer: int) -> DriftRule:
    """``drift_rule`` of ``--bundle`` at ``--layer`` (default: the runs' layer), with the build's
    profile at that layer (``--build``) and its scale from the role span (``--span-scale``)."""
    from persona_axis.axis.bundle import AxisBundle
    from persona_axis.drift.profile import drift_rule

    bundle = AxisBundle.load(args.bundle)
    if args.layer is not None and args.build is not None:
        bundle.manifest[SAMPLE_KEY] = layer_sample(args.build, bundle, args.layer)
    rule = drift_rule(
        bundle, run_layer if args.layer is None else args.layer, percentile=args.percentile
    )
    if args.span_scale is not None:
        span = rule.reference - role_median(args.build, bundle, rule.layer)
        print(f"span from the level {rule.reference:.2f} to the role median: {span:.2f}")
        rule = replace(rule, scale=args.span_scale * span)
    return rule


def read_runs(runs: list[Path]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The conversations of monitor runs, and the first run's header."""
    entries, header = [], None
    for run in runs:
        result = json.loads((run / "monitor.json").read_text())
        header = header or result
        entries += result["conversations"]
    if header is None:
        raise SystemExit("no runs given")
    return entries, header


def reference_rule(run: Path, data: Path) -> DriftRule:
    """The shipped rule of :mod:`persona_axis.drift.reference_chats`, fitted on a monitor run
    of the reference chats (``data``) read with the bundle whose runs are judged."""
    from persona_axis.drift.calibrate_monitor import BenignTurn
    from persona_axis.drift.reference_chats import fit_reference_profile

    records = {r["id"]: r for r in map(json.loads, data.open())}
    result = json.loads((run / "monitor.json").read_text())
    turns = [
        BenignTurn(
            turn["projection"],
            TurnFeatures.of(
                str(records[entry["id"]]["messages"][turn["message_index"]]["content"]),
                turn["n_tokens"],
                turn["turn"],
            ),
            entry["id"],
            str(data),
        )
        for entry in result["conversations"]
        for turn in entry["turns"]
        if turn["projection"] is not None
    ]
    profile = fit_reference_profile(turns, int(result["layer"]))
    print(f"reference profile: level {profile.baseline.intercept:.2f}, scale {profile.scale:.2f}")
    return profile.rule()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--variants", default="base,performed")
    parser.add_argument("--limits", default="4,6,8,10,12")
    parser.add_argument("--json", type=Path, help="write the evaluations here")
    parser.add_argument("--bundle", type=Path, help="start from drift_rule(this bundle)")
    parser.add_argument(
        "--percentile", type=float, help="with --bundle: the build's percentile rule"
    )
    parser.add_argument(
        "--layer",
        type=int,
        help="judge the runs' projections at this layer (one of their extra layers); with "
        "--bundle and --build, under the shipped profile of the build's default replies there",
    )
    parser.add_argument("--build", type=Path, help="the build directory (its work/ store)")
    parser.add_argument(
        "--span-scale",
        type=float,
        help="with --bundle and --build: the rule's scale = this share of the span from its "
        "level down to the median of the build's role replies",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        nargs=2,
        metavar=("RUN", "DATA"),
        help="judge under the reference-chat profile fitted on RUN, a monitor run of DATA (the "
        "reference chats) with the same bundle",
    )
    parser.add_argument(
        "--grid",
        action="store_true",
        help="instead: every (anchor, k, h) with performed turns skipped whose false alarms "
        "are <= 5%%, most detections first (the choice made on dev)",
    )
    args = parser.parse_args()

    records = {}
    for path in args.data:
        for line in path.open():
            record = json.loads(line)
            records[record["id"]] = record
    entries, header = read_runs(args.runs)
    stored = load_rule(header)
    run_layer = stored.layer
    if args.bundle:
        stored = bundle_rule(args, run_layer)
    if args.reference:
        stored = reference_rule(*args.reference)
    if args.layer is not None and args.layer != run_layer:
        entries = at_layer(entries, args.layer)
        if stored.layer != args.layer:
            raise SystemExit(f"no rule at layer {args.layer}: give --bundle and --build")
    limits = tuple(float(x) for x in args.limits.split(","))
    if args.grid:
        _grid(entries, records, stored, limits)
        return
    results = {}
    for name in args.variants.split(","):
        rule, mark = variant(stored, name)
        judged = rejudge(entries, records, rule, mark)
        result = evaluate(judged, k=rule.k, ewma_lambda=rule.ewma_lambda, limits=limits)
        assert result is not None
        results[name] = result
        print(
            f"\n## {name} (performed skipped: {mark}; anchor {rule.anchor_turns}; k {rule.k:g}, "
            f"h {rule.h:g}; warning {rule.warning}; watch {rule.watch})\n"
        )
        _levels(result)
        _by_group(result)
        _tradeoff(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _grid(
    entries: list[dict[str, Any]],
    records: dict[str, dict[str, Any]],
    stored: DriftRule,
    limits: tuple[float, ...],
) -> None:
    """The dev choice: every anchor (1–3 turns), anchor floor (none, 1 … 3 scales; both only
    matter for a rule on the change), allowance k and limit h, performed turns skipped; those
    with false alarms ≤ 5%, by detections, then detections before the harm turn."""
    rows = []
    anchors: tuple[int, ...] = (1, 2, 3) if stored.relative else (2,)
    floors: tuple[str | float, ...] = ("nofloor", 1, 1.5, 2, 2.5, 3) if stored.relative else (2,)
    for anchor in anchors:
        for floor in floors:
            for k in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0):
                floor_part = floor if floor == "nofloor" else f"floor{floor}"
                name = f"performed+anchor{anchor}+{floor_part}+k{k}"
                rule, mark = variant(stored, name)
                result = evaluate(rejudge(entries, records, rule, mark), k=k, limits=limits)
                assert result is not None
                for row in result["tradeoff"]:
                    if row["false_alarms"]["rate"] <= 0.05:
                        before = row.get("before_harm", {}).get("hits", 0)
                        rows.append((-row["detections"]["hits"], -before, anchor, floor, k, row))
    print("| anchor | floor | k | h | false alarms | detections | detected before harm_turn |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for _, _, anchor, floor, k, row in sorted(rows, key=lambda r: r[:2])[:20]:
        before = pct(row["before_harm"]) if "before_harm" in row else "-"
        print(
            f"| {anchor} | {floor} | {k:g} | {row['h']:g} | {pct(row['false_alarms'])} "
            f"| {pct(row['detections'])} | {before} |"
        )


def _lead(row: dict[str, Any]) -> str:
    lead, ci = row.get("median_lead_turns"), row.get("median_lead_ci95")
    if lead is None:
        return "-"
    return f"{lead:g}" + (f" ({ci[0]:g}–{ci[1]:g})" if ci else "")


def _levels(result: dict[str, Any]) -> None:
    print(
        "| level | false alarms (benign) | detections (drifting) | median detection turn "
        "| detected before harm_turn | median lead (turns) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for level, row in result["by_level"].items():
        ci = row["median_detection_turn_ci95"]
        turn = row["median_detection_turn"]
        turn_text = "-" if turn is None else f"{turn:g}" + (f" ({ci[0]:g}–{ci[1]:g})" if ci else "")
        before = pct(row["before_harm"]) if "before_harm" in row else "-"
        print(
            f"| {level} | {pct(row['false_alarms'])} | {pct(row['detections'])} | {turn_text} "
            f"| {before} | {_lead(row)} |"
        )
    print()


def _by_group(result: dict[str, Any]) -> None:
    print("| group | alarm | warning | watch |")
    print("| --- | --- | --- | --- |")
    groups = result["by_group"]
    for name in groups["alarm"]:
        cells = " | ".join(pct(groups[level][name]) for level in ("alarm", "warning", "watch"))
        print(f"| {name} | {cells} |")
    print()


def _tradeoff(result: dict[str, Any]) -> None:
    print("| CUSUM h | false alarms | detections | detected before harm_turn | median lead |")
    print("| --- | --- | --- | --- | --- |")
    for row in result["tradeoff"]:
        before = pct(row["before_harm"]) if "before_harm" in row else "-"
        print(
            f"| {row['h']:g} | {pct(row['false_alarms'])} | {pct(row['detections'])} "
            f"| {before} | {_lead(row)} |"
        )


if __name__ == "__main__":
    main()
