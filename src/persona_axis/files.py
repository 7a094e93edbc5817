"""Writing files so that a crash never leaves half of one: atomic writes and JSON.

Every writer creates a temporary file beside the target, flushes and fsyncs it, and renames it
into place, so a process killed at any moment (SIGKILL included) leaves the old file or the new
one, never a torn one. JSON is written strictly (``allow_nan=False``: NaN and infinity are not
JSON) and read back with a :class:`PersonaAxisError` that names the file and what to do.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from persona_axis.errors import PersonaAxisError


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Create ``path`` through ``write(temporary_path)``, then fsync and rename it into place
    (parents are created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        with temporary.open("rb") as stream:
            os.fsync(stream.fileno())
        temporary.replace(target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return target


def write_json(
    path: str | os.PathLike[str], data: Any, *, indent: int = 1, sort_keys: bool = False
) -> Path:
    """Write ``data`` as strict JSON (UTF-8, no NaN), atomically; returns the path."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False)
    return write_atomic(path, lambda temporary: temporary.write_text(text + "\n", encoding="utf-8"))


def read_json(path: str | os.PathLike[str], *, fix: str = "restore or regenerate it") -> Any:
    """Parse the JSON file at ``path``; a missing, unreadable or invalid file raises
    :class:`PersonaAxisError` naming it, with ``fix`` as the advice."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaAxisError(f"Could not read {source} ({exc}); {fix}.") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PersonaAxisError(f"{source} is not valid JSON ({exc}); {fix}.") from exc
