"""The package's imports follow the layer order and form no cycle (static, nothing imported).

The order lives in :data:`support.import_layers.LAYERS` (DESIGN.md "Layout and layers"); a
module that needs something from a higher layer is in the wrong place.
"""

from __future__ import annotations

import ast
from pathlib import Path

from support.import_layers import cycles, import_graph, violations

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def test_persona_axis_imports_only_down_the_layers() -> None:
    assert violations(import_graph(SRC, "persona_axis"), "persona_axis") == []


def test_persona_axis_has_no_import_cycle() -> None:
    assert cycles(import_graph(SRC, "persona_axis")) == []


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in tests/support/; test modules and conftest are never imported."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            found += [
                f"{path.name}:{node.lineno} imports {name}"
                for name in names
                if name.split(".")[0].startswith(("test_", "conftest"))
            ]
    assert found == []


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_lazy_upward_imports_and_cycles(tmp_path: Path) -> None:
    src = _package(
        tmp_path,
        {
            "__init__.py": "from pkg.axis import bundle\nfrom pkg.cli import main\n",
            "errors.py": "",
            "files.py": "from pkg import errors\n",
            "models/__init__.py": "",
            "models/loading.py": "def f():\n    from pkg.axis.bundle import B\n",
            "axis/__init__.py": "",
            "axis/bundle.py": "from ..models import loading\nfrom pkg.axis import other\n",
            "axis/other.py": "import pkg.axis.bundle\n",
            "axis/version.py": "def f():\n    import pkg\n",
            "judges/__init__.py": "from pkg.axis import bundle\n",
            "cli/__init__.py": "import pkg\n",
            "cli/main.py": "",
            "extra.py": "",
        },
    )
    graph = import_graph(src, "pkg")
    assert {edge.target for edge in graph["pkg.files"]} == {"pkg.errors"}
    assert {edge.target for edge in graph["pkg.axis.bundle"]} == {
        "pkg.models.loading",
        "pkg.axis.other",
    }
    problems = violations(graph, "pkg")
    assert any("pkg.models.loading imports pkg.axis.bundle: upward" in p for p in problems)
    assert any("pkg.judges imports pkg.axis.bundle: same layer" in p for p in problems)
    assert any("'extra' is in no layer" in p for p in problems)
    assert any("pkg.axis.version imports pkg: upward (axis -> __init__)" in p for p in problems)
    assert not any(p.startswith(("pkg.files", "pkg.cli")) for p in problems)
    face = [p for p in problems if p.startswith(str(src / "pkg" / "__init__.py"))]
    assert len(face) == 1 and "upward (__init__ -> cli)" in face[0]  # only cli is above it
    assert cycles(graph) == [["pkg.axis.bundle", "pkg.axis.other", "pkg.models.loading"]]
