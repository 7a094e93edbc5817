"""Read a catalog folder in the reference project's layout (github safety-research/assistant-axis).

Facts about that layout (read from its documentation, not copied):

    roles/instructions/<role>.json    {"instruction": [{"pos": "system prompt"}, ...], ...}
    traits/instructions/<trait>.json  {"instruction": [{"pos": ..., "neg": ...}, ...], ...}
    extraction_questions.jsonl        one {"question": "..."} per line

Prompts may contain ``{model_name}``. A role file named ``default.json`` holds the default
prompts (an empty string meaning no system prompt); without one, ours are used. Other keys in
the files (per-trait questions, judge prompts) are ignored. Role categories are not recorded
there, so every role gets the category "reference".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from persona_axis.catalog.model import Catalog, Role, Trait, TraitPair
from persona_axis.catalog.ours import builtin_default_prompts
from persona_axis.errors import PersonaAxisError

ROLES = Path("roles") / "instructions"
TRAITS = Path("traits") / "instructions"
QUESTIONS = "extraction_questions.jsonl"


def is_reference_layout(directory: Path) -> bool:
    return (directory / ROLES).is_dir() or (directory / QUESTIONS).is_file()


def read_reference_catalog(directory: Path) -> Catalog:
    """A :class:`Catalog` from a reference-layout folder; errors name the file and entry."""
    if not (directory / ROLES).is_dir() or not (directory / QUESTIONS).is_file():
        raise PersonaAxisError(
            f"{directory} looks like a reference-project data folder but lacks {ROLES}/ or "
            f"{QUESTIONS}; pass the folder that holds both (the reference repo's data/)."
        )
    roles: list[Role] = []
    defaults: list[str | None] = list(builtin_default_prompts())
    for path in sorted((directory / ROLES).glob("*.json")):
        prompts = [entry["pos"] for entry in _instructions(path, ("pos",))]
        if path.stem == "default":
            defaults = [p if p.strip() else None for p in prompts]
            continue
        roles.append(
            Role(
                name=_name(path),
                category="reference",
                description=f"{path.stem.replace('_', ' ')} (reference catalog)",
                prompts=tuple(prompts),
            )
        )
    traits = [
        Trait(
            name=_name(path),
            description=f"{path.stem.replace('_', ' ')} (reference catalog)",
            pairs=tuple(
                TraitPair(pos=entry["pos"], neg=entry["neg"])
                for entry in _instructions(path, ("pos", "neg"))
            ),
        )
        for path in (
            sorted((directory / TRAITS).glob("*.json")) if (directory / TRAITS).is_dir() else []
        )
    ]
    return Catalog(
        roles=tuple(roles),
        questions=tuple(_questions(directory / QUESTIONS)),
        traits=tuple(traits),
        default_prompts=tuple(defaults),
        source=f"reference layout at {directory}",
    )


def _name(path: Path) -> str:
    return path.stem.lower().replace("-", "_").replace(" ", "_")


def _instructions(path: Path, keys: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PersonaAxisError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}).") from exc
    entries = data.get("instruction") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise PersonaAxisError(
            f"{path} needs a non-empty list 'instruction' of {{{keys}}} objects."
        )
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in keys):
            raise PersonaAxisError(
                f"{path}: instruction[{index}] must be an object with string keys {list(keys)}."
            )
    return entries


def _questions(path: Path) -> list[str]:
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PersonaAxisError(f"{path} line {number} is not valid JSON: {exc.msg}.") from exc
        question = entry.get("question") if isinstance(entry, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise PersonaAxisError(f"{path} line {number} needs a string field 'question'.")
        questions.append(question)
    return questions
