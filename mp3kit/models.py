"""The course's networks, their registry of names, a builder that turns a small JSON spec into a network, and tables.

MODELS holds one ModelEntry per model name (how to build it, whether it starts from ImageNet weights, whether
TrainConfig.width scales it, whether the training panel offers it); entry() answers the same questions for a spec and
for a student's own network, so no other module compares model names.

A spec is a plain dict (or its JSON text, or a .json file), so it can sit in TrainConfig.model and
config.json:

    {"name": "example",                   # optional label
     "blocks": [                          # feature extractor, applied in order
        {"conv": 64, "k": 11, "s": 4, "p": 2, "bn": true, "pool": 3},
        {"conv": 192, "k": 5, "bn": true, "pool": 3},
        {"conv1x1": 128},                 # a 1x1 convolution (k=1, p=0)
        {"res": 256, "s": 2, "bn": true}, # residual: two 3x3 convs (stride on the first) + shortcut
        {"conv": 256, "repeat": 2}],      # the same block twice
     "bn": false,                         # default "bn" for blocks that do not say
     "pool": "adaptive6",                 # "adaptiveN" (average to N x N) or "global" (= adaptive1)
     "head": [4096, 4096],                # hidden Linear sizes, each followed by ReLU
     "dropout": 0.5}                      # Dropout before each hidden Linear (before the last if head is [])

A conv block is Conv2d -> BatchNorm2d (if bn) -> ReLU -> MaxPool2d (if pool). "k" defaults to 3,
"s" to 1, "p" to k // 2. "pool": k means MaxPool2d(k, stride=2); [k, s] or [k, s, p] spell it out.
A residual block's shortcut is the identity, or a 1x1 convolution where channels or stride change.
Variants for an ablation: with_changes, with_block_changes, with_blocks_inserted (see SEED_ABLATION).
label() gives the short name of a model name or spec that run names, tables and the report show.
Every network here is made of plain torch.nn layers; only alexnet() uses torchvision's definition.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mp3kit import settings, usermodel
from mp3kit.table import Table
from mp3kit.util import UserError

# --------------------------------------------------------------------------------------------------
# The course kit's networks


class SimpleClassifier(nn.Module):
    """The course kit's simple CNN: three conv/ReLU/max-pool stages and three Linear layers."""

    def __init__(self, num_classes: int = 20, image_size: int = 227):
        super().__init__()
        side = image_size
        for kernel in (5, 3, 3):  # each stage: valid conv, then a 2x2 max-pool
            side = (side - kernel + 1) // 2
        if side < 1:
            raise UserError(f"SimpleClassifier needs images of at least 32 px; image_size={image_size} is too small.")
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 16, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        )
        self.flat_features = 16 * side * side  # 10,816 at 227 px
        self.classifier = nn.Sequential(
            nn.Linear(self.flat_features, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        """Return class logits (B, num_classes) for images (B, 3, H, W)."""
        x = self.features(x)  # (B, 16, side, side)
        return self.classifier(torch.flatten(x, 1))  # (B, 16*side*side) -> (B, num_classes)


def _alexnet_weights():
    """Return torchvision's ImageNet weights entry for AlexNet."""
    from torchvision.models import AlexNet_Weights

    return AlexNet_Weights.IMAGENET1K_V1


def alexnet_cache_path() -> Path:
    """Return where torch's hub cache keeps the ImageNet AlexNet weights file."""
    url = _alexnet_weights().url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _missing_weights_error(reason: str) -> UserError:
    """Return the error that says where to put the pretrained AlexNet file."""
    url = _alexnet_weights().url
    cache = alexnet_cache_path()
    return UserError(
        f"{reason}: download {url} to {cache} (in Colab: !mkdir -p {cache.parent} && wget -O {cache} {url}), "
        f"or set {settings.ALEXNET_WEIGHTS} (or weights_path) to where the file is, or set {settings.ALLOW_DOWNLOAD}=1 to let "
        "mp3kit download it."
    )


def _load_state_dict(path: Path) -> dict:
    """Read a state dict from path with torch.load(weights_only=True)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise UserError(f"Cannot read weights file {path} ({type(exc).__name__}); download it again.") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"Weights file {path} does not hold a state dict of tensors; give torchvision's AlexNet weights file.")
    return state


def _pretrained_alexnet_state(weights_path, allow_download: bool) -> tuple[dict, str]:
    """Return the ImageNet AlexNet state dict and where it came from, never falling back to random weights."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise _missing_weights_error(f"AlexNet weights file {path} (weights_path) does not exist")
        return _load_state_dict(path), str(path)
    path = settings.alexnet_weights()
    if path is not None:
        if not path.is_file():
            raise _missing_weights_error(f"AlexNet weights file {path} (from ${settings.ALEXNET_WEIGHTS}) does not exist")
        return _load_state_dict(path), str(path)
    cache = alexnet_cache_path()
    if cache.is_file():
        return _load_state_dict(cache), str(cache)
    if not allow_download:
        raise _missing_weights_error(f"Pretrained AlexNet weights are not in {cache.parent} and downloading is off")
    try:
        state = _alexnet_weights().get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # network errors come in many types
        raise _missing_weights_error(f"Downloading the pretrained AlexNet weights failed ({exc})") from exc
    return state, _alexnet_weights().url


def _check_matches(model: nn.Module, state: dict, source: str, skip_prefix: str) -> None:
    """Raise UserError unless state has exactly the model's parameters and shapes (keys under skip_prefix aside)."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(skip_prefix)}
    given = {k: v.shape for k, v in state.items() if not k.startswith(skip_prefix)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if expected[k] != given[k])
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise UserError(f"Weights file {source} does not match the AlexNet architecture ({detail}); give "
                        f"torchvision's AlexNet ImageNet weights.")


def freeze_feature_layers(model: nn.Module) -> nn.Module:
    """Stop gradients in model.features so that only the head trains; return the model."""
    if not hasattr(model, "features"):
        raise UserError(f"{type(model).__name__} has no `features` part to freeze; use freeze_features=False.")
    for p in model.features.parameters():
        p.requires_grad_(False)
    return model


def head_layer(model: nn.Module, num_classes: int = 20) -> nn.Linear | None:
    """Return the layer that gives the class scores: the last nn.Linear with num_classes outputs, or None.

    "Last" in the order the modules were assigned in __init__, which is the order of the forward pass in every network
    here (AlexNet's classifier[6], the simple classifier's and a spec's final Linear).
    """
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    return found[-1] if found else None


def alexnet(pretrained=False, weights_path=None, freeze_features=False, num_classes=20, allow_download=None) -> nn.Module:
    """Return torchvision's AlexNet with a num_classes head, optionally with ImageNet weights for the rest."""
    # Weights come from weights_path, else settings.alexnet_weights(), else torch's hub cache, else (only when
    # allow_download, by default settings.allow_download()) torchvision's download; otherwise a UserError says
    # where to put the file.
    from torchvision.models import alexnet as tv_alexnet

    if allow_download is None:
        allow_download = settings.allow_download()
    if pretrained:
        state, source = _pretrained_alexnet_state(weights_path, allow_download)
        with torch.device("meta"):  # no random init for weights about to be replaced (saves seconds on a CPU)
            model = tv_alexnet(weights=None)
        # The ImageNet head (1000 classes) is dropped: the new head starts from scratch.
        _check_matches(model, state, source, skip_prefix="classifier.6.")
        kept = {k: v.float().contiguous() for k, v in state.items() if not k.startswith("classifier.6.")}
        model.load_state_dict(kept, strict=False, assign=True)
    elif weights_path is not None:
        raise UserError(f"weights_path={weights_path} is only used with pretrained=True; drop it or ask for the "
                        f"pretrained AlexNet.")
    else:
        model = tv_alexnet(weights=None)
    model.classifier[6] = nn.Linear(4096, num_classes)
    if freeze_features:
        freeze_feature_layers(model)
    return model


# --------------------------------------------------------------------------------------------------
# Spec -> network

_TOP_KEYS = {"name", "blocks", "bn", "pool", "head", "dropout"}
_KINDS = ("conv", "conv1x1", "res")
_BLOCK_KEYS = {*_KINDS, "k", "s", "p", "bn", "pool", "repeat"}
_POOL_RE = re.compile(r"adaptive(\d+)")


def _fail(where: str, message: str):
    """Raise the UserError for a bad spec value."""
    raise UserError(f"Model spec {where}: {message}")


def _check_int(value, where: str, minimum: int) -> None:
    """Fail unless value is an int (not a bool) of at least minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(where, f"got {value!r}; use a whole number >= {minimum}.")


def _check_bool(value, where: str) -> None:
    """Fail unless value is true or false."""
    if not isinstance(value, bool):
        _fail(where, f"got {value!r}; use true or false.")


def _pool_args(value, where: str):
    """Return (kernel, stride, padding) of a block's max-pool, or None for no pool."""
    if value is None or value is False or value == 0:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, 2]
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= 3:
        _fail(where, f"got {value!r}; use a kernel size like 3 (stride 2), or [kernel, stride] or [kernel, stride, padding].")
    kernel, stride, padding = (*value, 2, 0)[:3] if len(value) == 1 else (*value, 0)[:3]
    _check_int(kernel, where + " kernel", 1)
    _check_int(padding, where + " padding", 0)
    _check_int(stride, where + " stride", 1)
    if padding > kernel // 2:
        _fail(where, f"padding {padding} is more than half the kernel {kernel}; use at most {kernel // 2}.")
    return kernel, stride, padding


def _global_size(value) -> int:
    """Return the output side of the spec's pooling before the head."""
    if value == "global":
        return 1
    match = _POOL_RE.fullmatch(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) < 1:
        _fail("key 'pool'", f"got {value!r}; use \"adaptiveN\" (e.g. \"adaptive6\", AlexNet's) or \"global\".")
    return int(match.group(1))


def _validate_block(block, i: int, default_bn: bool) -> dict:
    """Check one block and return it with every default filled in."""
    where = f"block {i}"
    if not isinstance(block, dict):
        _fail(where, f"got {block!r}; each block is an object such as {{\"conv\": 64, \"k\": 3}}.")
    unknown = sorted(set(block) - _BLOCK_KEYS)
    if unknown:
        _fail(where, f"unknown key {unknown[0]!r}; a block may have {', '.join(sorted(_BLOCK_KEYS))}.")
    kinds = [k for k in _KINDS if k in block]
    if len(kinds) != 1:
        _fail(where, f"has {kinds or 'none'} of {list(_KINDS)}; give exactly one, e.g. \"conv\": 64.")
    kind = kinds[0]
    _check_int(block[kind], f"{where} key {kind!r}", 1)
    k = block.get("k", 1 if kind == "conv1x1" else 3)
    _check_int(k, f"{where} key 'k'", 1)
    if kind == "conv1x1" and k != 1:
        _fail(where, f"a conv1x1 block has k=1; drop 'k' or use \"conv\" with \"k\": {k}.")
    s = block.get("s", 1)
    _check_int(s, f"{where} key 's'", 1)
    p = block.get("p", k // 2)
    _check_int(p, f"{where} key 'p'", 0)
    bn = block.get("bn", default_bn)
    _check_bool(bn, f"{where} key 'bn'")
    repeat = block.get("repeat", 1)
    _check_int(repeat, f"{where} key 'repeat'", 1)
    pool = _pool_args(block.get("pool"), f"{where} key 'pool'")
    return {"kind": kind, "out": block[kind], "k": k, "s": s, "p": p, "bn": bn, "pool": pool, "repeat": repeat}


def parse_spec(spec) -> dict:
    """Return a checked copy of spec given as a dict, a JSON string or the path of a .json file."""
    if isinstance(spec, (str, Path)):
        text, source = str(spec).strip(), "Model spec"
        if not text.startswith("{"):
            path = Path(text).expanduser()
            if not path.is_file():
                raise UserError(f"Model spec {text!r} is neither JSON nor an existing .json file; write it like "
                                f"'{{\"blocks\": [{{\"conv\": 64}}]}}'.")
            source = f"Model spec file {path}"
            try:
                text = path.read_text(encoding="utf-8-sig")  # utf-8-sig: the byte-order mark Notepad writes is no JSON
            except UnicodeDecodeError as exc:
                raise UserError(f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8.") from exc
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); fix it "
                            f"there.") from exc
    if not isinstance(spec, dict):
        raise UserError(f"Model spec must be an object like {{\"blocks\": [...]}}, got {type(spec).__name__}.")
    unknown = sorted(set(spec) - _TOP_KEYS)
    if unknown:
        raise UserError(f"Model spec key {unknown[0]!r} is unknown; a spec may have {', '.join(sorted(_TOP_KEYS))} "
                        f"(block settings go inside 'blocks').")
    if "name" in spec and not isinstance(spec["name"], str):
        _fail("key 'name'", f"got {spec['name']!r}; use a string.")
    blocks = spec.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise UserError("Model spec key 'blocks' is missing or empty; give a list of blocks such as "
                        "[{\"conv\": 64, \"k\": 3, \"pool\": 2}].")
    default_bn = spec.get("bn", False)
    _check_bool(default_bn, "key 'bn'")
    for i, block in enumerate(blocks):
        _validate_block(block, i, default_bn)
    _global_size(spec.get("pool", "adaptive6"))
    head = spec.get("head", [])
    if not isinstance(head, list):
        _fail("key 'head'", f"got {head!r}; use a list of hidden sizes such as [4096, 4096], or [].")
    for j, width in enumerate(head):
        _check_int(width, f"key 'head' item {j}", 1)
    dropout = spec.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        _fail("key 'dropout'", f"got {dropout!r}; use a probability from 0 up to (not including) 1.")
    return copy.deepcopy(spec)


class Residual(nn.Module):
    """A basic residual block: two convolutions (with BatchNorm if asked) plus a shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, k: int, s: int, p: int, bn: bool):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, k, s, p), *([nn.BatchNorm2d(c_out)] if bn else []), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, k, 1, p), *([nn.BatchNorm2d(c_out)] if bn else []),
        )
        # A 1x1 projection only where the identity cannot be added (channel count or resolution changes).
        self.shortcut = (
            nn.Identity() if c_in == c_out and s == 1
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, s), *([nn.BatchNorm2d(c_out)] if bn else []))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        """Return relu(body(x) + shortcut(x)), (B, c_out, H/s, W/s)."""
        return self.relu(self.body(x) + self.shortcut(x))


class SpecNet(nn.Module):
    """A network made from a spec: features, adaptive average pooling, flatten, head."""

    def __init__(self, spec: dict, num_classes: int = 20):
        super().__init__()
        self.spec = parse_spec(spec)
        default_bn = self.spec.get("bn", False)
        layers: list[nn.Module] = []
        channels = 3  # RGB
        for i, raw in enumerate(self.spec["blocks"]):
            b = _validate_block(raw, i, default_bn)
            for _ in range(b["repeat"]):
                if b["kind"] == "res":
                    layers.append(Residual(channels, b["out"], b["k"], b["s"], b["p"], b["bn"]))
                else:
                    # Conv bias stays on even before BatchNorm, as in the seed report's network (its parameter counts).
                    layers.append(nn.Conv2d(channels, b["out"], b["k"], b["s"], b["p"]))
                    if b["bn"]:
                        layers.append(nn.BatchNorm2d(b["out"]))
                    layers.append(nn.ReLU(inplace=True))
                channels = b["out"]
            if b["pool"]:
                layers.append(nn.MaxPool2d(*b["pool"]))  # after the last repeat only
        self.features = nn.Sequential(*layers)
        side = _global_size(self.spec.get("pool", "adaptive6"))
        self.avgpool = nn.AdaptiveAvgPool2d((side, side))
        dropout = float(self.spec.get("dropout", 0.0))
        widths = [channels * side * side, *self.spec.get("head", [])]
        head: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            if dropout:
                head.append(nn.Dropout(dropout))
            head += [nn.Linear(w_in, w_out), nn.ReLU(inplace=True)]
        if dropout and len(widths) == 1:
            head.append(nn.Dropout(dropout))  # no hidden layer: keep the asked-for dropout before the output
        head.append(nn.Linear(widths[-1], num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        """Return class logits (B, num_classes) for images (B, C, H, W)."""
        x = self.features(x)  # (B, channels, h, w)
        x = self.avgpool(x)  # (B, channels, side, side)
        return self.classifier(torch.flatten(x, 1))  # (B, channels*side*side) -> (B, num_classes)


def build(spec, num_classes: int = 20) -> nn.Module:
    """Return the network a spec (dict, JSON string or .json path) describes, with num_classes outputs."""
    return SpecNet(spec, num_classes)


def scaled(spec, width: float) -> dict:
    """Return a copy of spec with every block's channels and every hidden layer's units multiplied by width.

    Counts are rounded and kept at least 1; the layers, kernels, strides and pooling stay as they are. The smoke and
    quick profiles train their networks at width 0.125 so that a CPU fits a whole ablation in minutes.
    """
    new = parse_spec(spec)
    if width == 1:
        return new
    for block in new["blocks"]:
        for kind in _KINDS:
            if kind in block:
                block[kind] = max(1, round(block[kind] * width))
    new["head"] = [max(1, round(units * width)) for units in new.get("head", [])]
    return parse_spec(new)


def with_changes(spec, **changes) -> dict:
    """Return a copy of spec with top-level keys replaced, e.g. with_changes(s, dropout=0.2, pool="global")."""
    new = parse_spec(spec)
    new.update(copy.deepcopy(changes))
    return parse_spec(new)


def with_block_changes(spec, indices, **changes) -> dict:
    """Return a copy of spec with keys of the blocks at indices (an int or a list) replaced, e.g. bn=True."""
    new = parse_spec(spec)
    for i in [indices] if isinstance(indices, int) else indices:
        if not -len(new["blocks"]) <= i < len(new["blocks"]):
            raise UserError(f"Model spec has {len(new['blocks'])} blocks; block index {i} does not exist.")
        new["blocks"][i].update(copy.deepcopy(changes))
    return parse_spec(new)


def with_blocks_inserted(spec, index: int, *blocks) -> dict:
    """Return a copy of spec with blocks inserted before block index (len(blocks) appends)."""
    new = parse_spec(spec)
    new["blocks"][index:index] = copy.deepcopy(list(blocks))
    return parse_spec(new)


# torchvision's AlexNet written as a spec: the seed report's "BaseNet".
BASENET = {
    "name": "basenet",
    "blocks": [
        {"conv": 64, "k": 11, "s": 4, "p": 2, "pool": 3},
        {"conv": 192, "k": 5, "p": 2, "pool": 3},
        {"conv": 384, "k": 3, "p": 1},
        {"conv": 256, "k": 3, "p": 1},
        {"conv": 256, "k": 3, "p": 1, "pool": 3},
    ],
    "pool": "adaptive6",
    "head": [4096, 4096],
    "dropout": 0.5,
}

# The seed report's self-designed network, "alexnet-bn": BaseNet with BatchNorm after every convolution. Its table
# ends in Linear(4096, 21) = 86,037 parameters because the course kit adds a background class; mp3kit
# has 20 outputs, so the last layer here has 4096 * 20 + 20 = 81,940. (The seed printed BatchNorm with
# track_running_stats=False; the standard setting used here has the same parameter count.)
ALEXNET_BN = with_changes(with_block_changes(BASENET, range(5), bn=True), name="alexnet-bn")

# The seed's ablation rows that change the architecture, cumulatively, in the seed's order. Its other
# differences (SGD vs Adam, data augmentation) are TrainConfig fields, not specs. The seed does not say
# which convolution got the first BatchNorm, nor where its extra layers went; these follow the order of
# the network. Taken literally, the last row's extra MaxPool(3, stride 2) would meet a 2x2 map at 227 px,
# which PyTorch refuses, so it pads that pool by 1. The last two rows need images of at least 127 px.
SEED_ABLATION = [
    ("BaseNet", BASENET),
    ("+ 1 BatchNorm", with_changes(with_block_changes(BASENET, [0], bn=True), name="basenet+bn1")),
    ("+ 2 more BatchNorm", with_changes(with_block_changes(BASENET, [0, 1, 2], bn=True), name="basenet+bn3")),
    ("+ 2 more BatchNorm (all 5)", with_changes(ALEXNET_BN, name="basenet+bn5")),
]
SEED_ABLATION.append((
    "+ 2 Conv(384, 384, 3) + MaxPool",
    with_changes(with_blocks_inserted(SEED_ABLATION[-1][1], 3, {"conv": 384, "k": 3, "p": 1, "repeat": 2, "pool": 3}),
                 name="basenet+bn5+conv384x2"),
))
SEED_ABLATION.append((
    "+ 3 Conv(256, 256, 3) + MaxPool",
    with_changes(with_blocks_inserted(SEED_ABLATION[-1][1], 6, {"conv": 256, "k": 3, "p": 1, "repeat": 3, "pool": [3, 2, 1]}),
                 name="basenet+bn5+conv384x2+conv256x3"),
))


# --------------------------------------------------------------------------------------------------
# Names -> networks

@dataclass(frozen=True)
class ModelEntry:
    """What mp3kit knows of a network: how to build it, whether it starts from ImageNet weights, whether width scales it.

    The registry (MODELS) holds one per model name; entry() makes one for a spec or a student's own network, so every
    form of TrainConfig.model answers the same questions.
    """

    label: str  # the short name run names, tables and the report show
    make: Callable[[int, int, float], nn.Module]  # (num_classes, image_size, width) -> the network, fresh weights
    # (num_classes, weights_path, allow_download) -> the same network with ImageNet weights; None: trained from scratch
    imagenet: Callable[[int, object, bool | None], nn.Module] | None = None
    # TrainConfig.width resizes it; False: its sizes are fixed (by the course, by the ImageNet weights, by a student's code)
    scales_with_width: bool = True
    frozen: bool = False  # trains the head only
    offered: bool = True  # the training panel lists it

    @property
    def pretrained(self) -> bool:
        return self.imagenet is not None


def _spec_maker(spec: dict) -> Callable[[int, int, float], nn.Module]:
    return lambda num_classes, image_size, width: build(scaled(spec, width), num_classes)


def _scratch_alexnet(num_classes: int, image_size: int, width: float) -> nn.Module:
    # torchvision's definition has no width: at another width than 1, AlexNet is its own layers written as a spec
    # (BaseNet, with the same state-dict keys and shapes at width 1), scaled.
    if width == 1:
        return alexnet(num_classes=num_classes)
    return build(scaled(with_changes(BASENET, name="alexnet"), width), num_classes)


def _imagenet_alexnet(num_classes: int, weights_path, allow_download: bool | None) -> nn.Module:
    return alexnet(True, weights_path, num_classes=num_classes, allow_download=allow_download)


def _alexnet_layers(num_classes: int, image_size: int, width: float) -> nn.Module:
    return alexnet(num_classes=num_classes)


MODELS = {e.label: e for e in (
    ModelEntry("simple", lambda num_classes, image_size, width: SimpleClassifier(num_classes, image_size),
               scales_with_width=False),
    ModelEntry("alexnet", _scratch_alexnet),
    ModelEntry("alexnet-pretrained", _alexnet_layers, _imagenet_alexnet, scales_with_width=False),
    ModelEntry("alexnet-pretrained-frozen", _alexnet_layers, _imagenet_alexnet, scales_with_width=False, frozen=True,
               offered=False),
    ModelEntry("alexnet-bn", _spec_maker(ALEXNET_BN)),
    ModelEntry("basenet", _spec_maker(BASENET)),
)}


def entry(model) -> ModelEntry:
    """Return the registry entry of a model name, or an entry for a spec (dict, JSON text, .json path) or a student's
    network (an nn.Module class, a callable, a UserModel or its record); refuse anything else in one sentence."""
    if isinstance(model, str) and not is_spec_text(model):
        found = MODELS.get(model.strip().lower())
        if found is None:
            raise UserError(f"Unknown model {model!r}: use one of {', '.join(MODELS)}, a spec (a dict, JSON text or a "
                            f".json file) or your own nn.Module class.")
        return found
    if isinstance(model, (type, nn.Module)) or usermodel.is_user_model(model) or usermodel.is_record(model):
        network = usermodel.as_user_model(model)
        return ModelEntry(network.name, lambda num_classes, image_size, width: network.build(num_classes),
                          scales_with_width=False, offered=False)
    if isinstance(model, (str, Path, dict)):
        spec = parse_spec(model)
        return ModelEntry(str(spec.get("name", "custom")), _spec_maker(spec), offered=False)
    raise UserError(f"Model {model!r} is not a network: use one of {', '.join(MODELS)}, a spec (a dict, JSON text or a "
                    f".json file) or your own nn.Module class.")


def canonical(model):
    """Return model as TrainConfig keeps it: a name as the registry spells it, a student's class or callable (or its
    record from a run's config.json) as a UserModel, a spec as given."""
    if isinstance(model, str) and not is_spec_text(model):
        return entry(model).label
    if isinstance(model, (type, nn.Module)) or usermodel.is_user_model(model) or usermodel.is_record(model):
        return usermodel.as_user_model(model)
    return model


def label(model) -> str:
    """Return the short readable name of a model: its name, a spec's "name", the class name of a student's network;
    a name or spec this version does not know (a run's config.json) as it is written, else "custom"."""
    try:
        return entry(model).label
    except UserError:
        if isinstance(model, str):
            return model
        return str(model.get("name", "custom")) if isinstance(model, dict) else "custom"


def is_spec_text(value) -> bool:
    """Return True when a string gives a spec rather than a name: JSON text or the path of a .json file."""
    text = str(value).strip()
    return text.startswith("{") or text.lower().endswith(".json")


def spec_or_name(value):
    """Return a model name as the registry spells it, a student's network as a UserModel, or the checked spec dict of
    a dict, JSON text or .json path."""
    if isinstance(value, str) and not is_spec_text(value):
        return canonical(value)
    if not isinstance(value, (str, Path, dict)) or usermodel.is_record(value):
        return canonical(value)
    return parse_spec(value)


def _check_image_size(model: nn.Module, image_size: int, label: str, num_classes: int = 20) -> None:
    """Run one image of image_size through model; raise UserError naming the layer if the network cannot take it,
    or if it does not return one score per class."""
    was_training = model.training
    model.eval()  # BatchNorm in training mode refuses a batch of one 1x1 map
    entered = []
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: entered.append((name, m)))
             for name, m in model.named_modules() if name and not list(m.children())]
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, image_size, image_size))
    except RuntimeError as exc:
        where = ""
        if entered:
            name, layer = entered[-1]
            where = f" in layer {name} ({layer})"
        raise UserError(
            f"Model {label} cannot take {image_size} px images{where}: {str(exc).splitlines()[0]}; "
            "use a larger image_size, fewer pooling/stride-2 layers, or make the first Linear layer's input size "
            "match what the layers before it give (the architecture table shows each layer's output shape)."
        ) from exc
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    shape = tuple(out.shape) if torch.is_tensor(out) else None
    if shape != (1, num_classes):
        got = f"shape {shape}" if shape is not None else f"a {type(out).__name__}"
        raise UserError(f"Model {label} returns {got} for one {image_size} px image: it must return (batch, "
                        f"{num_classes}), one score per VOC class; end it with a Linear layer of {num_classes} outputs.")


def scales_with_width(model) -> bool:
    """Return True when TrainConfig.width resizes this network (its registry entry says: AlexNet and every spec, not
    simple, the pretrained AlexNet nor a student's own class, whose sizes are its code's)."""
    return entry(model).scales_with_width


def takes(model, image_size: int, width: float = 1.0) -> bool:
    """Return True when the network can take image_size images (shapes only: built on the meta device, no weights)."""
    try:
        with torch.device("meta"):  # no memory, no initialisation
            model_from_name(model, image_size=image_size, width=width, imagenet=False)
    except UserError:
        return False
    return True


def model_from_name(name_or_spec, num_classes=20, image_size=227, weights_path=None, freeze_features=False,
                    allow_download=None, width: float = 1.0, imagenet: bool = True) -> nn.Module:
    """Return the network for a name (see MODELS), a spec dict, a JSON string, a .json path, or a student's nn.Module
    class or callable (a UserModel).

    width scales the networks whose entry says so (AlexNet and every spec; see scaled). A pretrained network starts
    from the ImageNet weights; imagenet=False builds its layers alone, for a checkpoint's weights to replace.
    """
    found = entry(name_or_spec)
    if weights_path is not None and not found.pretrained:
        names = [name for name, e in MODELS.items() if e.pretrained]
        raise UserError(f"weights_path={weights_path} is only used by {' and '.join(names)}; drop it or choose one of them.")
    if found.pretrained and imagenet:
        model = found.imagenet(num_classes, weights_path, allow_download)
    else:
        model = found.make(num_classes, image_size, width if found.scales_with_width else 1.0)
    if freeze_features or found.frozen:
        freeze_feature_layers(model)
    _check_image_size(model, image_size, repr(found.label), num_classes)
    return model


# --------------------------------------------------------------------------------------------------
# Architecture tables


def _shape(x):
    """Return the shape of a tensor (or the first tensor in a tuple) with the batch as -1, else None."""
    if isinstance(x, (tuple, list)):
        x = next((t for t in x if torch.is_tensor(t)), None)
    return (-1, *x.shape[1:]) if torch.is_tensor(x) else None


def _kernel(module: nn.Module) -> str:
    """Return a module's kernel as 'KxK' (with stride and padding when not 1 and 0), or ''."""
    k = getattr(module, "kernel_size", None)
    if k is None:
        return ""
    k = (k, k) if isinstance(k, int) else tuple(k)
    text = f"{k[0]}x{k[1]}"
    s, p = getattr(module, "stride", 1), getattr(module, "padding", 0)
    s = s[0] if isinstance(s, (tuple, list)) else s
    p = p[0] if isinstance(p, (tuple, list)) else p
    if s != 1:
        text += f" s{s}"
    if p:
        text += f" p{p}"
    return text


def _fmt_shape(shape) -> str:
    """Return a shape without its batch, e.g. '64x56x56'."""
    return "x".join(str(d) for d in shape[1:]) if shape else ""


@dataclass(repr=False)
class ArchTable:
    """One row per layer run by a forward pass, plus parameter totals."""

    rows: list[dict] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    input_shape: tuple = ()  # one image, e.g. (3, 128, 128)
    output_shape: tuple = ()  # its scores, e.g. (20,)
    code: str = ""  # a student's network: the source recorded with its runs (shown beside the table in the report)

    def table(self) -> Table:
        """Return the layers as a Table (numbers aligned right), with the parameter totals as its note."""
        body = []
        for i, r in enumerate(self.rows, start=1):
            channels = f"{r['in_channels']} -> {r['out_channels']}" if r["in_channels"] is not None else ""
            body.append([str(i), r["type"], r["kernel"], _fmt_shape(r["input_shape"]),
                         _fmt_shape(r["output_shape"]), channels, f"{r['params']:,}"])
        frozen = self.total_params - self.trainable_params
        totals = f"Total parameters: {self.total_params:,} (trainable {self.trainable_params:,}, frozen {frozen:,})"
        if self.input_shape and self.output_shape:
            totals = (f"One {_fmt_shape((-1, *self.input_shape))} image in, {_fmt_shape((-1, *self.output_shape))} "
                      f"scores out. {totals}")
        return Table(body, ["#", "type", "kernel", "input", "output", "channels", "params"], totals,
                     align=["right", "left", "left", "left", "left", "left", "right"])

    def to_markdown(self) -> str:
        """Return the table as GitHub markdown, followed by the parameter totals."""
        return self.table().to_markdown()

    def to_text(self) -> str:
        """Return the table as aligned plain text, followed by the parameter totals."""
        return self.table().to_text()

    def __repr__(self) -> str:
        return self.to_text()

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def architecture_table(model: nn.Module, input_size=(3, 227, 227)) -> ArchTable:
    """Return one row per leaf layer in the order a forward pass of one input_size image runs them."""
    rows: list[dict] = []
    counted: set[int] = set()

    def hook(module, inputs, output):
        # A module run twice is listed twice but its parameters count once.
        params = 0 if id(module) in counted else sum(p.numel() for p in module.parameters(recurse=False))
        counted.add(id(module))
        in_ch = getattr(module, "in_channels", getattr(module, "in_features", getattr(module, "num_features", None)))
        out_ch = getattr(module, "out_channels", getattr(module, "out_features", getattr(module, "num_features", None)))
        rows.append({
            "layer": f"{type(module).__name__}-{len(rows) + 1}",
            "type": type(module).__name__,
            "kernel": _kernel(module),
            "input_shape": _shape(inputs),
            "output_shape": _shape(output),
            "in_channels": in_ch,
            "out_channels": out_ch,
            "params": params,
        })

    leaves = [m for m in model.modules() if not list(m.children()) and not isinstance(m, nn.Identity)]
    handles = [m.register_forward_hook(hook) for m in leaves]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()  # BatchNorm in training mode refuses a batch of one 1x1 map
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ArchTable(rows, total, trainable, tuple(input_size), tuple(_shape(out) or (-1,))[1:])
