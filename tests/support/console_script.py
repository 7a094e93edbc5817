"""Running the ``persona-axis`` console script in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


def run_console(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m persona_axis.cli ARGS`` offline (no hub access), text output, 120 s limit."""
    return subprocess.run(
        [sys.executable, "-m", "persona_axis.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
        check=False,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The non-blank lines the command wrote to stderr."""
    return [line for line in result.stderr.splitlines() if line.strip()]
