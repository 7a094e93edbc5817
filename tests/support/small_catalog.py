"""A tiny catalog in our layout, written for tests (four roles, two traits, three questions)."""

from __future__ import annotations

import json
from pathlib import Path

from persona_axis.pipeline import BuildConfig

ROLES = [
    ("pirate", "archetype", "You are a pirate captain.", "Speak as a sea robber."),
    ("ghost", "mystical", "You are a ghost in an old manor.", "You haunt a cold attic."),
    ("baker", "professional", "You are a village baker.", "You bake bread before dawn."),
    ("crow", "nonhuman", "You are a clever crow.", "You collect shiny things."),
]
TRAITS = [
    {"name": "calm", "description": "d", "pairs": [{"pos": "Stay calm.", "neg": "Panic."}]},
    {"name": "wry", "description": "d", "pairs": [{"pos": "Be wry.", "neg": "Be earnest."}]},
]
QUESTIONS = ["Who are you?", "What do you fear?", "How do you spend a long evening alone?"]


def write_small_catalog(root: Path) -> Path:
    (root / "roles").mkdir(parents=True)
    (root / "traits").mkdir()
    roles = [
        {"name": n, "category": c, "description": f"a {n}", "prompts": [a, b]}
        for n, c, a, b in ROLES
    ]
    (root / "roles" / "r.json").write_text(json.dumps({"roles": roles}))
    (root / "traits" / "t.json").write_text(json.dumps({"traits": TRAITS}))
    (root / "questions.json").write_text(json.dumps({"questions": QUESTIONS}))
    return root


def tiny_build_config(root: Path) -> BuildConfig:
    """Settings for a build in seconds: a tiny random Llama and this catalog, saved under root."""
    from support.tiny_models import build_tiny, styled_tokenizer

    model_dir = root / "model"
    build_tiny("llama").save_pretrained(model_dir)
    styled_tokenizer("chatml").save_pretrained(model_dir)
    return BuildConfig(
        model=str(model_dir),
        model_name="Tiny",
        dtype="float32",
        catalog=str(write_small_catalog(root / "catalog")),
        trait_questions=2,
        max_new_tokens=12,
        batch_size=2,
        judge={"backend": "none"},
        min_role_rollouts=1,
        token_percentile_rollouts=8,
        progress=False,
    )
