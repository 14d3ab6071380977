"""How long training will take, said before the time is spent: a few real steps, timed on this device.

measure(config, data) builds config's network and optimizer afresh (train.start_session), takes two warm-up steps and
then a few timed training steps on the run's own first batches, and scores one evaluation batch; the random number
generators are put back afterwards, so the run it was measured for trains exactly as it would have. A pretrained
network is timed with its layers' fresh weights: a step takes as long whatever the weights hold, and the ImageNet file
need not be on disk to say how long its run will take. A run's time is then its remaining training steps times a step,
plus the images its evaluations score times an image (run_cost: the epochs evaluated, train and val each time, test at
the end, twice with flip TTA). Not in it: building the image cache the first time, the kernel's start, and checkpoint
writes (they run beside training). fit records a run's estimate in its status.json (Estimate.record), beside the
seconds it took (metrics.json), and tools/measure_report.py compares the two over a report's runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from mp3kit import train
from mp3kit.config import TrainConfig

LONG_S = 3600  # a notebook's runs that need more than this get a plain warning: Colab sessions end
WARMUP_STEPS = 2  # the first steps build kernels and caches (cuDNN's benchmark, the allocator) and are not timed
TIMED_STEPS = 5


@dataclass(frozen=True)
class Timing:
    """What one training step and one evaluated image of a config take on a device, measured."""

    step_s: float
    eval_image_s: float
    device: str


@dataclass(frozen=True)
class Estimate:
    """A run's expected time: its steps and evaluated images, and what each takes (Timing)."""

    epochs: int  # the epochs left to train (all of them for a new run; 0 for a finished one, reused)
    steps: int
    eval_images: int
    timing: Timing | None  # None when nothing is left to train

    @property
    def seconds(self) -> float:
        if self.timing is None:
            return 0.0
        return self.steps * self.timing.step_s + self.eval_images * self.timing.eval_image_s

    def record(self) -> dict:
        """Return what a run's record keeps of its estimate (fit writes it to status.json)."""
        t = self.timing
        return {"seconds": round(self.seconds, 2), "epochs": self.epochs, "steps": self.steps,
                "eval_images": self.eval_images, "step_s": t and t.step_s, "eval_image_s": t and t.eval_image_s,
                "device": t and t.device}

    def line(self, what: str) -> str:
        """Return the sentence that says how long what will take."""
        if self.timing is None:
            return f"{what}: finished already, reused (0 s)"
        return (f"{what}: about {duration(self.seconds)} on {self.timing.device} ({self.steps:,} training steps of "
                f"{1000 * self.timing.step_s:,.0f} ms and {self.eval_images:,} images evaluated, timed on this device)")


@dataclass(frozen=True)
class Planned:
    """A run of a notebook's plan (Experiment.estimate) that one config does not say: one trained with several seeds
    (each seed its own run, costing what the first costs unless it is finished), or one whose config is chosen later
    among candidates (notebook 3's final model: the ablation's best row, known once the ablation has trained)."""

    configs: tuple  # the config (a TrainConfig or a dict of changes to the profile's), or the candidates
    seeds: int = 1

    def __post_init__(self):
        if not isinstance(self.configs, tuple):
            object.__setattr__(self, "configs", (self.configs,))


def duration(seconds: float) -> str:
    """Return seconds as a person says it: 40 s, 3 min 20 s, 1 h 05 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_cost(config: TrainConfig, data: train.Data, first_epoch: int = 0) -> tuple[int, int]:
    """Return the training steps and evaluated images of config's epochs from first_epoch on (fit's schedule)."""
    training = data.training(config.train_split)
    steps_per_epoch = math.ceil(len(training) / config.batch_size)
    evaluated = [e for e in range(first_epoch, config.epochs)
                 if e == 0 or (e + 1) % config.eval_every == 0 or e + 1 == config.epochs]
    per_evaluation = len(training) + (len(data.val) if config.train_split == "train" else 0)
    views = 2 if config.tta == "flip" else 1
    tested = len(data.test) if first_epoch < config.epochs else 0
    return steps_per_epoch * (config.epochs - first_epoch), views * (len(evaluated) * per_evaluation + tested)


def measure(config: TrainConfig, data: train.Data, *, cache_dir=None) -> Timing:
    """Time a few training steps and one evaluation batch of config's network, built afresh, on its own batches."""
    numpy_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        session = train.start_session(config, data.training(config.train_split), cache_dir=cache_dir, imagenet=False)
        try:
            step_s = _time_steps(session)
            eval_image_s = _time_evaluation(session)
        finally:
            np.random.set_state(numpy_state)
    device = train.device_name(session.device) if session.device.type != "cpu" else "the CPU"
    del session
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return Timing(step_s, eval_image_s, device)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(session: train.Session) -> float:
    """Return the median time of a training step after the warm-up ones, batches reused when the split is short.

    A step is timed from asking the loader for its batch, as fit pays it: the loader moves, converts and augments the
    batch (timing the model's step alone made the quick profile's augmented runs' estimates about half their time).
    """
    loader = session.train_loader()
    loader.set_epoch(0)
    batches, times = iter(loader), []
    for i in range(WARMUP_STEPS + TIMED_STEPS):
        _sync(session.device)
        start = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        session.step(x, y)
        _sync(session.device)
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def _time_evaluation(session: train.Session) -> float:
    """Return the time per image of scoring one evaluation batch (after one untimed batch)."""
    loader = session.eval_loader(session.training)
    batches = iter(loader)
    x, _ = next(batches)
    model = session.model.eval()
    with torch.no_grad(), torch.autocast(session.device.type, dtype=session.amp, enabled=session.amp is not None):
        model(x)
        _sync(session.device)
        start = time.perf_counter()
        model(x)
        _sync(session.device)
    return (time.perf_counter() - start) / x.shape[0]


def estimate_run(config: TrainConfig, data: train.Data, *, path=None, resume="auto", reuse: bool = True,
                 timing: Timing | None = None, cache_dir=None) -> Estimate:
    """Return how long fit will take to train config in the run folder path (None: a new run): reused runs cost
    nothing, resumed ones only their remaining epochs. timing: a measurement to reuse (else one is made)."""
    epochs = train.epochs_to_train(config, data, path, resume, reuse) if path is not None else config.epochs
    if epochs == 0:
        return Estimate(0, 0, 0, None)
    steps, images = run_cost(config, data, config.epochs - epochs)
    return Estimate(epochs, steps, images, timing or measure(config, data, cache_dir=cache_dir))


def timing_key(config: TrainConfig) -> tuple:
    """Return what a step's time depends on: the network, its sizes, batch, precision, augmentation and device."""
    d = config.identity()
    return tuple(json_key(d.get(k)) for k in ("model", "width", "image_size", "batch_size", "amp", "augment", "device",
                                              "pipeline", "optimizer", "train_split", "freeze_features"))


def json_key(value):
    """Return value as something hashable (dicts and lists as sorted tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((k, json_key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(json_key(v) for v in value)
    return value


def long_warning(seconds: float) -> str:
    """Return the plain warning for work of more than about an hour, with what to do; "" for less."""
    if seconds <= LONG_S:
        return ""
    return (f"That is more than an hour ({duration(seconds)}). Colab ends idle sessions and caps long ones, and what "
            f"is not on Drive goes with the VM: set RUNS_ON_DRIVE = True in the first cell so that every finished run "
            f"(and the last checkpoint of an interrupted one) survives and is reused or resumed when you run the cells "
            f"again; or train fewer runs at a time, or use a smaller PROFILE.")
