"""TrainConfig, every setting of a run each described once as a dataclass field, and the profiles that size them.

A field's type says what it takes (a Literal lists a choice's values) and its metadata, written with setting(), says
what it means (the help a --flag shows), its limits and, for the few the training panel offers, which control shows
it (Control). validate(), the command line's flags (mp3kit.cli) and the panel's controls (mp3kit.widgets) are all
read from settings_of(), so a field added here, or in a subclass, is checked, has a flag and, with a Control, a place in
the panel, with no other edit. This module does not import torch, so the command line's --help stays quick; the
model checks import the model registry (mp3kit.models) when a config is made.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Literal

from mp3kit import settings
from mp3kit.util import UserError

Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["none", "step", "cosine"]
Augment = Literal["none", "jitter-flip-rotate", "standard", "flip"]
AmpMode = Literal["auto", "on", "off"]  # mixed precision: auto = on for CUDA only
DifficultMode = Literal["positive", "negative", "ignore"]
Pipeline = Literal["cached", "per-item"]
TrainSplit = Literal["train", "trainval"]
TtaMode = Literal["none", "flip"]

OPTIMIZERS = typing.get_args(Optimizer)
SCHEDULES = typing.get_args(Schedule)
AUGMENT_PRESETS = typing.get_args(Augment)
AMP_MODES = typing.get_args(AmpMode)
DIFFICULT_MODES = typing.get_args(DifficultMode)
PIPELINES = typing.get_args(Pipeline)
TRAIN_SPLITS = typing.get_args(TrainSplit)
TTA_MODES = typing.get_args(TtaMode)

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class Control:
    """How the training panel shows a field: its label, the kind of control, and the range it offers.

    kind: "dropdown" (a Literal's values), "model" (the model registry's names that take the config's image size),
    "log-slider" (low to high in powers of ten), "slider" or "number" (low to high; the upper end grows to hold the
    config's own value).
    """

    label: str
    kind: Literal["dropdown", "model", "log-slider", "slider", "number"] = "dropdown"
    low: float | None = None
    high: float | None = None
    step: float | None = None  # a float slider's step (None: the control's default)


def setting(default, help: str, *, low=None, above=None, below=None, check=None, convert=None, parse=None,
            panel: Control | None = None, since: str | None = None):
    """Return a TrainConfig field: its default, its help, its limits and how the panel shows it (None: not there).

    low/above/below bound a number (or each number of a tuple): value >= low, value > above, value < below.
    check(value, config) returns what is wrong with a value the type alone cannot judge (or None); convert(value)
    turns what a user gave into what the config keeps; parse(text) reads the value from its command-line text.
    since: the mp3kit version that added the field; while it holds its default it is left out of to_dict (config.json,
    the identity, the default run name), so a run recorded before the field existed stays the same run, name and all.
    """
    return field(default=default, metadata={"help": help, "low": low, "above": above, "below": below, "check": check,
                                            "convert": convert, "parse": parse, "panel": panel, "since": since})


def _model_value(value):
    # A spec given as JSON text or a .json path is kept as the spec it says, so that editing the file makes a new run,
    # and Python and `mp3kit train --model` name the same network alike.
    from mp3kit import models

    return models.spec_or_name(value)


def _check_model(value, config) -> None:
    from mp3kit import models

    models.entry(value)  # the registry's own sentence for an unknown name or a bad spec


def _check_weights_file(value, config) -> str | None:
    from mp3kit import models

    if value is None or models.entry(config.model).pretrained:
        return None
    names = [name for name, entry in models.MODELS.items() if entry.pretrained]
    return f"is only used by a pretrained model ({', '.join(names)}): drop it or choose one of those"


def _check_pos_weight(value, config) -> str | None:
    if value is None or value in ("none", "balanced"):
        return None
    ok = (isinstance(value, (list, tuple)) and len(value) == 20  # one per VOC class
          and all(isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in value))
    return None if ok else "must be 'none', 'balanced' or 20 numbers of at least 0, one weight per class"


def _pos_weight_from_text(text: str):
    word = text.strip().lower()
    if word in ("none", "balanced"):
        return word
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise UserError(f"pos_weight {text!r} is not a weight list: give none, balanced or 20 comma-separated "
                        f"numbers.") from None


def _check_device(value, config) -> str | None:
    ok = isinstance(value, str) and _DEVICE.fullmatch(value)
    return None if ok else "is not a device: use auto, cpu, cuda, cuda:N or mps"


@dataclass
class TrainConfig:
    """Everything a run needs; the defaults are the course kit's."""

    model: object = setting(
        "simple", "the network: a model name (e.g. simple, alexnet, alexnet-pretrained, alexnet-bn; "
        "mp3kit.models.MODELS lists them) or a spec (a dict, JSON text or a .json file); in Python also your own "
        "nn.Module class or a function returning one (kept as a UserModel)",
        convert=_model_value, check=_check_model, panel=Control("Model", "model"))
    pretrained_weights: str | None = setting(
        None, f"the AlexNet ImageNet weights file of a pretrained model (default: ${settings.ALEXNET_WEIGHTS}, else "
        f"torch's hub cache)", check=_check_weights_file)
    freeze_features: bool = setting(False, "train the head only (a pretrained AlexNet)")
    head_lr_mult: float = setting(
        1.0, "multiply the learning rate of the new head, the layer that gives the 20 scores (the last Linear layer "
        "with 20 outputs), by this; the fine-tuning recipe gives it 10 with a lower lr for the pretrained layers",
        above=0, since="0.2")
    optimizer: Optimizer = setting("sgd", "the optimizer", panel=Control("Optimizer"))
    lr: float = setting(0.01, "the learning rate", above=0, panel=Control("Learning rate", "log-slider", 1e-5, 1.0))
    momentum: float = setting(0.9, "SGD's momentum", low=0)
    weight_decay: float = setting(0.0, "L2 weight decay", low=0)
    betas: tuple[float, float] = setting((0.9, 0.999), "Adam's and AdamW's two moment decay rates", low=0, below=1)
    eps: float = setting(1e-8, "Adam's and AdamW's term added for numerical stability", above=0)
    epochs: int = setting(20, "passes over the training split", low=1, panel=Control("Epochs", "slider", 1, 100))
    batch_size: int = setting(50, "images per training step", low=1, panel=Control("Batch size", "number", 1, 1024))
    schedule: Schedule = setting("none", "the learning-rate schedule after the warm-up")
    warmup_epochs: int = setting(0, "epochs of linear learning-rate warm-up", low=0)
    step_size: int = setting(10, "schedule step: multiply the learning rate by gamma every step_size epochs", low=1)
    gamma: float = setting(0.1, "schedule step: the factor applied every step_size epochs", above=0)
    augment: Augment = setting("none", "the augmentation preset", panel=Control("Augment"))
    image_size: int = setting(227, "the side of the square images in pixels", low=32)
    eval_every: int = setting(
        5, "evaluate at epoch 1, every eval_every-th epoch and the last one (the kit's test_frequency)", low=1,
        panel=Control("Eval every", "slider", 1, 20))
    seed: int = setting(0, "the random seed of weights, batches and augmentation")
    device: str = setting("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps", check=_check_device)
    amp: AmpMode = setting("auto", "mixed precision: auto is on for CUDA only")
    pos_weight: object = setting(
        "none", "the loss's weight of each class's positives: none, balanced (negatives / positives, per class) or 20 "
        "numbers (comma-separated on the command line)", check=_check_pos_weight, parse=_pos_weight_from_text)
    difficult: DifficultMode = setting("positive", "how difficult-only labels count in training (the kit: positive)")
    pipeline: Pipeline = setting("cached", "cached decodes each image once; per-item is the kit's PIL path, for comparison")
    max_images: int | None = setting(None, "use at most this many images per split (quick checks; default every image)",
                                     low=2)
    train_split: TrainSplit = setting(
        "train", "train (val held out), or trainval: train and val together, the VOC protocol for a final test number "
        "(choose the epochs on train first: a trainval run has no held-out val curve)")
    tta: TtaMode = setting("none", "flip evaluates each image as the mean of its scores and its mirror's")
    width: float = setting(
        1.0, "multiply the channels and hidden units of the networks trained from scratch (AlexNet, specs; e.g. 0.125, "
        "as the quick profile does); the simple classifier, the pretrained AlexNet and your own classes keep their sizes",
        above=0)

    def __post_init__(self):
        for s in settings_of(type(self)):
            value = getattr(self, s.name)
            if s.convert is not None:
                setattr(self, s.name, s.convert(value))
            elif s.kind is tuple and isinstance(value, list):  # JSON has no tuples: a config read back gives lists
                setattr(self, s.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise UserError naming the first field with a value that cannot work."""
        for s in settings_of(type(self)):
            value = getattr(self, s.name)
            problem = s.check(value, self) if s.check is not None else s.problem(value)
            if problem:
                raise UserError(f"{type(self).__name__}.{s.name}={value!r} {problem}.")

    def to_dict(self) -> dict:
        """Return the config as a JSON-ready dict (a student's network as its record: code, repr, digest)."""
        from mp3kit.usermodel import UserModel

        d = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("since") and value == f.default:
                continue  # as runs recorded before the field existed hold it (setting's since)
            if isinstance(value, UserModel):
                value = value.to_dict()
            d[f.name] = list(value) if isinstance(value, tuple) else copy.deepcopy(value)
        return d

    def identity(self) -> dict:
        """Return what makes two runs the same: every field, a student's network by its digest (code and layers)."""
        from mp3kit.usermodel import UserModel

        d = self.to_dict()
        if isinstance(self.model, UserModel):
            d["model"] = self.model.identity()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build a config from a dict, ignoring keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes) -> TrainConfig:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def model_label(self) -> str:
        """Return a short readable name of the model (models.label)."""
        from mp3kit import models

        return models.label(self.model)

    def default_name(self) -> str:
        """Return a run name derived from the model and a hash of the whole config."""
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.model_label()}-{digest}"


@dataclass(frozen=True)
class Setting:
    """One TrainConfig field as validate(), the command line and the panel read it."""

    name: str
    kind: type  # bool, int, float, str (also a Literal's) or tuple; object for a field that brings its own check
    default: object
    help: str
    choices: tuple = ()  # a Literal's values
    optional: bool = False  # None is allowed
    items: tuple = ()  # a tuple's item types
    low: float | None = None
    above: float | None = None
    below: float | None = None
    check: typing.Callable | None = None
    convert: typing.Callable | None = None
    parse: typing.Callable | None = None
    panel: Control | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value) -> str | None:
        """Return what is wrong with value for this field's type and limits (the end of a sentence), or None."""
        if value is None:
            return None if self.optional else "must be given"
        if self.choices:
            return None if value in self.choices else f"is not one of {', '.join(self.choices)}"
        if self.kind is object:
            return None
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be True or False"
        if self.kind is str:
            return None if isinstance(value, str) else "must be text"
        if self.kind is tuple:
            fits = isinstance(value, tuple) and len(value) == len(self.items)
            if fits and all(self._fits(v, t) for v, t in zip(value, self.items)):
                return None
            return f"must be {len(self.items)} {self._numbers(plural=True)}"
        if self._fits(value, self.kind):
            return None
        return f"must be {self._numbers()}" + (", or None" if self.optional else "")

    def _fits(self, value, kind: type) -> bool:
        """Return True when value is a finite number of kind (a bool is not one) within the limits."""
        wanted = numbers.Integral if kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted) or not math.isfinite(value):
            return False
        return ((self.low is None or value >= self.low) and (self.above is None or value > self.above)
                and (self.below is None or value < self.below))

    def _numbers(self, plural: bool = False) -> str:
        """Return what the field takes in words, e.g. "a whole number of at least 1" or "positive numbers"."""
        kind = "whole number" if int in (self.kind, *self.items) else "number"
        noun = f"{kind}s" if plural else f"a {kind}"
        if self.above == 0 and self.low is None and self.below is None:
            return f"positive {kind}s" if plural else f"a positive {kind}"
        limits = [f"{words} {bound}" for words, bound in (("of at least", self.low), ("above", self.above),
                                                          ("below", self.below)) if bound is not None]
        return " ".join([noun, " and ".join(limits)]) if limits else noun


@functools.cache
def settings_of(cls: type = TrainConfig) -> tuple[Setting, ...]:
    """Return the settings of a TrainConfig class (a subclass adds its own fields), in field order."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        hint, optional = hints[f.name], False
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
            (hint,), optional = [a for a in typing.get_args(hint) if a is not type(None)], True
        origin = typing.get_origin(hint)
        choices = typing.get_args(hint) if origin is Literal else ()
        kind = str if choices else tuple if origin is tuple else hint if hint in (bool, int, float, str) else object
        meta = f.metadata
        found.append(Setting(f.name, kind, f.default, meta.get("help", ""), choices, optional,
                             typing.get_args(hint) if origin is tuple else (), meta.get("low"), meta.get("above"),
                             meta.get("below"), meta.get("check"), meta.get("convert"), meta.get("parse"),
                             meta.get("panel")))
    return tuple(found)


@dataclass(frozen=True)
class Profile:
    """How big a notebook's experiments are: TrainConfig fields every run gets, and the longer run lengths."""

    name: str
    about: str
    train: dict = field(default_factory=dict)  # TrainConfig fields set for every run
    long_epochs: int = 40  # "longer training" (the seed report: 40 epochs against 20)
    final_epochs: int = 55  # notebook 3's final model (the seed report: 55)
    # Seeds of the worked example's decisive ablation rows (Experiment.worked_example_seeds), whose differences are
    # a few hundredths: with 2 or more the tables show their spread and finding 9 is judged by it.
    decisive_seeds: int = 1
    real_data: bool = False  # True: refuse the synthetic dataset
    # Per notebook ("01", "02", "03"): TrainConfig fields and run lengths that replace the ones above there.
    notebooks: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        """Return the epochs of an ordinary run."""
        return int(self.train.get("epochs", TrainConfig.epochs))

    def for_notebook(self, notebook: str) -> Profile:
        """Return this profile as notebook (e.g. "01_introduction") runs it, with that notebook's overrides applied."""
        changes = dict(self.notebooks.get(str(notebook).split("_", 1)[0], {}))
        train_changes = changes.pop("train", {})
        return replace(self, train={**self.train, **train_changes}, notebooks={}, **changes)


PROFILES = {
    "smoke": Profile(
        "smoke",
        "seconds per run, for tests: 40 synthetic images per split at 64 px, 2 epochs, networks from scratch at 1/8 width",
        train={"image_size": 64, "max_images": 40, "batch_size": 40, "epochs": 2, "eval_every": 1, "width": 0.125},
        long_epochs=3,
        final_epochs=3,
        decisive_seeds=2,
    ),
    # Sized for a 2-core CPU (docs/design-notes.md): the course's 20 epochs (40 for longer training) at batch 10, so a
    # run takes 1,000 steps, enough for the slow starters (SGD without BatchNorm) to begin to leave chance; the simple
    # classifier gets 1,250 (batch 8), as its SGD run leaves chance late with some seeds. The networks trained from
    # scratch are built at 1/8 width (TrainConfig.width) and the simple classifier sees 32 px, which makes a step
    # cost milliseconds; AlexNet's layers need at least 63 px, so notebook 2 uses 64, and notebook 3 uses 128 because
    # its ablation's extra convolution rows (models.SEED_ABLATION's last two) need at least 127.
    "quick": Profile(
        "quick",
        "minutes on a laptop CPU: the embedded synthetic dataset, the course's 20 epochs (40 for longer training and "
        "the final model); notebook 1 at 32 px, batch 8; notebook 2 at 64 px and notebook 3 at 128 px, batch 10, with "
        "AlexNet and your own networks built at 1/8 of their width (`TrainConfig.width`)",
        train={"image_size": 64, "epochs": 20, "batch_size": 10, "eval_every": 5, "width": 0.125},
        long_epochs=40,
        final_epochs=40,
        # One seed: with two, `make report` took 263-325 s, over its 5-minute budget (docs/measurements.md).
        decisive_seeds=1,
        notebooks={"01": {"train": {"image_size": 32, "batch_size": 8}}, "03": {"train": {"image_size": 128}}},
    ),
    "full": Profile(
        "full",
        "the course settings on real VOC 2007: 227 px, batch 50, 20 epochs, evaluation every 5 (a GPU helps)",
        train={},
        long_epochs=40,
        final_epochs=55,
        real_data=True,
    ),
}


def get_profile(name) -> Profile:
    """Return the Profile called name (smoke, quick or full)."""
    if isinstance(name, Profile):
        return name
    key = str(name).strip().lower()
    if key not in PROFILES:
        raise UserError(f"PROFILE = {name!r} is not a profile: use one of {', '.join(PROFILES)}.")
    return PROFILES[key]
