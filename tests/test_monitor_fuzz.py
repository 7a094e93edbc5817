"""Property-based tests (hypothesis): the three readers and the monitor's JSON output never
crash on bad input; every bad record is reported with its file and position, the rest run."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona_axis.axis.bundle import AxisBundle
from persona_axis.drift.context import ContextPolicy
from persona_axis.drift.conversations import (
    ROLE_ALIASES,
    Conversation,
    ReadFailure,
    iter_conversations,
)
from persona_axis.drift.journal import Journal, entries
from persona_axis.drift.monitor import monitor
from persona_axis.models import LoadedModel
from support.bundles import make_bundle
from support.tiny_models import tiny_lm

POSITION = re.compile(r"^(whole file|line \d+|index \d+|line \d+ column \d+)$")
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# text with control characters, odd whitespace and non-ASCII, never lone surrogates
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
huge = st.integers(2_000, 60_000).map(lambda n: "long " * (n // 5))
content = st.one_of(text, huge, st.just(""))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text)
junk = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


def message(role_key: str, content_key: str, roles: list[str]) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({role_key: st.sampled_from(roles), content_key: content})


good_roles = ["user", "assistant", "human", "gpt"]
openai = st.lists(message("role", "content", ["user", "assistant"]), min_size=1, max_size=6).map(
    lambda m: {"messages": m}
)
sharegpt = st.lists(message("from", "value", good_roles), min_size=1, max_size=6).map(
    lambda m: {"conversations": m}
)
transcript = st.builds(
    lambda m, s: {"conversation": m, "system_prompt": s},
    st.lists(message("role", "content", ["user", "assistant"]), min_size=1, max_size=6),
    st.one_of(st.none(), text),
)
valid = st.one_of(openai, sharegpt, transcript)
broken = st.one_of(
    junk,
    st.builds(lambda m: {"messages": m}, junk),  # wrong types inside a right layout
    st.builds(lambda m: {"conversations": [{"from": "tool", "value": m}]}, text),  # bad role
    st.just({"messages": []}),  # empty
    st.builds(lambda t: {"messages": [{"role": "user", "content": 3}, t]}, junk),
    st.just({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}),
)


def check_items(items: list[Conversation | ReadFailure], source: str) -> None:
    for item in items:
        if isinstance(item, ReadFailure):
            assert item.source == source and POSITION.match(item.position), item
            assert item.error and str(item).startswith(f"{source} {item.position}")
        else:
            assert item.source == source and POSITION.match(item.position)
            assert item.messages and all(
                set(m) == {"role", "content"}
                and m["role"] in set(ROLE_ALIASES.values())
                and isinstance(m["content"], str)
                for m in item.messages
            )
            assert all(m["role"] != "system" for m in item.messages[1:])


def read_bytes(data: bytes, suffix: str) -> list[Conversation | ReadFailure]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"log{suffix}"
        path.write_bytes(data)
        items = list(iter_conversations(path))
        check_items(items, str(path))
    return items


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".json", ".jsonl", ".txt"]))
def test_random_bytes_never_crash_a_reader(data: bytes, suffix: str) -> None:
    assert read_bytes(data, suffix)  # a conversation or a failure that says where


@FUZZ
@given(
    records=st.lists(st.tuples(st.booleans(), valid, broken), min_size=1, max_size=8),
    cut=st.integers(0, 60),
    blank=st.booleans(),
)
def test_jsonl_bad_lines_fail_alone_and_the_rest_is_read(
    records: list[tuple[bool, Any, Any]], cut: int, blank: bool
) -> None:
    lines = [json.dumps(good if ok else bad) for ok, good, bad in records]
    expected = {f"line {i + 1}" for i, (ok, _, _) in enumerate(records) if ok}
    if cut and len(lines[-1]) > cut:  # a truncated last line (a writer killed mid-line)
        lines[-1] = lines[-1][:cut]
        expected.discard(f"line {len(lines)}")
    text = "\n".join(lines) + ("\n\n" if blank else "")
    items = read_bytes(text.encode(), ".jsonl")
    positions = [item.position for item in items]
    assert positions == [f"line {i + 1}" for i in range(len(lines))]  # one item per line
    read = {i.position for i in items if isinstance(i, Conversation)}
    assert expected <= read  # every valid line was read; broken ones fail alone


@FUZZ
@given(records=st.lists(st.one_of(valid, broken), min_size=2, max_size=6))
def test_json_lists_report_each_bad_record_by_index(records: list[Any]) -> None:
    items = read_bytes(json.dumps(records).encode(), ".json")
    if all(isinstance(r, dict) and "role" in r for r in records):
        return  # a bare list of messages is one conversation
    assert [item.position for item in items] == [f"index {i}" for i in range(len(records))]


@FUZZ
@given(record=valid, cut=st.integers(1, 200))
def test_truncated_json_names_line_and_column(record: Any, cut: int) -> None:
    text = json.dumps(record, indent=1)
    if cut >= len(text):
        return
    (item,) = read_bytes(text[:cut].encode(), ".json")
    assert isinstance(item, ReadFailure) and item.position.startswith("line ")


# -- the monitor's JSON output ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return tiny_lm("llama")


@pytest.fixture(scope="module")
def bundle(lm: LoadedModel) -> AxisBundle:
    return make_bundle(lm, seed=3)


small_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
chat = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": small_text}
    ),
    min_size=1,
    max_size=7,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chats=st.lists(chat, min_size=1, max_size=4), window=st.sampled_from([None, 48]))
def test_monitor_output_is_always_valid_json(lm, bundle, chats, window) -> None:
    records = [Conversation(tuple(c), "fuzz.jsonl", f"line {i + 1}") for i, c in enumerate(chats)]
    result = monitor(lm, bundle, records, extra_layers=[0], policy=ContextPolicy(window=window))
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    done = [c["position"] for c in data["conversations"]] + [
        f["position"] for f in data["failures"]
    ]
    assert sorted(done) == sorted(r.position for r in records)  # every input accounted for
    for entry, reading in zip(data["conversations"], result.readings, strict=True):
        messages = reading.conversation.messages
        assert entry["n_turns"] == sum(m["role"] == "assistant" for m in messages)
        for turn in entry["turns"]:
            assert messages[turn["message_index"]]["role"] == "assistant"
            assert turn["projection"] is None or isinstance(turn["projection"], float)
            assert turn["level"] in ("none", "watch", "warning", "alarm")
    for failure in data["failures"]:
        assert failure["source"] == "fuzz.jsonl" and failure["error"]


@FUZZ
@given(cut=st.integers(0, 4000))
def test_a_journal_cut_anywhere_resumes(lm, bundle, cut: int) -> None:
    chats = [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"ok {i}"}]
        for i in range(4)
    ]
    records = [Conversation(tuple(c), "a.jsonl", f"line {i + 1}") for i, c in enumerate(chats)]
    result = monitor(lm, bundle, records, extra_layers=[])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "monitor.jsonl"
        settings_ = result.header()
        with Journal(path, settings_) as journal:
            for reading in result.readings:
                journal.write(reading)
        raw = path.read_bytes()
        path.write_bytes(raw[: min(cut, len(raw))])
        if 0 < cut < raw.index(b"\n") + 1:  # the header itself was cut: refused, not misread
            with pytest.raises(Exception, match="not a monitor journal"):
                Journal(path, settings_)
            return
        with Journal(path, settings_) as journal:
            done = set(journal.done)
            assert done <= {("a.jsonl", r.position) for r in records}
            for reading in result.readings:
                if ("a.jsonl", reading.conversation.position) not in done:
                    journal.write(reading)
        positions = [e["position"] for e in entries(path)]
        assert sorted(positions) == sorted(r.position for r in records)
