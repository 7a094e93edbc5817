"""``build --engine vllm``: the bundle from vLLM rollouts matches the HF engine's.

Runs in the vLLM environment (``make test-vllm``); skipped where vLLM is not installed. Both
builds run the small test catalog on SmolLM2, greedy, 16 new tokens (47 rollouts), so the two
engines produce the same replies wherever they agree token for token; the test reports that
share and checks the axis (cosine ≥ 0.999 at every layer) and the recommended cap.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here; `make test-vllm` runs these tests")

from persona_axis.models import LoadedModel
from persona_axis.pipeline import BuildConfig, build
from persona_axis.pipeline.store import BuildStore, token_lists
from support.small_catalog import write_small_catalog


def config(root: Path) -> BuildConfig:
    return BuildConfig(
        model="default",
        model_name="SmolLM2",
        dtype="float32",
        catalog=str(write_small_catalog(root / "catalog")),
        trait_questions=2,
        temperature=0.0,
        max_new_tokens=16,
        batch_size=16,
        judge={"backend": "none"},
        min_role_rollouts=1,
        token_percentile_rollouts=8,
        progress=False,
    )


def replies(out: Path) -> list[list[int]]:
    store = BuildStore(out)
    found = []
    k = 0
    while store.has_batch(k):
        found += token_lists(store.read_batch(k)[1])
        k += 1
    return found


def test_vllm_build_matches_the_hf_build(smollm: LoadedModel, tmp_path: Path) -> None:
    base = config(tmp_path)
    hf = build(base, tmp_path / "hf", lm=smollm)
    ours = build(replace(base, engine="vllm"), tmp_path / "vllm", lm=smollm)
    a, b = replies(tmp_path / "hf"), replies(tmp_path / "vllm")
    assert len(a) == len(b) > 40
    same = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    print(f"vLLM/HF build: {same:.1%} of {len(a)} greedy replies equal token for token")
    assert same >= 0.8
    cosine = torch.nn.functional.cosine_similarity(hf.bundle.axis, ours.bundle.axis, dim=-1)
    print(f"axis cosine per layer: min {float(cosine.min()):.5f}")
    assert bool((cosine >= 0.999).all()), cosine
    name = hf.bundle.recommended_cap
    assert name is not None and ours.bundle.recommended_cap == name
    mine, theirs = ours.bundle.caps[name].thresholds, hf.bundle.caps[name].thresholds
    assert [t.layer for t in mine] == [t.layer for t in theirs]
    for t, u in zip(mine, theirs, strict=True):
        assert t.threshold == pytest.approx(u.threshold, rel=0.02, abs=0.05)


def test_vllm_build_is_a_result_field(tmp_path: Path) -> None:
    base = config(tmp_path)
    assert "engine" not in base.result_fields()
    assert replace(base, engine="vllm").result_fields()["engine"] == "vllm"
