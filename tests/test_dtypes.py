"""``--dtype auto``: bfloat16 where the host multiplies it natively (AMX, AVX-512-BF16, CUDA),
float32 elsewhere, with the reason recorded in the build's manifest. The host's CPU flags and
CUDA support are injected, so the choice is tested without such hardware."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_axis.axis.bundle import AxisBundle
from persona_axis.cli import app
from persona_axis.errors import PersonaAxisError
from persona_axis.models import dtypes
from persona_axis.models.dtypes import choose_dtype, cpu_flags, fast_bfloat16
from persona_axis.models.loading import load_model
from persona_axis.pipeline import BuildConfig, build, preset
from support.small_catalog import tiny_build_config

AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma"}
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
COOPER_LAKE = AVX2_ONLY | {"avx512f", "avx512_bf16"}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (SAPPHIRE_RAPIDS, "cpu has amx_bf16"),
        (COOPER_LAKE, "cpu has avx512_bf16"),
        (AVX2_ONLY, None),
        (AVX2_ONLY | {"avx512f"}, None),  # AVX-512 without its bfloat16 extension
        (set(), None),
    ],
)
def test_fast_bfloat16_reads_the_cpu_flags(flags: set[str], expected: str | None) -> None:
    assert fast_bfloat16("cpu", flags=flags) == expected


def test_auto_picks_by_the_host() -> None:
    if not dtypes.AUTO_PICKS_BFLOAT16:  # the measured quality differed: float32 everywhere
        for flags in (SAPPHIRE_RAPIDS, AVX2_ONLY):
            assert choose_dtype("auto", flags=flags).dtype == "float32"
        assert choose_dtype("auto", "cuda", cuda_bfloat16=True).dtype == "float32"
        return
    amx = choose_dtype("auto", flags=SAPPHIRE_RAPIDS)
    assert (amx.dtype, amx.reason) == ("bfloat16", "auto: cpu has amx_bf16")
    avx2 = choose_dtype("auto", flags=AVX2_ONLY)
    assert (avx2.dtype, avx2.reason) == ("float32", "auto: cpu has no amx_bf16 or avx512_bf16")
    assert choose_dtype("auto", "cuda", cuda_bfloat16=True).dtype == "bfloat16"
    old_gpu = choose_dtype("auto", "cuda", flags=SAPPHIRE_RAPIDS, cuda_bfloat16=False)
    assert old_gpu.dtype == "float32" and "cuda" in old_gpu.reason  # the GPU decides, not the CPU


def test_an_explicit_dtype_is_kept_and_an_unknown_one_refused() -> None:
    for name in ("float32", "bfloat16", "float16"):
        choice = choose_dtype(name, flags=AVX2_ONLY)
        assert (choice.dtype, choice.requested, choice.reason) == (name, name, "asked for")
    with pytest.raises(PersonaAxisError, match="float64"):
        choose_dtype("float64")


def test_cpu_flags_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_build_config_asks_the_gpus_when_workers_have_them(monkeypatch) -> None:
    monkeypatch.setattr(dtypes, "cpu_flags", lambda: frozenset(AVX2_ONLY))
    monkeypatch.setattr(dtypes, "cuda_supports_bfloat16", lambda: True)
    assert BuildConfig(dtype="auto").dtype_choice().reason == (
        "auto: cpu has no amx_bf16 or avx512_bf16"
    )
    on_gpus = BuildConfig(dtype="auto", gpus_per_worker=1.0).dtype_choice()
    assert on_gpus.dtype == ("bfloat16" if dtypes.AUTO_PICKS_BFLOAT16 else "float32")
    # CPU builds stay float32 on every host (auto is opt-in); the GPU preset follows its GPUs
    assert BuildConfig().dtype_choice().dtype == "float32"
    assert [preset(name).dtype for name in ("quick", "standard", "paper")] == [
        "float32",
        "float32",
        "auto",
    ]


@pytest.mark.slow
def test_the_manifest_records_the_dtype_and_why(monkeypatch, tmp_path: Path) -> None:
    config = replace(tiny_build_config(tmp_path), dtype="auto", max_new_tokens=4)
    monkeypatch.setattr(dtypes, "cpu_flags", lambda: frozenset(SAPPHIRE_RAPIDS))
    fast = build(config, tmp_path / "amx").bundle.manifest
    expected = "bfloat16" if dtypes.AUTO_PICKS_BFLOAT16 else "float32"
    assert fast["dtype"]["dtype"] == fast["build_settings"]["dtype"] == expected
    assert fast["dtype"]["requested"] == "auto" and fast["dtype"]["reason"].startswith("auto:")
    if dtypes.AUTO_PICKS_BFLOAT16:
        assert fast["dtype"]["reason"] == "auto: cpu has amx_bf16"
        # the same command on a host without fast bfloat16 would mix two dtypes in one store
        monkeypatch.setattr(dtypes, "cpu_flags", lambda: frozenset(AVX2_ONLY))
        with pytest.raises(PersonaAxisError, match="dtype"):
            build(config, tmp_path / "amx")
    monkeypatch.setattr(dtypes, "cpu_flags", lambda: frozenset(AVX2_ONLY))
    slow = build(config, tmp_path / "avx2").bundle.manifest
    assert slow["dtype"] == {
        "dtype": "float32",
        "requested": "auto",
        "reason": "auto: cpu has no amx_bf16 or avx512_bf16",
    }
    assert slow["build_settings"]["dtype"] == "float32"
    # a model handed to build() runs in its own dtype, and that is what the build stores
    monkeypatch.setattr(dtypes, "cpu_flags", lambda: frozenset(SAPPHIRE_RAPIDS))
    given = load_model(config.model, dtype="float32")
    handed = build(config, tmp_path / "handed", lm=given).bundle.manifest
    assert handed["dtype"]["dtype"] == handed["build_settings"]["dtype"] == "float32"
    if dtypes.AUTO_PICKS_BFLOAT16:
        assert handed["dtype"]["reason"] == "the model given to build() is float32"


@pytest.mark.slow
def test_the_build_command_loads_the_model_in_the_chosen_dtype(monkeypatch, tmp_path: Path) -> None:
    """The CLI loads the model before the build starts: in the dtype the build records (the
    manifest reads it back from the weights, so a model loaded otherwise would show)."""
    config = tiny_build_config(tmp_path)
    monkeypatch.setattr(dtypes, "cpu_flags", lambda: frozenset(COOPER_LAKE))
    args = ["build", "--model", str(config.model), "--catalog", str(config.catalog)]
    args += ["--out", str(tmp_path / "out"), "--judge", "none", "--min-role-rollouts", "1"]
    args += ["--max-new-tokens", "4", "--batch-size", "8", "--trait-questions", "1"]
    result = CliRunner().invoke(app, [*args, "--dtype", "auto", "--no-progress"])
    assert result.exit_code == 0, result.output
    recorded = AxisBundle.load(tmp_path / "out" / "bundle").manifest["dtype"]
    expected = choose_dtype("auto", flags=COOPER_LAKE)
    assert recorded == expected.to_json()
    assert f"{expected.dtype} ({expected.reason})" in " ".join(result.output.split())
