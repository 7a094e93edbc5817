"""Accuracy of alerts on labelled conversations: rates, Wilson intervals, detection turns and the
trade-off over CUSUM limits, from monitor.json entries."""

from __future__ import annotations

from persona_axis.drift.accuracy import Labelled, evaluate, median_interval


def entry(label: str, levels: list[str], zs: list[float | None], drift_turn: int | None = None):
    meta = {"label": label} if drift_turn is None else {"label": label, "drift_turn": drift_turn}
    turns = [
        {"turn": i + 1, "level": level, "z": z}
        for i, (level, z) in enumerate(zip(levels, zs, strict=True))
    ]
    return {"meta": meta, "turns": turns}


def test_rates_turns_and_delays() -> None:
    entries = [
        entry("benign", ["none", "watch", "none"], [None, 1.0, 0.0]),
        entry("benign", ["none", "alarm"], [None, 6.0]),
        entry("drifting", ["none", "none", "alarm", "alarm"], [None, 0.2, 5.0, 3.0], 2),
        entry("drifting", ["none", "alarm", "alarm"], [None, 5.0, 5.0], 3),  # early
        entry("drifting", ["none", "none"], [None, 0.1], 2),
        {"meta": {"label": "other"}, "turns": []},  # not labelled: ignored
        {"meta": {}, "turns": []},
    ]
    result = evaluate(entries, k=0.5, limits=(4.0, 100.0))
    assert result is not None and result["n_benign"] == 2 and result["n_drifting"] == 3
    alarm = result["by_level"]["alarm"]
    assert alarm["false_alarms"]["hits"] == 1 and alarm["false_alarms"]["rate"] == 0.5
    assert alarm["detections"]["hits"] == 2 and alarm["detections"]["n"] == 3
    assert alarm["median_detection_turn"] == 2.5  # turns 3 and 2
    assert alarm["median_delay_turns"] == 0.0  # +1 and -1
    assert alarm["early_detections"] == 1
    assert result["by_level"]["watch"]["false_alarms"]["hits"] == 2  # watch counts alarms too
    low_h, high_h = result["tradeoff"]
    assert low_h["h"] == 4.0 and low_h["detections"]["hits"] == 2
    assert high_h["false_alarms"]["hits"] == 0 and high_h["detections"]["hits"] == 0
    assert evaluate([{"meta": {}, "turns": []}], k=0.5) is None


def test_alarm_turn_is_recomputed_from_stored_shortfalls() -> None:
    item = Labelled.of(entry("drifting", ["none"] * 4, [None, 2.0, 2.0, 2.0], 2))
    assert item is not None
    assert item.alarm_turn_at(h=3.0, k=0.5) == 3  # 1.5, 3.0
    assert item.alarm_turn_at(h=5.0, k=0.5) is None


def test_groups_twins_and_warning_tradeoff() -> None:
    entries = [
        {"meta": {"label": "benign", "domain": "coding"}, "turns": []},
        entry("benign", ["none", "alarm"], [None, 6.0]),
        entry("drifting", ["none", "alarm", "alarm"], [None, 2.0, 2.0], 2),
        entry("drifting", ["none", "none", "alarm"], [None, 0.0, 9.0], 2),
    ]
    entries[1]["meta"] |= {"domain": "roleplay", "twin_of": "drift-1"}
    entries[2]["meta"] |= {"domain": "roleplay", "twin_of": "twin-1"}
    entries[3]["meta"]["domain"] = "roleplay"
    result = evaluate(entries, k=0.5, ewma_lambda=0.5, limits=(4.0,), warning_limits=(1.0, 2.5))
    assert result is not None
    groups = result["by_group"]["alarm"]
    assert groups["benign: coding"]["hits"] == 0 and groups["benign: roleplay twin"]["hits"] == 1
    assert groups["drifting: roleplay"] == {**groups["drifting: roleplay"], "hits": 2, "n": 2}
    low, high = result["tradeoff_warning"]
    # EWMA (λ 0.5): twin 3.0; first drifting 1.0, 1.5; second 0.0, 4.5
    assert low["false_alarms"]["hits"] == 1 and low["detections"]["hits"] == 2
    assert low["median_detection_turn"] == 2.5
    assert high["false_alarms"]["hits"] == 1 and high["detections"]["hits"] == 1


def test_median_interval_brackets_the_median() -> None:
    low, high = median_interval([2, 3, 3, 4, 5, 6])
    assert 2 <= low <= 3.5 <= high <= 6
    assert median_interval([3]) is None


def test_early_warning_share_before_the_harm_turn_and_median_lead() -> None:
    def drifting(levels: list[str], harm: int) -> dict:
        record = entry("drifting", levels, [None] * len(levels), drift_turn=2)
        record["meta"]["harm_turn"] = harm
        return record

    entries = [
        entry("benign", ["none", "none"], [None, 0.0]),
        drifting(["none", "alarm", "alarm", "alarm", "alarm", "alarm"], 6),  # lead 4
        drifting(["none", "none", "none", "alarm", "alarm"], 5),  # lead 1
        drifting(["none", "none", "none", "none", "alarm"], 5),  # at the harm turn: lead 0
        drifting(["none", "none", "none"], 3),  # missed
        entry("drifting", ["none", "alarm"], [None, 9.0], drift_turn=2),  # no harm_turn
    ]
    result = evaluate(entries, k=0.5, limits=(4.0,))
    assert result is not None
    alarm = result["by_level"]["alarm"]
    assert alarm["before_harm"]["hits"] == 2 and alarm["before_harm"]["n"] == 4
    assert alarm["median_lead_turns"] == 1.0  # leads 4, 1, 0
    low, high = alarm["median_lead_ci95"]
    assert 0 <= low <= 1 <= high <= 4
    # without any harm_turn the early-warning figures are absent
    plain = evaluate(entries[:1] + entries[-1:], k=0.5, limits=(4.0,))
    assert plain is not None and "before_harm" not in plain["by_level"]["alarm"]
