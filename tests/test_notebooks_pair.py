"""Each notebook's jupytext source and the .ipynb students open agree, and tools/sync_notebooks.py keeps them so."""

import importlib.util
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from mp3kit.config import PROFILES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
FIX = "run `python tools/sync_notebooks.py` (see README, Contributing)"


def _tool():
    spec = importlib.util.spec_from_file_location("sync_notebooks", ROOT / "tools" / "sync_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_three_notebooks_are_there_each_with_its_source():
    assert NAMES == ["01_introduction", "02_scratch_vs_pretrained", "03_develop_classifier"]
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.py")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_the_ipynb_has_the_cells_of_its_source_and_only_the_checked_outputs(name):
    tool = _tool()
    source = tool.read_source(NOTEBOOKS / f"{name}.py")
    path = NOTEBOOKS / f"{name}.ipynb"
    committed = nbformat.read(str(path), as_version=4)
    assert tool.shape(committed) == tool.shape(source), f"{name}.ipynb and {name}.py differ: {FIX}"
    assert committed.metadata.kernelspec == {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                             "language": "python"}
    assert committed.metadata.jupytext == {"formats": "ipynb,py:percent"}  # JupyterLab with jupytext pairs them
    assert set(committed.metadata) == {"jupytext", "kernelspec", "language_info"}  # no saved widget state
    assert committed.cells[0].metadata["tags"] == ["parameters"] and "google.colab" in committed.cells[1].source
    for cell in committed.cells:
        if cell.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in cell.source:
            assert cell.outputs and cell.execution_count, f"{name}: a checked cell has no output: {FIX} --execute"
        elif cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: outputs of {cell.source[:60]!r}: {FIX}"
    assert path.stat().st_size < 200_000


@pytest.mark.parametrize("name", NAMES)
def test_the_profile_table_in_the_text_matches_the_profiles(name):
    text = (NOTEBOOKS / f"{name}.py").read_text(encoding="utf-8")
    for profile in PROFILES.values():
        row = f"# | `{profile.name}` | {profile.about} |"
        assert row in text, f"{name}.py: update the profile table's row to {row!r}"


def _pair(tmp_path, name="01_introduction"):
    for suffix in (".py", ".ipynb"):
        shutil.copy(NOTEBOOKS / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    shutil.copy(NOTEBOOKS / "jupytext.toml", tmp_path / "jupytext.toml")
    return tmp_path / f"{name}.py", tmp_path / f"{name}.ipynb"


def _checked_outputs(nb):
    return [c.outputs for c in nb.cells if "# NBVAL_CHECK_OUTPUT" in c.source]


def _age(path, seconds):
    st = path.stat()
    os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


def test_an_edit_to_the_script_rebuilds_the_ipynb_and_keeps_the_checked_outputs(tmp_path):
    tool = _tool()
    py, ipynb = _pair(tmp_path)
    before = nbformat.read(str(ipynb), as_version=4)
    py.write_text(py.read_text(encoding="utf-8").replace("## The data\n", "## The data, edited\n", 1), encoding="utf-8")
    assert "wrote 01_introduction.ipynb" in tool.sync("01_introduction", tmp_path)
    after = nbformat.read(str(ipynb), as_version=4)
    assert tool.shape(after) == tool.shape(tool.read_source(py))
    assert any("## The data, edited" in c.source for c in after.cells)
    assert _checked_outputs(after) == _checked_outputs(before) and _checked_outputs(after)
    assert tool.sync("01_introduction", tmp_path) == []  # a second run changes nothing


def test_an_edit_to_a_checked_cell_asks_for_execute(tmp_path):
    tool = _tool()
    py, _ = _pair(tmp_path)
    py.write_text(py.read_text(encoding="utf-8").replace("exp.data_table()", "exp.data_table()  # edited"),
                  encoding="utf-8")
    assert any("run with --execute" in line for line in tool.sync("01_introduction", tmp_path))


def test_an_ipynb_edited_without_jupytext_is_not_overwritten_and_can_be_taken_into_the_script(tmp_path):
    tool = _tool()
    py, ipynb = _pair(tmp_path)
    nb = nbformat.read(str(ipynb), as_version=4)
    nb.cells.insert(3, nbformat.v4.new_markdown_cell("A note written in Colab."))
    nb.cells[5].outputs = [nbformat.v4.new_output("stream", text="an unchecked output\n")]
    nbformat.write(nb, str(ipynb))
    _age(py, 60)
    with pytest.raises(tool.PairError, match="--from-ipynb 01_introduction"):
        tool.sync("01_introduction", tmp_path)
    assert "A note written in Colab." in ipynb.read_text(encoding="utf-8")  # nothing lost
    tool.sync("01_introduction", tmp_path, from_ipynb=True)
    assert "# A note written in Colab." in py.read_text(encoding="utf-8")
    rebuilt = nbformat.read(str(ipynb), as_version=4)
    assert tool.shape(rebuilt) == tool.shape(tool.read_source(py))
    assert not rebuilt.cells[5].outputs  # unchecked outputs do not get committed


def test_the_command_line_names_a_wrong_notebook(capsys):
    with pytest.raises(SystemExit) as exc:
        _tool().main(["09_nothing"])
    assert exc.value.code == 2 and "01_introduction" in capsys.readouterr().err
