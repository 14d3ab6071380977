"""Training: one TrainConfig, one fit(), one Run record on disk.

A notebook parameter, a widget and a CLI flag all fill the same TrainConfig; fit() is the only training loop.
Like torchvision's classification reference, fit() keeps the run's bookkeeping (reuse, resume or start afresh;
records; errors) around visible seams: train_one_epoch (whose train_step bench.py times too), the evaluation
functions and the checkpoint helpers. Every completed epoch is checkpointed, so a run can be resumed after a
disconnect or a full disk.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import platform
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
from mp3kit.usermodel import UserModel
from mp3kit.util import UserError, WriteFailed, atomic_write, pick_device, write_failure

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine")
DIFFICULT_MODES = ("positive", "negative", "ignore")
AMP_MODES = ("auto", "on", "off")  # mixed precision: auto = on for CUDA only
CHECKPOINT_VERSION = 1  # later keys (history) are optional, so version 1 files still load
RESUME_CHOICES = (False, True, "auto")
TRAIN_SPLITS = ("train", "trainval")
TTA_MODES = ("none", "flip")


@dataclass
class TrainConfig:
    """Everything a run needs; the defaults are the course kit's."""

    # A name in models.MODEL_NAMES (simple, alexnet, alexnet-bn, ...), a models.build spec, or your own network: an
    # nn.Module class or a zero-argument callable returning one (mp3kit.usermodel; kept as a UserModel).
    model: object = "simple"
    pretrained_weights: str | None = None  # AlexNet ImageNet weights file (else settings.alexnet_weights() or the hub cache)
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
    # train | trainval: train and val together, the VOC protocol for a final test number (choose the epochs on
    # train/val first: a trainval run has no held-out val curve).
    train_split: str = "train"
    tta: str = "none"  # none | flip: evaluation scores averaged over each image and its mirror
    # Multiplies the channels and hidden units of networks trained from scratch (AlexNet, specs; models.scaled);
    # the simple classifier and the pretrained AlexNet keep their sizes.
    width: float = 1.0

    def __post_init__(self):
        self.betas = tuple(self.betas)
        # Names older versions wrote (e.g. model "seed", augment "seed") still load, as the names they stand for.
        self.model = models.canonical_name(self.model)
        self.augment = pipeline.canonical_augment(self.augment)
        self.validate()

    def validate(self) -> None:
        """Raise UserError naming the first field with a value that cannot work."""
        choices = {
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "augment": pipeline.AUGMENT_PRESETS,
            "difficult": DIFFICULT_MODES,
            "train_split": TRAIN_SPLITS,
            "tta": TTA_MODES,
            "pipeline": pipeline.PIPELINES,
            "amp": AMP_MODES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"TrainConfig.{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}.")
        positive = {"lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size, "image_size": self.image_size,
                    "eval_every": self.eval_every, "width": self.width}
        for key, value in positive.items():
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise UserError(f"TrainConfig.{key}={value!r} must be a positive number.")
        if self.image_size < 32:
            raise UserError(f"TrainConfig.image_size={self.image_size} is too small: use at least 32 pixels.")
        if self.max_images is not None and self.max_images < 2:
            raise UserError(f"TrainConfig.max_images={self.max_images} must be at least 2 (or None for every image).")

    def to_dict(self) -> dict:
        """Return the config as a JSON-ready dict (a student's network as its record: code, repr, digest)."""
        d = asdict(dataclasses.replace(self, model=None))
        d["model"] = self.model.to_dict() if isinstance(self.model, UserModel) else copy.deepcopy(self.model)
        d["betas"] = list(self.betas)
        return d

    def identity(self) -> dict:
        """Return what makes two runs the same: every field, a student's network by its digest (code and layers)."""
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
        return models.label(self.model)

    def default_name(self) -> str:
        """Return a run name derived from the model and a hash of the whole config."""
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
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

    def training(self, split: str = "train") -> voc.VOCSplit:
        """Return the split a run trains on: train, or train and val together (trainval)."""
        return self.train if split == "train" else voc.concat_splits("trainval", self.train, self.val)


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
    # The fused kernels are several times faster than the per-tensor loop (README, "Speed"); MPS keeps the default.
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
        # Channels-last convolutions: faster training on the CPU (README, "Speed"), and the usual layout for
        # mixed precision on CUDA. MPS keeps the default layout.
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
    """Return the autocast dtype config asks for on device, or None for float32: the one place that decides.

    auto means mixed precision on CUDA only: bfloat16 from compute capability 8.0 (A100, L4, H100), float16 with a
    gradient scaler below it (T4 7.5, V100 7.0, P100 6.0). torch.cuda.is_bf16_supported() is no test: it is True on
    a T4, where bfloat16 is emulated in float32 without tensor cores, slower than float16 (pytorch/pytorch#148322).
    """
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    return torch.bfloat16


def grad_scaler(amp) -> torch.amp.GradScaler | None:
    """Return the gradient scaler float16 autocast needs (its small range underflows gradients), else None."""
    return torch.amp.GradScaler("cuda") if amp == torch.float16 else None


def configure_backends(device) -> None:
    """Let cuDNN pick the fastest kernels for training's fixed input size and, from Ampere on, use TF32."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    if torch.cuda.get_device_capability(device) >= (8, 0):
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9 deprecates allow_tf32 for this
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True


def device_name(device) -> str:
    """Return the readable name of device: the GPU's, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def precision_info(device, amp) -> dict:
    """Return what a run computes on: the device, its name and compute capability, the autocast dtype, scaler, TF32."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return {
        "device": str(device),
        "device_name": device_name(device),
        "capability": "{}.{}".format(*capability) if capability else None,
        "amp_dtype": str(amp).removeprefix("torch.") if amp is not None else "float32",
        "grad_scaler": amp == torch.float16,
        "tf32": bool(capability and capability >= (8, 0)),
    }


def precision_line(info: dict) -> str:
    """Return the one line that says what a run computes on."""
    where = info["device_name"] + (f", compute capability {info['capability']}" if info["capability"] else "")
    if info["amp_dtype"] == "float32":
        how = "in float32" + (" (TF32 matmuls)" if info["tf32"] else "")
    else:
        how = f"with {info['amp_dtype']} mixed precision" + (" and a gradient scaler" if info["grad_scaler"] else "")
    return f"training on {info['device']} ({where}) {how}"


def train_step(model, optimizer, x, y, *, amp=None, scaler=None, pos_weight=None) -> torch.Tensor:
    """Take one optimizer step on the batch (x, y); return the loss, detached and left on the device."""
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
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
    return loss.detach()


def train_one_epoch(model, optimizer, loader, epoch: int, *, amp=None, scaler=None, pos_weight=None, stop=None,
                    progress: bool = False) -> dict:
    """Train model for one pass over loader (0-based epoch); return the epoch's history record.

    Raises TrainingStopped when stop is set (checked before every batch) and NonFiniteLoss when a loss is not finite.
    """
    model.train()
    loader.set_epoch(epoch)
    lr = optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    losses, seen = [], 0
    for x, y in _progress(loader, progress, leave=False, desc=f"epoch {epoch + 1}"):
        if stop is not None and stop.is_set():
            raise TrainingStopped
        # Kept on the device: a .item() per batch would make the CPU wait for every GPU step.
        losses.append(train_step(model, optimizer, x, y, amp=amp, scaler=scaler, pos_weight=pos_weight))
        seen += x.shape[0]
    losses = torch.stack(losses).float()  # (batches,)
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise NonFiniteLoss(
            f"The training loss became {losses[bad].item()} at epoch {epoch + 1}, batch {bad + 1}: "
            f"lower the learning rate (now {lr:g}); the checkpoint of the last good epoch is kept."
        )
    seconds = time.perf_counter() - t0
    return {"epoch": epoch + 1, "train_loss": losses.mean().item(), "val_loss": None, "train_map": None,
            "val_map": None, "seconds": seconds, "images_per_s": seen / seconds if seconds else None, "lr": lr}


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None, tta: str = "none") -> tuple[float, np.ndarray]:
    """Return the mean loss and the (N, 20) sigmoid scores of model over loader, in loader order.

    tta="flip" scores each image as the mean of the sigmoid scores of the image and its mirror image.
    """
    model.eval()
    total, count, scores = 0.0, 0, []
    for x, y in loader:
        views = (x, x.flip(-1)) if tta == "flip" else (x,)  # x: (B, 3, H, W); flip(-1) mirrors left-right
        probs = []
        for view in views:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                probs.append(torch.sigmoid(model(view).float()))  # (B, 20)
        p = torch.stack(probs).mean(0)
        p_, t = p.clamp(1e-7, 1 - 1e-7), y.clamp(min=0)  # written out: a NaN output gives a NaN loss, not an error
        total += -(t * p_.log() + (1 - t) * (1 - p_).log()).sum().item()
        count += y.numel()
        scores.append(p.cpu())
    return total / max(count, 1), torch.cat(scores).numpy()


def evaluate_epoch(model, train_loader, val_loader, train_split: voc.VOCSplit, val_split: voc.VOCSplit | None, device,
                   amp, epoch: int, tta: str = "none") -> dict:
    """Return the train mAP, val mAP and val loss after 0-based epoch; NonFiniteLoss when the outputs are not finite.

    val_loader None (a run that trains on val too) gives no val figures.
    """
    _, train_scores = evaluate(model, train_loader, device, amp, tta)
    val_loss, val_scores = evaluate(model, val_loader, device, amp, tta) if val_loader is not None else (None, None)
    if not (np.isfinite(train_scores).all() and (val_scores is None or np.isfinite(val_scores).all())):
        raise NonFiniteLoss(
            f"The network's outputs became NaN or infinite at epoch {epoch + 1}: lower the learning rate; "
            "the checkpoint of the last good epoch is kept."
        )
    val_map = _map(val_split, val_scores) if val_scores is not None else None
    return {"train_map": _map(train_split, train_scores), "val_map": val_map, "val_loss": val_loss}


def evaluate_test(model, loader, split: voc.VOCSplit, device, amp, tta: str = "none") -> tuple[dict, np.ndarray]:
    """Return the test metrics (mAP, mean loss, AP per class) of model over split's loader, and its (N, 20) scores."""
    test_loss, scores = evaluate(model, loader, device, amp, tta)
    with warnings.catch_warnings():
        # A class absent from a small (smoke) test split gets AP None in metrics.json; no need to shout.
        warnings.simplefilter("ignore", metrics.NoPositivesWarning)
        ap = metrics.average_precision(split.targets, scores, split.difficult)
    return {"test_map": float(np.nanmean(ap)), "test_loss": test_loss,
            "test_ap": [None if np.isnan(a) else float(a) for a in ap], "classes": list(voc.VOC_CLASSES)}, scores


def _map(split: voc.VOCSplit, scores: np.ndarray) -> float:
    with warnings.catch_warnings():
        # Small (smoke) splits may lack a class; the mean leaves it out, which is what we want here.
        warnings.simplefilter("ignore")
        return float(metrics.mean_average_precision(split.targets, scores, split.difficult))


def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kw)


def checkpoint_state(model, optimizer, scaler, epoch: int, config: TrainConfig, best_val_map, history: list) -> dict:
    """Return what a checkpoint holds (the history too, so a resumed run needs no other file); live tensors."""
    return {
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,  # epochs completed
        "config": config.to_dict(),
        "best_val_map": best_val_map,
        "history": history,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore(ckpt: dict, model, optimizer, scaler, path) -> tuple[int, float | None]:
    """Load a checkpoint's weights, optimizer, scaler and RNG states; return its epochs done and best val mAP."""
    _load_state(model, ckpt["model"], path)
    if ckpt.get("optimizer") is not None:  # a finished run's checkpoint keeps the weights only
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng_cpu"])
    if torch.cuda.is_available() and ckpt.get("rng_cuda"):
        torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
    return ckpt["epoch"], ckpt.get("best_val_map")


def _nbytes(obj) -> int:
    """Return the bytes of the tensors in obj: about what torch.save writes of it."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _save_checkpoint(path, state: dict) -> None:
    """Write a checkpoint atomically, streamed to the file rather than built in memory first."""
    atomic_write(path, lambda f: torch.save(state, f), nbytes=_nbytes(state))


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

    A checkpoint of AlexNet with Adam is 685 MB, and writing one takes a noticeable part of an epoch (README,
    "Speed"). save() snapshots the state first (training changes the weights in place); wait() returns
    once the last checkpoint is on disk and raises the error its writing met, if any (a full disk as WriteFailed),
    so that error stops the run at the end of the next epoch at the latest. kept is the epoch of the last
    checkpoint known to be on disk.
    """

    def __init__(self, kept: int = 0):
        self._thread = None
        self._error = None
        self.kept = kept

    def save(self, path, state: dict) -> None:
        self.wait()
        snapshot = _cpu_copy(state)
        self._thread = threading.Thread(target=self._write, args=(path, snapshot), name="mp3kit-checkpoint", daemon=True)
        self._thread.start()

    def write_now(self, path, state: dict) -> None:
        """Write state in this thread, after any write in flight."""
        self.wait()
        self._write(path, state)
        self.wait()

    def _write(self, path, state) -> None:
        try:
            _save_checkpoint(path, state)
            self.kept = state["epoch"]
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = write_failure(exc, path, _nbytes(state)) or exc

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

    The ImageNet AlexNet weights are downloaded only when settings.allow_download() says so; otherwise they must
    already be on disk (notebook 2's Colab cell puts them in torch's hub cache).
    """
    return models.model_from_name(
        config.model,
        num_classes=len(voc.VOC_CLASSES),
        image_size=config.image_size,
        weights_path=config.pretrained_weights,
        freeze_features=config.freeze_features,
        width=config.width,
    )


def load_model(run_or_path, device: str = "cpu", model=None):
    """Rebuild a run's network from its config and load its checkpoint's weights.

    A run of your own network needs its class (or callable) again as model; it must be the code the run recorded.
    """
    run = run_or_path if isinstance(run_or_path, Run) else runs.load_run(run_or_path)
    config = TrainConfig.from_dict(run.config)
    if model is not None:
        given = models.canonical_name(model)
        if given != config.model:
            raise UserError(f"The model given ({models.label(given)}) is not the network the run {run.path} was trained "
                            f"with ({config.model_label()}): pass the class or callable as it was when the run trained.")
        config = config.replace(model=given)
    ckpt = load_checkpoint(run.checkpoint_path)
    if config.model in ("alexnet-pretrained", "alexnet-pretrained-frozen"):
        # The checkpoint carries every weight: building the pretrained net again would need the ImageNet file. It is
        # full-width AlexNet whatever the profile's width, which only the networks trained from scratch follow.
        config = config.replace(model="alexnet", pretrained_weights=None, width=1.0)
    model = build_model(config)
    _load_state(model, ckpt["model"], run.checkpoint_path)
    return model.to(pick_device(device)).eval()


def _same_config(run: Run, config: TrainConfig, data: Data) -> bool:
    # Read back as a TrainConfig, a run recorded by an older version means what it meant then: the old names
    # (model "seed", augment "seed") become today's, and fields added since take the defaults that were in effect.
    try:
        recorded = TrainConfig.from_dict({k: v for k, v in run.config.items() if k != "data"}).identity()
    except (UserError, TypeError):
        return False  # a config this version cannot read is no match
    return recorded == config.identity() and run.config.get("data", {}).get("identities") == _identities(data)


def _identities(data: Data) -> dict:
    return {s: getattr(data, s).identity() for s in ("train", "val", "test")}


def _reusable(run: Run, config: TrainConfig, data: Data, resume, reuse: bool) -> Run | None:
    """Return the complete run in run's folder when fit may reuse it (same config and data, reuse or resume asked)."""
    if resume not in RESUME_CHOICES:
        raise UserError(f"fit(resume={resume!r}) is not one of False, True or 'auto'.")
    if not (reuse or resume) or not (run.path / "config.json").exists():
        return None
    old = runs.load_run(run.path)
    if not (old.complete and _same_config(old, config, data)):
        return None
    old.origin = "reused"
    return old


def _start_point(run: Run, config: TrainConfig, data: Data, resume, reuse: bool) -> tuple[Run | None, dict | None]:
    """Decide how fit starts: (the complete run to reuse, None), (None, the checkpoint to resume) or (None, None).

    On resume, run takes the history of the checkpoint's epochs. (None, None) starts afresh: the run in the folder,
    if any, moves aside.
    """
    reused = _reusable(run, config, data, resume, reuse)
    if reused is not None:
        return reused, None
    if not (run.path / "config.json").exists():
        return None, None
    old = runs.load_run(run.path)
    if old.complete or not resume:
        return None, None
    same = _same_config(old, config, data)
    if resume == "auto" and not same:
        return None, None
    if not same:
        raise UserError(
            f"Cannot resume {run.path}: it was trained with another config or data; use the same settings, or another --name."
        )
    if not old.checkpoint_path.exists():
        return None, None
    ckpt = load_checkpoint(old.checkpoint_path)
    # Checkpoints written before they carried the history: history.json holds at least the checkpoint's epochs.
    run.history = ckpt["history"] if "history" in ckpt else old.history[: ckpt["epoch"]]
    return None, ckpt


def _loaders(config: TrainConfig, training: voc.VOCSplit, device, cache_dir, progress: bool):
    """Return the loader of the training split and a function that makes the evaluation loader of a split."""
    loader_kw = dict(batch_size=config.batch_size, image_size=config.image_size, seed=config.seed, device=device,
                     pipeline=config.pipeline, cache_dir=cache_dir, progress=progress)
    train_loader = pipeline.make_loader(training, train=True, augment=config.augment,
                                        targets=training_targets(training, config.difficult), **loader_kw)
    # Evaluation keeps no activations for a backward pass, so twice the batch fits wherever training fits,
    # and AlexNet-sized layers run faster on bigger batches (README, "Speed").
    eval_kw = {**loader_kw, "batch_size": 2 * config.batch_size}
    return train_loader, functools.partial(pipeline.make_loader, train=False, **eval_kw)


def _move_aside(run: Run, lock: runs.RunLock, progress: bool) -> None:
    """Move the run already in run's folder aside (never delete it), saying where on run and, with progress, aloud."""
    aside = lock.move_aside()
    if aside is not None:
        run.moved_aside = str(aside)
        if progress:
            print(f"{run.name}: the earlier run in {run.path} moved to {aside} (kept, listed by mp3kit runs).", flush=True)


def _write_failed(run: Run, exc: WriteFailed, kept: int) -> UserError:
    """Record run as failed on exc (where the disk lets us) and return the sentence that says what to do."""
    first = "make that folder writable" if exc.read_only else "free that much space there"
    if kept:
        fix = (f"{first} (or move the run folder to another RUNS_DIR), then resume the run (resume=True, or mp3kit "
               f"train --resume), which continues from its last good checkpoint (epoch {kept})")
    else:
        fix = f"{first} or choose another RUNS_DIR (--runs-dir), then train the run again"
    error = exc.advise(fix)
    _end(run, "failed", str(error), write=runs.write_status)  # history.json may be what the disk refused
    return error


def _end(run: Run, status: str, reason: str, write=runs.write_progress) -> None:
    """Set run's status and reason and record them, as far as the disk allows (the failure may be the disk's)."""
    run.status, run.reason = status, reason
    try:
        write(run)
    except WriteFailed:
        pass


def fit(config: TrainConfig, data_root=None, *, name: str | None = None, runs_dir="runs", resume=False,
        reuse: bool = False, progress: bool = True, callback=None, stop=None, cache_dir=None, data: Data | None = None,
        ) -> Run:
    """Train config on data_root's train split, validate on val, test on test; record and return the Run.

    Decides alone whether a run is reused, resumed or trained afresh, and says which in the Run's origin:
    reuse=True returns a complete run with the same config and data without training again; resume=True
    continues an unfinished run from its last checkpoint (a UserError if its settings differ), resume="auto"
    does so when the settings match and starts afresh otherwise. Starting afresh never deletes a run: the one
    in the folder moves aside to name@<UTC time> (the Run's moved_aside says where). While it trains, the run's
    folder is locked (runs.RunLock): a second fit of the same run stops with a sentence naming the first.
    """
    if not isinstance(config, TrainConfig):
        raise UserError("fit() needs a TrainConfig: build one with mp3kit.train.TrainConfig(...).")
    config.validate()
    name = runs.check_name(config.default_name() if name is None else name)
    data = data or load_data(data_root, config.max_images)
    run = Run(name=name, path=Path(runs_dir) / name, config={**config.to_dict(), "data": {
        "root": data.root, "synthetic": data.synthetic, "identities": _identities(data)}})
    reused = _reusable(run, config, data, resume, reuse)  # reading a finished run needs no lock
    if reused is not None:
        return reused
    # Build the model before touching the run folder: a missing weights file must not leave a half run behind.
    device = pick_device(config.device)
    _set_seed(config.seed)
    model = place_model(build_model(config), device)
    # Locked before anything in the folder is moved or written: a second fit of this run (another process, or the
    # training panel's thread) stops here with a sentence instead of mixing its files with this one's.
    try:
        lock = runs.RunLock(run.path).acquire()
    except WriteFailed as exc:
        first = "make that folder writable" if exc.read_only else "free some space there"
        raise exc.advise(f"{first} or choose another RUNS_DIR (--runs-dir), then train the run again") from exc
    with lock:
        return _train(run, config, data, model, device, lock, resume=resume, reuse=reuse, progress=progress,
                      callback=callback, stop=stop, cache_dir=cache_dir)


def _train(run: Run, config: TrainConfig, data: Data, model, device, lock: runs.RunLock, *, resume, reuse: bool,
           progress: bool, callback, stop, cache_dir) -> Run:
    """Reuse, resume or start run afresh under its lock, then train, test and record it."""
    name = run.name
    # Decided under the lock: another process may have finished the run since fit first looked.
    reused, ckpt = _start_point(run, config, data, resume, reuse)
    if reused is not None:
        return reused
    if ckpt is None:
        _move_aside(run, lock, progress)
    amp = amp_dtype(config, device)
    optimizer, scaler = make_optimizer(config, model.parameters()), grad_scaler(amp)
    start, best = restore(ckpt, model, optimizer, scaler, run.checkpoint_path) if ckpt else (0, None)
    configure_backends(device)
    run.device_info, run.origin = precision_info(device, amp), "resumed" if ckpt else "trained"
    if progress:
        print(f"{name}: {precision_line(run.device_info)}", flush=True)
    training = data.training(config.train_split)
    held_out = data.val if config.train_split == "train" else None  # trainval: val is trained on, not held out
    train_loader, eval_loader = _loaders(config, training, device, cache_dir, progress)
    train_eval_loader, val_loader = eval_loader(training), held_out and eval_loader(held_out)
    step_kw = dict(amp=amp, scaler=scaler, pos_weight=_pos_weight(config, training.targets, device), stop=stop,
                   progress=progress)
    t_run, writer = time.perf_counter(), _CheckpointWriter(kept=start)
    try:
        try:
            with writer:
                runs.write_config(run)
                runs.write_progress(run)
                for epoch in _progress(range(start, config.epochs), progress, desc=name, initial=start,
                                       total=config.epochs):
                    for group in optimizer.param_groups:
                        group["lr"] = config.lr * lr_factor(config, epoch)
                    record = train_one_epoch(model, optimizer, train_loader, epoch, **step_kw)
                    if epoch == 0 or (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                        record.update(evaluate_epoch(model, train_eval_loader, val_loader, training, held_out, device,
                                                     amp, epoch, config.tta))
                        if record["val_map"] is not None:
                            best = record["val_map"] if best is None else max(best, record["val_map"])
                    run.history.append(record)
                    if epoch + 1 < config.epochs:  # the last epoch's weights are saved with the test results
                        writer.save(run.checkpoint_path,
                                    checkpoint_state(model, optimizer, scaler, epoch + 1, config, best, run.history))
                    runs.write_progress(run)
                    if callback is not None:
                        callback(run)
                _finish(run, model, eval_loader, data, device, amp, config, best, writer, t_run)
        except TrainingStopped:
            run.status = "stopped"
            run.reason = f"stopped by the user during epoch {len(run.history) + 1}; resume=True continues it"
            runs.write_progress(run)
    except NonFiniteLoss as exc:
        _end(run, "failed", str(exc))
        raise
    except WriteFailed as exc:
        raise _write_failed(run, exc, writer.kept) from exc
    except torch.cuda.OutOfMemoryError as exc:
        _end(run, "failed", "CUDA out of memory")
        raise UserError(
            f"The GPU ran out of memory with batch size {config.batch_size}: use a smaller batch size "
            f"(e.g. {max(1, config.batch_size // 2)}) or a smaller image size."
        ) from exc
    if callback is not None:
        callback(run)
    return run


def lr_range_test(config: TrainConfig, data_root=None, *, data: Data | None = None, steps: int = 200,
                  start_lr: float = 1e-6, end_lr: float = 1.0, cache_dir=None, progress: bool = False) -> dict:
    """Train config's network afresh for up to steps batches while the lr rises exponentially from start_lr to end_lr.

    Returns the lrs, the losses and their smoothed curve, and the suggestion: the lr where the smoothed loss falls
    fastest against log lr ("suggested_lr"), and the range of lrs around it where it falls at least half as fast
    ("range"). The test stops early once the loss exceeds four times its lowest value. Nothing is recorded on disk.
    """
    config.validate()
    if not (0 < start_lr < end_lr and steps >= 10):
        raise UserError(f"lr_range_test needs 0 < start_lr < end_lr and at least 10 steps (got {start_lr:g}, "
                        f"{end_lr:g}, {steps}).")
    data = data or load_data(data_root, config.max_images)
    device = pick_device(config.device)
    _set_seed(config.seed)
    model = place_model(build_model(config), device).train()
    amp = amp_dtype(config, device)
    optimizer, scaler = make_optimizer(config.replace(lr=start_lr), model.parameters()), grad_scaler(amp)
    training = data.training(config.train_split)
    loader, _ = _loaders(config, training, device, cache_dir, progress)
    pos_weight = _pos_weight(config, training.targets, device)
    growth = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, losses, running, average = [], [], [], 0.0
    for x, y in _endless(loader):
        lr = start_lr * growth ** len(lrs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = train_step(model, optimizer, x, y, amp=amp, scaler=scaler, pos_weight=pos_weight).item()
        if not math.isfinite(loss):
            break
        average = 0.9 * average + 0.1 * loss  # an exponential moving average, bias-corrected below
        lrs.append(lr), losses.append(loss), running.append(average / (1 - 0.9 ** len(lrs)))
        if len(lrs) >= steps or running[-1] > 4 * min(running):
            break
    # The running average decides when to stop; the curve returned is a centred moving average, which, unlike the
    # running one, does not lag behind the rising lr.
    k = max(1, len(losses) // 40)
    centred = [float(np.mean(losses[max(0, i - k): i + k + 1])) for i in range(len(losses))]
    return {"lr": lrs, "loss": losses, "smoothed": centred, **suggest_lr(lrs, centred)}


def _endless(loader):
    """Yield loader's batches epoch after epoch, reshuffled each time."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def suggestion_line(found: dict, what: str) -> str:
    """Return the sentence that says what an lr range test (lr_range_test) suggests for what."""
    if found["suggested_lr"] is None:
        return (f"{what}: the loss did not fall over lrs {found['lr'][0]:.2g} to {found['lr'][-1]:.2g}; check the model "
                "and the data, or raise the steps.")
    low, high = found["range"]
    return (f"{what}: the loss falls fastest at lr {found['suggested_lr']:.2g}, and at least half as fast from {low:.2g} "
            f"to {high:.2g} ({len(found['lr'])} steps)")


def suggest_lr(lrs, smoothed) -> dict:
    """Return the lr where the smoothed loss falls fastest against log lr, and the lrs where it falls at least half as fast."""
    if len(lrs) < 5:
        raise UserError(f"The lr range test stopped after {len(lrs)} steps: lower start_lr or check the loss.")
    loss, log_lr = np.asarray(smoothed, dtype=float), np.log10(lrs)
    # Loss change per decade of lr, over a window of about a tenth of the steps either side: a step-to-step
    # difference of the smoothed loss is mostly noise.
    k = max(1, len(lrs) // 10)
    ahead, behind = np.minimum(np.arange(len(lrs)) + k, len(lrs) - 1), np.maximum(np.arange(len(lrs)) - k, 0)
    slope = (loss[ahead] - loss[behind]) / (log_lr[ahead] - log_lr[behind])
    best = int(np.argmin(slope))
    if slope[best] >= 0:
        return {"suggested_lr": None, "range": None}  # the loss never fell
    low = high = best
    while low > 0 and slope[low - 1] <= slope[best] / 2:
        low -= 1
    while high < len(slope) - 1 and slope[high + 1] <= slope[best] / 2:
        high += 1
    return {"suggested_lr": float(lrs[best]), "range": [float(lrs[low]), float(lrs[high])]}


def _finish(run: Run, model, eval_loader, data: Data, device, amp, config: TrainConfig, best, writer, t_run) -> None:
    """Test the trained model, keep its weights, record the test results and val scores and mark the run complete."""
    test_metrics, scores = evaluate_test(model, eval_loader(data.test), data.test, device, amp, config.tta)
    run.metrics = {**test_metrics, "best_val_map": best, "epochs_done": len(run.history), "synthetic": data.synthetic,
                   **run.device_info, "seconds": time.perf_counter() - t_run}
    # The finished run's checkpoint keeps weights and config, not the optimizer state (AlexNet's is 2x the weights):
    # resuming it, should a write below fail, only tests it again.
    writer.write_now(run.checkpoint_path, checkpoint_state(model, None, None, config.epochs, config, best, run.history))
    runs.write_test_scores(run, data.test.ids, scores, data.test.targets, data.test.difficult)
    # The final weights' val scores, for explanations without the model (mp3kit.explain): one pass over val.
    _, val_scores = evaluate(model, eval_loader(data.val), device, amp, config.tta)
    runs.write_val_scores(run, data.val.ids, val_scores, data.val.targets, data.val.difficult,
                          held_out=config.train_split == "train")
    runs.write_metrics(run)
    run.status = "complete"
    runs.write_progress(run)
