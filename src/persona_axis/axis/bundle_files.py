"""A bundle on disk: a directory of three files, written whole or not at all, read with checks.

- ``vectors.safetensors``: the float32 vectors (``safetensors``; nothing is ever unpickled).
- ``manifest.json``: the manifest (:mod:`persona_axis.axis.bundle_data`).
- ``caps.json``: named cap settings, ``{name: CapSetting.to_dict()}``; optional.

Saving writes the files into a hidden sibling directory (each one atomically, through
:mod:`persona_axis.files`), the manifest last, then renames the directory into place, so an
interrupted save never leaves a half-written bundle at the target path. Reading raises
:class:`PersonaAxisError` with the fix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save
from torch import Tensor

from persona_axis import files
from persona_axis.axis.bundle_data import FORMAT, FORMAT_VERSION, check_manifest
from persona_axis.errors import PersonaAxisError

VECTORS_FILE = "vectors.safetensors"
MANIFEST_FILE = "manifest.json"
CAPS_FILE = "caps.json"
BUNDLE_FILES = frozenset({VECTORS_FILE, MANIFEST_FILE, CAPS_FILE})


def bundle_directory(path: str | os.PathLike[str]) -> Path:
    """The directory holding a bundle: ``path`` itself, or its ``bundle/`` when ``path`` is a
    build directory (from ``persona-axis build --out DIR``)."""
    root = Path(path)
    if not (root / MANIFEST_FILE).is_file() and (root / "bundle" / MANIFEST_FILE).is_file():
        return root / "bundle"
    return root


def write_bundle(
    directory: str | os.PathLike[str],
    vectors: Mapping[str, Tensor],
    manifest: Mapping[str, Any],
    caps: Mapping[str, Any],
) -> Path:
    """Write a bundle's files to ``directory`` (replacing a bundle there); returns the path.

    ``caps`` maps names to plain JSON settings. A directory holding anything but bundle files
    is not replaced.
    """
    target = Path(directory)
    if target.exists():
        if not target.is_dir():
            raise PersonaAxisError(f"{target} is a file; pass a directory path for the bundle.")
        foreign = sorted({p.name for p in target.iterdir()} - BUNDLE_FILES)
        if foreign:
            raise PersonaAxisError(
                f"{target} holds files that are not part of a bundle ({foreign[:5]}); "
                "save the bundle to a new or empty directory."
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    )
    try:
        tensors = _owning_copies(vectors)
        metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
        data = save(tensors, metadata=metadata)  # bytes: a full disk surfaces as an OSError
        files.write_atomic(staging / VECTORS_FILE, lambda path: path.write_bytes(data))
        files.write_json(staging / CAPS_FILE, dict(caps), indent=2, sort_keys=True)
        files.write_json(staging / MANIFEST_FILE, dict(manifest), indent=2, sort_keys=True)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_bundle(
    directory: str | os.PathLike[str],
) -> tuple[Path, dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """``(root, vectors, manifest, caps)`` of the bundle at ``directory`` (a build directory
    works too: its ``bundle/`` is read); ``caps`` maps names to plain JSON settings. The
    manifest's format is checked before the vectors are read."""
    root = bundle_directory(directory)
    if not root.is_dir():
        raise PersonaAxisError(
            f"No bundle directory at {root}; pass the directory written by AxisBundle.save "
            "(it holds manifest.json and vectors.safetensors)."
        )
    missing = [name for name in (MANIFEST_FILE, VECTORS_FILE) if not (root / name).is_file()]
    if missing:
        raise PersonaAxisError(
            f"{root} is not a complete bundle: {', '.join(missing)} missing. Re-run the step "
            "that wrote it, or point at the right directory."
        )
    manifest = _read_json(root / MANIFEST_FILE)
    if not isinstance(manifest, dict):
        raise PersonaAxisError(f"{root / MANIFEST_FILE} must hold a JSON object; re-save it.")
    check_manifest(manifest)
    vectors = _read_vectors(root / VECTORS_FILE)
    caps_path = root / CAPS_FILE
    caps = _read_json(caps_path) if caps_path.is_file() else {}
    if not isinstance(caps, dict) or not all(isinstance(v, dict) for v in caps.values()):
        raise PersonaAxisError(
            f"{caps_path} must map setting names to setting objects; re-save the bundle."
        )
    return root, vectors, manifest, caps


def _owning_copies(vectors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Tensors that each own their storage (safetensors refuses shared or partial storage)."""
    seen: set[int] = set()
    result = {}
    for key, value in vectors.items():
        storage = value.untyped_storage()
        shared = storage.data_ptr() in seen or storage.nbytes() != value.numel() * 4
        seen.add(storage.data_ptr())
        result[key] = value.clone() if shared else value
    return result


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is moved aside first."""
    if not target.exists():
        staging.rename(target)
        return
    retired = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
    target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def _read_json(path: Path) -> Any:
    return files.read_json(
        path, fix="the bundle is damaged. Restore the file or re-save the bundle"
    )


def _read_vectors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise PersonaAxisError(
            f"{path} is not a readable safetensors file ({exc}); the bundle is damaged. Re-save it."
        ) from exc
