"""Failures a user can cause print one ``error:`` line and exit 2, never a traceback: an
``--out`` that is a file or in a folder without write permission, a full disk under every
command that writes (build, calibrate-monitor, monitor, eval, export; simulated in process,
tests/support/refused_writes.py), ``--replicas`` without Ray, an unreachable ``--ray-address``,
and bundles or a ``--cap`` that replicas would refuse (checked before deploying)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from persona_axis.cli import main
from support.bundles import make_bundle
from support.console_script import error_lines
from support.refused_writes import refuse_writes
from support.small_catalog import tiny_build_config
from support.tiny_axis import tiny_axis
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


def writing_commands(inputs: Path, out: Path) -> dict[str, list[str]]:
    """Each command that writes files, on the tiny model and bundle, writing to ``out``."""
    config = tiny_build_config(inputs / "build-inputs")
    bundle = inputs / "bundle"
    if not bundle.exists():
        shutil.copytree(tiny_axis().bundle, bundle)  # calibrate-monitor stores into it
    chat = inputs / "chat.json"
    reply = {"role": "assistant", "content": "Hello, how can I help?"}
    chat.write_text(json.dumps([{"role": "user", "content": "Hi"}, reply]))
    quiet = ["--no-progress"]
    return {
        "build": [
            "build", "--out", str(out), "--model", str(config.model), "--catalog",
            str(config.catalog), "--dtype", "float32", "--judge", "none", "--batch-size", "4",
            "--max-new-tokens", "4", "--trait-questions", "2", "--min-role-rollouts", "1",
            "--token-percentile-rollouts", "4", *quiet,
        ],
        "calibrate-monitor": [
            "calibrate-monitor", "--bundle", str(bundle), "--out", str(out), "--conversations",
            "2", "--turns", "2", "--max-new-tokens", "4", *quiet,
        ],
        "monitor": ["monitor", str(chat), "--bundle", str(bundle), "--out", str(out), *quiet],
        "eval": [
            "eval", "capability", "--bundle", str(bundle), "--out", str(out), "--n", "1",
            "--max-new-tokens", "4", *quiet,
        ],
        "export": ["export", "--format", "reference", "--bundle", str(bundle), "--out", str(out)],
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "denied"])
@pytest.mark.parametrize("command", ["build", "calibrate-monitor", "monitor", "eval", "export"])
def test_a_full_disk_or_a_denied_folder_is_one_error_line(
    command: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Run in process with the failure injected under ``refused/``: a command that let an
    exception through (a traceback) fails here, as does one that wrote natively and so escaped
    the simulation (exit 0)."""
    refused = tmp_path / "refused"
    refused.mkdir()
    args = writing_commands(tmp_path, refused / "out")[command]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["persona-axis", *args])
    refuse_writes(monkeypatch, refused, kind)
    capsys.readouterr()  # drop what building the inputs printed (progress bars)
    with pytest.raises(SystemExit) as exited:
        main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exited.value.code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    reason, fix = {
        "full": ("No space left on device", "free some disk space"),
        "denied": ("Permission denied", "make the folder writable"),
    }[kind]
    assert reason in lines[0] and fix in lines[0] and str(refused) in lines[0], lines
