"""What a notebook gives the report: one small dataclass per kind of item, and the manifest that keeps them.

A notebook declares an item where it makes it (Experiment.figure, table, result, note, ablation, finding); its
Manifest saves it in <runs_dir>/<notebook>.manifest.json, and `mp3kit report` loads every manifest, copies the run
numbers into results.json and renders each item from there, so every number is drawn from the run records when the
report is built. Each item goes to the report template's marker named by its section, in the order declared:

    kind      class          holds
    figure    FigureItem     caption, file (under the notebook's figures folder)
    table     TableItem      caption, markdown (a table fixed when it was made, e.g. an architecture)
    runs      RunsItem       caption, runs (run keys), columns ("settings" or "ap": AP per class), best (name one)
    result    ResultItem     caption (what the run is): the headline of run key, its test mAP and average test loss
    ablation  AblationItem   rows (AblationRow: serial, label, key, skipped), note
    note      NoteItem       text (markdown)
    finding   FindingItem    finding (mp3kit.findings.Finding), rule; every notebook's findings make one table

The manifest: {"notebook", "profile", "synthetic", "data_root", "figures_dir" (absolute), "worked_example",
"runs": {key: {"run": run name, "label": readable label, "seeds": [run name, ...] (only for a config trained with
several seeds: every seed's run, "run" first)}}, "values": {key: JSON value}, "report": [item, ...]}, each item
{"kind", "key", "section", ...its fields}. A run key with several seeds shows as the mean ± standard deviation of its
seeds (results.json's "spread") wherever a table shows it.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

from mp3kit import findings
from mp3kit import runs as run_records
from mp3kit.table import MISSING, Table
from mp3kit.util import UserError, atomic_write_text

NEAR_CHANCE = 1.25  # a best test mAP under 1.25x chance is reported as "near chance", not as a winner


@dataclass(frozen=True)
class Context:
    """What an item is rendered with: its notebook, that notebook's runs (results.json entries by key), the profile
    and the chance-level test mAP."""

    notebook: str
    runs: dict
    profile: str
    chance: float | None = None

    def test_maps(self) -> dict:
        """Return the test mAP of every run with one, by key: a number, or the list of its seeds' (runs.score)."""
        scores = {k: run_records.score(r) for k, r in self.runs.items()}
        return {k: v for k, v in scores.items() if v is not None}

    def labels(self) -> dict:
        """Return every run's label, by key."""
        return {k: r.get("label", k) for k, r in self.runs.items()}


@dataclass(frozen=True)
class Item:
    """A report item: its key, the section (template marker) it goes to, and in subclasses (keyword fields) what it
    shows."""

    kind: ClassVar[str] = ""
    grouped: ClassVar[bool] = False  # True: the items of a section render together (render_all), not one by one

    key: str
    section: str

    def to_dict(self) -> dict:
        """Return the item as the manifest holds it."""
        return {"kind": self.kind, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}

    @classmethod
    def from_dict(cls, d: dict) -> Item:
        """Return the item a manifest entry describes (keys that are no field, such as a kind, are ignored)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def render(self, context: Context) -> str:
        """Return the item's markdown ("" for nothing to show)."""
        raise NotImplementedError

    def unplaced(self, text: str, notebook: str) -> str:
        """Return the item's markdown text for the appendix, where items go whose section no marker names."""
        return f"_{notebook}: {self.key}._\n\n{text}"


def _plain(value):
    """Return value as JSON holds it: items and findings as dicts, tuples as lists."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class FigureItem(Item):
    """A PNG the notebook saved under its figures folder, shown with its caption."""

    kind: ClassVar[str] = "figure"

    caption: str = ""
    file: str
    present: bool | None = None  # whether the report's figures/ holds it: set by the report build, not in a manifest

    @property
    def path(self) -> str:
        """Return the figure's path in the report folder."""
        return f"figures/{Path(self.file).as_posix()}"

    def to_dict(self) -> dict:
        d = super().to_dict()
        present = d.pop("present")
        return d if present is None else {**d, "path": self.path, "present": present}

    def render(self, context: Context) -> str:
        caption = self.caption or self.key
        if self.present:
            return f"![{caption}]({self.path})\n\n_{caption}._"
        return (f"_Figure {self.key} is missing from figures/: rebuild with "
                f"`mp3kit report --profile {context.profile} --only {context.notebook}`._")

    def unplaced(self, text: str, notebook: str) -> str:
        return text.rsplit("\n\n", 1)[0] + f"\n\n_{notebook}: {self.caption}._"


@dataclass(frozen=True, kw_only=True)
class TableItem(Item):
    """A table fixed when the notebook made it (markdown), e.g. a network's layers."""

    kind: ClassVar[str] = "table"

    caption: str = ""
    markdown: str

    def render(self, context: Context) -> str:
        return _captioned(self.caption, self.markdown.rstrip())


@dataclass(frozen=True, kw_only=True)
class RunsItem(Item):
    """A table of runs drawn from their records: their settings and test results, or their test AP per class."""

    kind: ClassVar[str] = "runs"

    caption: str = ""
    runs: list  # run keys, in the table's order
    columns: str = "settings"  # or "ap"
    best: bool = False  # add a line naming the run with the highest val mAP

    def render(self, context: Context) -> str:
        chosen = [context.runs[k] for k in self.runs if k in context.runs]
        table = _ap_table(chosen) if self.columns == "ap" else _settings_table(chosen)
        parts = [_captioned(self.caption, table) if table else "", _best_line(chosen, context.chance) if self.best else ""]
        return "\n\n".join(p for p in parts if p)


@dataclass(frozen=True, kw_only=True)
class ResultItem(Item):
    """The headline of the run keyed by the item's key: caption, label, test mAP and average test loss."""

    kind: ClassVar[str] = "result"

    caption: str = ""

    def render(self, context: Context) -> str:
        run, what = context.runs.get(self.key), self.caption or self.key
        if run is None or run.get("test_map") is None:
            status = run.get("status") if run else "not recorded"
            return f"{what}: no test result yet (the run is {status})."
        seeds = _seeds(run)
        over = f" (mean ± standard deviation over {seeds} seeds)" if seeds else ""
        return (f"{what} (**{run['label']}**): test mAP **{_spread(run, 'test_map')}**, average test loss "
                f"**{_spread(run, 'test_loss')}**, after {run.get('epochs_done')} epochs{over}.")


@dataclass(frozen=True)
class AblationRow:
    """One row of an ablation: its serial number, label and run key, and why it was skipped ("" when it ran)."""

    serial: int
    label: str
    key: str
    skipped: str = ""

    def to_dict(self) -> dict:
        d = {"serial": self.serial, "label": self.label, "key": self.key}
        return {**d, "skipped": self.skipped} if self.skipped else d

    @classmethod
    def from_dict(cls, d: dict) -> AblationRow:
        return cls(d["serial"], d.get("label", ""), d.get("key", ""), d.get("skipped", ""))


@dataclass(frozen=True, kw_only=True)
class AblationItem(Item):
    """An ablation's table (serial, architecture, val and test mAP) with the row chosen by val mAP marked."""

    kind: ClassVar[str] = "ablation"

    rows: list = field(default_factory=list)  # AblationRow
    note: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> AblationItem:
        return replace(super().from_dict(d), rows=[AblationRow.from_dict(r) for r in d.get("rows") or []])

    def render(self, context: Context) -> str:
        if not self.rows:
            return ""
        runs = context.runs
        done = {row.key: runs[row.key] for row in self.rows if row.key in runs and not row.skipped}
        best = run_records.best_by_val(done)
        body, notes = [], []
        for row in self.rows:
            run = runs.get(row.key, {})
            mark = " (best by val mAP)" if row.key == best else ""
            body.append([str(row.serial), (row.label or run.get("label", MISSING)) + mark, _spread(run, "val_map"),
                         _spread(run, "test_map")])
            if row.skipped:
                notes.append(f"Row {row.serial} was skipped: {row.skipped}.")
            elif run and run.get("status") != "complete":
                notes.append(f"Row {row.serial}: the run is {run.get('status')}"
                             + (f" ({run['reason']})" if run.get("reason") else "") + ".")
        table = _markdown(Table(body, ["Serial #", "Model architecture", "Val mAP", "Best mAP on test set"],
                                align=["right", "left", "right", "right"]))
        seeded = [row for row in self.rows if _seeds(runs.get(row.key, {}))]
        if seeded:
            notes.append(f"Row{'s' * (len(seeded) > 1)} {_and([str(row.serial) for row in seeded])}: mean ± standard "
                         f"deviation over {_and(sorted({str(_seeds(runs[row.key])) for row in seeded}))} seeds; the "
                         "best row is chosen by the mean val mAP.")
        return "\n\n".join(p for p in [table, " ".join(notes), self.note] if p)


@dataclass(frozen=True, kw_only=True)
class NoteItem(Item):
    """A markdown paragraph."""

    kind: ClassVar[str] = "note"

    text: str

    def render(self, context: Context) -> str:
        return self.text.strip()


@dataclass(frozen=True, kw_only=True)
class FindingItem(Item):
    """One of the seed report's findings, checked on its notebook's runs by findings.RULE when the report is built."""

    kind: ClassVar[str] = "finding"
    grouped: ClassVar[bool] = True

    finding: findings.Finding
    rule: str = findings.RULE  # the rule the notebook checked it by

    @classmethod
    def from_dict(cls, d: dict) -> FindingItem:
        return replace(super().from_dict(d), finding=findings.Finding.from_dict(d["finding"]))

    def render(self, context: Context) -> str:
        return self.render_all([(self, context)])

    @classmethod
    def render_all(cls, entries: list[tuple[FindingItem, Context]]) -> str:
        """Return one table of the findings given with their contexts, each checked on its own notebook's runs."""
        context = entries[0][1]
        if context.chance is None:
            return "_The findings need the chance level, which no notebook recorded: rebuild the report._"
        rows, rules = [], any(findings.seeded(ctx.test_maps()) for _, ctx in entries)
        for item, ctx in entries:
            rows += findings.rows([item.finding], ctx.test_maps(), ctx.labels(), ctx.chance,
                                  references=ctx.profile == "full", rules=rules)
        return _markdown(Table(rows, note=entries[0][0].rule or findings.RULE))


KINDS = {cls.kind: cls for cls in (FigureItem, TableItem, RunsItem, ResultItem, AblationItem, NoteItem, FindingItem)}


def from_dict(d: dict, source) -> Item:
    """Return the item a manifest entry describes; a UserError naming source (the manifest) for one mp3kit cannot read."""
    cls = KINDS.get(d.get("kind")) if isinstance(d, dict) else None
    if cls is None:
        kind = d.get("kind") if isinstance(d, dict) else d
        raise UserError(f"{source} holds a report item of unknown kind {kind!r}: rebuild that notebook with this "
                        "version of mp3kit (mp3kit report --only NAME).")
    try:
        return cls.from_dict(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{source} holds a {cls.kind} item that cannot be read ({type(exc).__name__}: {exc}): rebuild "
                        "that notebook with this version of mp3kit (mp3kit report --only NAME).") from exc


# ---------------------------------------------------------------- the manifest


@dataclass
class Manifest:
    """A notebook's runs, values and report items, written to path as JSON once per change for `mp3kit report`."""

    path: Path
    notebook: str
    profile: str = ""
    synthetic: bool = False
    data_root: str | None = None
    figures_dir: str | None = None  # absolute: a report built elsewhere copies each figure from there
    worked_example: bool = False
    runs: dict = field(default_factory=dict)  # key: {"run": run folder name, "label": readable label}
    values: dict = field(default_factory=dict)
    items: list = field(default_factory=list)
    _written: str | None = field(default=None, init=False, repr=False, compare=False)  # the JSON last written
    _open: int = field(default=0, init=False, repr=False, compare=False)  # changes() blocks not yet closed

    def to_dict(self) -> dict:
        """Return the manifest as its file holds it."""
        return {"notebook": self.notebook, "profile": self.profile, "synthetic": self.synthetic,
                "data_root": self.data_root, "figures_dir": self.figures_dir, "worked_example": self.worked_example,
                "runs": self.runs, "values": self.values, "report": [item.to_dict() for item in self.items]}

    @classmethod
    def from_dict(cls, d: dict, path) -> Manifest:
        """Return the manifest d describes, as read from path; a UserError for one that is not a manifest."""
        path = Path(path)
        if not isinstance(d, dict):
            raise UserError(f"{path} is not a manifest (it holds a JSON {type(d).__name__}): delete it and run its "
                            "notebook again.")
        return cls(path, d.get("notebook") or path.name.removesuffix(".manifest.json"), d.get("profile", ""),
                   bool(d.get("synthetic")), d.get("data_root"), d.get("figures_dir"), bool(d.get("worked_example")),
                   dict(d.get("runs") or {}), dict(d.get("values") or {}),
                   [from_dict(item, path) for item in d.get("report") or []])

    @classmethod
    def load(cls, path) -> Manifest:
        """Return the manifest saved at path; a UserError for a file that is not one."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:  # not JSON, or not even UTF-8 text
            what = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
            raise UserError(f"{path} is not valid JSON ({what}): delete it and run mp3kit report again.") from exc
        return cls.from_dict(d, path)

    def label(self, key: str) -> str:
        """Return the label of run key."""
        return self.runs[key]["label"]

    def labels(self) -> dict:
        """Return every run's label, by key."""
        return {key: entry["label"] for key, entry in self.runs.items()}

    def add_run(self, key: str, name: str, label: str, seeds=()) -> None:
        """Record run key as the run folder name with its label, and with several seeds every seed's run folder name."""
        self.runs[key] = {"run": name, "label": label, **({"seeds": list(seeds)} if len(seeds) > 1 else {})}
        self.save()

    def record(self, key: str, value):
        """Record a JSON value under key and return it; a UserError for a value JSON cannot hold."""
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise UserError(f"The value recorded as {key!r} is not JSON ({exc}): record numbers, strings, lists or "
                            f"dicts.") from exc
        self.values[key] = value
        self.save()
        return value

    def declare(self, item: Item) -> None:
        """Add a report item, replacing the one of the same kind, key and section where it stood."""
        same = [i for i, old in enumerate(self.items) if (old.kind, old.key, old.section) == (item.kind, item.key, item.section)]
        if same:
            self.items[same[0]] = item
        else:
            self.items.append(item)
        self.save()

    @contextmanager
    def changes(self):
        """Make the changes inside the block one change: the manifest is written once, when the block ends."""
        self._open += 1
        try:
            yield self
        finally:
            self._open -= 1
            self.save()

    def save(self) -> None:
        """Write the manifest (atomically) unless a changes() block is open or the file already holds it.

        A cell run again declares what it declared before: nothing changes, and nothing is written (each write is a
        temporary file, an fsync and a rename, slow on a mounted Drive). A file deleted or replaced since is written.
        """
        if self._open:
            return
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if text == self._written and _read(self.path) == text:
            return
        atomic_write_text(self.path, text)
        self._written = text


def _read(path: Path) -> str | None:
    """Return a file's text, or None when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- rendering helpers
# Every number an item writes goes through one of these formatters, straight from results.json.


def _f4(x) -> str:
    return MISSING if x is None else f"{x:.4f}"


def _lr(x) -> str:
    return MISSING if x is None else f"{x:g}"


def _seeds(run: dict) -> int:
    """Return over how many seeds a run's numbers are a mean (results.json's spread), or 0 for a single run."""
    spread = (run.get("spread") or {}).get("test_map") or {}
    return spread.get("n", 0) if spread.get("std") is not None else 0


def _spread(run: dict, field: str) -> str:
    """Return a run's val_map, test_map or test_loss: mean ± standard deviation over its seeds, or its own value."""
    spread = (run.get("spread") or {}).get(field) or {}
    if spread.get("std") is not None:
        return f"{_f4(spread['mean'])} ± {_f4(spread['std'])}"
    return _f4(run.get(field))


def _and(words: list) -> str:
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def _seeds_note(rows: list[dict]) -> str:
    """Return the line naming the runs whose numbers are means over several seeds ("" when none is)."""
    seeded = [f"{r['label']} ({_seeds(r)} seeds)" for r in rows if _seeds(r)]
    if not seeded:
        return ""
    return f"_Mean ± standard deviation over the seeds of: {_and(seeded)}._"


def _captioned(caption, body: str) -> str:
    return f"{caption}:\n\n{body}" if caption else body


def _markdown(table: Table) -> str:
    """Return a table's markdown without its closing line break, as the report's other parts are joined."""
    return table.to_markdown().rstrip("\n")


def _settings_table(rows: list[dict]) -> str:
    """Return a table of runs: what was set (model, optimizer, lr, epochs ...) and the test results."""
    if not rows:
        return ""
    body, notes = [], []
    for r in rows:
        c = r.get("config", {})
        epochs, done = c.get("epochs"), r.get("epochs_done")
        shown_epochs = f"{done}/{epochs}" if done is not None and epochs is not None and done != epochs else str(epochs)
        body.append([r["label"], c.get("model", MISSING), c.get("optimizer", MISSING), _lr(c.get("lr")), shown_epochs,
                     str(c.get("batch_size", MISSING)), c.get("augment", MISSING), str(c.get("image_size", MISSING)),
                     _spread(r, "val_map"), _spread(r, "test_map"), _spread(r, "test_loss")])
        if r.get("status") != "complete":
            notes.append(f"_{r['label']}: the run is {r.get('status')}"
                         + (f" ({r['reason']})" if r.get("reason") else "") + "._")
    columns = ["Experiment", "Model", "Optimizer", "Learning rate", "Epochs", "Batch", "Augment", "Image", "Val mAP",
               "Test mAP", "Avg test loss"]
    align = ["left"] * 3 + ["right"] * 3 + ["left"] + ["right"] * 4
    seeds = _seeds_note(rows)
    notes += [seeds] if seeds else []
    return _markdown(Table(body, columns, align=align)) + ("\n\n" + "\n".join(notes) if notes else "")


def _ap_table(rows: list[dict]) -> str:
    """Return a table of test AP per class, one column per run, with each run's mAP at the bottom."""
    rows = [r for r in rows if r.get("test_ap")]
    if not rows:
        return ""
    body = [[cls, *(_f4(_class_ap(r, cls)) for r in rows)] for cls in rows[0]["test_ap"]]
    body.append(["**mAP**", *(f"**{_spread(r, 'test_map')}**" for r in rows)])
    table = _markdown(Table(body, ["Class", *(str(r["label"]) for r in rows)], align=["left"] + ["right"] * len(rows)))
    seeded = [f"{r['label']} ({_seeds(r)} seeds)" for r in rows if _seeds(r)]
    return table + (f"\n\n_AP per class: the mean over the seeds of {_and(seeded)}; their mAP: mean ± standard "
                    "deviation._" if seeded else "")


def _class_ap(run: dict, cls: str):
    """Return a run's test AP of class cls: the mean over its complete seeds when it ran with several."""
    if not _seeds(run):
        return run["test_ap"].get(cls)
    values = [s["test_ap"].get(cls) for s in run.get("seeds", []) if s.get("status") == "complete" and s.get("test_ap")]
    values = [v for v in values if v is not None]
    return run_records.mean_and_std(values)[0]


def _best_line(rows: list[dict], chance) -> str:
    """Return the line naming the run with the highest val mAP (test mAP only reports), or saying none stands out."""
    if len([r for r in rows if r.get("test_map") is not None]) < 2:
        return ""
    key = run_records.best_by_val(dict(enumerate(rows)))
    if key is None:
        return "No run here has a val mAP to choose by (runs trained on trainval hold none out), so none is named best."
    best = rows[key]
    test = run_records.mean_and_std(run_records.seed_values(best, "test_map"))[0]
    if chance is not None and test is not None and test < NEAR_CHANCE * chance:
        # Differences of a few thousandths near chance are noise: naming a winner would mislead.
        return (f"Every run here is near chance ({_f4(chance)}, the mAP of a network that has learned nothing), "
                f"the best by val mAP at test mAP {_spread(best, 'test_map')}: none has learned much yet.")
    mean = " (means over its seeds)" if _seeds(best) else ""
    return (f"Best by val mAP (chosen on val; test mAP only reports): **{best['label']}**, val mAP "
            f"{_spread(best, 'val_map')}, test mAP {_spread(best, 'test_map')}{mean}.")
