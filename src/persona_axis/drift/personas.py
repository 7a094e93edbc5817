"""Our own simulated-user personas, with their opening messages, for the four drift domains.

Each domain has personas: who the simulated user is, how they steer the talk, and the first
messages such a user would open with (which also fix the topic). docs/method.md: coding and writing
tend to stay in the Assistant range; therapy and philosophy about AI pull away, driven by users
who push meta-reflection, ask for first-hand accounts of experience, demand an authorial voice,
or disclose vulnerability. The personas (package data ``drift/data/personas.json``) lean into those
drivers where the domain has them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

PERSONAS_FILE = "personas.json"


@dataclass(frozen=True)
class Persona:
    """A simulated user: a short name, a second-person description used in their prompt, and
    first messages they may open a conversation with."""

    name: str
    description: str
    openers: tuple[str, ...]


def _load() -> dict[str, Any]:
    text = resources.files("persona_axis.drift").joinpath("data", PERSONAS_FILE).read_text("utf-8")
    return dict(json.loads(text))


_DATA = _load()
DOMAINS: tuple[str, ...] = tuple(_DATA["domains"])
PERSONAS: dict[str, tuple[Persona, ...]] = {
    domain: tuple(
        Persona(p["name"], p["description"], tuple(p["openers"])) for p in entry["personas"]
    )
    for domain, entry in _DATA["domains"].items()
}
DOMAIN_TOPICS: dict[str, str] = {d: e["topic"] for d, e in _DATA["domains"].items()}
USER_PROMPT: str = _DATA["user_prompt"]
