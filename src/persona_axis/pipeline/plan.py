"""The rollouts a build generates, in a fixed order, grouped into fixed seeded batches.

The plan is a pure function of the catalog, the model name and the build settings, so a
resumed or sharded build regenerates exactly the same batches: batch ``k`` always holds the
same rollouts and samples with seed ``seed + k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from persona_axis.catalog import Catalog
from persona_axis.errors import PersonaAxisError
from persona_axis.models.chat import Message

Kind = Literal["default", "role", "trait_pos", "trait_neg"]
KINDS: tuple[Kind, ...] = ("default", "role", "trait_pos", "trait_neg")


@dataclass(frozen=True)
class RolloutSpec:
    """One (system prompt, question) pair to answer; ``name`` is the role or trait name."""

    id: int
    kind: Kind
    name: str
    prompt_index: int
    question_index: int
    system: str | None
    question: str

    def messages(self) -> list[Message]:
        system: list[Message] = (
            [] if self.system is None else [{"role": "system", "content": self.system}]
        )
        return [*system, {"role": "user", "content": self.question}]


def make_plan(catalog: Catalog, model_name: str, trait_questions: int | None) -> list[RolloutSpec]:
    """Defaults, then roles, then traits (both polarities), each prompt × question."""
    specs: list[RolloutSpec] = []

    def add(kind: Kind, name: str, prompts: list[str | None], questions: range) -> None:
        for p, prompt in enumerate(prompts):
            for q in questions:
                specs.append(
                    RolloutSpec(len(specs), kind, name, p, q, prompt, catalog.questions[q])
                )

    everything = range(len(catalog.questions))
    add("default", "default", catalog.defaults_for(model_name), everything)
    for role in catalog.roles:
        add(
            "role",
            role.name,
            [p.replace("{model_name}", model_name) for p in role.prompts],
            everything,
        )
    trait_range = _spread_range(len(catalog.questions), trait_questions)
    for trait in catalog.traits:
        for kind, texts in (
            ("trait_pos", [pair.pos for pair in trait.pairs]),
            ("trait_neg", [pair.neg for pair in trait.pairs]),
        ):
            filled: list[str | None] = [t.replace("{model_name}", model_name) for t in texts]
            add(kind, trait.name, filled, trait_range)  # type: ignore[arg-type]
    return specs


def _spread_range(n: int, count: int | None) -> range:
    """Question indices for traits: the first ``count`` of an even spread (all when None)."""
    if count is None or count >= n:
        return range(n)
    if count < 1:
        raise PersonaAxisError(f"trait_questions must be at least 1, not {count}.")
    step = n // count
    return range(0, step * count, step)


def make_batches(plan: list[RolloutSpec], batch_size: int) -> list[list[RolloutSpec]]:
    """Length-bucketed batches: rollouts sorted by prompt length (then id), cut in order."""
    ordered = sorted(plan, key=lambda s: (len(s.system or "") + len(s.question), s.id))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
