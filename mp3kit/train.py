"""Training: one TrainConfig, one fit(), one Run record on disk.

A papermill parameter, a widget and a CLI flag all fill the same TrainConfig; fit() is the only
training loop. Every completed epoch is checkpointed so a run can be resumed after a disconnect.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mp3kit import data as voc
from mp3kit import metrics, models, pipeline, runs
from mp3kit.runs import Run
from mp3kit.util import UserError, atomic_write, pick_device

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine")
DIFFICULT_MODES = ("positive", "negative", "ignore")
CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    """Everything a run needs; the defaults are the course kit's."""

    model: object = "simple"  # a name (simple, alexnet, alexnet-pretrained, seed, basenet) or a models.build spec
    pretrained_weights: str | None = None  # AlexNet ImageNet weights file (else $MP3KIT_ALEXNET_WEIGHTS or the torch hub cache)
    freeze_features: bool = False  # pretrained AlexNet: train the head only
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    epochs: int = 20
    batch_size: int = 50
    schedule: str = "none"
    warmup_epochs: int = 0
    step_size: int = 10  # schedule "step": multiply the lr by gamma every step_size epochs
    gamma: float = 0.1
    augment: str = "none"
    image_size: int = 227
    eval_every: int = 5  # evaluate at epoch 1, every eval_every-th epoch and the last one (the kit's test_frequency)
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # mixed precision: auto = on for CUDA only
    pos_weight: object = "none"  # none | balanced | a list of 20 positive-class weights
    difficult: str = "positive"  # how difficult-only labels count in training (the kit: positive)
    pipeline: str = "cached"  # cached (decode once) | per-item (the kit's PIL path, for comparison)
    max_images: int | None = None  # cap every split (smoke runs)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        self.validate()

    def validate(self) -> None:
        """Raise UserError naming the first field with a value that cannot work."""
        choices = {
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "augment": pipeline.AUGMENT_PRESETS,
            "difficult": DIFFICULT_MODES,
            "pipeline": ("cached", "per-item"),
            "amp": ("auto", "on", "off"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"TrainConfig.{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}.")
        positive = {"lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size, "image_size": self.image_size,
                    "eval_every": self.eval_every}
        for key, value in positive.items():
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise UserError(f"TrainConfig.{key}={value!r} must be a positive number.")
        if self.image_size < 32:
            raise UserError(f"TrainConfig.image_size={self.image_size} is too small: use at least 32 pixels.")
        if self.max_images is not None and self.max_images < 2:
            raise UserError(f"TrainConfig.max_images={self.max_images} must be at least 2 (or None for every image).")

    def to_dict(self) -> dict:
        """Return the config as a JSON-ready dict."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build a config from a dict, ignoring keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes) -> "TrainConfig":
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def model_label(self) -> str:
        """Return a short readable name of the model."""
        if isinstance(self.model, str):
            return self.model
        return str(self.model.get("name", "custom")) if isinstance(self.model, dict) else "custom"

    def default_name(self) -> str:
        """Return a run name derived from the model and a hash of the whole config."""
        digest = hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.model_label()}-{digest}"


@dataclass
class Data:
    """The three splits a run uses."""

    train: voc.VOCSplit
    val: voc.VOCSplit
    test: voc.VOCSplit
    root: str

    @property
    def synthetic(self) -> bool:
        return bool(self.train.synthetic)


def _subset(split: voc.VOCSplit, n: int | None) -> voc.VOCSplit:
    if n is None or n >= len(split):
        return split
    return split.subset(slice(0, n))


def load_data(data_root=None, max_images: int | None = None) -> Data:
    """Load the train, val and test splits of data_root (the embedded synthetic set when None)."""
    if data_root is None:
        from mp3kit import synth

        data_root = synth.ensure_synthetic()
    splits = {s: _subset(voc.load_split(data_root, s), max_images) for s in ("train", "val", "test")}
    return Data(root=str(data_root), **splits)


class TrainingStopped(Exception):
    """Raised inside the loop when the stop event is set."""


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def make_optimizer(config: TrainConfig, params):
    """Return the optimizer config names over the trainable params (fused kernels on CPU and CUDA)."""
    params = [p for p in params if p.requires_grad]
    # The fused kernels are several times faster than the per-tensor loop (measured on CPU with AlexNet:
    # an SGD step 24 ms against 81 ms); MPS keeps the default.
    if config.optimizer == "sgd":
        cls, options = torch.optim.SGD, dict(momentum=config.momentum)
    else:
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        options = dict(betas=tuple(config.betas), eps=config.eps)
    options.update(lr=config.lr, weight_decay=config.weight_decay)
    if params[0].device.type in ("cuda", "cpu"):
        try:
            return cls(params, fused=True, **options)
        except (TypeError, RuntimeError):
            pass  # an older torch without this fused kernel (fused SGD came in 2.3, fused Adam on the CPU in 2.4)
    return cls(params, **options)


def place_model(model, device):
    """Move model to device, in the memory layout training uses there; return it."""
    model.to(device)
    if device.type in ("cpu", "cuda"):
        # Channels-last convolutions: about 2x the SimpleClassifier's training speed on a 2-core CPU; the
        # usual layout for mixed precision on CUDA. MPS keeps the default layout.
        model.to(memory_format=torch.channels_last)
    return model


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Return the multiplier of the base lr for 0-based epoch (linear warm-up, then the schedule)."""
    if config.warmup_epochs and epoch < config.warmup_epochs:
        return (epoch + 1) / (config.warmup_epochs + 1)
    if config.schedule == "step":
        return config.gamma ** (epoch // config.step_size)
    if config.schedule == "cosine":
        span = max(1, config.epochs - config.warmup_epochs)
        t = (epoch - config.warmup_epochs) / span
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def _pos_weight(config: TrainConfig, targets: np.ndarray, device) -> torch.Tensor | None:
    if config.pos_weight == "none" or config.pos_weight is None:
        return None
    if config.pos_weight == "balanced":
        pos = targets.sum(0).clip(min=1)
        w = (len(targets) - pos) / pos
    else:
        w = np.asarray(config.pos_weight, dtype=np.float32)
        if w.shape != (len(voc.VOC_CLASSES),):
            raise UserError(f"TrainConfig.pos_weight has {w.size} values: give 20, 'balanced' or 'none'.")
    return torch.as_tensor(w, dtype=torch.float32, device=device)


def training_targets(split: voc.VOCSplit, mode: str) -> np.ndarray:
    """Return the (N, 20) float training targets; -1 marks labels left out of the loss."""
    y = split.targets.astype(np.float32)
    if mode == "positive":
        y[split.difficult] = 1.0
    elif mode == "ignore":
        y[split.difficult] = -1.0
    return y


def _loss(logits: torch.Tensor, y: torch.Tensor, pos_weight) -> torch.Tensor:
    # Mean BCE-with-logits over the labels that count: the kit's MultiLabelSoftMarginLoss when none is masked.
    mask = (y >= 0).to(logits.dtype)  # (B, 20)
    per = F.binary_cross_entropy_with_logits(logits.float(), y.clamp(min=0), pos_weight=pos_weight, reduction="none")
    return (per * mask).sum() / mask.sum().clamp(min=1)


def amp_dtype(config: TrainConfig, device) -> torch.dtype | None:
    """Return the autocast dtype config asks for on device (auto: bfloat16 or float16 on CUDA only), or None."""
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None) -> tuple[float, np.ndarray]:
    """Return the mean loss and the (N, 20) sigmoid scores of model over loader, in loader order."""
    model.eval()
    total, count, scores = 0.0, 0, []
    for x, y in loader:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)  # (B, 20)
        logits = logits.float()
        total += F.binary_cross_entropy_with_logits(logits, y.clamp(min=0), reduction="sum").item()
        count += y.numel()
        scores.append(torch.sigmoid(logits).cpu())
    return total / max(count, 1), torch.cat(scores).numpy()


def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kw)


def _checkpoint_state(model, optimizer, scaler, epoch: int, config: TrainConfig, best_val_map) -> dict:
    """Return what a checkpoint holds; its tensors are the live ones (see _cpu_copy)."""
    return {
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,  # epochs completed
        "config": config.to_dict(),
        "best_val_map": best_val_map,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _save_checkpoint(path, state: dict) -> None:
    """Write a checkpoint atomically, streamed to the file rather than built in memory first."""
    atomic_write(path, lambda f: torch.save(state, f))


def _cpu_copy(obj):
    """Return obj (dicts, lists and tuples of tensors and plain values) with every tensor copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


class _CheckpointWriter:
    """Writes the epochs' checkpoints one at a time in a background thread, so the disk works while training goes on.

    A checkpoint of AlexNet with Adam is 685 MB: on the 2-core development VM, writing one took 1.2-1.8 s of
    each 8 s epoch. save() snapshots the state first (training changes the weights in place); wait() returns
    once the last checkpoint is on disk and raises the error its writing met, if any.
    """

    def __init__(self):
        self._thread = None
        self._error = None

    def save(self, path, state: dict) -> None:
        self.wait()
        snapshot = _cpu_copy(state)
        self._thread = threading.Thread(target=self._write, args=(path, snapshot), name="mp3kit-checkpoint", daemon=True)
        self._thread.start()

    def _write(self, path, state) -> None:
        try:
            _save_checkpoint(path, state)
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.wait()  # however training ends (Stop, an error, an interrupted kernel), the write in flight lands first

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def load_checkpoint(path) -> dict:
    """Load a run checkpoint safely (weights_only) on the CPU."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: train the run first, or check the runs folder.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"{path} is not a readable mp3kit checkpoint ({type(exc).__name__}): delete it and train again.") from exc


def _load_state(model, state: dict, path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(
            f"The checkpoint {path} does not match the model's architecture: use the config it was trained with, "
            "or train a new run under another name."
        ) from exc


def build_model(config: TrainConfig):
    """Build the network a config names (with pretrained weights when it asks for them).

    The ImageNet AlexNet weights are downloaded only when $MP3KIT_ALLOW_DOWNLOAD is 1; otherwise they must
    already be on disk (notebook 2's Colab cell puts them in torch's hub cache).
    """
    return models.model_from_name(
        config.model,
        num_classes=len(voc.VOC_CLASSES),
        image_size=config.image_size,
        weights_path=config.pretrained_weights,
        freeze_features=config.freeze_features,
    )


def load_model(run_or_path, device: str = "cpu"):
    """Rebuild a run's network from its config and load its checkpoint's weights."""
    run = run_or_path if isinstance(run_or_path, Run) else runs.load_run(run_or_path)
    config = TrainConfig.from_dict(run.config)
    ckpt = load_checkpoint(run.checkpoint_path)
    if config.model in ("alexnet-pretrained", "alexnet-pretrained-frozen"):
        # The checkpoint carries every weight: building the pretrained net again would need the ImageNet file.
        config = config.replace(model="alexnet", pretrained_weights=None)
    model = build_model(config)
    _load_state(model, ckpt["model"], run.checkpoint_path)
    return model.to(pick_device(device)).eval()


def _same_config(run: Run, config: TrainConfig, data: Data) -> bool:
    return (
        {k: v for k, v in run.config.items() if k != "data"} == config.to_dict()
        and run.config.get("data", {}).get("identities") == _identities(data)
    )


def _identities(data: Data) -> dict:
    return {s: getattr(data, s).identity() for s in ("train", "val", "test")}


def fit(
    config: TrainConfig,
    data_root=None,
    *,
    name: str | None = None,
    runs_dir="runs",
    resume: bool = False,
    reuse: bool = False,
    progress: bool = True,
    callback=None,
    stop=None,
    cache_dir=None,
    data: Data | None = None,
) -> Run:
    """Train config on data_root's train split, validate on val, test on test; record and return the Run.

    resume=True continues an interrupted run from its last completed epoch; reuse=True returns a
    complete run with the same config and data without training again.
    """
    if not isinstance(config, TrainConfig):
        raise UserError("fit() needs a TrainConfig: build one with mp3kit.train.TrainConfig(...).")
    config.validate()
    data = data or load_data(data_root, config.max_images)
    name = name or config.default_name()
    path = Path(runs_dir) / name
    run = Run(name=name, path=path, config={**config.to_dict(), "data": {
        "root": data.root, "synthetic": data.synthetic, "identities": _identities(data)}})

    ckpt = None
    if path.exists() and (path / "config.json").exists():
        old = runs.load_run(path)
        if reuse and old.complete and _same_config(old, config, data):
            return old
        if resume and old.status != "complete":
            if not _same_config(old, config, data):
                raise UserError(
                    f"Cannot resume {path}: it was trained with another config or data; use the same settings, or another --name."
                )
            if old.checkpoint_path.exists():
                ckpt = load_checkpoint(old.checkpoint_path)
                run.history = old.history[: ckpt["epoch"]]
        elif resume and old.complete and _same_config(old, config, data):
            return old
    # Build the model before touching the run folder: a missing weights file must not leave a half run behind.
    device = pick_device(config.device)
    _set_seed(config.seed)
    model = build_model(config)
    if ckpt is not None:
        _load_state(model, ckpt["model"], run.checkpoint_path)
    place_model(model, device)
    if ckpt is None and path.exists():
        for f in runs.RUN_FILES:
            (path / f).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    runs.write_config(run)
    optimizer = make_optimizer(config, model.parameters())
    amp = amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    start_epoch = 0
    best_val_map = None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = ckpt["epoch"]
        best_val_map = ckpt.get("best_val_map")
        torch.set_rng_state(ckpt["rng_cpu"])
        if torch.cuda.is_available() and ckpt.get("rng_cuda"):
            torch.cuda.set_rng_state_all(ckpt["rng_cuda"])

    loader_kw = dict(batch_size=config.batch_size, image_size=config.image_size, seed=config.seed, device=device,
                     pipeline=config.pipeline, cache_dir=cache_dir, progress=progress)
    train_loader = pipeline.make_loader(data.train, train=True, augment=config.augment,
                                        targets=training_targets(data.train, config.difficult), **loader_kw)
    # Evaluation keeps no activations for a backward pass, so twice the batch fits wherever training fits,
    # and AlexNet-sized layers run faster on bigger batches (CPU: 775 against 568 images/s at 50 and 25).
    eval_kw = {**loader_kw, "batch_size": 2 * config.batch_size}
    train_eval_loader = pipeline.make_loader(data.train, train=False, **eval_kw)
    val_loader = pipeline.make_loader(data.val, train=False, **eval_kw)
    pos_weight = _pos_weight(config, data.train.targets, device)

    run.status, run.reason = "running", ""
    runs.write_progress(run)
    t_run = time.perf_counter()
    epochs = _progress(range(start_epoch, config.epochs), progress, desc=name, initial=start_epoch, total=config.epochs)
    try:
        with _CheckpointWriter() as writer:
            for epoch in epochs:
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(config, epoch)
                train_loader.set_epoch(epoch)
                model.train()
                t0 = time.perf_counter()
                losses, seen = [], 0
                for x, y in _progress(train_loader, progress, leave=False, desc=f"epoch {epoch + 1}"):
                    if stop is not None and stop.is_set():
                        raise TrainingStopped
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        logits = model(x)  # (B, 20)
                    loss = _loss(logits, y, pos_weight)
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        optimizer.step()
                    # Kept on the device: a .item() per batch would make the CPU wait for every GPU step.
                    losses.append(loss.detach())
                    seen += x.shape[0]
                losses = torch.stack(losses).float()  # (batches,)
                finite = torch.isfinite(losses)
                if not bool(finite.all()):
                    bad = int((~finite).nonzero()[0])
                    raise NonFiniteLoss(
                        f"The training loss became {losses[bad].item()} at epoch {epoch + 1}, batch {bad + 1}: "
                        f"lower the learning rate (now {config.lr}); the checkpoint of the last good epoch is kept."
                    )
                seconds = time.perf_counter() - t0
                record = {"epoch": epoch + 1, "train_loss": losses.mean().item(), "val_loss": None, "train_map": None,
                          "val_map": None, "seconds": seconds, "images_per_s": seen / seconds if seconds else None,
                          "lr": optimizer.param_groups[0]["lr"]}
                if epoch == 0 or (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                    _, train_scores = evaluate(model, train_eval_loader, device, amp)
                    val_loss, val_scores = evaluate(model, val_loader, device, amp)
                    if not (np.isfinite(train_scores).all() and np.isfinite(val_scores).all()):
                        raise NonFiniteLoss(
                            f"The network's outputs became NaN or infinite at epoch {epoch + 1}: lower the learning "
                            f"rate (now {config.lr}); the checkpoint of the last good epoch is kept."
                        )
                    record["train_map"] = _map(data.train, train_scores)
                    record["val_map"] = _map(data.val, val_scores)
                    record["val_loss"] = val_loss
                    if best_val_map is None or record["val_map"] > best_val_map:
                        best_val_map = record["val_map"]
                run.history.append(record)
                if epoch + 1 < config.epochs:
                    # After the last epoch the weights-only checkpoint below replaces this one within seconds; if the
                    # test evaluation is interrupted, resuming trains the last epoch again from the one before.
                    writer.save(run.checkpoint_path,
                                _checkpoint_state(model, optimizer, scaler, epoch + 1, config, best_val_map))
                runs.write_progress(run)
                if callback is not None:
                    callback(run)
    except TrainingStopped:
        run.status, run.reason = "stopped", f"stopped by the user during epoch {len(run.history) + 1}; resume=True continues it"
        runs.write_progress(run)
        if callback is not None:
            callback(run)
        return run
    except NonFiniteLoss as exc:
        run.status, run.reason = "failed", str(exc)
        runs.write_progress(run)
        raise
    except torch.cuda.OutOfMemoryError as exc:
        run.status, run.reason = "failed", "CUDA out of memory"
        runs.write_progress(run)
        raise UserError(
            f"The GPU ran out of memory with batch size {config.batch_size}: use a smaller batch size "
            f"(e.g. {max(1, config.batch_size // 2)}) or a smaller image size."
        ) from exc

    test_loader = pipeline.make_loader(data.test, train=False, **eval_kw)
    test_loss, test_scores = evaluate(model, test_loader, device, amp)
    with warnings.catch_warnings():
        # A class absent from a small (smoke) test split gets AP None in metrics.json; no need to shout.
        warnings.simplefilter("ignore", metrics.NoPositivesWarning)
        ap = metrics.average_precision(data.test.targets, test_scores, data.test.difficult)
    run.metrics = {
        "test_map": float(np.nanmean(ap)),
        "test_loss": test_loss,
        "test_ap": [None if np.isnan(a) else float(a) for a in ap],
        "classes": list(voc.VOC_CLASSES),
        "best_val_map": best_val_map,
        "epochs_done": len(run.history),
        "synthetic": data.synthetic,
        "device": str(device),
        "seconds": time.perf_counter() - t_run,
    }
    # A complete run is never resumed: keep its weights and config, not the optimizer state (AlexNet's is 2x the weights).
    _save_checkpoint(run.checkpoint_path, _checkpoint_state(model, None, None, config.epochs, config, best_val_map))
    runs.write_test_scores(run, data.test.ids, test_scores, data.test.targets, data.test.difficult)
    runs.write_metrics(run)
    run.status = "complete"
    runs.write_progress(run)
    if callback is not None:
        callback(run)
    return run


def _map(split: voc.VOCSplit, scores: np.ndarray) -> float:
    with warnings.catch_warnings():
        # Small (smoke) splits may lack a class; the mean leaves it out, which is what we want here.
        warnings.simplefilter("ignore")
        return float(metrics.mean_average_precision(split.targets, scores, split.difficult))
