"""The resumable build store: atomic files, done markers, and refusal of changed settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from persona_axis.errors import PersonaAxisError
from persona_axis.files import write_json
from persona_axis.pipeline.store import BuildStore, token_lists

HEADER = {"settings": {"seed": 0, "n_roles": 3}, "catalog_sha256": "abc"}


def test_batches_round_trip(tmp_path: Path) -> None:
    store = BuildStore.open(tmp_path, HEADER)
    acts = torch.randn(2, 3, 4)
    norms = torch.rand(2, 3)
    assert not store.has_batch(0)
    store.write_batch(0, [{"id": 0}, {"id": 1}], acts, norms, [[5, 6, 7], []])
    assert store.has_batch(0) and not store.has_batch(1)
    records, tensors = store.read_batch(0)
    assert records == [{"id": 0}, {"id": 1}]
    assert torch.equal(tensors["activations"], acts) and torch.equal(tensors["norms"], norms)
    assert token_lists(tensors) == [[5, 6, 7], []]
    store.write_judgement(0, [{"id": 0, "score": 3}])
    assert store.has_judgement(0) and store.read_judgement(0) == [{"id": 0, "score": 3}]


def test_changed_settings_are_refused_with_the_difference(tmp_path: Path) -> None:
    BuildStore.open(tmp_path, HEADER)
    BuildStore.open(tmp_path, HEADER)  # same settings: resumes
    changed = {**HEADER, "settings": {"seed": 1, "n_roles": 3}}
    with pytest.raises(PersonaAxisError, match=r"settings\.seed: stored 0, now 1.*new --out"):
        BuildStore.open(tmp_path, changed)


def test_a_failed_write_leaves_the_old_file_and_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "file.json"
    write_json(target, {"v": 1})
    with pytest.raises(ValueError):
        write_json(target, {"v": float("nan")})  # refused before anything is renamed
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.json"]


def test_an_interrupted_batch_counts_as_not_done(tmp_path: Path) -> None:
    store = BuildStore.open(tmp_path, HEADER)
    # activations written, rollouts (the done marker) not yet: a kill between the two files
    (store.root / "activations").mkdir(parents=True)
    (store.root / "activations" / "000000.safetensors").write_bytes(b"partial")
    assert not store.has_batch(0)
    store.write_batch(0, [{"id": 0}], torch.zeros(1, 1, 2), torch.zeros(1, 1), [[1]])
    assert store.read_batch(0)[0] == [{"id": 0}]


def test_damaged_files_get_a_fix_in_the_message(tmp_path: Path) -> None:
    store = BuildStore.open(tmp_path, HEADER)
    store.write_batch(0, [{"id": 0}], torch.zeros(1, 1, 2), torch.zeros(1, 1), [[1]])
    (store.root / "activations" / "000000.safetensors").write_bytes(b"junk")
    with pytest.raises(PersonaAxisError, match=r"delete it and 000000\.json"):
        store.read_batch(0)


def test_activations_can_be_stored_in_bfloat16(tmp_path: Path) -> None:
    store = BuildStore.open(tmp_path, HEADER)
    acts = torch.randn(1, 2, 8)
    store.write_batch(0, [{"id": 0}], acts, torch.ones(1, 2), [[1, 2]], dtype=torch.bfloat16)
    stored = store.read_batch(0)[1]["activations"]
    assert stored.dtype == torch.bfloat16
    torch.testing.assert_close(stored.float(), acts, rtol=1e-2, atol=1e-2)


def test_a_build_stored_with_the_old_setting_names_resumes(tmp_path: Path) -> None:
    from persona_axis.pipeline.config import BuildConfig, preset

    config = preset("quick").with_overrides(cap_layer_ranges=((1, 3),), progress=False)
    today = config.result_fields()
    old = {
        k: v for k, v in today.items() if k not in ("cap_layer_ranges", "token_percentile_rollouts")
    }
    old |= {"cap_bands": [[1, 3]], "token_calibration_rollouts": today["token_percentile_rollouts"]}
    write_json(tmp_path / "work" / "header.json", {**HEADER, "settings": old})
    BuildStore.open(tmp_path, {**HEADER, "settings": today})  # resumes: no refusal
    assert BuildConfig.from_result_fields(old) == config
