"""Writes the system refuses, simulated inside this process under one folder: a full disk
(files open, every write fails with ENOSPC) or a folder without write permission (creating a
file or folder fails with EACCES; the suite runs as root, where chmod does not bite).

Python's ``open``, ``os.open`` and ``os.mkdir`` are wrapped, which is what pathlib, tempfile,
json and our atomic writer go through; a library writing files from native code (safetensors'
``save_file``, ``torch.save`` to a path) is not, so a command that writes that way escapes the
simulation and the test that expects its error line fails, as it should: such a write hides
the system's errno from the user.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path
from typing import Any

import pytest

KINDS = {"full": errno.ENOSPC, "denied": errno.EACCES}
"""The simulated failure and the errno it raises."""

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _FullDisk:
    """An open file on a full disk: everything works except writing."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def write(self, _data: Any) -> int:  # as the system reports it: no file name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def writelines(self, _lines: Any) -> None:
        self.write(b"")

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def refuse_writes(monkeypatch: pytest.MonkeyPatch, root: Path, kind: str) -> None:
    """From now on (until ``monkeypatch`` undoes it), writing under ``root`` fails as ``kind``
    (a key of :data:`KINDS`); everything else, reads included, works as before."""
    code = KINDS[kind]
    top = root.resolve()
    real_open, real_os_open, real_mkdir = io.open, os.open, os.mkdir

    def under(path: Any) -> str | None:
        if isinstance(path, int):
            return None  # an open file descriptor: not a path
        name = os.fsdecode(path)
        return name if Path(name).resolve().is_relative_to(top) else None

    def refused(name: str) -> OSError:
        return PermissionError(code, os.strerror(code), name)

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        name = under(file)
        if name is None or not set(mode) & set("wax+"):
            return real_open(file, mode, *args, **kwargs)
        if kind == "denied":
            raise refused(name)
        return _FullDisk(real_open(file, mode, *args, **kwargs))

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        name = under(path)
        if kind == "denied" and name is not None and flags & _WRITE_FLAGS:
            raise refused(name)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        name = under(path)
        if kind == "denied" and name is not None:
            raise refused(name)
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
