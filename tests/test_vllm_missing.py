"""Where vLLM is not installed (the main environment), ``--engine vllm`` fails with one clear
error line that says how to install it; unknown engines are refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from persona_axis.errors import PersonaAxisError
from persona_axis.pipeline import BuildConfig
from support.console_script import error_lines, run_console

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here"
)


def test_build_with_vllm_missing_says_how_to_install(tmp_path: Path) -> None:
    result = run_console("build", "--out", str(tmp_path / "b"), "--engine", "vllm")
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line.startswith("error:") and "make install-vllm" in line


def test_serve_refuses_an_unknown_engine(tmp_path: Path) -> None:
    result = run_console("serve", "--bundle", str(tmp_path), "--engine", "tgi")
    assert result.returncode == 2
    assert error_lines(result)[0].startswith("error: --engine 'tgi'")


def test_build_config_checks_the_engine() -> None:
    with pytest.raises(PersonaAxisError, match="engine must be"):
        BuildConfig(engine="tgi")
    with pytest.raises(PersonaAxisError, match="workers=1"):
        BuildConfig(engine="vllm", workers=2)
