"""Catalog entries and the catalog itself: roles, traits, questions, default prompts, with
the checks every catalog passes whatever layout it was read from."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
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
