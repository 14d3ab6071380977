"""Rebuild report/ headlessly: run the notebooks with papermill, gather every run's numbers, write report.md and .html.

The flow is one-way: notebooks -> run records + manifests + figures (runs/<profile>/) -> results.json -> report.md ->
report.html. The folders are mp3kit.layout's, the notebooks' own; a report can also be built from a runs folder alone
(execute=False), with no notebook and no checkout: the template ships in the package (resources/report_template.md).
Everything is built in a staging folder inside the report folder and swapped in only when every step succeeded,
so a failing notebook leaves the previous report as it was.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import mimetypes
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path

from mp3kit import __version__, items, layout, settings
from mp3kit import runs as run_records
from mp3kit.util import UserError, atomic_write_json, atomic_write_text, temporary_environ

NOTEBOOK_TIMEOUT_S = {"smoke": 600, "quick": 1800, "full": 24 * 3600}
# The generated part of a report folder, swapped in as a whole; report.md goes last so it never links to figures
# that are not there yet.
GENERATED = ("figures", "executed", "results.json", "report.html", "report.md")
ZIPPED = ("report.md", "report.html", "results.json", "figures")  # what report.zip holds, under report/
TEMPLATE = Path(__file__).resolve().parent / "resources" / "report_template.md"
SYNTHETIC_BANNER = (
    "These numbers come from the embedded SYNTHETIC dataset, not PASCAL VOC photographs; they check the pipeline "
    "and are not comparable with the course's reference figures."
)
MARKER = re.compile(r"<!-- mp3kit:(begin|end) ([A-Za-z0-9_.-]+) -->")


class NotebookError(Exception):
    """A notebook failed or timed out under papermill; the message names the notebook and the cell."""


def main(profile="quick", data_root=None, only=None, report_dir=None, execute=True, runs_dir=None,
         notebooks_dir=None, settings_given=()) -> int:
    """Rebuild the report for `mp3kit report`; return the exit status."""
    try:
        build(profile, data_root, only=only, report_dir=report_dir, execute=execute, runs_dir=runs_dir,
              notebooks_dir=notebooks_dir, parameters=parse_parameters(settings_given))
    except NotebookError as exc:
        print(f"mp3kit: {exc}", file=sys.stderr)
        return 1
    return 0


def build(profile="quick", data_root=None, *, only=None, report_dir=None, notebooks_dir=None, runs_dir=None,
          template=None, execute=True, timeout_s=None, parameters=None) -> Path:
    """Run the notebooks (all, or only one), then rebuild report_dir from the run records; return report.md's path.

    parameters: more values for the notebooks' parameters cells, e.g. {"WORKED_EXAMPLE": True} (`--set`).

    notebooks_dir defaults to find_notebooks(), runs_dir to the profile's runs folder of that project and report_dir
    to the report folder beside the runs (mp3kit.layout), the folders the notebooks use themselves.
    execute=False runs no notebook and rebuilds the report from the manifests, runs and figures in runs_dir.
    """
    from mp3kit.config import PROFILES

    if profile not in PROFILES:
        raise UserError(f"Unknown profile {profile!r}: use one of {', '.join(PROFILES)}.")
    notebooks_dir = Path(notebooks_dir).resolve() if notebooks_dir else find_notebooks()
    if execute and notebooks_dir is None:
        raise UserError(f"No notebooks in {Path.cwd()} or its notebooks/ folder: run mp3kit report from the folder "
                        "holding your notebooks (or their notebooks/ folder), give --notebooks-dir DIR, or build from "
                        "the runs already on disk with --no-execute.")
    names = select_notebooks(notebooks_dir, only) if execute else []
    runs_dir = Path(runs_dir).resolve() if runs_dir else layout.runs_folder(profile, notebooks_dir=notebooks_dir)
    report_dir = Path(report_dir).resolve() if report_dir else layout.report_folder(runs_dir, profile)
    template = Path(template) if template else find_template(report_dir)
    if not execute and not runs_dir.is_dir():
        raise UserError(f"{runs_dir} does not exist, so there are no runs to build the report from: give the runs "
                        "folder of your notebooks with --runs-dir DIR, or leave out --no-execute to run them.")
    if execute and profile == "full" and data_root is None:
        raise UserError("--profile full trains on the real PASCAL VOC 2007: add --data-root DIR (download it with "
                        "`mp3kit data fetch --root DIR`).")
    if data_root is not None and not Path(data_root).exists():
        raise UserError(f"--data-root {data_root} does not exist: give the folder holding VOCdevkit, or leave it out "
                        "to use the embedded synthetic dataset.")
    markdown = _markdown_renderer()
    # Check the student's report.md before spending minutes on notebooks that could not be merged into it.
    _read_existing(report_dir / "report.md")

    report_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(report_dir)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=report_dir))
    (staging / "pid").write_text(str(os.getpid()))
    try:
        for part in ("figures", "executed"):
            old = report_dir / part
            # A partial rebuild keeps the other notebooks' figures; a full one starts clean so none goes stale.
            if (only is not None or not execute) and old.is_dir():
                shutil.copytree(old, staging / part)
            else:
                (staging / part).mkdir()
        figures_dir = layout.figures_folder(profile, runs_dir).absolute()  # where the notebooks save figures themselves
        if names:
            figures_dir.mkdir(parents=True, exist_ok=True)
        parameters = {
            **(parameters or {}),
            "PROFILE": profile,
            "DATA_ROOT": str(Path(data_root).resolve()) if data_root is not None else None,
            "RUNS_DIR": str(runs_dir),
            "FIGURES_DIR": str(figures_dir),
        }
        timeout_s = timeout_s or NOTEBOOK_TIMEOUT_S[profile]
        seconds = {}
        where = "embedded synthetic dataset" if data_root is None else str(data_root)
        source = f"data: {where}" if execute else f"from the runs in {runs_dir}"
        print(f"Building the report (profile {profile}, {source}) into {report_dir}", flush=True)
        for i, name in enumerate(names, 1):
            print(f"[{i}/{len(names)}] {name} ...", end="", flush=True)
            t0 = time.monotonic()
            try:
                run_notebook(notebooks_dir / f"{name}.ipynb", staging / "executed" / f"{name}.ipynb", parameters,
                             runs_dir, timeout_s, report_dir)
            except NotebookError:
                print(f" failed after {time.monotonic() - t0:.0f} s", flush=True)
                raise
            seconds[name] = round(time.monotonic() - t0, 1)
            print(f" done in {seconds[name]:.0f} s", flush=True)

        given = " ".join(f"--set {k}={v!r}" for k, v in (parameters or {}).items() if k not in OWN_FLAGS)
        how = (f"`mp3kit report --profile {profile}{' ' + given if given else ''}`, which ran the notebooks" if names else
               "`mp3kit report --no-execute` or a notebook's last cell (`exp.build_report()`), from the runs on disk")
        results = collect_results(runs_dir, profile, staging, seconds, notebook_names(notebooks_dir, runs_dir), how)
        atomic_write_json(staging / "results.json", results)
        existing = _read_existing(report_dir / "report.md")
        template_text = _read_utf8(template)
        keys = marker_keys(template_text) | marker_keys(existing or "")
        text = merge_sections(template_text, existing, render_sections(results, keys))
        atomic_write_text(staging / "report.md", text)
        atomic_write_text(staging / "report.html", render_html(text, markdown, [staging, report_dir]))
        _swap_in(staging, report_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _print_summary(results, report_dir)
    return report_dir / "report.md"


# ---------------------------------------------------------------- finding things

OWN_FLAGS = {"PROFILE": "--profile", "DATA_ROOT": "--data-root", "RUNS_DIR": "--runs-dir", "FIGURES_DIR": "--runs-dir"}


def parse_parameters(items) -> dict:
    """Return {NAME: value} of `--set NAME=VALUE` items, each value read as a Python literal (True, 3, 1e-4, "x")
    or else kept as text; a UserError for an item that is not NAME=VALUE or sets what another flag sets."""
    import ast

    parameters = {}
    for item in items or ():
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise UserError(f"--set {item!r} is not NAME=VALUE: write a parameter of the notebooks' first cell and its "
                            "value, e.g. --set WORKED_EXAMPLE=True.")
        if name in OWN_FLAGS:
            raise UserError(f"--set {name}=... is set by {OWN_FLAGS[name]}: use that flag instead.")
        try:
            parameters[name] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            parameters[name] = text.strip()
    return parameters



def find_notebooks(folder=None) -> Path | None:
    """Return the student's notebooks folder: <folder>/notebooks, else folder, whichever holds notebooks (folder: cwd)."""
    folder = Path(folder if folder is not None else Path.cwd()).resolve()
    return next((f for f in (folder / layout.NOTEBOOKS, folder) if any(f.glob("*.ipynb"))), None)


def find_template(report_dir: Path) -> Path:
    """Return the report template: report_dir/template.md when the student keeps one there, else the one mp3kit ships."""
    own = Path(report_dir) / "template.md"
    if own.exists():
        return own
    if not TEMPLATE.exists():
        raise UserError(f"The report template {TEMPLATE} is missing from this mp3kit installation: reinstall mp3kit, "
                        f"or put a template.md in {report_dir}.")
    return TEMPLATE


def select_notebooks(notebooks_dir: Path, only=None) -> list[str]:
    """Return the notebook names to run, in order: all in notebooks_dir, or the one named by only (.ipynb optional)."""
    present = sorted(p.stem for p in Path(notebooks_dir).glob("*.ipynb"))
    if only is None:
        if not present:
            raise UserError(f"{notebooks_dir} holds no notebook: restore the notebooks from the repository.")
        return present
    wanted = Path(str(only)).name.removesuffix(".ipynb")
    matches = [n for n in present if n == wanted] or [n for n in present if n.startswith(wanted)]
    if len(matches) != 1:
        raise UserError(f"--only {only}: no single notebook of that name in {notebooks_dir}; use one of "
                        f"{', '.join(present) or '(none found)'}.")
    return matches


# ---------------------------------------------------------------- running notebooks


def run_notebook(path: Path, output: Path, parameters: dict, runs_dir: Path, timeout_s: float, report_dir: Path) -> None:
    """Execute one notebook with papermill (cwd = its folder) into output; raise NotebookError naming the failing cell."""
    import papermill
    from jupyter_client.kernelspec import NoSuchKernel
    from papermill.exceptions import PapermillExecutionError

    deadline = time.monotonic() + timeout_s
    current = {}

    def time_left(cell) -> int:
        # nbclient asks before every cell, so the whole notebook shares one budget.
        current["cell"] = cell
        return max(1, int(deadline - time.monotonic()))

    failed_copy = Path(runs_dir) / f"{path.stem}.failed.ipynb"
    kept = f"the report in {report_dir} was left as it was"
    try:
        # REPORT_RUNNING: the notebook's own report cell leaves the report to this build.
        with temporary_environ(**{settings.QUIET: "1", settings.REPORT_RUNNING: "1"}):
            # A quiet kernel log keeps one progress line per notebook: otherwise every kernel prints a
            # TCP-transport warning at start and a caught KeyboardInterrupt at shutdown. A cell's
            # errors still reach the executed notebook and the failure message.
            papermill.execute_notebook(str(path), str(output), parameters=parameters, cwd=str(path.parent),
                                       kernel_name="python3", progress_bar=False, log_output=False,
                                       timeout_func=time_left, extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
    except PapermillExecutionError as exc:
        where = _cell_position(path, exc.source, exc.cell_index)
        evalue = (exc.evalue or "").strip().splitlines()
        message = f"{exc.ename}: {evalue[0][:300]}" if evalue else exc.ename
        raise NotebookError(f"{path.name} failed in {where}: {message}. {_keep_failed(output, failed_copy)}; "
                            f"{kept}.") from None
    except TimeoutError:
        cell = current.get("cell")
        where = _cell_position(path, cell.source, None) if cell is not None else "a cell"
        raise NotebookError(f"{path.name} ran past its {timeout_s:.0f} s limit in {where}. "
                            f"{_keep_failed(output, failed_copy)}; {kept}.") from None
    except NoSuchKernel:
        raise UserError("The Jupyter kernel python3 is not installed in this environment: run `make setup` or "
                        "`python -m ipykernel install --sys-prefix --name python3`.") from None
    except Exception as exc:  # the kernel died (e.g. out of memory) or could not start
        cell = current.get("cell")
        where = f" in {_cell_position(path, cell.source, None)}" if cell is not None else ""
        raise NotebookError(f"{path.name} stopped{where}: {type(exc).__name__}: {str(exc).strip()[:300]}. "
                            f"{_keep_failed(output, failed_copy)}; {kept}.") from None
    failed_copy.unlink(missing_ok=True)


def _cell_position(path: Path, source: str, fallback_index) -> str:
    """Describe a cell as 'cell N (`its first code line`)', N counted from 1 in the notebook as saved."""
    import nbformat

    cells = nbformat.read(str(path), as_version=4).cells
    # Matched by source: papermill's indices count the parameters cell it injected.
    index = next((i for i, c in enumerate(cells) if c.source == source), fallback_index)
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    first = next((line for line in lines if not line.startswith("#")), lines[0] if lines else "")
    first = first if len(first) <= 80 else first[:77] + "..."
    number = f"cell {index + 1}" if index is not None else "a cell"
    return f"{number} (`{first}`)" if first else number


def _keep_failed(output: Path, failed_copy: Path) -> str:
    """Copy the failed executed notebook next to the runs (the staging folder is about to go); say where it is."""
    if not output.exists():
        return "No executed copy was written"
    failed_copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(output, failed_copy)
    return f"The executed copy with the full traceback is {failed_copy}"


# ---------------------------------------------------------------- results.json


def notebook_names(notebooks_dir: Path | None, runs_dir: Path) -> list[str]:
    """Return the notebooks the report covers, sorted: those in notebooks_dir (if any) and those with a manifest in runs_dir."""
    names = {p.stem for p in Path(notebooks_dir).glob("*.ipynb")} if notebooks_dir is not None else set()
    names |= {p.name.removesuffix(".manifest.json") for p in Path(runs_dir).glob("*.manifest.json")}
    return sorted(names)


def collect_results(runs_dir: Path, profile: str, staging: Path, seconds: dict, names, how: str = "") -> dict:
    """Gather the manifests and runs of the notebooks named into the results.json dict (figures checked in staging);
    how says what built it."""
    notebooks = {name: _notebook_results(Path(runs_dir), name, staging, seconds.get(name)) for name in names}
    synthetic = any(nb.get("synthetic") for nb in notebooks.values()) or any(
        run.get("synthetic") for nb in notebooks.values() for run in nb.get("runs", {}).values())
    return {
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": profile,
        "synthetic": synthetic,
        "mp3kit_version": __version__,
        "built_by": how or f"`mp3kit report --profile {profile}`",
        "runs_dir": str(runs_dir),
        "notebooks": notebooks,
    }


def _notebook_results(runs_dir: Path, name: str, staging: Path, seconds) -> dict:
    """Return one notebook's part of results.json, or {"missing": True} when it has no manifest yet."""
    manifest_path = runs_dir / f"{name}.manifest.json"
    if not manifest_path.exists():
        return {"missing": True, "manifest": str(manifest_path)}
    manifest = items.Manifest.load(manifest_path)
    runs = {key: _entry_results(runs_dir, entry) for key, entry in manifest.runs.items()}
    # Where the notebook saved its figures, then the runs folder's own figures/ (a runs folder moved from Drive).
    saved = [Path(manifest.figures_dir)] if manifest.figures_dir else []
    declared = []
    for item in manifest.items:
        if isinstance(item, items.FigureItem):
            _copy_figure(item.file, [*saved, runs_dir / "figures"], staging / "figures")
            item = replace(item, present=(staging / "figures" / item.file).exists())
        declared.append(item.to_dict())
    executed = staging / "executed" / f"{name}.ipynb"
    return {
        "manifest": str(manifest_path),
        "executed": f"executed/{name}.ipynb" if executed.exists() else None,
        "seconds": seconds,
        "synthetic": manifest.synthetic,
        "worked_example": manifest.worked_example,
        "data_root": manifest.data_root,
        "runs": runs,
        "values": _clean(manifest.values),
        "report": _clean(declared),
    }


def _copy_figure(file: str, folders, target: Path) -> None:
    """Copy a declared figure into the staged report from the first folder holding it; keep the staged copy if none does."""
    if Path(file).is_absolute() or ".." in Path(file).parts:
        return  # a manifest names figures inside its figures folder only
    for folder in folders:
        source = Path(folder) / file
        if source.is_file():
            (target / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / file)
            return


def _run_results(path: Path, label) -> dict:
    """Return one run's summary numbers and its config, or a 'missing' entry when its folder is gone."""
    if not (path / "config.json").exists():
        return {"name": path.name, "label": label or path.name, "status": "missing", "reason": f"{path} is missing"}
    run = run_records.load_run(path)
    metrics = run.metrics
    ap = metrics.get("test_ap")
    classes = metrics.get("classes") or [str(i) for i in range(len(ap or []))]
    config = {k: v for k, v in run.config.items() if k != "data"}
    return _clean({
        "name": run.name,
        "label": label or run.name,
        "status": run.status,
        "reason": run.reason or None,
        "test_map": run.test_map,
        "test_loss": run.test_loss,
        "val_map": run.val_map,
        "best_val_map": run.best_val_map(),
        "epochs_done": len(run.history),
        "seconds": metrics.get("seconds"),
        "device": metrics.get("device"),
        "synthetic": run.synthetic,
        "test_ap": dict(zip(classes, ap)) if ap else None,
        "config": {**config, "model": model_label(config.get("model"))},
    })


SEED_FIELDS = ("name", "status", "seed", "val_map", "test_map", "test_loss", "test_ap")
SPREAD_FIELDS = ("val_map", "test_map", "test_loss")


def _entry_results(runs_dir: Path, entry: dict) -> dict:
    """Return a manifest run entry's results: its run's, and for a config trained with several seeds each seed's
    numbers ("seeds") and their mean, standard deviation and count over the complete ones ("spread")."""
    result = _run_results(runs_dir / entry["run"], entry.get("label"))
    names = entry.get("seeds") or []
    if len(names) < 2:
        return result
    seeds = [_run_results(runs_dir / name, None) for name in names]
    result["seeds"] = [{k: (s.get("config") or {}).get("seed") if k == "seed" else s.get(k) for k in SEED_FIELDS}
                       for s in seeds]
    result["spread"] = {}
    for field in SPREAD_FIELDS:
        values = run_records.seed_values(result, field)
        mean, std = run_records.mean_and_std(values)
        result["spread"][field] = {"mean": mean, "std": std, "n": len(values)}
    return _clean(result)


def model_label(model) -> str:
    """Return a short name for a config's model (models.label: the name itself, or a spec's "name")."""
    from mp3kit import models

    return models.label(model)


def _clean(value):
    """Return value with NaN and infinities replaced by None, so results.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# ---------------------------------------------------------------- report.md sections
# The notebooks declare the items (mp3kit.items); each goes to the marker its section names, in the order declared,
# and renders itself from results.json.

HEADER, APPENDIX = "header", "more-figures"  # the report's own sections; the notebooks fill every other marker


def render_sections(results: dict, keys) -> dict[str, str]:
    """Return the generated markdown of every marker key; items placed under no marker go to the appendix."""
    placed = {key: [] for key in keys if key not in (HEADER, APPENDIX)}
    appendix, groups = [], {}
    chance = _chance(results)
    for name, nb in results["notebooks"].items():
        if nb.get("missing"):
            continue
        context = items.Context(name, nb["runs"], results["profile"], chance)
        for item in (items.from_dict(d, nb["manifest"]) for d in nb["report"]):
            if item.grouped:  # e.g. every notebook's findings make one table in their section
                groups.setdefault((type(item), item.section), []).append((item, context))
                continue
            text = item.render(context)
            if not text:
                continue
            if item.section in placed:
                placed[item.section].append(text)
            else:
                appendix.append(item.unplaced(text, name))
    for (kind, section), entries in groups.items():
        (placed[section] if section in placed else appendix).append(kind.render_all(entries))
    missing = [name for name, nb in results["notebooks"].items() if nb.get("missing")]
    sections = {key: "\n\n".join(texts) or _nothing_here(missing, results["profile"]) for key, texts in placed.items()}
    if HEADER in keys:
        sections[HEADER] = _header(results)
    if APPENDIX in keys:
        sections[APPENDIX] = "\n\n".join(appendix) or "_None._"
    return sections


def _nothing_here(missing: list, profile: str) -> str:
    """Return the text of a section no notebook filled: which notebooks are not built yet, if any."""
    if not missing:
        return "_Nothing was recorded for this section._"
    only = f" --only {missing[0]}" if len(missing) == 1 else ""
    has = "has" if len(missing) == 1 else "have"
    return (f"_Not built yet: {', '.join(missing)} {has} no results for the {profile} profile; run "
            f"`mp3kit report --profile {profile}{only}`._")


def _chance(results: dict) -> float | None:
    """Return the chance-level test mAP a notebook recorded (they share the test split), or None."""
    for nb in results["notebooks"].values():
        value = (nb.get("values") or {}).get("chance_map")
        if value is not None:
            return value
    return None


def _header(results: dict) -> str:
    lines = []
    if results["synthetic"]:
        lines.append(f"> **Synthetic data.** {SYNTHETIC_BANNER}\n")
    notebooks = results["notebooks"]
    examples = [n for n, nb in notebooks.items() if nb.get("worked_example")]
    if examples:
        lines.append(f"> **Worked example.** {', '.join(examples)} ran the seed report's network and ablation "
                     "(WORKED_EXAMPLE = True) to show how mp3kit works; its results are labelled \"worked example\" "
                     "and are not a student's own part 1B.\n")
    built_by = results.get("built_by") or f"`mp3kit report --profile {results['profile']}`"
    lines.append(f"Generated by {built_by} (profile {results['profile']}, mp3kit {results['mp3kit_version']}) "
                 f"on {results['generated']}. Every number in the generated parts comes from `results.json`.")
    built = [f"{n} ({nb['seconds']:.0f} s)" if nb.get("seconds") is not None else n
             for n, nb in notebooks.items() if not nb.get("missing")]
    if built:
        lines.append(f"\nNotebooks in this report: {', '.join(built)}.")
    missing = [n for n, nb in notebooks.items() if nb.get("missing")]
    if missing:
        lines.append(f"\nNot built yet: {', '.join(missing)}.")
    return "\n".join(lines)


# ---------------------------------------------------------------- markers


def split_sections(text: str, source="report.md") -> list:
    """Split text at its markers: a list of plain strings and (key, content) pairs; refuse unbalanced markers."""
    pieces, pos, open_key, open_at, seen = [], 0, None, 0, set()
    for m in MARKER.finditer(text):
        kind, key = m.groups()
        line = text.count("\n", 0, m.start()) + 1
        if kind == "begin":
            if open_key is not None:
                raise UserError(f"{source} line {line}: marker begin {key} inside section {open_key}; restore the "
                                f"`<!-- mp3kit:end {open_key} -->` line (or delete {source} to start again from the template).")
            if key in seen:
                raise UserError(f"{source} line {line}: section {key} appears twice; delete one copy of its markers.")
            pieces.append(text[pos:m.start()])
            open_key, open_at, pos = key, m.end(), m.end()
            seen.add(key)
        else:
            if open_key != key:
                raise UserError(f"{source} line {line}: marker end {key} has no matching begin; restore the "
                                f"`<!-- mp3kit:begin {key} -->` line (or delete {source} to start again from the template).")
            pieces.append((key, text[open_at:m.start()]))
            open_key, pos = None, m.end()
    if open_key is not None:
        raise UserError(f"{source}: section {open_key} has no `<!-- mp3kit:end {open_key} -->` line; restore it "
                        f"(or delete {source} to start again from the template).")
    pieces.append(text[pos:])
    return pieces


def merge_sections(template: str, existing: str | None, generated: dict[str, str]) -> str:
    """Fill the markers of existing (or, on the first build, of template) with generated; keep all other text as is."""
    pieces = split_sections(existing if existing is not None else template)
    present = {p[0] for p in pieces if isinstance(p, tuple)}
    # A newer template may bring sections the student's report.md lacks: add them at the end rather than drop them.
    added = [p for p in split_sections(template, "template.md") if isinstance(p, tuple) and p[0] not in present]
    if added:
        pieces.append("\n\n## Sections added by a newer template\n\n")
        for piece in added:
            pieces += [piece, "\n\n"]
    out = []
    for piece in pieces:
        if isinstance(piece, tuple):
            key, old = piece
            body = generated.get(key)
            # A section this version no longer generates keeps its old text.
            inner = f"\n{body}\n" if body is not None else old
            out.append(f"<!-- mp3kit:begin {key} -->{inner}<!-- mp3kit:end {key} -->")
        else:
            out.append(piece)
    return "".join(out)


def marker_keys(text: str) -> set[str]:
    """Return the keys of the marker sections in text."""
    return {p[0] for p in split_sections(text) if isinstance(p, tuple)}


def generated_text(report_md: str) -> dict[str, str]:
    """Return the content of every marker section of a report, without its surrounding blank lines."""
    return {p[0]: p[1].strip() for p in split_sections(report_md) if isinstance(p, tuple)}


def _read_existing(path: Path) -> str | None:
    """Return the student's report.md (checked for balanced markers), or None before the first build."""
    if not path.exists():
        return None
    text = _read_utf8(path)
    split_sections(text, str(path))
    return text


def _read_utf8(path: Path) -> str:
    """Return a Markdown file's text; a file saved in another encoding (Windows-1252, say) is a UserError."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}, as "
                        f"Windows-1252 writes curly quotes and dashes): save it as UTF-8 (in Notepad: File, Save As, "
                        f"Encoding UTF-8), then run mp3kit report again.") from exc


# ---------------------------------------------------------------- report.html

CSS = """
body { font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 62rem; margin: 2rem auto; padding: 0 1.25rem; }
h1, h2, h3, h4 { line-height: 1.25; margin-top: 2rem; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .9rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
blockquote { margin: 1rem 0; padding: .6rem 1rem; background: #fff8c5; border-left: 4px solid #d4a72c; }
code { background: #f6f8fa; padding: .1rem .3rem; border-radius: 4px; font-size: .9em; }
pre { background: #f6f8fa; padding: .75rem; overflow-x: auto; }
pre code { padding: 0; }
em { color: #57606a; }
"""


def _markdown_renderer():
    """Return a markdown-to-HTML function (mistune, which Jupyter's nbconvert brings); fail early when it is absent."""
    try:
        import mistune
    except ImportError:
        raise UserError("report.html needs the mistune package: run `pip install mistune` (or `make setup`).") from None
    return mistune.create_markdown(escape=False, plugins=["table", "strikethrough"])


def render_html(report_md: str, markdown, search_dirs) -> str:
    """Return report_md as one self-contained HTML page: local images are embedded as data URIs."""
    body = markdown(MARKER.sub("", report_md))

    def embed(m):
        tag = m.group(0)
        src = re.search(r'\bsrc="([^"]*)"', tag).group(1)
        if re.match(r"^(data:|https?:)", src):
            return tag
        for folder in search_dirs:
            path = Path(folder) / src
            if path.is_file():
                mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                return tag.replace(f'src="{src}"', f'src="data:{mime};base64,{data}"')
        return f"<em>(image {src} not found)</em>"

    body = re.sub(r'<img\b[^>]*\bsrc="[^"]*"[^>]*>', embed, body)
    title = next((line[2:].strip() for line in report_md.splitlines() if line.startswith("# ")), "mp3kit report")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


# ---------------------------------------------------------------- staging


def _remove_stale_staging(report_dir: Path) -> None:
    """Delete staging folders left by a build that was killed (their process is gone)."""
    for folder in report_dir.glob(".staging-*"):
        try:
            pid = int((folder / "pid").read_text())
            os.kill(pid, 0)
            continue  # another build is still running in this report folder
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)


def _swap_in(staging: Path, report_dir: Path) -> None:
    """Move the staged report into report_dir: files by atomic rename, folders by rename-aside then rename-in."""
    old = staging / ".old"
    old.mkdir()
    for item in GENERATED:
        src, dst = staging / item, report_dir / item
        if not src.exists():
            continue
        if dst.is_dir():
            os.replace(dst, old / item)
        os.replace(src, dst)


def zip_report(report_dir) -> Path:
    """Write report_dir/report.zip holding report.md, report.html, results.json and figures/ under report/; return it."""
    report_dir = Path(report_dir)
    archive = report_dir / "report.zip"
    partial = report_dir / ".report.zip.partial"
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
            for name in ZIPPED:
                path = report_dir / name
                files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] * path.exists()
                for file in files:
                    z.write(file, (Path("report") / file.relative_to(report_dir)).as_posix())
        os.replace(partial, archive)
    finally:
        partial.unlink(missing_ok=True)
    return archive


def _print_summary(results: dict, report_dir: Path) -> None:
    """Print where the report is and the headline numbers."""
    kind = " (SYNTHETIC data)" if results["synthetic"] else ""
    print(f"Wrote {report_dir / 'report.md'} and {report_dir / 'report.html'}{kind}.")
    missing = [n for n, nb in results["notebooks"].items() if nb.get("missing")]
    if missing:
        print(f"Not built yet: {', '.join(missing)} (run mp3kit report without --only).")
