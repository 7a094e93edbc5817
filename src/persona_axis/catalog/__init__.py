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

import os
from importlib.resources import files
from pathlib import Path

from persona_axis.catalog.model import BUILTIN, CATEGORIES, Catalog, Role, Trait, TraitPair
from persona_axis.catalog.ours import builtin_default_prompts, read_our_layout
from persona_axis.catalog.reference_format import is_reference_layout, read_reference_catalog
from persona_axis.errors import PersonaAxisError

__all__ = [
    "CATEGORIES",
    "Catalog",
    "Role",
    "Trait",
    "TraitPair",
    "builtin_default_prompts",
    "load_catalog",
]


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Our builtin catalog (``path`` None), or a directory in our or the reference layout."""
    if path is None:
        return read_our_layout(files("persona_axis.catalog") / "data", BUILTIN)
    directory = Path(path)
    if not directory.is_dir():
        raise PersonaAxisError(
            f"Catalog {directory} is not a directory; pass a folder with roles/, traits/, "
            "questions.json (ours) or roles/instructions/ and extraction_questions.jsonl "
            "(the reference project's)."
        )
    if is_reference_layout(directory):
        return read_reference_catalog(directory)
    return read_our_layout(directory, str(directory))
