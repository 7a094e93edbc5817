"""Our catalog layout (a directory of JSON files; see :mod:`persona_axis.catalog`) and the
builtin catalog shipped as package data."""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib.resources import files
from typing import Any

from persona_axis.catalog.model import Catalog, Role, Trait, TraitPair
from persona_axis.errors import PersonaAxisError


def read_our_layout(root: Any, source: str) -> Catalog:
    """Read our layout from a directory or an importlib resource traversable."""
    roles: list[Role] = []
    traits: list[Trait] = []
    for entry in _json_files(root / "roles", source):
        roles += [_role(item, entry) for item in _list_field(_read(entry), "roles", entry)]
    for entry in _json_files(root / "traits", source):
        traits += [_trait(item, entry) for item in _list_field(_read(entry), "traits", entry)]
    questions = _list_field(_read(root / "questions.json"), "questions", root / "questions.json")
    defaults_file = root / "defaults.json"
    defaults = (
        _list_field(_read(defaults_file), "default_prompts", defaults_file)
        if defaults_file.is_file()
        else list(builtin_default_prompts())
    )
    return Catalog(
        roles=tuple(roles),
        questions=tuple(_strings(questions, "questions", root / "questions.json")),
        traits=tuple(traits),
        default_prompts=tuple(defaults),
        source=source,
    )


def builtin_default_prompts() -> list[str | None]:
    data = files("persona_axis.catalog") / "data" / "defaults.json"
    return list(_list_field(_read(data), "default_prompts", data))


def _json_files(folder: Any, source: str) -> list[Any]:
    if not folder.is_dir():
        raise PersonaAxisError(f"Catalog {source} has no folder {folder.name}/ of JSON files.")
    found = sorted((e for e in folder.iterdir() if e.name.endswith(".json")), key=lambda e: e.name)
    if not found:
        raise PersonaAxisError(f"Catalog folder {folder} holds no .json files.")
    return found


def _read(entry: Any) -> Any:
    try:
        return json.loads(entry.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PersonaAxisError(f"Catalog file {entry} is missing.") from exc
    except json.JSONDecodeError as exc:
        raise PersonaAxisError(
            f"Catalog file {entry} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); fix the file and run again."
        ) from exc


def _list_field(data: Any, key: str, where: Any) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise PersonaAxisError(f"{where} must be a JSON object with a list {key!r}.")
    return list(data[key])


def _strings(items: Iterable[Any], what: str, where: Any) -> list[str]:
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise PersonaAxisError(f"{where}: {what}[{index}] must be a non-empty string.")
        out.append(item)
    return out


def _fields(item: Any, required: set[str], where: Any, what: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise PersonaAxisError(f"{where}: each {what} must be a JSON object, not {item!r:.60}.")
    missing, unknown = required - set(item), set(item) - required
    if missing or unknown:
        label = item.get("name", "?")
        raise PersonaAxisError(
            f"{where}: {what} {label!r} has missing keys {sorted(missing)} / unknown keys "
            f"{sorted(unknown)}; expected exactly {sorted(required)}."
        )
    return item


def _role(item: Any, where: Any) -> Role:
    data = _fields(item, {"name", "category", "description", "prompts"}, where, "role")
    prompts = data["prompts"] if isinstance(data["prompts"], list) else [None]
    return Role(
        name=str(data["name"]),
        category=str(data["category"]),
        description=str(data["description"]),
        prompts=tuple(_strings(prompts, f"role {data['name']!r} prompts", where)),
    )


def _trait(item: Any, where: Any) -> Trait:
    data = _fields(item, {"name", "description", "pairs"}, where, "trait")
    pairs = []
    for pair in data["pairs"] if isinstance(data["pairs"], list) else [None]:
        checked = _fields(pair, {"pos", "neg"}, where, f"pair of trait {data['name']!r}")
        pos, neg = _strings([checked["pos"], checked["neg"]], f"trait {data['name']!r}", where)
        pairs.append(TraitPair(pos=pos, neg=neg))
    return Trait(name=str(data["name"]), description=str(data["description"]), pairs=tuple(pairs))
