"""Writing files so that a crash never leaves half of one: atomic writes and JSON.

Every writer creates a temporary file beside the target, flushes and fsyncs it, and renames it
into place, so a process killed at any moment (SIGKILL included) leaves the old file or the new
one, never a torn one. A write the system refuses (a full disk, no permission, a path through a
file) raises :class:`PersonaAxisError` with the system's reason and its fix, so writers must
write through Python's file objects (which report the errno as :class:`OSError`); a library
that writes files itself (safetensors' ``save_file``, ``torch.save`` to a path) hides it, so
serialise to bytes first. JSON is written strictly (``allow_nan=False``: NaN and infinity are not
JSON) and read back with a :class:`PersonaAxisError` that names the file and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from persona_axis.errors import PersonaAxisError

FIXES = {
    errno.ENOSPC: "free some disk space there or write somewhere else",
    errno.EDQUOT: "free some of your disk quota or write somewhere else",
    errno.EACCES: "make the folder writable for this user or write somewhere else",
    errno.EPERM: "make the folder writable for this user or write somewhere else",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.ENOTDIR: "a part of the path is a file; pass a path inside a folder",
    errno.EISDIR: "the path is a folder; pass a file path",
    errno.ENOENT: "check the path",
}
"""The fix for each system reason a user can cause (and cure) when writing."""


def os_error(exc: OSError, path: str | os.PathLike[str] | None = None) -> PersonaAxisError:
    """The user error for a refused file operation: the path (``path``, else the one the system
    names), the system's reason and the fix for that reason."""
    where = path if path is not None else exc.filename
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = FIXES.get(exc.errno or 0, "check the path, its permissions and the free disk space")
    return PersonaAxisError(
        f"{reason}: {where}; {fix}." if where is not None else f"{reason}; {fix}."
    )


@contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a refused write inside this block into :func:`os_error`'s user error naming
    ``path``: for files written in place (appended to, streamed), whose ``OSError`` from a
    plain ``write`` names no file."""
    try:
        yield
    except OSError as exc:
        raise os_error(exc, path) from exc


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Create ``path`` through ``write(temporary_path)``, then fsync and rename it into place
    (parents are created); returns the path. A refused write (:class:`OSError`: disk full,
    permission denied, ...) raises :func:`os_error`'s :class:`PersonaAxisError`."""
    try:
        return _write_atomic(Path(path), write)
    except OSError as exc:
        raise os_error(exc, path) from exc


def _write_atomic(target: Path, write: Callable[[Path], Any]) -> Path:
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
