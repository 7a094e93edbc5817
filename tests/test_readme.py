"""The README's Python snippets run as written, in order, on the embedded default model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets() -> list[str]:
    """The ``python`` code blocks of the README's "Python" section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_every_python_block_of_the_readme_is_in_the_python_section() -> None:
    everywhere = re.findall(r"```python\n", README.read_text(encoding="utf-8"))
    assert len(python_snippets()) == len(everywhere) >= 6


@pytest.mark.slow
def test_the_readme_python_snippets_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the bundle snippet saves into the working directory
    namespace: dict[str, object] = {}
    for snippet in python_snippets():
        exec(compile(snippet, str(README), "exec"), namespace)
    bundle, lm, result = namespace["bundle"], namespace["lm"], namespace["result"]
    turn, session = namespace["turn"], namespace["session"]
    assert bundle.recommended_cap in bundle.caps  # type: ignore[attr-defined]
    assert not any(layer._forward_hooks for layer in lm.stack.layers)  # type: ignore[attr-defined]
    [projection] = result.readings[0].projections  # type: ignore[attr-defined]
    target = bundle.target_layer  # type: ignore[attr-defined]
    assert min(bundle.caps[bundle.recommended_cap].layers) > target  # type: ignore[attr-defined]
    # nothing is capped up to the target layer, so the live reading equals the monitor's
    assert projection == pytest.approx(turn.before, abs=1e-3)  # type: ignore[attr-defined]
    assert turn.touched is not None  # type: ignore[attr-defined]  # the cap was applied
    assert len(session.history) == 2  # type: ignore[attr-defined]  # user + assistant
    assert (tmp_path / "pirate-axis" / "manifest.json").is_file()
    assert capsys.readouterr().out.strip()
