"""Read logged conversations from files in three layouts, with errors that name the place.

Accepted layouts, detected per record:

- **OpenAI messages**: a list of ``{"role", "content"}`` objects, or an object holding one under
  ``"messages"``. Roles ``system``/``developer``, ``user``, ``assistant``; ``content`` is a
  string or a list of ``{"type": "text", "text": ...}`` parts (joined without separator).
- **ShareGPT**: an object with ``"conversations": [{"from": ..., "value": ...}]`` where
  ``from`` is ``human``/``user``, ``gpt``/``assistant``/``chatgpt`` or ``system``.
- **Transcript** (the reference project's files): an object with ``"conversation"``, a list of
  ``{"role", "content"}``, and optionally ``"system_prompt"`` (put in front as a system message).

A file is JSON (one record, or a list of records; a bare list of messages is one conversation)
or JSONL (one record per non-blank line; ``.jsonl``/``.ndjson``, or a ``.json`` file whose text
is several JSON values one per line). Positions are ``line N`` (1-based) in JSONL files and
``index N`` (0-based) in JSON lists; message positions are 0-based. One bad record fails alone:
:func:`read_conversations` returns the good conversations and a :class:`ReadFailure` per bad one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_axis.errors import PersonaAxisError
from persona_axis.files import writing

ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
}
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
ID_KEYS = ("id", "conversation_id", "uuid")


@dataclass(frozen=True)
class Conversation:
    """One conversation: plain ``{"role", "content"}`` messages and where it came from.

    ``position`` is ``"line 7"``, ``"index 3"`` or ``"whole file"``; ``layout`` is ``openai``,
    ``sharegpt`` or ``transcript``; ``meta`` keeps the record's other top-level fields.
    """

    messages: tuple[dict[str, str], ...]
    source: str = "<memory>"
    position: str = "whole file"
    layout: str = "openai"
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``source position``, or the id when the record carries one."""
        where = f"{self.source} {self.position}"
        return f"{where} (id {self.id})" if self.id else where

    @property
    def n_assistant(self) -> int:
        return sum(message["role"] == "assistant" for message in self.messages)


@dataclass(frozen=True)
class ReadFailure:
    """A file or record that could not be used, and why (the message says how to fix it)."""

    source: str
    position: str
    error: str

    def __str__(self) -> str:
        return f"{self.source} {self.position}: {self.error}"


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for index, part in enumerate(value):
            if isinstance(part, Mapping) and part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
                    continue
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise PersonaAxisError(
                f"{where}: content part {index} is {kind!r}; only text parts "
                '({"type": "text", "text": ...}) can be monitored.'
            )
        return "".join(texts)
    raise PersonaAxisError(
        f"{where}: 'content' is {type(value).__name__}, not text; give a string "
        "(an assistant turn with only tool calls cannot be monitored, drop it)."
    )


def _message(role: Any, content: Any, where: str, role_key: str) -> dict[str, str]:
    mapped = ROLE_ALIASES.get(role) if isinstance(role, str) else None
    if mapped is None:
        raise PersonaAxisError(
            f"{where}: {role_key} {role!r} is not supported; use one of "
            f"{', '.join(sorted(ROLE_ALIASES))} (drop tool or function messages)."
        )
    return {"role": mapped, "content": _content(content, where)}


def _messages_from(items: Any, key: str, role_key: str, content_key: str) -> list[dict[str, str]]:
    if not isinstance(items, list) or not items:
        raise PersonaAxisError(f"'{key}' must be a non-empty list of messages.")
    messages = []
    for index, item in enumerate(items):
        where = f"message {index}"
        if not isinstance(item, Mapping):
            raise PersonaAxisError(
                f"{where} is a {type(item).__name__}, not an object with '{role_key}' and "
                f"'{content_key}'."
            )
        if content_key not in item:
            raise PersonaAxisError(f"{where} has no '{content_key}'.")
        messages.append(_message(item.get(role_key), item[content_key], where, role_key))
    _check_order(messages)
    return messages


def _check_order(messages: Sequence[Mapping[str, str]]) -> None:
    for index, message in enumerate(messages):
        if message["role"] == "system" and index > 0:
            raise PersonaAxisError(
                f"message {index} is a system message; only the first message may be one."
            )


def _record_id(record: Mapping[str, Any]) -> str | None:
    for key in ID_KEYS:
        value = record.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None


def parse_record(
    record: Any, source: str = "<memory>", position: str = "whole file"
) -> Conversation:
    """One conversation from a decoded JSON value in any of the three layouts (module doc).

    Raises :class:`PersonaAxisError` naming ``source``, ``position`` and the message at fault.
    """
    try:
        return _parse(record, source, position)
    except PersonaAxisError as exc:
        raise PersonaAxisError(f"{source} {position}: {exc}") from None


def _parse(record: Any, source: str, position: str) -> Conversation:
    if isinstance(record, list):
        messages = _messages_from(record, "messages", "role", "content")
        return Conversation(tuple(messages), source, position, "openai")
    if not isinstance(record, Mapping):
        raise PersonaAxisError(
            f"expected a conversation (a list of messages or an object), got "
            f"{type(record).__name__}."
        )
    meta = {k: v for k, v in record.items() if k not in {"messages", "conversations"}}
    meta.pop("conversation", None)
    ident = _record_id(record)
    if "conversations" in record:
        messages = _messages_from(record["conversations"], "conversations", "from", "value")
        return Conversation(tuple(messages), source, position, "sharegpt", ident, meta)
    if "conversation" in record:
        messages = _messages_from(record["conversation"], "conversation", "role", "content")
        system = record.get("system_prompt")
        if system is not None and not isinstance(system, str):
            raise PersonaAxisError("'system_prompt' must be a string or null.")
        if system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        return Conversation(tuple(messages), source, position, "transcript", ident, meta)
    if "messages" in record:
        messages = _messages_from(record["messages"], "messages", "role", "content")
        return Conversation(tuple(messages), source, position, "openai", ident, meta)
    keys = ", ".join(sorted(map(str, record))[:8]) or "none"
    raise PersonaAxisError(
        f"no conversation found (keys: {keys}); expected 'messages' (OpenAI), 'conversations' "
        "(ShareGPT) or 'conversation' (transcript)."
    )


def _is_message(item: Any) -> bool:
    return isinstance(item, Mapping) and "role" in item and "messages" not in item


def iter_conversations(path: str | Path) -> Iterator[Conversation | ReadFailure]:
    """Every conversation in ``path``, and a failure per unusable record, in file order
    (module doc). JSONL files are read line by line, never whole; a JSON file is one
    document and is read whole. An unreadable file or invalid JSON gives one failure for the
    whole file."""
    file = Path(path)
    source = str(path)
    if file.suffix.lower() in JSONL_SUFFIXES:
        yield from _iter_jsonl(file, source)
        return
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        yield _unreadable(source, exc)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.count("\n") > 0:  # JSON Lines in a .json file
            yield from _records_of_lines(enumerate(text.splitlines(), start=1), source)
            return
        yield ReadFailure(
            source,
            f"line {exc.lineno} column {exc.colno}",
            f"not valid JSON ({exc.msg}); fix the file, or use .jsonl for one "
            "conversation per line.",
        )
        return
    except RecursionError:
        yield ReadFailure(source, "whole file", "JSON nested too deeply to read; fix the file.")
        return
    if isinstance(data, list) and data and all(_is_message(item) for item in data):
        records: list[tuple[str, Any]] = [("whole file", data)]
    elif isinstance(data, list):
        if not data:
            yield ReadFailure(source, "whole file", "the file holds an empty list.")
            return
        records = [(f"index {i}", item) for i, item in enumerate(data)]
    else:
        records = [("whole file", data)]
    for position, record in records:
        yield _parse_or_fail(record, source, position)


def read_conversations(path: str | Path) -> tuple[list[Conversation], list[ReadFailure]]:
    """:func:`iter_conversations` collected: the good conversations and the failures."""
    conversations: list[Conversation] = []
    failures: list[ReadFailure] = []
    for item in iter_conversations(path):
        if isinstance(item, ReadFailure):
            failures.append(item)
        else:
            conversations.append(item)
    return conversations, failures


def _unreadable(source: str, exc: Exception) -> ReadFailure:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ReadFailure(source, "whole file", f"cannot read the file ({reason}).")


def _iter_jsonl(file: Path, source: str) -> Iterator[Conversation | ReadFailure]:
    try:
        handle = file.open("rb")
    except OSError as exc:
        yield _unreadable(source, exc)
        return
    with handle:
        lines = ((number, raw) for number, raw in enumerate(handle, start=1))
        yield from _records_of_lines(lines, source)


def _records_of_lines(
    lines: Iterable[tuple[int, str | bytes]], source: str
) -> Iterator[Conversation | ReadFailure]:
    """One record per non-blank line; a line that is not UTF-8 or not JSON fails alone."""
    seen = False
    for number, raw in lines:
        position = f"line {number}"
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            seen = True
            yield ReadFailure(source, position, f"not UTF-8 text ({exc.reason}); fix the line.")
            continue
        if not line.strip():
            continue
        seen = True
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield ReadFailure(
                source,
                position,
                f"not valid JSON ({exc.msg} at column {exc.colno}); fix or remove the line.",
            )
            continue
        except RecursionError:
            yield ReadFailure(source, position, "JSON nested too deeply; fix the line.")
            continue
        yield _parse_or_fail(record, source, position)
    if not seen:
        yield ReadFailure(source, "whole file", "the file holds no conversation.")


def _parse_or_fail(record: Any, source: str, position: str) -> Conversation | ReadFailure:
    try:
        return _parse(record, source, position)
    except PersonaAxisError as exc:
        return ReadFailure(source, position, str(exc))


def write_jsonl(conversations: Sequence[Conversation], path: str | Path) -> Path:
    """Write conversations as OpenAI-style JSONL (``{"id", "messages", **meta}`` per line)."""
    target = Path(path)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_records(conversations, target)
    return target


def _write_records(conversations: Sequence[Conversation], target: Path) -> None:
    with target.open("w", encoding="utf-8") as handle:
        for conversation in conversations:
            record: dict[str, Any] = dict(conversation.meta)
            if conversation.id is not None:
                record["id"] = conversation.id
            record["messages"] = list(conversation.messages)
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
