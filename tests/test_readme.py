"""The README's Python example runs as written, on the embedded default model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) == 1, "the README holds one Python example"
    return blocks[0]


@pytest.mark.slow
def test_the_readme_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {}
    exec(compile(python_example(), str(README), "exec"), namespace)
    bundle, lm, result = namespace["bundle"], namespace["lm"], namespace["result"]
    telemetry = namespace["telemetry"]
    assert bundle.recommended_cap in bundle.caps  # type: ignore[attr-defined]
    assert not any(layer._forward_hooks for layer in lm.stack.layers)  # type: ignore[attr-defined]
    [projection] = result.readings[0].projections  # type: ignore[attr-defined]
    target = bundle.target_layer  # type: ignore[attr-defined]
    assert min(bundle.caps[bundle.recommended_cap].layers) > target  # type: ignore[attr-defined]
    # nothing is capped up to the target layer, so the live reading equals the monitor's
    assert projection == pytest.approx(telemetry.at(target)[0], abs=1e-3)  # type: ignore[attr-defined]
    assert capsys.readouterr().out.strip()
