"""Modules import only downwards or sideways (DESIGN.md): data and metrics know nothing of training or notebooks."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mp3kit"
FLOORS = {
    "util": 0,
    "data": 1, "fetch": 1, "verify": 1, "models": 1, "metrics": 1, "runs": 1,
    "pipeline": 2, "synth": 2, "plots": 2, "kaggle": 2, "findings": 2,
    "train": 3, "report": 3, "bench": 3, "experiment": 3,
    "cli": 4, "widgets": 4, "colab": 4, "__main__": 5,
}


def _imported_modules(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "mp3kit":
                yield from (a.name for a in node.names)
            elif node.module.startswith("mp3kit."):
                yield node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mp3kit."):
                    yield a.name.split(".")[1]


def test_every_module_has_a_floor():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules <= FLOORS.keys(), f"give these modules a floor: {modules - FLOORS.keys()}"


def test_imports_point_downwards():
    upward = []
    for path in PACKAGE.glob("*.py"):
        if path.stem == "__init__":
            continue
        for mod in _imported_modules(path):
            if mod in FLOORS and FLOORS[mod] > FLOORS[path.stem]:
                upward.append(f"{path.stem} (floor {FLOORS[path.stem]}) imports {mod} (floor {FLOORS[mod]})")
    assert not upward, upward


def test_lower_floors_know_nothing_of_notebooks_or_widgets():
    for path in PACKAGE.glob("*.py"):
        if FLOORS.get(path.stem, 9) <= 2:
            text = path.read_text()
            for word in ("papermill", "ipywidgets", "nbval"):
                assert word not in text, f"{path.name} mentions {word}"
