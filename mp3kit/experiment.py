"""The Experiment helper behind the three notebooks.

A notebook names a profile (how big its experiments are; mp3kit.config.PROFILES) and gives each of its runs a key;
Experiment turns the profile plus a few changes into a TrainConfig, trains it with train.fit
(reusing a run already complete on disk with the same config and data, resuming one that was
interrupted), and keeps a manifest of runs, values and report items that `mp3kit report` reads
(mp3kit.items.Manifest: <runs_dir>/<notebook>.manifest.json).

The runs folder and the figures folder default to the profile's (mp3kit.layout: <project>/runs/<profile> and its
figures/), the folders `mp3kit report` reads, so a report built from the runs folder alone (Experiment.build_report,
`mp3kit report --no-execute`) finds every run and figure the notebook made.

A notebook declares what it gives the report where it makes it (Experiment.figure, table, result, note, ablation,
finding, kaggle_csv, check_pretrained); each item (mp3kit.items: one class per kind) goes to the report template's
marker named by its section (default: its own key), in the order declared. The report draws every number of runs,
result and ablation items from the run records, when it is built.

Environment variables (named in mp3kit.settings): settings.PROFILE gives the notebooks' default PROFILE (nbval
runs them with smoke); settings.QUIET hides (1) or shows (0) progress bars. With it unset, bars show in IPython
and Jupyter front ends and in a terminal; `mp3kit report` and the test suite set it to 1.
"""

from __future__ import annotations

import re
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mp3kit import data as voc
from mp3kit import estimate, explain, findings, items, kaggle, layout, metrics, models, plots, runs, settings, synth, train
from mp3kit.ablation import DECISIVE_ROWS, Ablation, plan_ablation, run_ablation, worked_example_rows
from mp3kit.config import TrainConfig, get_profile
from mp3kit.metrics import NoPositivesWarning
from mp3kit.runs import Run
from mp3kit.table import Table
from mp3kit.usermodel import UserModel
from mp3kit.util import UserError

PROFILE_ENV = settings.PROFILE
QUIET_ENV = settings.QUIET
SPLIT_NAMES = ("train", "val", "test")
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def default_profile() -> str:
    """Return the profile the environment names (mp3kit.settings.profile), or quick."""
    return settings.profile("quick")


def show_progress() -> bool:
    """Return True when progress bars help: settings.quiet() when set (mp3kit report and the test suite set it for the
    notebooks they run), else in a notebook or IPython, and in a terminal."""
    quiet = settings.quiet()
    if quiet is not None:
        return not quiet
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return bool(shell) or sys.stderr.isatty()


def _has_voc_tree(root) -> bool:
    """Return True when root holds a VOC2007 folder (complete or not)."""
    try:
        voc.find_voc_dir(root)
    except UserError:
        return False
    return True


class Experiment:
    """One notebook's runs, figures and values under a profile, recorded in a manifest for the report."""

    def __init__(self, notebook: str, profile=None, data_root=None, runs_dir=None, figures_dir=None, *,
                 retrain: bool = False, quiet: bool | None = None, worked_example: bool = False):
        self.notebook = Path(str(notebook)).stem  # "01_introduction" (a path or .ipynb name works too)
        self.profile = get_profile(profile or default_profile()).for_notebook(self.notebook)
        self.runs_dir = layout.runs_folder(self.profile.name, runs_dir)
        self.figures_dir = layout.figures_folder(self.profile.name, self.runs_dir, figures_dir)
        self.retrain = retrain
        self.progress = show_progress() if quiet is None else not quiet
        # worked_example: the notebook runs the seed report's answers as a demonstration, not the student's own work;
        # its runs get their own names (03-quick-example-<key>) and every label says "worked example".
        self.worked_example = bool(worked_example)
        self.prefix = f"{self.notebook.split('_', 1)[0]}-{self.profile.name}"  # run names: 01-quick-<key>
        if self.worked_example:
            self.prefix += "-example"
        self.requested_root = data_root
        self.data_root, self.synthetic = self._resolve_data(data_root)
        self._data: dict = {}
        self.data = self._data_for(self.profile.train.get("max_images"))
        self.runs: dict[str, Run] = {}
        self._timings: dict = {}  # estimate.Timing per kind of training step (estimate.timing_key), measured once
        self._networks: dict[str, UserModel] = {}  # run folder name -> the student's network that trained it
        self.manifest = items.Manifest(self.runs_dir / f"{self.notebook}.manifest.json", self.notebook, self.profile.name,
                                       synthetic=self.synthetic, data_root=str(self.data_root),
                                       figures_dir=str(self.figures_dir.absolute()), worked_example=self.worked_example)
        self.chance_map = self.record("chance_map", metrics.chance_map(self.data.test.targets, self.data.test.difficult))
        print(self.notice())

    # ------------------------------------------------------------------ data

    def _resolve_data(self, data_root) -> tuple[Path, bool]:
        """Return the VOC root to use and whether it is synthetic, refusing synthetic data in the full profile."""
        hint = "run `mp3kit data fetch --root data/voc` and set DATA_ROOT = \"data/voc\""
        if data_root is not None and str(data_root).strip() and _has_voc_tree(data_root):
            root = Path(data_root).expanduser()
            synthetic = train.load_data(root, max_images=2).synthetic
            if synthetic and self.profile.real_data:
                raise UserError(f"PROFILE \"full\" trains on real VOC 2007 but DATA_ROOT = {str(data_root)!r} holds the "
                                f"synthetic dataset: {hint}, or use PROFILE = \"quick\".")
            return root, synthetic
        if self.profile.real_data:
            where = "DATA_ROOT is not set" if data_root is None else f"DATA_ROOT = {str(data_root)!r} holds no VOC 2007 tree"
            raise UserError(f"PROFILE \"full\" trains on real VOC 2007 but {where}: {hint}, or use PROFILE = \"quick\" "
                            "for the embedded synthetic dataset.")
        return synth.ensure_synthetic(progress=self.progress), True

    def _data_for(self, max_images) -> train.Data:
        """Return the train, val and test splits capped at max_images, loading them once."""
        if max_images not in self._data:
            self._data[max_images] = train.load_data(self.data_root, max_images)
        return self._data[max_images]

    def notice(self) -> str:
        """Return the one-line statement of which data and profile this notebook uses."""
        sizes = " / ".join(f"{len(getattr(self.data, s))} {s}" for s in SPLIT_NAMES)
        config = self.config()
        setup = f"profile {self.profile.name}: {config.image_size} px, batch {config.batch_size}, {config.epochs} epochs"
        if config.width != 1:
            setup += f", AlexNet and spec networks at width {config.width:g}"
        if not self.synthetic:
            return f"Using PASCAL VOC 2007 from {self.data_root} ({sizes} images); {setup}."
        asked = self.requested_root
        why = f"No VOC tree in {asked}, so using" if asked is not None and str(asked).strip() else "Using"
        return (f"{why} the embedded SYNTHETIC dataset: generated shapes, not real photographs, so its numbers say "
                f"nothing about real VOC ({sizes} images); {setup}.")

    def data_table(self) -> Table:
        """Return the images and positive images per class of the train, val and test splits in use."""
        rows = [{"class": name, **{s: int(getattr(self.data, s).targets[:, c].sum()) for s in SPLIT_NAMES}}
                for c, name in enumerate(voc.VOC_CLASSES)]
        rows.append({"class": "images", **{s: len(getattr(self.data, s)) for s in SPLIT_NAMES}})
        return Table(rows, ["class", *SPLIT_NAMES], note="Positive images per class (difficult-only not counted).")

    # ------------------------------------------------------------------ runs

    def config(self, **changes) -> TrainConfig:
        """Return the profile's TrainConfig with changes applied (course defaults for everything else)."""
        return TrainConfig(**{**self.profile.train, **changes})

    @property
    def epochs(self) -> int:
        """Return the epochs of an ordinary run in this profile (full: the course's 20)."""
        return self.profile.epochs

    @property
    def long_epochs(self) -> int:
        """Return the epochs of a "longer training" run in this profile (full: 40, as in the seed report)."""
        return self.profile.long_epochs

    @property
    def final_epochs(self) -> int:
        """Return the epochs of notebook 3's final model in this profile."""
        return self.profile.final_epochs

    @property
    def width(self) -> float:
        """Return the width this profile builds networks at: 1 on full, 1/8 on quick and smoke (to train on a CPU).

        mp3kit scales its own networks (AlexNet, specs); give your class a width argument that defaults to this to
        do the same (notebook 3's Classifier does).
        """
        return float(self.config().width)

    def run_name(self, key: str) -> str:
        """Return the run folder name of key, e.g. 01-quick-simple-default."""
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or ".." in key:
            raise UserError(f"Run key {key!r} is not valid: use letters, digits, '-', '_' or '.' (not '..'), "
                            "e.g. \"simple-adam\".")
        return f"{self.prefix}-{key}"

    def run(self, key: str, config=None, label: str | None = None, seeds: int = 1) -> Run:
        """Train config as run key (reusing a complete run with the same config), record it, print its numbers, return it.

        seeds: train the same config with that many seeds, config.seed, config.seed + 1, ..., each its own run (run
        names <key> for the first, then <key>-seed<seed>); the returned run is the first, with every seed's run in its
        seeds. Tables and the report show the mean ± standard deviation of the seeds, "best by val mAP" compares
        means, and the findings judge differences by the measured spread.
        """
        config = self._as_config(config)
        seeds = seed_count(seeds)
        keys = runs.seed_names(key, config.seed, seeds)
        group = [self._train(k, config.replace(seed=config.seed + i)) for i, k in enumerate(keys)]
        run = group[0]
        if seeds > 1:
            run.seeds = group
            print(spread_line(key, run))
        self.runs[key] = run
        label = label or key
        if self.worked_example and not label.startswith(WORKED_EXAMPLE):
            label = f"{WORKED_EXAMPLE}: {label}"
        self.manifest.add_run(key, self.run_name(key), label, [r.name for r in group])
        return run

    def _train(self, key: str, config: TrainConfig) -> Run:
        """Train (or reuse, or resume) config as run key and print its line; a diverging run comes back failed."""
        name, expected = self.run_name(key), None
        if self.progress or estimate.timing_key(config) in self._timings:
            # A person watching is told how long it will take before the time is spent; after the notebook's plan
            # (exp.estimate) the timing is here already. Either way the run keeps its estimate (fit's expected).
            expected = self._estimate(config, name)
            if self.progress and expected.timing is not None:
                print(expected.line(key), flush=True)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                if config.max_images is not None:
                    # A capped test split may lack a class; its AP is NaN and the report shows it as such.
                    warnings.simplefilter("ignore", NoPositivesWarning)
                # fit decides: reuse a complete run with this config and data, resume an unfinished one, or train.
                run = train.fit(config, name=name, runs_dir=self.runs_dir, resume=False if self.retrain else "auto",
                                reuse=not self.retrain, progress=self.progress, data=self._data_for(config.max_images),
                                expected=expected.record() if expected and expected.timing else None)
        except train.NonFiniteLoss as exc:
            run = runs.load_run(self.runs_dir / name)
            print(f"{key}: FAILED, {exc}")
        else:
            if run.moved_aside and not self.progress:  # with progress on, fit has said so
                print(f"{key}: the earlier run {name} moved to {run.moved_aside} (kept, listed by mp3kit runs).")
            print(self._run_line(key, run, None if run.origin == "reused" else time.perf_counter() - t0))
        if isinstance(config.model, UserModel):  # Grad-CAM rebuilds the network from its class (explain.cam_rows)
            self._networks[name] = config.model
        return run

    def _estimate(self, config: TrainConfig, name: str) -> estimate.Estimate:
        """Return how long fit will take for config as run name here, measuring each kind of step once."""
        data = self._data_for(config.max_images)
        expected = estimate.estimate_run(config, data, path=self.runs_dir / name, resume=False if self.retrain else "auto",
                                         reuse=not self.retrain, timing=self._timings.get(estimate.timing_key(config)))
        if expected.timing is not None:
            self._timings[estimate.timing_key(config)] = expected.timing
        return expected

    def estimate(self, plan: dict) -> None:
        """Print how long the runs of plan will take on this device, and record it in the manifest ("estimate": the
        total and each run's seconds, by run folder name).

        plan maps each run key to what exp.run will train there: a config (a TrainConfig, or a dict of changes to the
        profile's), or an estimate.Planned for one trained with several seeds or chosen later among candidates
        (exp.ablation_plan gives notebook 3's). Finished runs with the same settings cost nothing (they are reused),
        and so does each finished seed; an interrupted one costs its remaining epochs; a config chosen later costs
        what the candidate already in its folder costs, else what the slowest costs. A few steps of each kind of
        network are timed here (mp3kit.estimate; a pretrained one with fresh weights, so its ImageNet file need not be
        there yet); past an hour, a plain warning says what to do about Colab's sessions.
        """
        rows, total, recorded = [], 0.0, {}
        for key, entry in plan.items():
            entry = entry if isinstance(entry, estimate.Planned) else estimate.Planned(entry)
            configs, seeds = [self._as_config(c) for c in entry.configs], seed_count(entry.seeds)
            names = [self.run_name(k) for k in runs.seed_names(key, configs[0].seed, seeds)]
            found = [self._expected([c.replace(seed=c.seed + i) for c in configs], name) for i, name in enumerate(names)]
            expected = [e for e, _ in found]
            seconds = sum(e.seconds for e in expected)
            total += seconds
            recorded.update({name: round(e.seconds, 2) for name, e in zip(names, expected)})
            slowest = len(configs) if any(guessed for _, guessed in found) else 1
            rows.append({"run": key, "what happens": plan_line(expected, slowest), "estimate": estimate.duration(seconds)})
        devices = sorted({t.device for t in self._timings.values()}) or ["this machine"]
        print(Table(rows, ["run", "what happens", "estimate"], align=["left", "left", "right"]).to_text())
        warning = estimate.long_warning(total)
        print(f"This notebook's runs still to train: about {estimate.duration(total)} on {', '.join(devices)}."
              + (f" {warning}" if warning else ""))
        self.record("estimate", {"seconds": round(total, 2), "devices": devices, "runs": recorded})

    def _expected(self, configs: list, name: str) -> tuple[estimate.Estimate, bool]:
        """Return how long fit will take for run name trained with one of configs, and whether that is a guess: the one
        its folder already holds (finished or interrupted), else the slowest (a guess when there are several)."""
        found = [self._estimate(config, name) for config in configs]
        started = [e for config, e in zip(configs, found) if e.epochs < config.epochs]
        return (started[0], False) if started else (max(found, key=lambda e: e.seconds), len(found) > 1)

    def ablation_plan(self, rows, seeds=1, final: dict | None = None, epochs: int | None = None) -> dict:
        """Return the runs exp.ablation(rows, epochs, seeds=seeds) and exp.final(ablation, **final) will train, as
        exp.estimate takes them: every row whose network takes this profile's images, with its seeds, and the final
        model, whose row val chooses once the ablation has trained (until then, any row may be it)."""
        return plan_ablation(rows, self.config(epochs=epochs or self.epochs), seeds, final)

    def _as_config(self, config) -> TrainConfig:
        """Return config as a TrainConfig: None is the profile's, a dict holds changes to it."""
        if config is None:
            return self.config()
        if isinstance(config, dict):
            return self.config(**config)
        if not isinstance(config, TrainConfig):
            raise UserError(f"Experiment.run got a {type(config).__name__}: pass exp.config(...) or a dict of "
                            f"TrainConfig changes.")
        return config

    def _run_line(self, key: str, run: Run, seconds) -> str:
        """Return the one line printed when a run finishes or is reused."""
        if run.status != "complete":
            return f"{key}: {run.status} after {len(run.history)} epochs ({run.reason}); run the cell again to resume it."
        how = f"trained in {seconds:.0f} s" if seconds is not None else "reused from disk"
        val = f"val mAP {run.val_map:.4f}, " if run.val_map is not None else ""
        return (f"{key}: {val}test mAP {run.test_map:.4f}, average test loss {run.test_loss:.4f} "
                f"({len(run.history)} epochs, {how})")

    def map_conventions(self, run: Run) -> Table:
        """Return run's test mAP under the three conventions: mp3kit's (all points, difficult-only left out, as VOC
        since 2010), VOC 2007's devkit (11-point interpolated) and the course kit's (difficult-only counted as
        positive), which the Kaggle CSV follows."""
        scores = runs.load_test_scores(run)
        conventions = [("mp3kit, as VOC since 2010: every point, difficult-only left out", {}),
                       ("VOC 2007 devkit: 11-point interpolated, difficult-only left out", {"voc07": True}),
                       ("the course kit and the Kaggle CSV: every point, difficult-only as positive", {"count_difficult": True})]
        rows = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoPositivesWarning)  # a capped (smoke) test split may lack a class
            for name, options in conventions:
                rows.append({"AP convention": name, "test mAP": metrics.mean_average_precision(
                    scores["targets"], scores["scores"], scores["difficult"], **options)})
        return Table(rows, ["AP convention", "test mAP"], note="Every other test mAP here uses the first convention.")

    def labelled(self, *runs_or_keys) -> list[Run]:
        """Return runs (given by key or as Runs of this notebook) renamed to their labels, for readable plot legends."""
        by_name = {run.name: key for key, run in self.runs.items()}
        out = []
        for item in runs_or_keys:
            key = by_name.get(item.name) if isinstance(item, Run) else item
            if key not in self.runs:
                continue  # a run this notebook skipped (e.g. the pretrained one without weights)
            out.append(replace(self.runs[key], name=self.manifest.label(key)))
        return out

    def runs_table(self, keys=None) -> Table:
        """Return a table of runs (default: every run so far): label, epochs, val and test mAP, average test loss.

        Its note names the run with the highest val mAP: val chooses, test only reports.
        """
        keys = list(self.runs) if keys is None else [k for k in keys if k in self.runs]
        seeded = any(self.runs[key].seeds for key in keys)
        rows = []
        for key in keys:
            run = self.runs[key]
            rows.append({"run": self.manifest.label(key), "epochs": len(run.history), "val mAP": runs.as_shown(run, "val_map"),
                         "test mAP": runs.as_shown(run, "test_map"), "avg test loss": runs.as_shown(run, "test_loss"),
                         **({"seeds": len(run.seeds) or 1} if seeded else {}), "status": run.status})
        note = f"Chance (a network that learned nothing): test mAP {self.chance_map:.4f}."
        if seeded:
            note = "A run with several seeds shows the mean ± standard deviation of its complete seeds. " + note
        best = runs.best_by_val({key: self.runs[key] for key in keys})
        if best is not None and len(keys) > 1:
            means = " mean" if seeded else ""
            note = (f"Best by{means} val mAP (the last epoch's; test mAP only reports): {self.manifest.label(best)}. "
                    + note)
        if self.synthetic:
            note += " Synthetic data: the numbers compare settings on generated shapes, not on VOC."
        columns = ["run", "epochs", "val mAP", "test mAP", "avg test loss", *(["seeds"] if seeded else []), "status"]
        return Table(rows, columns, note)

    def ablation(self, rows, epochs: int | None = None, section: str | None = None, seeds=1) -> Ablation:
        """Train an ablation, one run per row, and return it with the row chosen by val mAP; the report shows its table.

        Each row is (label, network, recipe): the network a class, a callable returning a module (e.g.
        lambda: Classifier(bn=True)), a spec or a model name; the recipe a dict of TrainConfig fields on top of the
        profile's, e.g. {"optimizer": "adam", "lr": 1e-4}. Runs are keyed ablation-1, ablation-2, ... A row whose
        network cannot take this profile's images is skipped and says so. The best row is the one with the highest
        val mAP after its last epoch; test mAP is measured and shown, never used to choose. seeds: how many seeds each
        row trains with (see run), a number for every row or a dict {serial: seeds} for some; a row with several shows
        the mean ± standard deviation, and is chosen by its mean val mAP.
        """
        ablation = run_ablation(rows, self.config(epochs=epochs or self.epochs), self.run, self.chance_map, seeds)
        self._declare(items.AblationItem, "ablation", section, rows=ablation.recorded, note=ablation.note)
        return ablation

    def worked_example_rows(self, adam_lr: float = 1e-4, augment: str = "jitter-flip-rotate") -> list:
        """Return the seed report's ablation as (label, network, recipe) rows: a worked example, not an answer."""
        return worked_example_rows(adam_lr, augment)

    def worked_example_seeds(self) -> dict:
        """Return the seeds of the worked example's rows as exp.ablation takes them: the profile's decisive_seeds for
        the rows whose differences decide finding 9 by a few hundredths (ablation.DECISIVE_ROWS), one for the rest."""
        return {serial: self.profile.decisive_seeds for serial in DECISIVE_ROWS}

    def final(self, ablation: Ablation, key: str = "final", **changes) -> Run:
        """Train the network and recipe of the ablation's best row (chosen by val mAP) again with changes (e.g. more
        epochs, train_split="trainval", tta="flip") as the final model; return its run."""
        config = ablation.best_config(**changes)
        return self.run(key, config, label=ablation.best_label(config))

    def own_work(self, run: Run, section: str | None = None) -> None:
        """Say (printed, and in the report's section) whether run's network is the student's own work: not the worked
        example and not the notebook's starter network unchanged."""
        config = TrainConfig.from_dict(run.config)
        if self.worked_example:
            text = ("**Worked example, not part 1B:** this notebook ran the seed report's network and ablation "
                    "(WORKED_EXAMPLE = True) to show how mp3kit works. Part 1B asks for your own network: set "
                    "WORKED_EXAMPLE = False and make the notebook's Classifier yours.")
        elif isinstance(config.model, UserModel) and config.model.code_digest in STARTER_CODE:
            text = (f"**Part 1B is not done yet:** the final network is the notebook's starter {config.model.name} "
                    f"(the course's BaseNet), unchanged. Design your own: change the class (see the hints in its cell) "
                    f"and the ablation's rows.")
        else:
            text = f"The final network is the student's own: {config.model_label()}."
        print(text.replace("**", ""))
        self.note("own-work", text, section)

    def check_pretrained(self, sections=()) -> str | None:
        """Return None when the ImageNet AlexNet weights load offline, else print why not and say so in sections.

        The first section gets the reason; the others a line saying the pretrained results are missing.
        """
        try:
            models.alexnet(pretrained=True)
        except UserError as exc:
            reason = str(exc)
            with self.manifest.changes():
                self.record("pretrained_unavailable", reason)
                for i, section in enumerate(sections):
                    self.note("pretrained-unavailable", pretrained_notice(reason, full=i == 0), section)
            print(f"Skipping the ImageNet-pretrained AlexNet. {reason}")
            return reason
        return None

    def architecture(self, model="simple") -> models.ArchTable:
        """Return the layer table of a network (a name, spec, class or callable) at this profile's image size.

        Building it runs one image through the network first: a network whose shapes do not fit, or that does not
        return one score per class, stops here with a sentence naming the layer, before any training.
        """
        config = self.config(model=model)
        size = config.image_size
        with torch.device("meta"):  # shapes and counts only: no memory, no initialisation
            arch = models.architecture_table(train.build_model(config), (3, size, size))
        if isinstance(config.model, UserModel):
            arch.code = config.model.code
        return arch

    def kaggle_csv(self, run: Run, path=None, section: str | None = None, *, count_difficult: bool = True) -> Path | None:
        """Write run's Kaggle CSV (1 - AP per class, default in its run folder), record its path and score, return the path.

        The APs come from the run's recorded test scores under the convention count_difficult picks: True (the
        default) counts difficult-only labels as positives, as the course's kit and so its leaderboard do; False
        leaves them out, as VOC and this kit's test mAP do (kaggle.kaggle_aps). With section, the report says there
        where the CSV is, its score and its convention (or why there is none).
        """
        aps = kaggle.kaggle_aps(run, count_difficult) if run.complete else None
        if aps is None or np.isnan(aps).any():
            print(f"No Kaggle CSV: {run.name} has no AP for some class (a capped test split without a positive image; "
                  "the quick and full profiles test on every image).")
            if section:
                self.note("kaggle", kaggle_notice(None, None, self.synthetic), section)
            return None
        path = kaggle.write_kaggle_csv(Path(path) if path is not None else run.path / "kaggle.csv", aps)
        score = kaggle.kaggle_score(path)
        with self.manifest.changes():
            self.record("kaggle_csv", str(path))
            self.record("kaggle_score", score)
            self.record("kaggle_convention", "course" if count_difficult else "voc")
            if section:
                self.note("kaggle", kaggle_notice(path, score, self.synthetic, count_difficult), section)
        kind = " on SYNTHETIC data, not a leaderboard number" if self.synthetic else ""
        print(f"Wrote {path}: Kaggle score (1 - mAP) {score:.5f}, {kaggle.convention(count_difficult)}{kind}.")
        return path

    # ------------------------------------------------------------------ what the notebook gives the report

    def figure(self, key: str, caption: str = "", section: str | None = None) -> Path:
        """Return the PNG path of figure key under figures_dir; the report shows it with caption in section."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        self._declare(items.FigureItem, key, section, caption=caption or key, file=f"{key}.png")
        return self.figures_dir / f"{key}.png"

    def table(self, key: str, table, caption: str = "", section: str | None = None, *, per_class: bool = False,
              best: bool = False):
        """Give the report a table in section and return it for display: a Table (or markdown), or a list of run keys.

        Run keys make a table of those runs drawn from their records when the report is built: their settings and
        test results, or with per_class their test AP per class; best adds a line naming the highest test mAP
        (or saying that every run is near chance).
        """
        if isinstance(table, (list, tuple)):
            self._declare(items.RunsItem, key, section, caption=caption, runs=list(table),
                          columns="ap" if per_class else "settings", best=best)
            return self.runs_table(table)
        markdown = table if isinstance(table, str) else table.to_markdown()
        if getattr(table, "code", ""):  # a student's network: its code beside its layers
            markdown = markdown.rstrip() + f"\n\nThe network's code, as recorded with its runs:\n\n```python\n{table.code}\n```\n"
        self._declare(items.TableItem, key, section, caption=caption, markdown=markdown)
        return table

    def result(self, key: str, caption: str, section: str | None = None) -> None:
        """Give the report the headline of run key in section: caption, its label, test mAP and average test loss."""
        self._declare(items.ResultItem, key, section, caption=caption)

    def note(self, key: str, text: str, section: str | None = None) -> None:
        """Give the report a markdown paragraph in section."""
        self._declare(items.NoteItem, key, section, text=text)

    def lr_find(self, config=None, steps: int | None = None, key: str = "lr-find", section: str | None = None) -> dict:
        """Run an lr range test of config on this notebook's data, plot it, print the suggested lr and range, return it.

        The loss is recorded over steps batches (default: 200, the smoke profile 30) while the lr rises from 1e-6
        to 1; the suggestion is where the smoothed loss falls fastest (see train.lr_range_test). Nothing is trained
        for keeps: use the suggestion in a run's config.
        """
        config = self._as_config(config)
        steps = steps or (30 if self.profile.name == "smoke" else 200)
        found = train.lr_range_test(config, data=self._data_for(config.max_images), steps=steps, progress=self.progress)
        with self.manifest.changes():
            plots.plot_lr_find(found, path=self.figure(key, f"Learning-rate range test ({config.optimizer})", section),
                               title=f"Learning-rate range test, {config.model_label()} with {config.optimizer}",
                               synthetic=self.synthetic)
            self.record(key, {k: found[k] for k in ("suggested_lr", "range")})
        line = train.suggestion_line(found, f"{key} ({config.optimizer})")
        print(line if found["suggested_lr"] is None else f"{line}: try lrs in that range.")
        return found

    # ------------------------------------------------------------------ why a network scores what it scores

    def runs_from(self, notebook: str, *keys) -> list[Run]:
        """Return the complete runs another notebook recorded under keys in this runs folder, renamed to their labels;
        a key it has not run (yet) is left out and named."""
        manifest = self.runs_dir / f"{Path(str(notebook)).stem}.manifest.json"
        recorded = items.Manifest.load(manifest).runs if manifest.exists() else {}
        found = {key: runs.load_run(self.runs_dir / recorded[key]["run"]) for key in keys if key in recorded
                 and (self.runs_dir / recorded[key]["run"] / "config.json").exists()}
        found = {key: run for key, run in found.items() if run.complete}
        missing = [key for key in keys if key not in found]
        if missing:
            print(f"Not in {self.runs_dir}: {notebook}'s {', '.join(missing)} (run that notebook first to compare with it).")
        return [replace(run, name=recorded[key]["label"]) for key, run in found.items()]

    def _explained(self, runs_or_keys) -> list[Run]:
        """Return runs given by key (this notebook's, labelled) or as Runs; keys this notebook did not run are left out."""
        given = runs_or_keys if isinstance(runs_or_keys, (list, tuple)) else [runs_or_keys]
        shown = [run for item in given
                 for run in (self.labelled(item) if isinstance(item, str) or item.path.name in self._names() else [item])]
        if not shown:
            raise UserError(f"None of the runs {list(given)} is complete in this notebook: run their cells first.")
        return shown

    def _names(self) -> set[str]:
        return {run.path.name for run in self.runs.values()}

    def _explanation_key(self, what: str) -> str:
        """Return the figure key of an explanation, e.g. 01-predictions: the notebooks share one figures folder."""
        return f"{self.notebook.split('_', 1)[0]}-{what}"

    def _val(self, run: Run):
        """Return the val split run was validated on (this profile's, capped as the run was)."""
        return self._data_for(run.config.get("max_images")).val

    def show_predictions(self, runs_or_keys, n: int = 6, key: str | None = None, caption: str = "",
                         section: str | None = None) -> None:
        """Show n val images with their true classes and each run's top scores, marked present, missed or false positive
        (thresholds chosen per class on val for the best F1, never on test), the runs in rows on the same images; the
        report gets the figure."""
        shown, key = self._explained(runs_or_keys), key or self._explanation_key("predictions")
        note, title = explain.prediction_note(shown), caption or f"Predictions on {n} val images"
        explain.show_predictions(shown, self._val(shown[0]), n=n, models=self._networks, title=title,
                                 path=self.figure(key, f"{title}. {note}", section))
        print(note)

    def context_errors(self, run, k: int = 5, expect=None, key: str | None = None, section: str | None = None) -> Table:
        """Show, per class, run's k highest-scoring val images without it and the classes they hold: a figure of the
        strongest classes and the table (returned), both for the report. expect=(cls, context), e.g. ("chair",
        "diningtable"), also says in one measured sentence whether the network sees cls where there is only context."""
        (shown,), key = self._explained([run]), key or self._explanation_key("context-errors")
        split = self._val(shown)
        errors = explain.context_errors(shown, split, k=k, model=self._networks.get(shown.path.name))
        what = f"{shown.name}: the classes held by the val images without a class that it scores highest for it"
        with self.manifest.changes():
            explain.show_context_errors(errors, split, path=self.figure(key, what, section), synthetic=self.synthetic)
            if expect is not None:
                text = errors.statement(*expect)
                print(text)
                self.note(f"{key}-statement", text, section)
            return self.table(key, errors.table(), f"Errors that come with another class ({shown.name})", section)

    def grad_cam(self, runs_or_keys, cls, n: int = 4, layer: str | None = None, key: str | None = None,
                 section: str | None = None) -> None:
        """Show Grad-CAM maps of class cls (Captum's LayerGradCam on each network's last convolution, or layer) on n val
        images holding it, one row per run, and say how often each map peaks inside a box of the class; the report
        gets the figure and the sentence."""
        shown, key = self._explained(runs_or_keys), key or self._explanation_key("grad-cam")
        split = self._val(shown[0])
        name, why = explain.class_to_explain(split, cls)
        if why:
            print(why)
        caption = f"Grad-CAM for {name}: where each network looks on val images holding one"
        with self.manifest.changes():
            text = explain.show_grad_cam(shown, name, split, n=n, layer=layer, models=self._networks,
                                         path=self.figure(key, caption, section))
            print(text)
            self.note(f"{key}-peaks", text, section)

    def finding(self, number, text: str, claims, *, seed: str = "", published: str = "",
                section: str = "findings") -> str:
        """Check one of the seed report's findings on this notebook's runs, print the verdict, and give the report its row.

        claims: (kind, run key, ...) tuples or findings.Claim objects, kind one of findings.KINDS, e.g.
        ("beats", "simple-adam", "simple-default") or ("near_chance", "alexnet-scratch-sgd"). seed and published:
        the seed report's and published figures, shown beside this report's on the full profile. The report
        checks the finding again from results.json, by the rule in findings.RULE.
        """
        finding = as_finding(number, text, claims, seed, published)
        verdict, line = verdict_line(finding, self.runs, self.manifest.labels(), self.chance_map)
        print(line)
        self._declare(items.FindingItem, f"finding-{finding.number}", section, finding=finding, rule=findings.RULE)
        return verdict

    def data_summary(self) -> str:
        """Return the sentence saying which data this notebook uses and its chance level, for the report."""
        return data_notice(self.synthetic, self.data_root, self.chance_map)

    def _declare(self, kind: type[items.Item], key: str, section: str | None, **content) -> None:
        """Give the report an item of kind (in section, default key), replacing one of the same kind, key and section."""
        self.run_name(key)  # the same rules for every key
        self.run_name(section or key)
        self.manifest.declare(kind(key, section or key, **content))

    def record(self, key: str, value):
        """Record a JSON value (a number, string, list or dict) under key for the report, and return it."""
        return self.manifest.record(key, value)

    def build_report(self, report_dir=None, *, download: bool = True) -> Path | None:
        """Build report.md, report.html and figures/ from the runs in runs_dir (nothing is trained), zip them; return the zip.

        The report goes to report_dir, default the report folder beside the runs (mp3kit.layout.report_folder);
        it covers every notebook with a manifest in runs_dir, and a report.md already there keeps its prose. In Colab
        the zip is offered as a download (download=False: not); elsewhere its path is printed. While `mp3kit report`
        executes the notebook, this does nothing: that build follows.
        """
        from mp3kit import report

        if settings.report_running():
            print("mp3kit report is executing this notebook and builds the report after it: nothing to do here.")
            return None
        report_dir = Path(report_dir) if report_dir is not None else layout.report_folder(self.runs_dir, self.profile.name)
        try:
            report.build(self.profile.name, runs_dir=self.runs_dir, report_dir=report_dir, execute=False)
            archive = report.zip_report(report_dir)
        except OSError as exc:  # Drive full or gone: the build and the zip replace what was there only when complete
            raise UserError(f"Could not write the report in {report_dir} ({exc.strerror or exc}): free some space "
                            f"(on Drive too) and run this cell again; what was there is as it was.") from exc
        if download and "google.colab" in sys.modules:
            from google.colab import files

            files.download(str(archive))
            print(f"Your browser is downloading {archive.name} (report.md, report.html, figures/); a copy stays in "
                  f"{report_dir}.")
        else:
            print(f"All of it in one file: {archive}")
        return archive

    @property
    def manifest_path(self) -> Path:
        return self.manifest.path

    def __repr__(self) -> str:
        return f"Experiment({self.notebook!r}, profile={self.profile.name!r}, runs={list(self.runs)})"


def as_finding(number, text: str, claims, seed: str = "", published: str = "") -> findings.Finding:
    """Return one of the seed report's findings, its claims given as (kind, run key, ...) tuples or findings.Claim."""
    claims = tuple(c if isinstance(c, findings.Claim) else _claim(c, number) for c in claims)
    return findings.Finding(str(number), text, claims, seed, published)


def verdict_line(finding: findings.Finding, runs_by_key: dict, labels: dict, chance: float) -> tuple[str, str]:
    """Return a finding's verdict on runs (Runs by key, by findings.RULE) and the line saying it with their numbers
    (and, where a run has several seeds, the rule that judged it)."""
    maps = {key: runs.score(run) for key, run in runs_by_key.items() if runs.score(run) is not None}
    verdict = findings.check(finding, maps, chance)
    rule = f" ({findings.rule_used(finding, maps)})" if findings.seeded(maps) else ""
    return verdict, (f"Finding {finding.number} ({finding.text}): {verdict.upper()}{rule}; "
                     f"{findings.evidence(finding, maps, labels, chance)}.")


def plan_line(expected: list, slowest_of: int = 1) -> str:
    """Return what happens to a plan's run key (its estimates, one per seed): reused, or the steps it trains, and
    whether they are the slowest of slowest_of configs it may be (chosen later)."""
    left = [e for e in expected if e.timing is not None]
    what = f"{sum(e.steps for e in left):,} steps" if left else "finished: reused"
    if len(expected) > 1:
        done = len(expected) - len(left)
        what = f"{len(expected)} seeds" + (f", {done} finished" if done else "") + (f": {what}" if left else "")
    if slowest_of > 1 and left:
        what += f" (the slowest of the {slowest_of} configs it may be)"
    return what


def seed_count(seeds) -> int:
    """Return seeds as a number of seeds, or a UserError for one that is not a whole number of at least 1."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"seeds={seeds!r} is not a number of seeds: give a whole number of at least 1, e.g. seeds=3.")
    return seeds


def spread_line(key: str, run: Run) -> str:
    """Return the line printed after a config's seeds have trained: their count and mean ± standard deviation."""
    done = len(runs.seed_values(run, "test_map"))
    numbers = ", ".join(f"{what} {runs.as_shown(run, field)}" for what, field in (("val mAP", "val_map"),
                                                                                   ("test mAP", "test_map"))
                        if len(runs.seed_values(run, field)) > 1)
    if done < 2:
        return f"{key}: {done} of its {len(run.seeds)} seeds complete, so no spread yet; run the cell again to resume."
    return f"{key}, {done} seeds: {numbers} (mean ± standard deviation)."


def _claim(claim, number) -> findings.Claim:
    """Return the Claim a (kind, run key, ...) tuple stands for, or a UserError naming the finding."""
    if not (isinstance(claim, (tuple, list)) and claim and isinstance(claim[0], str)):
        raise UserError(f"Finding {number}: the claim {claim!r} is not a (kind, run key, ...) tuple, e.g. "
                        "(\"beats\", \"simple-adam\", \"simple-default\").")
    try:
        return findings.Claim(claim[0], tuple(claim[1:]))
    except ValueError as exc:
        raise UserError(f"Finding {number}: {exc}.") from exc


WORKED_EXAMPLE = "worked example"
# The code digest (mp3kit.usermodel.code_digest) of notebook 3's starter Classifier as handed out: a final network
# with this code is the starter unchanged. tests/test_experiment.py keeps it equal to the notebook's class.
STARTER_CODE = {"2ad328a0c212"}


def data_notice(synthetic: bool, data_root, chance: float | None) -> str:
    """Return the report's sentence on the data in use and the chance level (the mAP of a network that learned nothing)."""
    source = ("the embedded synthetic dataset (drawn shapes in the PASCAL VOC layout, not photographs)" if synthetic
              else f"PASCAL VOC from `{data_root}`")
    level = (f" Chance level, the test mAP of a network that has learned nothing (the same score for every image): "
             f"**{chance:.4f}**; a run near it has learned nothing.") if chance is not None else ""
    return f"Data: {source}.{level}"


def kaggle_notice(path, score: float | None, synthetic: bool, count_difficult: bool = True) -> str:
    """Return the report's line on the Kaggle CSV at path, its score and its AP convention, or on why there is none."""
    if path is None:
        return ("_No Kaggle CSV: the final run has no AP for some class (its capped test split holds no positive image "
                "of it); the quick and full profiles test on every image._")
    if count_difficult:
        how = ("the course's convention: an image whose class is present only as difficult objects counts as a "
               "positive of it, as in the course's kit, so the score compares with classmates' leaderboard scores")
        mind = ", so 1 − this score need not equal the final model's test mAP"
    else:
        how = ("the VOC convention: an image whose class is present only as difficult objects is left out of its AP; "
               "the course's kit counted it as a positive, so the score does not compare with classmates' leaderboard "
               "scores")
        mind = ""
    line = (f"The Kaggle CSV of the final model is `{path}`; its score (1 − mAP) is **{score:.5f}**, with AP by {how}. "
            f"Every test mAP and AP elsewhere in this report follows the VOC convention (difficult-only labels left "
            f"out){mind}.")
    if synthetic:
        line += " It was computed on the synthetic data: do not upload it; rebuild with `--profile full` on VOC."
    return line


def pretrained_notice(reason: str, full: bool = True) -> str:
    """Return the report's notice that the ImageNet weights were missing: with the reason, or the short form."""
    if full:
        return f"**Pretrained weights unavailable:** {reason}"
    return "**Pretrained weights unavailable** (the reason is under 3a): only the runs from scratch are shown."
