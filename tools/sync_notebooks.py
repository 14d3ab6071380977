"""Rebuild each notebook pair: notebooks/NAME.ipynb (what students open) from notebooks/NAME.py (its jupytext source).

    python tools/sync_notebooks.py                 # rebuild every .ipynb from its .py, keeping the checked outputs
    python tools/sync_notebooks.py --execute       # also run them in the smoke profile to refresh those outputs
    python tools/sync_notebooks.py --from-ipynb 02 # take 02's cells from its .ipynb (edited without jupytext) first

The committed .ipynb holds no outputs except those of cells marked # NBVAL_CHECK_OUTPUT, which nbval compares;
run with --execute after changing such a cell, the synthetic dataset or a model's layers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from jupytext.config import load_jupytext_config

from mp3kit.util import temporary_environ

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CHECK = "# NBVAL_CHECK_OUTPUT"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
PAIRING = {"formats": "ipynb,py:percent"}


class PairError(Exception):
    """A pair cannot be rebuilt without losing someone's edit; the message says which flag decides."""


def shape(nb: nbformat.NotebookNode) -> list[tuple]:
    """Return what a pair must agree on: each cell's type, source and tags, in order."""
    return [(c.cell_type, c.source, list(c.metadata.get("tags", []))) for c in nb.cells]


def read_source(py: Path) -> nbformat.NotebookNode:
    """Return the notebook a percent-format script describes."""
    return jupytext.read(str(py), fmt="py:percent")


def write_source(nb: nbformat.NotebookNode, py: Path) -> None:
    """Write nb's cells as a percent-format script, with the header notebooks/jupytext.toml asks for."""
    nb = nbformat.from_dict({**nb, "metadata": {**nb.metadata, "jupytext": dict(PAIRING)}})
    text = jupytext.writes(nb, fmt="py:percent", config=load_jupytext_config(str(py.parent)))
    py.write_text(text, encoding="utf-8")


def build(source: nbformat.NotebookNode, old: nbformat.NotebookNode | None) -> nbformat.NotebookNode:
    """Return the committed form of source: fixed metadata and cell ids, the old checked outputs where cells match."""
    nb = nbformat.v4.new_notebook()
    kept = {c.source: c.outputs for c in (old.cells if old else []) if c.cell_type == "code" and c.outputs}
    for i, cell in enumerate(source.cells):
        tags = list(cell.metadata.get("tags", []))
        if cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(cell.source)
        else:
            new = nbformat.v4.new_code_cell(cell.source)
            if CHECK in cell.source:
                new.outputs = kept.get(cell.source, [])
        if tags:
            new.metadata["tags"] = tags
        new.id = f"c{i:02d}"
        nb.cells.append(new)
    return number_checked(nb)


def number_checked(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip saved widget state and every output and execution count but those of checked cells (numbered by position)."""
    nb.metadata = {"jupytext": dict(PAIRING), "kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        checked = CHECK in cell.source
        # nbval treats a cell with outputs but no execution count as never run, so checked cells keep one.
        cell.execution_count = number if checked else None
        if not checked:
            cell.outputs = []
        for output in cell.outputs:
            if "execution_count" in output:
                output.execution_count = number
    nbformat.validate(nb)
    return nb


def execute_smoke(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Run nb in the smoke profile (scratch runs and figures folders) and return it with its outputs."""
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory(prefix="mp3kit-nb-") as tmp:
        env = {"MP3KIT_PROFILE": "smoke", "MP3KIT_QUIET": "1", "MPLBACKEND": "Agg",
               "MP3KIT_RUNS_DIR": str(Path(tmp) / "runs"), "MP3KIT_FIGURES_DIR": str(Path(tmp) / "figures")}
        with temporary_environ(**env):
            NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                           resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def sync(name: str, notebooks=NOTEBOOKS, *, execute=False, from_ipynb=False) -> list[str]:
    """Rebuild the pair called name (its .py is the source unless from_ipynb); return what was changed, in words."""
    py, ipynb = Path(notebooks) / f"{name}.py", Path(notebooks) / f"{name}.ipynb"
    old = nbformat.read(str(ipynb), as_version=4) if ipynb.exists() else None
    done = []
    if from_ipynb:
        if old is None:
            raise PairError(f"{ipynb} does not exist: --from-ipynb needs it.")
        if not py.exists() or shape(read_source(py)) != shape(old):
            write_source(old, py)
            done.append(f"wrote {py.name} from {ipynb.name}")
    elif not py.exists():
        raise PairError(f"{py} does not exist: write it, or run with --from-ipynb {name} to make it from {ipynb.name}.")
    elif old is not None and shape(read_source(py)) != shape(old) and ipynb.stat().st_mtime > py.stat().st_mtime:
        raise PairError(f"{ipynb.name} was changed after {py.name} and they differ: run with --from-ipynb {name} to "
                        f"keep the .ipynb's cells, or touch {py.name} to keep the script's.")
    nb = build(read_source(py), old)
    if execute:
        t0 = time.monotonic()
        nb = number_checked(execute_smoke(nb))
        done.append(f"executed in the smoke profile in {time.monotonic() - t0:.0f} s")
    if old is None or nbformat.writes(nb) != nbformat.writes(old):
        nbformat.write(nb, str(ipynb))
        done.append(f"wrote {ipynb.name}")
    missing = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and CHECK in c.source and not c.outputs]
    if missing:
        done.append(f"cells {', '.join(str(i + 1) for i in missing)} are checked by nbval but have no output: "
                    "run with --execute")
    return done


def main(argv=None) -> int:
    """Rebuild the notebook pairs named (default: every notebooks/*.py)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execute", action="store_true", help="run in the smoke profile and keep the checked outputs")
    parser.add_argument("--from-ipynb", action="store_true", help="take the cells from the .ipynb and rewrite the .py")
    parser.add_argument("names", nargs="*", help="notebooks to rebuild, by name or prefix (default: all)")
    args = parser.parse_args(argv)
    every = sorted(p.stem for p in NOTEBOOKS.glob("*.py")) or sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    names = []
    for wanted in args.names or every:
        wanted = Path(wanted).stem
        matches = [n for n in every if n == wanted] or [n for n in every if n.startswith(wanted)]
        if len(matches) != 1:
            parser.error(f"{wanted!r} names no single notebook: use one of {', '.join(every)}")
        names += matches
    try:
        for name in names:
            done = sync(name, execute=args.execute, from_ipynb=args.from_ipynb)
            print(f"{name}: {'; '.join(done) or 'up to date'}")
    except PairError as exc:
        print(f"sync_notebooks: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
