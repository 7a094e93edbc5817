"""Reading conversations: OpenAI messages, ShareGPT and transcript layouts; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_axis.drift.conversations import (
    Conversation,
    parse_record,
    read_conversations,
    write_jsonl,
)
from persona_axis.errors import PersonaAxisError

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
]


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_openai_message_list_is_one_conversation(tmp_path: Path) -> None:
    found, failures = read_conversations(write(tmp_path / "chat.json", CHAT))
    assert failures == []
    assert [c.messages for c in found] == [tuple(CHAT)]
    assert found[0].layout == "openai" and found[0].position == "whole file"


def test_openai_objects_lists_and_text_parts(tmp_path: Path) -> None:
    parts = [
        {"role": "developer", "content": "Rules."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
        },
        {"role": "assistant", "content": "Hi", "name": "bot"},
    ]
    data = [CHAT, {"id": "c2", "messages": parts, "metadata": {"x": 1}}]
    found, failures = read_conversations(write(tmp_path / "many.json", data))
    assert failures == []
    assert [c.position for c in found] == ["index 0", "index 1"]
    second = found[1]
    assert second.id == "c2" and second.meta == {"id": "c2", "metadata": {"x": 1}}
    assert second.messages == (
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi"},
    )
    assert "(id c2)" in second.label


def test_sharegpt_roles_are_mapped(tmp_path: Path) -> None:
    record = {
        "id": 7,
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q1"},
            {"from": "gpt", "value": "A1"},
            {"from": "user", "value": "Q2"},
            {"from": "chatgpt", "value": "A2"},
        ],
    }
    found, failures = read_conversations(write(tmp_path / "sg.json", [record, record]))
    assert failures == [] and len(found) == 2
    assert [m["role"] for m in found[0].messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert found[0].layout == "sharegpt" and found[0].id == "7"


def test_reference_transcript_with_system_prompt_and_extra_fields(tmp_path: Path) -> None:
    record = {
        "model": "some/model",
        "turns": 1,
        "steering_config": {"layers": [1, 2]},
        "system_prompt": "You are a pirate.",
        "conversation": [
            {"role": "user", "content": "Tell me about yourself."},
            {"role": "assistant", "content": "Ahoy!"},
        ],
        "projections": [0.1],
    }
    found, failures = read_conversations(write(tmp_path / "t.json", record))
    assert failures == []
    (conversation,) = found
    assert conversation.layout == "transcript"
    assert conversation.messages[0] == {"role": "system", "content": "You are a pirate."}
    assert conversation.n_assistant == 1
    assert conversation.meta["model"] == "some/model" and "conversation" not in conversation.meta
    no_system = parse_record({**record, "system_prompt": ""})
    assert no_system.messages[0]["role"] == "user"


def test_jsonl_bad_lines_fail_alone_with_their_line_number(tmp_path: Path) -> None:
    lines = [
        json.dumps({"messages": CHAT}),
        "",
        "{not json",
        json.dumps(
            {"conversations": [{"from": "human", "value": "x"}, {"from": "bot", "value": "y"}]}
        ),
        json.dumps(CHAT),
        json.dumps({"foo": 1}),
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    found, failures = read_conversations(path)
    assert [c.position for c in found] == ["line 1", "line 5"]
    assert [f.position for f in failures] == ["line 3", "line 4", "line 6"]
    assert "not valid JSON" in failures[0].error
    assert "message 1" in failures[1].error and "'bot'" in failures[1].error
    assert "'messages' (OpenAI)" in failures[2].error
    assert str(failures[1]).startswith(f"{path} line 4: ")


def test_json_lines_in_a_json_file_are_read_as_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    path.write_text(json.dumps(CHAT) + "\n" + json.dumps({"messages": CHAT}) + "\n")
    found, failures = read_conversations(path)
    assert failures == [] and [c.position for c in found] == ["line 1", "line 2"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "empty list"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role 'tool' is not supported"),
        ({"messages": [{"role": "user"}]}, "message 0 has no 'content'"),
        ({"messages": [{"role": "user", "content": None}]}, "tool calls cannot be monitored"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "content part 0 is 'image_url'",
        ),
        ({"messages": [CHAT[1], CHAT[0]]}, "only the first message may be one"),
        ({"messages": ["hello"]}, "message 0 is a str"),
        ({"conversation": CHAT[1:], "system_prompt": 3}, "'system_prompt' must be a string"),
        (42, "got int"),
    ],
)
def test_malformed_records_name_the_place(tmp_path: Path, data: object, message: str) -> None:
    path = write(tmp_path / "bad.json", data)
    found, failures = read_conversations(path)
    assert found == [] and len(failures) == 1
    assert message in failures[0].error, failures[0].error
    assert failures[0].source == str(path)


def test_invalid_json_and_missing_files_fail_as_a_whole(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"messages": [\n  {"role": "user",, }]}')
    found, failures = read_conversations(path)
    assert found == [] and failures[0].position == "line 2 column 19"
    assert "not valid JSON" in failures[0].error
    found, failures = read_conversations(tmp_path / "missing.json")
    assert found == [] and "cannot read the file" in failures[0].error


def test_parse_record_raises_with_source_and_position() -> None:
    with pytest.raises(PersonaAxisError, match=r"^f\.json index 2: message 0: role .robot."):
        parse_record({"messages": [{"role": "robot", "content": "x"}]}, "f.json", "index 2")


def test_jsonl_round_trip(tmp_path: Path) -> None:
    conversations = [
        Conversation(tuple(CHAT), id="a", meta={"domain": "coding"}),
        Conversation(tuple(CHAT[1:])),
    ]
    path = write_jsonl(conversations, tmp_path / "out" / "c.jsonl")
    found, failures = read_conversations(path)
    assert failures == []
    assert [c.messages for c in found] == [c.messages for c in conversations]
    assert found[0].id == "a" and found[0].meta["domain"] == "coding"
