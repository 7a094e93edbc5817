"""The catalog: roles, traits, extraction questions and default prompts, validated.

Our own catalog ships as package data (``catalog/data``, every sentence written for this
project). A user catalog in the same layout, or a folder in the reference project's layout
(:mod:`persona_axis.catalog.reference_format`), loads through :func:`load_catalog`.

Our layout (a directory)::

    roles/*.json      {"roles": [{"name", "category", "description", "prompts": [5 strings]}]}
    traits/*.json     {"traits": [{"name", "description", "pairs": [{"pos", "neg"}, ...]}]}
    questions.json    {"questions": [strings]}
    defaults.json     {"default_prompts": [null | string with optional {model_name}]}

Names are lowercase snake_case (they become bundle keys ``role/<name>``, ``trait/<name>``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

from persona_axis.errors import PersonaAxisError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
CATEGORIES = ("professional", "archetype", "nonhuman", "mystical")
BUILTIN = "persona-axis builtin"
T = TypeVar("T")


@dataclass(frozen=True)
class Role:
    """A character: its system prompts cast the model as it."""

    name: str
    category: str
    description: str
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class TraitPair:
    """System prompts that express a trait (``pos``) and its opposite (``neg``)."""

    pos: str
    neg: str


@dataclass(frozen=True)
class Trait:
    name: str
    description: str
    pairs: tuple[TraitPair, ...]


@dataclass(frozen=True)
class Catalog:
    """Everything the build asks the model: who to be, and what to answer.

    ``default_prompts`` holds None for "no system prompt" and may contain ``{model_name}``.
    """

    roles: tuple[Role, ...]
    questions: tuple[str, ...]
    traits: tuple[Trait, ...] = ()
    default_prompts: tuple[str | None, ...] = ()
    source: str = field(default=BUILTIN, compare=False)

    def __post_init__(self) -> None:
        _check_catalog(self)

    def defaults_for(self, model_name: str) -> list[str | None]:
        """The default prompts with ``{model_name}`` filled in."""
        return [
            None if p is None else p.replace("{model_name}", model_name)
            for p in self.default_prompts
        ]

    def role(self, name: str) -> Role:
        for role in self.roles:
            if role.name == name:
                return role
        raise PersonaAxisError(f"No role {name!r} in the catalog ({self.source}).")

    def subset(
        self,
        *,
        n_roles: int | None = None,
        prompts_per_role: int | None = None,
        n_questions: int | None = None,
        n_traits: int | None = None,
        pairs_per_trait: int | None = None,
        roles: Sequence[str] | None = None,
        traits: Sequence[str] | None = None,
    ) -> Catalog:
        """A smaller catalog. Roles are taken round-robin over categories (so a small subset
        still spans professions, archetypes, non-human and mystical characters), questions and
        traits evenly spaced through their lists; ``roles``/``traits`` name them explicitly."""
        chosen_roles = (
            tuple(self.role(name) for name in roles)
            if roles is not None
            else _round_robin(self.roles, n_roles)
        )
        if traits is not None:
            by_name = {t.name: t for t in self.traits}
            missing = [name for name in traits if name not in by_name]
            if missing:
                raise PersonaAxisError(f"No trait(s) {missing} in the catalog ({self.source}).")
            chosen_traits = tuple(by_name[name] for name in traits)
        else:
            chosen_traits = _spread(self.traits, n_traits)
        if prompts_per_role is not None:
            chosen_roles = tuple(
                replace(r, prompts=r.prompts[: _at_least_one(prompts_per_role, "prompts_per_role")])
                for r in chosen_roles
            )
        if pairs_per_trait is not None:
            chosen_traits = tuple(
                replace(t, pairs=t.pairs[: _at_least_one(pairs_per_trait, "pairs_per_trait")])
                for t in chosen_traits
            )
        return replace(
            self,
            roles=chosen_roles,
            questions=_spread(self.questions, n_questions),
            traits=chosen_traits,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "roles": [asdict(r) for r in self.roles],
            "questions": list(self.questions),
            "traits": [asdict(t) for t in self.traits],
            "default_prompts": list(self.default_prompts),
        }

    def digest(self) -> str:
        """sha256 of the canonical JSON of the contents (not of where it was read from)."""
        text = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.digest(),
            "roles": len(self.roles),
            "role_prompts": sum(len(r.prompts) for r in self.roles),
            "questions": len(self.questions),
            "traits": len(self.traits),
            "trait_pairs": sum(len(t.pairs) for t in self.traits),
            "default_prompts": len(self.default_prompts),
        }


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Our builtin catalog (``path`` None), or a directory in our or the reference layout."""
    if path is None:
        return _read_our_layout(files("persona_axis.catalog") / "data", BUILTIN)
    directory = Path(path)
    if not directory.is_dir():
        raise PersonaAxisError(
            f"Catalog {directory} is not a directory; pass a folder with roles/, traits/, "
            "questions.json (ours) or roles/instructions/ and extraction_questions.jsonl "
            "(the reference project's)."
        )
    from persona_axis.catalog.reference_format import is_reference_layout, read_reference_catalog

    if is_reference_layout(directory):
        return read_reference_catalog(directory)
    return _read_our_layout(directory, str(directory))


def _read_our_layout(root: Any, source: str) -> Catalog:
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


def _check_catalog(catalog: Catalog) -> None:
    where = f"Catalog {catalog.source}"
    if not catalog.roles or not catalog.questions:
        raise PersonaAxisError(f"{where} needs at least one role and one question.")
    for kind, names in (
        ("role", [r.name for r in catalog.roles]),
        ("trait", [t.name for t in catalog.traits]),
    ):
        bad = [n for n in names if not NAME_PATTERN.match(n)]
        if bad:
            raise PersonaAxisError(
                f"{where}: {kind} names {bad[:5]} are not lowercase snake_case "
                "([a-z][a-z0-9_]*, ≤64 characters); rename them."
            )
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise PersonaAxisError(f"{where}: {kind} names {duplicated[:5]} appear twice.")
    for role in catalog.roles:
        if not role.prompts:
            raise PersonaAxisError(f"{where}: role {role.name!r} has no system prompts.")
    for trait in catalog.traits:
        if not trait.pairs:
            raise PersonaAxisError(f"{where}: trait {trait.name!r} has no prompt pairs.")
    if not catalog.default_prompts:
        raise PersonaAxisError(f"{where} has no default prompts (null means no system prompt).")
    for prompt in catalog.default_prompts:
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise PersonaAxisError(f"{where}: default prompts are null or non-empty strings.")


def _at_least_one(value: int, what: str) -> int:
    if value < 1:
        raise PersonaAxisError(f"{what} must be at least 1, not {value}.")
    return value


def _spread(items: Sequence[T], count: int | None) -> tuple[T, ...]:
    """``count`` items evenly spaced through ``items`` (all when None)."""
    if count is None or count >= len(items):
        return tuple(items)
    if count < 0:
        raise PersonaAxisError(f"A catalog subset size must be ≥ 0, not {count}.")
    return tuple(items[(i * len(items)) // count] for i in range(count))


def _round_robin(roles: Sequence[Role], count: int | None) -> tuple[Role, ...]:
    """``count`` roles taken in turn from each category, in catalog order."""
    if count is None or count >= len(roles):
        return tuple(roles)
    _at_least_one(count, "n_roles")
    queues: dict[str, list[Role]] = {}
    for role in roles:
        queues.setdefault(role.category, []).append(role)
    picked: list[Role] = []
    while len(picked) < count:
        for queue in queues.values():
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return tuple(picked)
