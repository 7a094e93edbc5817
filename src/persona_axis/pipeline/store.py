"""The resumable on-disk store of a build: one file set per batch, written atomically.

Layout under ``<out>/work``::

    header.json                    settings, catalog hash and model facts of this build
    rollouts/<batch>.json          the batch's rollouts (written last: marks the batch done)
    activations/<batch>.safetensors  "activations" [n, n_layers, d] (response means, float32
                                   or bfloat16 as configured),
                                   "norms" [n, n_layers] mean token norms, "token_ids" int32
                                   (all replies concatenated), "lengths" [n] int64
    judge/<batch>.json             judge scores and raw replies for the batch's role rollouts

Every file is written to a temporary name in its folder, flushed, fsynced and renamed into
place, so a process killed at any moment (SIGKILL included) leaves either the old state or the
new one. A batch counts as done only when its rollouts file exists; its activations file is
written first, so a done batch always has activations. A temporary file left by a killed
process is never read and is removed when the store is opened again (one build process writes
a store at a time; Ray workers write only after the driver opened it). Nothing is ever
unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from persona_axis import files
from persona_axis.errors import PersonaAxisError
from persona_axis.pipeline.config import upgrade_result_fields

HEADER = "header.json"


def read_json(path: Path) -> Any:
    """A store file's JSON; a damaged one raises with the fix (delete it and rerun)."""
    return files.read_json(
        path,
        fix="the build store is damaged. Delete that file and rerun the same command to "
        "regenerate it",
    )


class BuildStore:
    """The ``work`` folder of one build directory (see the module docstring)."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.root = self.out / "work"

    @classmethod
    def open(cls, out: str | os.PathLike[str], header: dict[str, Any]) -> BuildStore:
        """Create the store, or reopen it when its stored header equals ``header``."""
        store = cls(out)
        if store.out.exists() and not store.out.is_dir():
            raise PersonaAxisError(f"{store.out} is a file; pass a directory for --out.")
        stored_path = store.root / HEADER
        if stored_path.is_file():
            stored = read_json(stored_path)
            if isinstance(stored.get("settings"), dict):  # older field names read as today's
                stored["settings"] = upgrade_result_fields(stored["settings"])
            if stored != header:
                change = _difference(stored, header)
                raise PersonaAxisError(
                    f"{store.out} holds a build with other settings ({change}). Resume it with "
                    "the same settings, or build into a new --out directory."
                )
        else:
            files.write_json(stored_path, header)
        for stale in store.root.rglob(".*.tmp"):  # left by a process killed inside a write
            stale.unlink(missing_ok=True)
        return store

    # -- batches ------------------------------------------------------------------------------

    def _rollouts(self, batch: int) -> Path:
        return self.root / "rollouts" / f"{batch:06d}.json"

    def _activations(self, batch: int) -> Path:
        return self.root / "activations" / f"{batch:06d}.safetensors"

    def _judge(self, batch: int) -> Path:
        return self.root / "judge" / f"{batch:06d}.json"

    def has_batch(self, batch: int) -> bool:
        return self._rollouts(batch).is_file()

    def has_judgement(self, batch: int) -> bool:
        return self._judge(batch).is_file()

    def write_batch(
        self,
        batch: int,
        records: list[dict[str, Any]],
        activations: Tensor,
        norms: Tensor,
        token_ids: list[list[int]],
        *,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Store one generated batch: activations first, then the rollouts that mark it done.

        ``activations`` are stored in ``dtype`` (float32 or bfloat16); norms stay float32."""
        lengths = torch.tensor([len(t) for t in token_ids], dtype=torch.int64)
        flat = [token for tokens in token_ids for token in tokens]
        tensors = {
            "activations": activations.to(dtype).contiguous(),
            "norms": norms.to(torch.float32).contiguous(),
            "token_ids": torch.tensor(flat, dtype=torch.int32),
            "lengths": lengths,
        }
        data = save(tensors)  # bytes: a full disk surfaces as an OSError (persona_axis.files)
        files.write_atomic(self._activations(batch), lambda path: path.write_bytes(data))
        files.write_json(self._rollouts(batch), {"batch": batch, "rollouts": records})

    def read_batch(self, batch: int) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
        records = read_json(self._rollouts(batch))["rollouts"]
        try:
            tensors = load_file(str(self._activations(batch)))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise PersonaAxisError(
                f"Could not read {self._activations(batch)} ({exc}); delete it and "
                f"{self._rollouts(batch).name} in {self.root}, then rerun to regenerate the batch."
            ) from exc
        return records, tensors

    def write_judgement(self, batch: int, results: list[dict[str, Any]]) -> None:
        files.write_json(self._judge(batch), {"batch": batch, "results": results})

    def read_judgement(self, batch: int) -> list[dict[str, Any]]:
        return list(read_json(self._judge(batch))["results"])

    def iter_batches(
        self, n_batches: int
    ) -> Iterator[tuple[int, list[dict[str, Any]], dict[str, Tensor]]]:
        for batch in range(n_batches):
            records, tensors = self.read_batch(batch)
            yield batch, records, tensors


def token_lists(tensors: dict[str, Tensor]) -> list[list[int]]:
    """The replies' token ids of a stored batch, one list per rollout."""
    lengths = tensors["lengths"].tolist()
    flat = tensors["token_ids"].tolist()
    out, start = [], 0
    for length in lengths:
        out.append(flat[start : start + length])
        start += length
    return out


def _difference(stored: Any, current: Any, prefix: str = "") -> str:
    """The first differing entry of two headers, spelt for a person."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in sorted(set(stored) | set(current)):
            if stored.get(key) != current.get(key):
                return _difference(stored.get(key), current.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.') or 'header'}: stored {stored!r}, now {current!r}"
