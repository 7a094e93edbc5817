"""The monitor's results file, written as results finish so that a killed run resumes.

``monitor.jsonl``: the first line is ``{"format": ..., "settings": {...}}`` (model, bundle,
layer, extra layers, rule, context policy); every later line is one finished conversation (a
``monitor.json`` conversation entry with ``"type": "conversation"``) or one input that could not
be monitored (``"type": "failure"``, with its file and position). Lines are flushed as written.

Opening an existing (non-empty) journal checks that its settings equal this run's (else the
run is refused: mixing settings in one file would make its numbers meaningless), drops a
partial last line left by a kill, and reports which inputs (file, position) are already
done, so the run skips them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from persona_axis.drift.conversations import ReadFailure
from persona_axis.drift.readings import ConversationReading, failure_dict
from persona_axis.errors import PersonaAxisError
from persona_axis.files import writing

JOURNAL_FORMAT = "persona-axis monitor journal"


class Journal:
    """Append-only results of one monitoring run (module doc); use as a context manager."""

    def __init__(self, path: str | Path, settings: Mapping[str, Any], *, restart: bool = False):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(dict(settings)))  # as it reads back from disk
        self.done: set[tuple[str, str]] = set()
        with writing(self.path):
            if restart or not self.path.exists() or self.path.stat().st_size == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(
                    json.dumps({"format": JOURNAL_FORMAT, "settings": self.settings}) + "\n"
                )
            else:
                self._resume()
            self._handle: IO[str] | None = self.path.open("a", encoding="utf-8")

    def _resume(self) -> None:
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]  # a kill may leave half a line
        if len(complete) != len(raw):
            self.path.write_bytes(complete)
        lines = complete.decode("utf-8", errors="replace").splitlines()
        try:
            head = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            head = None
        if not isinstance(head, dict) or head.get("format") != JOURNAL_FORMAT:
            raise PersonaAxisError(
                f"{self.path} is not a monitor journal; choose another --out folder or pass "
                "--restart to overwrite it."
            )
        if head.get("settings") != self.settings:
            raise PersonaAxisError(
                f"{self.path} was written with other settings (model, bundle, layers, rule or "
                "context window); pass --restart to start it again, or another --out folder."
            )
        for entry in entries(self.path):
            self.done.add((str(entry.get("source")), str(entry.get("position"))))

    def write(self, item: ConversationReading | ReadFailure) -> None:
        if self._handle is None:
            raise PersonaAxisError("The journal is closed.")
        if isinstance(item, ReadFailure):
            entry: dict[str, Any] = {"type": "failure", **failure_dict(item)}
            key = (item.source, item.position)
        else:
            entry = {"type": "conversation", **item.to_dict()}
            key = (item.conversation.source, item.conversation.position)
        with writing(self.path):
            self._handle.write(json.dumps(entry, ensure_ascii=False, allow_nan=False) + "\n")
            self._handle.flush()
        self.done.add(key)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def entries(path: str | Path) -> Iterator[dict[str, Any]]:
    """The result lines of a journal (not its header), one at a time; broken lines skipped."""
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        next(handle, None)
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("type") in ("conversation", "failure"):
                yield entry
