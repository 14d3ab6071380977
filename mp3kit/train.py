"""Training: one TrainConfig, one fit(), one Run record on disk.

A notebook parameter, a widget and a CLI flag all fill the same TrainConfig; fit() is the only training loop.
start_session builds what training needs (network, optimizer, precision, loaders) for fit, lr_range_test and
bench.py alike. Like torchvision's classification reference, fit() keeps the run's bookkeeping around visible
seams: one decision how to start (_start_point: reuse, resume or afresh), one place that records how training
ends (_recorded), train_one_epoch, the evaluation functions and the checkpoint helpers. Every completed epoch is
checkpointed, so a run can be resumed after a disconnect or a full disk.
"""

from __future__ import annotations

import contextlib
import math
import platform
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mp3kit import data as voc
from mp3kit import metrics, models, pipeline, runs
from mp3kit.config import TrainConfig
from mp3kit.runs import Run
from mp3kit.util import UserError, WriteFailed, atomic_write, pick_device, write_failure

CHECKPOINT_VERSION = 1  # later keys (history) are optional, so version 1 files still load
RESUME_CHOICES = (False, True, "auto")


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


class Interrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C, the kernel's interrupt button, SIGTERM); the message says where the run stands."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum

    def _render_traceback_(self) -> list[str]:
        """Return what IPython shows for it in a notebook: the sentence, not the traceback."""
        return [f"\x1b[31mmp3kit:\x1b[0m {self}"]


class _SigtermInterrupts:
    """While fit trains in the main thread, make SIGTERM (a scheduler, a closing VM) interrupt it as Ctrl-C does.

    Only the main thread can handle signals: fit in another thread (the widget panel's) leaves them alone.
    """

    def __init__(self):
        self.installed, self.received = False, False
        if threading.current_thread() is threading.main_thread():
            try:
                self.previous = signal.signal(signal.SIGTERM, self._interrupt)
                self.installed = True
            except ValueError:  # not the main interpreter
                pass

    def _interrupt(self, signum, frame) -> None:
        if not self.received:  # a second SIGTERM while the run is being recorded must not cut that short
            self.received = True
            raise Interrupted(signum=signum)

    def restore(self) -> None:
        if self.installed:
            # None: the old handler was not set from Python; the default is the closest we can restore.
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def param_groups(config: TrainConfig, model) -> list[dict]:
    """Return the trainable parameters of model (a module, or its parameters) as the optimizer's groups.

    Each group's lr_scale multiplies the lr (Session.set_lr). With config.head_lr_mult other than 1, the head, the layer
    that gives the 20 scores (models.head_layer), is a group of its own at lr x head_lr_mult, after the rest at lr:
    the fine-tuning recipe, in which a new head learns faster than the pretrained layers below it.
    """
    if config.head_lr_mult == 1:
        params = model.parameters() if isinstance(model, torch.nn.Module) else model
        return [{"params": [p for p in params if p.requires_grad], "lr_scale": 1.0}]
    head = models.head_layer(model, len(voc.VOC_CLASSES)) if isinstance(model, torch.nn.Module) else None
    if head is None:
        raise UserError(f"TrainConfig.head_lr_mult={config.head_lr_mult:g} needs a network whose {len(voc.VOC_CLASSES)} "
                        f"scores come from an nn.Linear layer, and {config.model_label()} has none: leave head_lr_mult "
                        "at 1.")
    in_head = {id(p) for p in head.parameters()}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in in_head]
    groups = [{"params": body, "lr_scale": 1.0}, {"params": [p for p in head.parameters() if p.requires_grad],
                                                  "lr_scale": float(config.head_lr_mult)}]
    return [g for g in groups if g["params"]]  # a frozen body leaves the head alone


def make_optimizer(config: TrainConfig, model):
    """Return the optimizer config names over the trainable parameters of model, a module or its parameters, in
    param_groups' groups (fused kernels on CPU and CUDA)."""
    groups = param_groups(config, model)
    for group in groups:
        group["lr"] = config.lr * group["lr_scale"]
    # The fused kernels are several times faster than the per-tensor loop (docs/measurements.md); MPS keeps the default.
    if config.optimizer == "sgd":
        cls, options = torch.optim.SGD, dict(momentum=config.momentum)
    else:
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        options = dict(betas=tuple(config.betas), eps=config.eps)
    options.update(lr=config.lr, weight_decay=config.weight_decay)
    if groups[0]["params"][0].device.type in ("cuda", "cpu"):
        try:
            return cls(groups, fused=True, **options)
        except (TypeError, RuntimeError):
            pass  # an older torch without this fused kernel (fused SGD came in 2.3, fused Adam on the CPU in 2.4)
    return cls(groups, **options)


def place_model(model, device):
    """Move model to device, in the memory layout training uses there; return it."""
    model.to(device)
    if device.type in ("cpu", "cuda"):
        # Channels-last convolutions: faster training on the CPU (docs/measurements.md), and the usual layout for
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
    else:  # 20 weights (TrainConfig.validate checked them)
        w = np.asarray(config.pos_weight, dtype=np.float32)
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


@dataclass
class Session:
    """What training a config needs, built in one place (start_session): fit, lr_range_test and bench.py share it."""

    config: TrainConfig
    device: torch.device
    training: voc.VOCSplit  # the split it trains on: train, or train and val together (trainval)
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    amp: torch.dtype | None  # the autocast dtype; None trains in float32
    scaler: torch.amp.GradScaler | None  # float16's gradient scaler
    pos_weight: torch.Tensor | None  # (20,) weights of the positive labels in the loss
    cache_dir: str | Path | None = None  # where the decode-once image cache lives (pipeline.cache_images)
    progress: bool = False

    @property
    def precision(self) -> dict:
        """Return what the session computes on (precision_info)."""
        return precision_info(self.device, self.amp)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate: lr for the network, times its lr_scale for a group that has one (param_groups)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # a checkpoint written before the groups had no scale

    def step(self, x, y) -> torch.Tensor:
        """Take one optimizer step on the batch (x, y) (train_step); return the loss, left on the device."""
        return train_step(self.model, self.optimizer, x, y, amp=self.amp, scaler=self.scaler, pos_weight=self.pos_weight)

    def _loader(self, split: voc.VOCSplit, **options):
        config = self.config
        return pipeline.make_loader(split, image_size=config.image_size, seed=config.seed, device=self.device,
                                    pipeline=config.pipeline, cache_dir=self.cache_dir, progress=self.progress, **options)

    def train_loader(self):
        """Return the shuffled, augmented loader of the training split, its targets as config.difficult says."""
        return self._loader(self.training, train=True, batch_size=self.config.batch_size, augment=self.config.augment,
                            targets=training_targets(self.training, self.config.difficult))

    def eval_loader(self, split: voc.VOCSplit):
        """Return the loader that evaluates split: in order, unaugmented, at twice the training batch."""
        # Evaluation keeps no activations for a backward pass, so twice the batch fits wherever training fits,
        # and AlexNet-sized layers run faster on bigger batches (docs/measurements.md).
        return self._loader(split, train=False, batch_size=2 * self.config.batch_size)


def start_session(config: TrainConfig, training: voc.VOCSplit, *, device=None, cache_dir=None,
                  progress: bool = False, imagenet: bool = True) -> Session:
    """Seed, build and place config's network, its optimizer, precision and backends, to train on training.

    device defaults to the one config names; imagenet=False builds a pretrained network's layers with fresh weights
    (build_model), for timing its steps. The loaders are made on demand (Session.train_loader, eval_loader):
    building the image cache can wait until fit knows it trains.
    """
    device = pick_device(config.device) if device is None else device
    _set_seed(config.seed)
    model = place_model(build_model(config, imagenet), device).train()
    amp = amp_dtype(config, device)
    configure_backends(device)
    return Session(config, device, training, model, make_optimizer(config, model), amp, grad_scaler(amp),
                   _pos_weight(config, training.targets, device), cache_dir=cache_dir, progress=progress)


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


def train_one_epoch(session: Session, loader, epoch: int, stop=None) -> dict:
    """Train the session's model for one pass over loader (0-based epoch); return the epoch's history record.

    Raises TrainingStopped when stop is set (checked before every batch) and NonFiniteLoss when a loss is not finite.
    """
    session.model.train()
    loader.set_epoch(epoch)
    lr = session.optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    losses, seen = [], 0
    for x, y in _progress(loader, session.progress, leave=False, desc=f"epoch {epoch + 1}"):
        if stop is not None and stop.is_set():
            raise TrainingStopped
        # Kept on the device: a .item() per batch would make the CPU wait for every GPU step.
        losses.append(session.step(x, y))
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


def evaluate_epoch(session: Session, train_loader, val_loader, val_split: voc.VOCSplit | None, epoch: int) -> dict:
    """Return the train mAP, val mAP and val loss after 0-based epoch; NonFiniteLoss when the outputs are not finite.

    train_loader evaluates the session's training split; val_loader None (a run that trains on val too) gives no val
    figures.
    """
    model, device, amp, tta, train_split = session.model, session.device, session.amp, session.config.tta, session.training
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

    A checkpoint of AlexNet with Adam is 685 MB, and writing one takes a noticeable part of an epoch
    (docs/measurements.md). save() snapshots the state first (training changes the weights in place); wait() returns
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
            if self._thread.ident is not None:  # a signal may land between making the writer thread and starting it
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


def build_model(config: TrainConfig, imagenet: bool = True):
    """Build the network a config names (with pretrained weights when it asks for them; imagenet=False: without).

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
        imagenet=imagenet,
    )


def load_model(run_or_path, device: str = "cpu", model=None):
    """Rebuild a run's network from its config and load its checkpoint's weights.

    A run of your own network needs its class (or callable) again as model; it must be the code the run recorded.
    """
    run = run_or_path if isinstance(run_or_path, Run) else runs.load_run(run_or_path)
    config = TrainConfig.from_dict(run.config)
    if model is not None:
        given = models.canonical(model)
        if given != config.model:
            raise UserError(f"The model given ({models.label(given)}) is not the network the run {run.path} was trained "
                            f"with ({config.model_label()}): pass the class or callable as it was when the run trained.")
        config = config.replace(model=given)
    ckpt = load_checkpoint(run.checkpoint_path)
    model = build_model(config, imagenet=False)  # the checkpoint carries every weight: no ImageNet file is needed
    _load_state(model, ckpt["model"], run.checkpoint_path)
    return model.to(pick_device(device)).eval()


def _same_config(run: Run, config: TrainConfig, data: Data) -> bool:
    # Read back as a TrainConfig, a run recorded by an older version means what it meant then: fields added since take
    # the defaults that were in effect.
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


@dataclass(frozen=True)
class Start:
    """How fit starts a run: reuse the complete one, resume one from its checkpoint, or train afresh."""

    how: str  # "reuse", "resume" or "fresh" (the run in the folder, if any, moves aside)
    reused: Run | None = None  # reuse: the complete run, returned as it is
    checkpoint: dict | None = None  # resume: the checkpoint to continue from
    history: tuple = ()  # resume: the checkpoint's epochs, the records the resumed run starts with

    @property
    def origin(self) -> str:
        """Return the Run's origin this start gives: reused, resumed or trained."""
        return {"reuse": "reused", "resume": "resumed", "fresh": "trained"}[self.how]


def _start_point(run: Run, config: TrainConfig, data: Data, resume, reuse: bool) -> Start:
    """Decide how fit starts run, from what its folder holds and what was asked; change nothing."""
    reused = _reusable(run, config, data, resume, reuse)
    if reused is not None:
        return Start("reuse", reused=reused)
    if not (run.path / "config.json").exists():
        return Start("fresh")
    old = runs.load_run(run.path)
    if old.complete or not resume:
        return Start("fresh")
    same = _same_config(old, config, data)
    if resume == "auto" and not same:
        return Start("fresh")
    if not same:
        raise UserError(
            f"Cannot resume {run.path}: it was trained with another config or data; use the same settings, or another --name."
        )
    if not old.checkpoint_path.exists():
        return Start("fresh")
    ckpt = load_checkpoint(old.checkpoint_path)
    # Checkpoints written before they carried the history: history.json holds at least the checkpoint's epochs.
    history = ckpt["history"] if "history" in ckpt else old.history[: ckpt["epoch"]]
    return Start("resume", checkpoint=ckpt, history=tuple(history))


def epochs_to_train(config: TrainConfig, data: Data, path, resume="auto", reuse: bool = True) -> int:
    """Return how many epochs fit(config, name=path.name, runs_dir=path.parent, resume=..., reuse=...) would train:
    0 when it would reuse the complete run there, those after the last checkpoint when it would resume one, else all.

    Reads the folder's records only (no checkpoint, no lock) and changes nothing.
    """
    run = Run(name=Path(path).name, path=Path(path), config={})
    if _reusable(run, config, data, resume, reuse) is not None:
        return 0
    if not resume or not (run.path / "config.json").exists():
        return config.epochs
    old = runs.load_run(run.path)
    if old.complete or not _same_config(old, config, data) or not old.checkpoint_path.exists():
        return config.epochs
    return max(0, config.epochs - len(old.history))  # the history holds the checkpoint's epochs (an interrupt trims it)


def _move_aside(run: Run, lock: runs.RunLock, progress: bool) -> None:
    """Move the run already in run's folder aside (never delete it), saying where on run and, with progress, aloud."""
    aside = lock.move_aside()
    if aside is not None:
        run.moved_aside = str(aside)
        if progress:
            print(f"{run.name}: the earlier run in {run.path} moved to {aside} (kept, listed by mp3kit runs).", flush=True)


def _lock(run: Run) -> runs.RunLock:
    """Lock run's folder, or say in one sentence why it cannot be written."""
    try:
        return runs.RunLock(run.path).acquire()
    except WriteFailed as exc:
        raise exc.advise(_write_fix(exc, kept=0)) from exc


def _write_fix(exc: WriteFailed, kept: int) -> str:
    """Return what to do when a run's file could not be written (exc): fix the cause, then resume from epoch kept."""
    if kept:
        return (f"{exc.remedy} (or move the run folder to another RUNS_DIR), then resume the run (resume=True, or mp3kit "
                f"train --resume), which continues from its last good checkpoint (epoch {kept})")
    return f"{exc.remedy} or choose another RUNS_DIR (--runs-dir), then train the run again"


def _record(run: Run, status: str, reason: str, write=runs.write_progress) -> None:
    """Set run's status and reason and record them, as far as the disk allows (the failure may be the disk's)."""
    run.status, run.reason = status, reason
    try:
        write(run)
    except WriteFailed:
        pass


@contextlib.contextmanager
def _recorded(run: Run, writer: _CheckpointWriter, batch_size: int):
    """Record on run how the training inside ends, the one place that does; raise what the user must read.

    Complete, or stopped by the user (TrainingStopped): recorded, nothing raised. Interrupted (Ctrl-C, the kernel's
    interrupt button, SIGTERM): recorded at its last good checkpoint, raised as Interrupted. A non-finite loss, a
    write the disk refused and CUDA out of memory: recorded as failed, raised as one sentence (a UserError).
    """
    sigterm = _SigtermInterrupts()
    try:
        try:
            with writer:  # however training ends, the checkpoint being written lands first
                yield
            run.status = "complete"
        except TrainingStopped:
            run.status = "stopped"
            run.reason = f"stopped by the user during epoch {len(run.history) + 1}; resume=True continues it"
        runs.write_progress(run)
    except NonFiniteLoss as exc:
        _record(run, "failed", str(exc))
        raise
    except WriteFailed as exc:
        error = exc.advise(_write_fix(exc, writer.kept))
        _record(run, "failed", str(error), write=runs.write_status)  # history.json may be what the disk refused
        raise error from exc
    except torch.cuda.OutOfMemoryError as exc:
        _record(run, "failed", "CUDA out of memory")
        raise UserError(
            f"The GPU ran out of memory with batch size {batch_size}: use a smaller batch size "
            f"(e.g. {max(1, batch_size // 2)}) or a smaller image size."
        ) from exc
    except KeyboardInterrupt as exc:  # Ctrl-C, the kernel's interrupt button, or SIGTERM
        error = _interrupted(run, writer, getattr(exc, "signum", signal.SIGINT))
        run.history = run.history[:writer.kept]  # what the checkpoint holds: the epochs a resumed run starts after
        _record(run, "interrupted", str(error))
        raise error from exc
    finally:
        sigterm.restore()


def _interrupted(run: Run, writer: _CheckpointWriter, signum: int) -> Interrupted:
    """Return the Interrupted whose sentence says where run stands, once a checkpoint being written has landed."""
    try:
        writer.wait()
    except WriteFailed:
        pass  # then the one before it is the last good one
    epochs = run.config["epochs"]
    how = "stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"
    where = f"Run {run.name} was {how} during epoch {min(len(run.history) + 1, epochs)} of {epochs}"
    if writer.kept:
        message = (f"{where}; its last good checkpoint is epoch {writer.kept}: resume it (resume=True, or mp3kit train "
                   f"--resume) to continue from there.")
    else:
        message = f"{where}, before its first checkpoint: resume it (resume=True, or mp3kit train --resume) to start again."
    return Interrupted(message, signum)


def fit(config: TrainConfig, data_root=None, *, name: str | None = None, runs_dir="runs", resume=False,
        reuse: bool = False, progress: bool = True, callback=None, stop=None, cache_dir=None, data: Data | None = None,
        expected: dict | None = None) -> Run:
    """Train config on data_root's train split, validate on val, test on test; record and return the Run.

    Decides alone whether a run is reused, resumed or trained afresh, and says which in the Run's origin:
    reuse=True returns a complete run with the same config and data without training again; resume=True
    continues an unfinished run from its last checkpoint (a UserError if its settings differ), resume="auto"
    does so when the settings match and starts afresh otherwise. Starting afresh never deletes a run: the one
    in the folder moves aside to name@<UTC time> (the Run's moved_aside says where). While it trains, the run's
    folder is locked (runs.RunLock): a second fit of the same run stops with a sentence naming the first.
    expected: how long this training was estimated to take (mp3kit.estimate.Estimate.record), kept in status.json
    beside the seconds it takes; a reused run keeps its record as it was.
    """
    if not isinstance(config, TrainConfig):
        raise UserError("fit() needs a TrainConfig: build one with mp3kit.train.TrainConfig(...).")
    config.validate()
    name = runs.check_name(config.default_name() if name is None else name)
    data = data or load_data(data_root, config.max_images)
    run = Run(name=name, path=Path(runs_dir) / name, config={**config.to_dict(), "data": {
        "root": data.root, "synthetic": data.synthetic, "identities": _identities(data)}}, estimate=dict(expected or {}))
    reused = _reusable(run, config, data, resume, reuse)  # reading a finished run needs no lock
    if reused is not None:
        return reused
    # Built before the run folder is touched: a missing weights file must not leave a half run behind.
    session = start_session(config, data.training(config.train_split), cache_dir=cache_dir, progress=progress)
    # Locked before anything in the folder is moved or written: a second fit of this run (another process, or the
    # training panel's thread) stops here with a sentence instead of mixing its files with this one's.
    with _lock(run) as lock:
        start = _start_point(run, config, data, resume, reuse)  # under the lock: another fit may have finished it
        if start.how == "reuse":
            return start.reused
        if start.how == "fresh":
            _move_aside(run, lock, progress)
        return _train(run, session, data, start, callback=callback, stop=stop)


def _train(run: Run, session: Session, data: Data, start: Start, *, callback, stop) -> Run:
    """Train run from start to its last epoch, checkpointing each, then test and record it; return it."""
    config, model, optimizer, scaler = session.config, session.model, session.optimizer, session.scaler
    first, best = restore(start.checkpoint, model, optimizer, scaler, run.checkpoint_path) if start.checkpoint else (0, None)
    run.history, run.origin, run.device_info = list(start.history), start.origin, session.precision
    if session.progress:
        print(f"{run.name}: {precision_line(run.device_info)}", flush=True)
    held_out = data.val if config.train_split == "train" else None  # trainval: val is trained on, not held out
    train_loader = session.train_loader()
    train_eval_loader, val_loader = session.eval_loader(session.training), held_out and session.eval_loader(held_out)
    t_run, writer = time.perf_counter(), _CheckpointWriter(kept=first)
    with _recorded(run, writer, config.batch_size):
        runs.write_config(run)
        runs.write_progress(run)
        for epoch in _progress(range(first, config.epochs), session.progress, desc=run.name, initial=first,
                               total=config.epochs):
            session.set_lr(config.lr * lr_factor(config, epoch))
            record = train_one_epoch(session, train_loader, epoch, stop)
            if epoch == 0 or (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                record.update(evaluate_epoch(session, train_eval_loader, val_loader, held_out, epoch))
                if record["val_map"] is not None:
                    best = record["val_map"] if best is None else max(best, record["val_map"])
            run.history.append(record)
            if epoch + 1 < config.epochs:  # the last epoch's weights are saved with the test results
                writer.save(run.checkpoint_path, checkpoint_state(model, optimizer, scaler, epoch + 1, config, best,
                                                                  run.history))
            runs.write_progress(run)
            if callback is not None:
                callback(run)
        _finish(run, session, data, best, writer, t_run)
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
    session = start_session(config.replace(lr=start_lr), data.training(config.train_split), cache_dir=cache_dir,
                            progress=progress)
    growth = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, losses, running, average = [], [], [], 0.0
    for x, y in _endless(session.train_loader()):
        lr = start_lr * growth ** len(lrs)
        session.set_lr(lr)
        loss = session.step(x, y).item()
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


def _finish(run: Run, session: Session, data: Data, best, writer: _CheckpointWriter, t_run: float) -> None:
    """Test the trained model, keep its weights, record the test results and val scores (_recorded marks the run
    complete)."""
    config, model = session.config, session.model
    test_metrics, scores = evaluate_test(model, session.eval_loader(data.test), data.test, session.device, session.amp,
                                         config.tta)
    run.metrics = {**test_metrics, "best_val_map": best, "epochs_done": len(run.history), "synthetic": data.synthetic,
                   **run.device_info, "seconds": time.perf_counter() - t_run}
    # The finished run's checkpoint keeps weights and config, not the optimizer state (AlexNet's is 2x the weights):
    # resuming it, should a write below fail, only tests it again.
    writer.write_now(run.checkpoint_path, checkpoint_state(model, None, None, config.epochs, config, best, run.history))
    runs.write_test_scores(run, data.test.ids, scores, data.test.targets, data.test.difficult)
    # The final weights' val scores, for explanations without the model (mp3kit.explain): one pass over val.
    _, val_scores = evaluate(model, session.eval_loader(data.val), session.device, session.amp, config.tta)
    runs.write_val_scores(run, data.val.ids, val_scores, data.val.targets, data.val.difficult,
                          held_out=config.train_split == "train")
    runs.write_metrics(run)
