"""Modules import only downwards or sideways (DESIGN.md): data and metrics know nothing of training or notebooks."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mp3kit"
FLOORS = {
    "util": 0, "settings": 0, "table": 0,
    "layout": 1, "data": 1, "fetch": 1, "verify": 1, "models": 1, "usermodel": 1, "metrics": 1, "runs": 1,
    "pipeline": 2, "synth": 2, "plots": 2, "kaggle": 2, "findings": 2, "items": 2, "config": 2,
    "train": 3, "report": 3, "bench": 3, "experiment": 3, "ablation": 3, "estimate": 3, "explain": 3,
    "cli": 4, "widgets": 4, "colab": 4, "__main__": 5,
}
# The modules that know how the notebooks are run (Colab, papermill, nbval); everything below them must not.
FRONT_ENDS = {"cli", "report", "colab", "widgets", "experiment", "__main__"}
# An environment variable's name (not a file name such as MP3KIT_SYNTHETIC.json).
ENV_NAME = re.compile(r"MP3KIT_[A-Z0-9_]+\b(?!\.json)")


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


def test_only_the_front_ends_know_colab_papermill_or_nbval():
    for path in PACKAGE.glob("*.py"):
        if path.stem in FRONT_ENDS:
            continue
        text = path.read_text()
        for word in ("google.colab", "papermill", "nbval"):
            assert word not in text, f"{path.name} mentions {word}: only {', '.join(sorted(FRONT_ENDS))} may"


def test_environment_variables_are_named_only_in_settings():
    named = {f"{path.name}: {name}" for path in PACKAGE.glob("*.py") if path.stem != "settings"
             for name in ENV_NAME.findall(path.read_text())}
    assert not named, f"read these through mp3kit.settings: {sorted(named)}"
