"""Walk a bundle through ``calibrate-monitor``, ``monitor`` and ``serve`` and count the steps
between files of the package: does the call chain only go down the layers?

Each command runs in this process on a tiny bundle (``tests/support/tiny_axis.py``, built in
seconds) under :func:`sys.setprofile`, which sees every Python call. A *step* is a call from a
function in one file of ``persona_axis`` to a function in another; each distinct step (caller
function → callee function) counts once, in the order first taken. For each command it prints

- files entered: the package files whose functions ran;
- steps: distinct cross-file calls;
- upward steps: calls into a file of a *higher* layer than the caller's
  (``tests/support/import_layers.py``), split into those the caller's file imports (a real
  climb) and those reached through an object or callback handed down (the caller does not
  import the callee's module: e.g. a progress callback, or a method of an object passed in);
- returns: steps into a file the walk had already entered before, from another file.

The serve walk runs ``persona-axis serve`` with the server's run loop replaced by one chat
completion through the app in process (Starlette's test client); calls in the threads it starts
(the app's, the scheduler's) are seen too.

    PYTHONPATH=src python benchmarks/layer_walk.py
"""

from __future__ import annotations

import ast
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.import_layers import FACE, LAYERS  # noqa: E402

PACKAGE = ROOT / "src" / "persona_axis"


def unit_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return FACE if parts == ("__init__",) else parts[0]


def layer_of(path: Path) -> int:
    unit = unit_of(path)
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def imported_units(path: Path) -> set[str]:
    """Units of the package that ``path`` imports anywhere (lazy and TYPE_CHECKING included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "persona_axis":
                found.add(parts[1] if len(parts) > 1 else FACE)
    return found


class Walk:
    """The distinct cross-file steps of whatever runs between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.steps: dict[tuple[str, str, str, str], None] = {}
        self.files: dict[str, None] = {}

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or frame.f_back is None:
            return
        callee = frame.f_code.co_filename
        if not callee.startswith(str(PACKAGE)):
            return
        self.files.setdefault(callee, None)
        caller_frame = frame.f_back
        while caller_frame is not None and not caller_frame.f_code.co_filename.startswith(
            str(PACKAGE)
        ):
            caller_frame = caller_frame.f_back  # through library code (typer, asyncio, ...)
        if caller_frame is None:
            return
        caller = caller_frame.f_code.co_filename
        if caller != callee:
            key = (caller, caller_frame.f_code.co_name, callee, frame.f_code.co_name)
            self.steps.setdefault(key, None)

    def run(self, job: Callable[[], Any]) -> None:
        sys.setprofile(self._profile)
        threading.setprofile(self._profile)  # threads started meanwhile: server, scheduler
        try:
            job()
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]

    def report(self, title: str) -> dict[str, Any]:
        entered: set[str] = set()
        returns = 0
        up_imported, up_handed = [], []
        for caller, caller_fn, callee, callee_fn in self.steps:
            if callee in entered:
                returns += 1
            entered.update((caller, callee))
            low, high = Path(caller), Path(callee)
            if layer_of(high) > layer_of(low):
                step = (
                    f"{low.relative_to(PACKAGE)}:{caller_fn} -> "
                    f"{high.relative_to(PACKAGE)}:{callee_fn}"
                )
                if unit_of(high) in imported_units(low):
                    up_imported.append(step)
                else:
                    up_handed.append(step)
        print(f"## {title}")
        print(f"files entered {len(self.files)}, steps {len(self.steps)}, returns {returns}")
        print(f"upward steps through an import: {len(up_imported)}")
        for step in up_imported:
            print(f"  {step}")
        print(f"upward steps through an object or callback handed down: {len(up_handed)}")
        for step in sorted(set(up_handed)):
            print(f"  {step}")
        return {
            "files": len(self.files),
            "steps": len(self.steps),
            "returns": returns,
            "up_imported": up_imported,
            "up_handed": up_handed,
        }


def main() -> None:
    from typer.testing import CliRunner

    from persona_axis.cli import app
    from support.tiny_axis import tiny_axis

    tiny = tiny_axis()
    work = Path(tempfile.mkdtemp(prefix="layer-walk-"))
    bundle = work / "bundle"
    shutil.copytree(tiny.bundle, bundle)
    chats = work / "chats.json"
    chats.write_text(
        '[[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]]'
    )
    runner = CliRunner()

    def invoke(*args: str) -> Callable[[], None]:
        def job() -> None:
            result = runner.invoke(app, list(args))
            assert result.exit_code == 0, (result.output, result.exception)

        return job

    common = ["--bundle", str(bundle), "--model", str(tiny.model), "--no-progress"]
    calibrate = Walk()
    calibrate.run(
        invoke(
            "calibrate-monitor",
            *common,
            "--out",
            str(work / "cal"),
            "--conversations",
            "6",
            "--turns",
            "3",
            "--max-new-tokens",
            "6",
        )
    )
    calibrate.report("calibrate-monitor")
    watch = Walk()
    watch.run(invoke("monitor", str(chats), *common, "--out", str(work / "mon")))
    watch.report("monitor")

    import persona_axis.serve.runner as server_runner

    def one_request(app_: Any, *args: Any, **kwargs: Any) -> None:
        from starlette.testclient import TestClient

        with TestClient(app_, base_url="http://localhost:8000") as client:
            body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
            answer = client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text

    server_runner.serve_forever = one_request  # type: ignore[assignment]
    serve = Walk()
    serve.run(invoke("serve", "--bundle", str(bundle), "--model", str(tiny.model)))
    serve.report("serve")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
