"""The catalog: our builtin data, validation of user catalogs, and the reference layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_axis.catalog import CATEGORIES, load_catalog
from persona_axis.catalog.model import NAME_PATTERN
from persona_axis.errors import PersonaAxisError


@pytest.fixture(scope="module")
def builtin():
    return load_catalog()


def test_builtin_catalog_has_the_paper_sizes(builtin) -> None:
    assert len(builtin.roles) >= 275
    assert len(builtin.questions) >= 240
    assert len(builtin.traits) >= 240
    assert all(len(role.prompts) == 5 for role in builtin.roles)
    assert all(len(trait.pairs) == 5 for trait in builtin.traits)
    assert {role.category for role in builtin.roles} == set(CATEGORIES)
    assert len(builtin.default_prompts) == 5 and builtin.default_prompts[0] is None


def test_builtin_catalog_text_is_clean(builtin) -> None:
    texts = [p for role in builtin.roles for p in role.prompts]
    texts += [x for trait in builtin.traits for pair in trait.pairs for x in (pair.pos, pair.neg)]
    assert len(set(texts)) == len(texts), "every prompt is written once"
    assert len({q.lower() for q in builtin.questions}) == len(builtin.questions)
    assert all(NAME_PATTERN.match(r.name) for r in builtin.roles)
    # role prompts cast a character; none says it is an AI
    assert not any(
        " AI " in f" {p} " or "language model" in p for r in builtin.roles for p in r.prompts
    )


def test_traits_named_by_the_paper_are_present(builtin) -> None:
    names = {trait.name for trait in builtin.traits}
    assert {"transparent", "grounded", "flexible", "enigmatic", "subversive", "dramatic"} <= names


def test_default_prompts_take_the_model_name(builtin) -> None:
    filled = builtin.defaults_for("TestLM")
    assert "You are TestLM." in filled
    assert all("{model_name}" not in p for p in filled if p)


def test_subset_spans_categories_and_spreads_questions(builtin) -> None:
    small = builtin.subset(
        n_roles=8, prompts_per_role=2, n_questions=5, n_traits=3, pairs_per_trait=1
    )
    assert len(small.roles) == 8 and all(len(r.prompts) == 2 for r in small.roles)
    assert {r.category for r in small.roles} == set(CATEGORIES)
    assert len(small.questions) == 5 and small.questions[0] == builtin.questions[0]
    assert small.questions[1] != builtin.questions[1]  # spread, not the first five
    assert len(small.traits) == 3 and all(len(t.pairs) == 1 for t in small.traits)
    assert small.digest() != builtin.digest()
    assert (
        small.digest()
        == builtin.subset(
            n_roles=8, prompts_per_role=2, n_questions=5, n_traits=3, pairs_per_trait=1
        ).digest()
    )
    named = builtin.subset(roles=[builtin.roles[5].name])
    assert named.roles == (builtin.roles[5],)
    with pytest.raises(PersonaAxisError, match="No role"):
        builtin.subset(roles=["no_such_role"])


def write_ours(root: Path, roles: object, questions: object = ("How are you?",)) -> Path:
    (root / "roles").mkdir(parents=True)
    (root / "traits").mkdir()
    (root / "roles" / "a.json").write_text(json.dumps({"roles": roles}))
    (root / "traits" / "t.json").write_text(
        json.dumps(
            {
                "traits": [
                    {
                        "name": "bold",
                        "description": "d",
                        "pairs": [{"pos": "Be bold.", "neg": "Be timid."}],
                    }
                ]
            }
        )
    )
    (root / "questions.json").write_text(json.dumps({"questions": list(questions)}))
    return root


ROLE = {
    "name": "pirate",
    "category": "archetype",
    "description": "d",
    "prompts": ["You are a pirate."],
}


def test_a_user_catalog_in_our_layout_loads(tmp_path: Path) -> None:
    catalog = load_catalog(write_ours(tmp_path, [ROLE]))
    assert catalog.roles[0].prompts == ("You are a pirate.",)
    assert catalog.traits[0].pairs[0].neg == "Be timid."
    assert catalog.default_prompts == load_catalog().default_prompts  # ours when absent


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        ([{**ROLE, "colour": "red"}], r"unknown keys \['colour'\]"),
        ([{k: v for k, v in ROLE.items() if k != "prompts"}], r"missing keys \['prompts'\]"),
        ([ROLE, ROLE], "appear twice"),
        ([{**ROLE, "name": "Pirate Captain"}], "snake_case"),
        ([{**ROLE, "prompts": []}], "no system prompts"),
        ([{**ROLE, "prompts": [""]}], "non-empty string"),
    ],
)
def test_bad_user_catalogs_get_clear_errors(tmp_path: Path, roles: list, message: str) -> None:
    with pytest.raises(PersonaAxisError, match=message):
        load_catalog(write_ours(tmp_path, roles))


def test_invalid_json_names_the_file_and_line(tmp_path: Path) -> None:
    root = write_ours(tmp_path, [ROLE])
    (root / "questions.json").write_text('{"questions": [\n"a",\n}')
    with pytest.raises(PersonaAxisError, match=r"questions.json is not valid JSON \(line 3"):
        load_catalog(root)
    with pytest.raises(PersonaAxisError, match="not a directory"):
        load_catalog(tmp_path / "missing")


def write_reference(root: Path) -> Path:
    """A small folder in the reference project's layout, written for this test."""
    roles = root / "roles" / "instructions"
    traits = root / "traits" / "instructions"
    roles.mkdir(parents=True)
    traits.mkdir(parents=True)
    (roles / "lighthouse_keeper.json").write_text(
        json.dumps(
            {
                "instruction": [
                    {"pos": "You keep the light on a lonely rock."},
                    {"pos": "You are a keeper of a lighthouse, talking to {model_name}'s users."},
                ],
                "questions": ["ignored"],
            }
        )
    )
    (roles / "ghost.json").write_text(json.dumps({"instruction": [{"pos": "You are a ghost."}]}))
    (roles / "default.json").write_text(
        json.dumps({"instruction": [{"pos": ""}, {"pos": "You are {model_name}."}]})
    )
    (traits / "calm.json").write_text(
        json.dumps({"instruction": [{"pos": "Stay calm.", "neg": "Panic."}], "eval_prompt": "x"})
    )
    lines = [json.dumps({"question": q, "id": i}) for i, q in enumerate(["Who are you?", "Why?"])]
    (root / "extraction_questions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_reference_layout_is_read(tmp_path: Path) -> None:
    catalog = load_catalog(write_reference(tmp_path))
    assert [r.name for r in catalog.roles] == ["ghost", "lighthouse_keeper"]
    assert catalog.roles[1].prompts[1].endswith("{model_name}'s users.")
    assert catalog.questions == ("Who are you?", "Why?")
    assert catalog.traits[0].name == "calm" and catalog.traits[0].pairs[0].neg == "Panic."
    assert catalog.default_prompts == (None, "You are {model_name}.")
    assert catalog.defaults_for("X") == [None, "You are X."]


def test_reference_layout_errors_name_file_and_line(tmp_path: Path) -> None:
    root = write_reference(tmp_path)
    (root / "extraction_questions.jsonl").write_text('{"question": "ok?"}\n{"q": 1}\n')
    with pytest.raises(PersonaAxisError, match="line 2 needs a string field 'question'"):
        load_catalog(root)
    write_reference(tmp_path / "again")
    (tmp_path / "again" / "roles" / "instructions" / "ghost.json").write_text('{"instruction": []}')
    with pytest.raises(PersonaAxisError, match=r"ghost\.json needs a non-empty list"):
        load_catalog(tmp_path / "again")
