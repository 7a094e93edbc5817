"""Failures a user can cause print one ``error:`` line and exit 2, never a traceback: an
``--out`` that is a file or in a folder without write permission, ``--replicas`` without Ray,
an unreachable ``--ray-address``, and bundles or a ``--cap`` that replicas would refuse
(checked before deploying)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.bundles import make_bundle
from support.console_script import error_lines
from support.tiny_models import tiny_lm


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tiny_lm("llama")).save(tmp_path_factory.mktemp("b") / "bundle")


def console(*args: str, path: str = "") -> subprocess.CompletedProcess[str]:
    """The console script offline; ``path`` is put first on PYTHONPATH."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "persona_axis.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    for word in words:
        assert word in lines[0], lines


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_out_that_is_a_file_or_not_writable(bundle_dir: Path, tmp_path: Path) -> None:
    export = ["export", "--format", "reference", "--bundle", str(bundle_dir), "--out"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_one_error_line(console(*export, str(a_file / "sub")), str(a_file))
    if os.geteuid() == 0:
        return  # root writes everywhere: no permission error to provoke
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert_one_error_line(console(*export, str(locked / "out")), "ermission")


def test_serve_replicas_checks_before_deploying(bundle_dir: Path, tmp_path: Path) -> None:
    serve = ["serve", "--replicas", "2", "--bundle"]
    assert_one_error_line(console(*serve, str(tmp_path / "missing")), "missing")
    assert_one_error_line(console(*serve, str(bundle_dir), "--cap", "nosuch"), "nosuch")
    assert_one_error_line(
        console(*serve, str(bundle_dir), "--cap", "none", "--api-key", ""), "empty"
    )
    address = f"127.0.0.1:{closed_port()}"
    unreachable = console(*serve, str(bundle_dir), "--cap", "none", "--ray-address", address)
    assert_one_error_line(unreachable, address)
    shadow = tmp_path / "no-ray"
    shadow.mkdir()
    (shadow / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    without = console(*serve, str(bundle_dir), "--cap", "none", path=str(shadow))
    assert_one_error_line(without, "persona-axis[scale]")
