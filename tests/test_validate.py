"""`persona-axis validate` refuses what it cannot recompute, with the fix in the message.
(Its figures are checked against a real build in tests/test_build.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from persona_axis.cli import app
from persona_axis.pipeline import preset

runner = CliRunner()


def test_a_folder_without_a_store_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code != 0
    assert "not a build directory" in str(result.exception) and "--out" in str(result.exception)


def test_an_unfinished_build_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    header = {"settings": preset("quick").result_fields(), "batches": 3}
    (work / "header.json").write_text(json.dumps(header))
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code != 0
    assert "not finished (3 of 3 batches" in str(result.exception)
    assert "rerun the same persona-axis build" in str(result.exception)
