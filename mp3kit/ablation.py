"""An ablation: one run per row (label, network, recipe), the table a notebook shows, and its best row by val mAP.

Experiment.ablation trains the rows through Experiment.run and gives the report an items.AblationItem, whose numbers
the report draws from the run records when it is built.
"""

from __future__ import annotations

import torch

from mp3kit import estimate, items, models, runs, train
from mp3kit.config import TrainConfig
from mp3kit.table import Table
from mp3kit.util import UserError

NOTE = ("Each row is one run. \"Best mAP on test set\" is the test mAP of that row's run, measured once after its last "
        "epoch; the best row is chosen by val mAP (after the last epoch), never by its test score, so its test mAP "
        "still predicts how it does on unseen images.")


class Ablation:
    """An ablation's runs and table (shown in a notebook), and its best row, chosen by val mAP."""

    def __init__(self, table: Table, rows: list, runs_by_key: dict, best: str | None, base: TrainConfig, given: list,
                 note: str = ""):
        self.table, self.recorded, self.runs, self.best = table, rows, runs_by_key, best
        self._base, self._given = base, given
        self.note = note  # the note under the report's table (items.AblationItem)

    @property
    def rows(self) -> dict:
        """Return every row by run key: {"serial", "label", "key", "skipped"?}."""
        return {row.key: row.to_dict() for row in self.recorded}

    def _best_row(self) -> tuple[int, str, object, dict]:
        if self.best is None:
            raise UserError("No ablation row has a val mAP to choose by (every row was skipped, failed or trained on "
                            "trainval): fix the rows, or give the final model's network and recipe yourself.")
        serial = self.rows[self.best]["serial"]
        return (serial, *_ablation_row(self._given[serial - 1], serial))

    @property
    def best_network(self):
        """Return the network (class, callable, spec or name) of the best row by val mAP."""
        return self.best_config().model

    def best_config(self, **changes) -> TrainConfig:
        """Return the TrainConfig of the best row by val mAP, with changes applied (e.g. epochs=exp.final_epochs)."""
        _, _, network, recipe = self._best_row()
        return self._base.replace(**{**recipe, "model": network, **changes})

    def best_label(self, config: TrainConfig | None = None) -> str:
        """Return a label naming the best row, and how config (the final model's) trains it."""
        serial, label, _, _ = self._best_row()
        text = f"row {serial} ({label}), best by val mAP"
        if config is not None:
            text += f", {config.epochs} epochs" + (", on trainval" if config.train_split == "trainval" else "")
            text += ", flip TTA" if config.tta == "flip" else ""
        return text

    def _repr_markdown_(self) -> str:
        return self.table.to_markdown()

    def __repr__(self) -> str:
        return self.table.to_text()


def run_ablation(rows, base: TrainConfig, run, chance: float, seeds=1) -> Ablation:
    """Train each (label, network, recipe) row on top of base with run(key, config, label=..., seeds=...), keyed
    ablation-1, ablation-2, ...; skip (and say so) a row whose network cannot take base's images; return the ablation.

    seeds: the seeds of every row (a number), or of some rows ({serial: number}; the others one).
    """
    per_row = _seeds_per_row(seeds, len(rows))
    table, recorded, chosen, widths, sizes = [], [], {}, set(), set()
    for serial, row in enumerate(rows, start=1):
        label, network, recipe = _ablation_row(row, serial)
        config = base.replace(**{**recipe, "model": network})
        key = f"ablation-{serial}"
        sizes.add(config.image_size)
        if models.scales_with_width(config.model):
            widths.add(config.width)
        params, reason = _parameters(config)
        if reason:
            print(f"{key} ({label}): skipped, {reason}.")
            recorded.append(items.AblationRow(serial, label, key, reason))
            table.append({"serial": serial, "architecture": label, "params": None, "val mAP": None,
                          "test mAP": None, "note": "skipped: needs larger images"})
            continue
        done = run(key, config, label=label, seeds=per_row[serial])
        chosen[key] = done
        recorded.append(items.AblationRow(serial, label, key))
        table.append({"serial": serial, "architecture": label, "params": params, "val mAP": runs.as_shown(done, "val_map"),
                      "test mAP": runs.as_shown(done, "test_map"), "seeds": len(done.seeds) or 1,
                      "note": "" if done.complete else done.status})
    best = runs.best_by_val(chosen)
    for entry in table:
        if best is not None and f"ablation-{entry['serial']}" == best:
            entry["note"] = "best by val mAP"
    built = " ".join(filter(None, [size_note(sizes), width_note(widths)]))
    note = (f"The best row is chosen by val mAP after the last epoch; test mAP is measured once on the finished run "
            f"and chooses nothing. Chance: test mAP {chance:.4f}.")
    seeded = any(entry.get("seeds", 1) > 1 for entry in table)
    if seeded:
        note += (" A row with several seeds shows the mean ± standard deviation of its seeds and is chosen by its mean "
                 "val mAP.")
    columns = ["serial", "architecture", "params", "val mAP", "test mAP", *(["seeds"] if seeded else []), "note"]
    return Ablation(Table(table, columns, " ".join(filter(None, [note, built]))), recorded, chosen, best, base, rows,
                    " ".join(filter(None, [NOTE, built])))


def plan_ablation(rows, base: TrainConfig, seeds=1, final: dict | None = None) -> dict:
    """Return the runs an ablation of rows on base will train, as Experiment.estimate takes them: each row whose network
    fits base's images, keyed ablation-1, ... with its seeds (as run_ablation takes them), and with final (the final
    model's changes, e.g. {"epochs": 40}) the final model, one of those rows' configs with them, chosen later by val."""
    per_row = _seeds_per_row(seeds, len(rows))
    planned = {}
    for serial, row in enumerate(rows, start=1):
        _, network, recipe = _ablation_row(row, serial)
        config = base.replace(**{**recipe, "model": network})
        if not _parameters(config)[1]:  # a row skipped for its image size trains nothing
            planned[f"ablation-{serial}"] = estimate.Planned(config, per_row[serial])
    if final is not None and planned:
        planned["final"] = estimate.Planned(tuple(p.configs[0].replace(**final) for p in planned.values()))
    return planned


def _parameters(config: TrainConfig) -> tuple[int | None, str]:
    """Return the parameters of config's network, or None and why it cannot take config's images."""
    try:
        with torch.device("meta"):  # shapes and counts only: no memory, no initialisation
            return sum(p.numel() for p in train.build_model(config).parameters()), ""
    except UserError as exc:
        # A network too deep for this profile's small images (the full profile's 227 px fit them all).
        return None, str(exc).split(" (")[0]


def _seeds_per_row(seeds, n_rows: int) -> dict:
    """Return the seeds of each row by serial (1 to n_rows) from a number for all rows or a {serial: number} dict."""
    if not isinstance(seeds, dict):
        return dict.fromkeys(range(1, n_rows + 1), seeds)
    unknown = sorted(str(k) for k in seeds if k not in range(1, n_rows + 1))
    if unknown:
        raise UserError(f"The ablation's seeds name row {unknown[0]}, which it does not have: give rows by their "
                        f"serial, 1 to {n_rows}, e.g. seeds={{2: 2}}.")
    return {serial: seeds.get(serial, 1) for serial in range(1, n_rows + 1)}


def _ablation_row(row, serial: int) -> tuple[str, object, dict]:
    """Return an ablation row's (label, network, recipe), or a UserError saying how to write it."""
    if not (isinstance(row, (tuple, list)) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[2], dict)):
        raise UserError(f"Ablation row {serial} is {row!r}: write it as (\"label\", network, recipe), e.g. "
                        f"(\"+ BatchNorm\", lambda: Classifier(bn=True), {{\"optimizer\": \"adam\", \"lr\": 1e-4}}).")
    label, network, recipe = row
    unknown = sorted((set(recipe) - set(TrainConfig.__dataclass_fields__)) | ({"model"} & set(recipe)))
    if unknown:
        raise UserError(f"Ablation row {serial} ({label}): the recipe sets {unknown[0]!r}, which is not a recipe "
                        "field: give TrainConfig fields such as {\"optimizer\": \"adam\", \"lr\": 1e-4}, and the "
                        "network as the row's second item.")
    return label, network, recipe


# The worked example's rows whose differences decide finding 9 by a few hundredths on the quick profile
# (docs/design-notes.md): Adam (row 2), augmentation on top of it (row 3) and BatchNorm after conv 1 (row 4); Experiment's
# worked_example_seeds gives them the profile's decisive_seeds.
DECISIVE_ROWS = (2, 3, 4)


def worked_example_rows(adam_lr: float = 1e-4, augment: str = "jitter-flip-rotate") -> list:
    """Return the seed report's ablation as (label, network, recipe) rows: BaseNet with SGD, then Adam, then
    augmentation, then its network steps (models.SEED_ABLATION: BatchNorm step by step, extra convolutions)."""
    sgd, adam = {"optimizer": "sgd", "lr": 0.01}, {"optimizer": "adam", "lr": adam_lr}
    augmented = {**adam, "augment": augment}
    rows = [("BaseNet (SGD)", models.BASENET, sgd), ("BaseNet (Adam)", models.BASENET, adam),
            ("BaseNet (Adam) + data augmentation", models.BASENET, augmented)]
    return rows + [(label, spec, augmented) for label, spec in models.SEED_ABLATION[1:]]


def size_note(sizes) -> str:
    """Return the sentence saying which image size an ablation's rows train and test on ("" for no rows)."""
    sizes = sorted(sizes)
    if not sizes:
        return ""
    return (f"Every row trains and tests on {sizes[0]} px images." if len(sizes) == 1
            else "The rows train and test on images of " + ", ".join(f"{s} px" for s in sizes) + ".")


def width_note(widths) -> str:
    """Return the sentence saying that an ablation's networks are built narrower than its labels say ("" at width 1)."""
    scaled = sorted(w for w in widths if w != 1)
    if not scaled:
        return ""
    w = scaled[0] if len(scaled) == 1 else None
    built = f"at width {w:g}" if w else "at widths " + ", ".join(f"{x:g}" for x in scaled)
    example = f" (a convolution written with 384 channels has {max(1, round(384 * w))})" if w else ""
    return (f"The networks trained from scratch are built {built}: the labels give the full-width channel counts"
            f"{example}; the params column and the layer tables count the layers as built.")
