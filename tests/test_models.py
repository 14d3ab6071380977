"""Networks: the simple net, AlexNet (scratch and offline-pretrained), the spec builder, alexnet-bn, names, tables."""

import json

import pytest
import torch
import torchvision
from torch import nn

from mp3kit import models, settings
from mp3kit.models import (
    ALEXNET_BN,
    BASENET,
    SEED_ABLATION,
    SimpleClassifier,
    alexnet,
    architecture_table,
    build,
    model_from_name,
    with_block_changes,
    with_blocks_inserted,
    with_changes,
)
from mp3kit.util import UserError

WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"  # the name in torchvision's AlexNet_Weights.IMAGENET1K_V1 URL

# The seed report's summary of its network at 227 px: (type, output shape, parameters). Its last row was
# Linear(4096, 21) with 86,037 parameters; mp3kit has 20 classes, hence 4096 * 20 + 20 = 81,940.
SEED_SUMMARY = [
    ("Conv2d", (-1, 64, 56, 56), 23_296), ("BatchNorm2d", (-1, 64, 56, 56), 128), ("ReLU", (-1, 64, 56, 56), 0),
    ("MaxPool2d", (-1, 64, 27, 27), 0),
    ("Conv2d", (-1, 192, 27, 27), 307_392), ("BatchNorm2d", (-1, 192, 27, 27), 384), ("ReLU", (-1, 192, 27, 27), 0),
    ("MaxPool2d", (-1, 192, 13, 13), 0),
    ("Conv2d", (-1, 384, 13, 13), 663_936), ("BatchNorm2d", (-1, 384, 13, 13), 768), ("ReLU", (-1, 384, 13, 13), 0),
    ("Conv2d", (-1, 256, 13, 13), 884_992), ("BatchNorm2d", (-1, 256, 13, 13), 512), ("ReLU", (-1, 256, 13, 13), 0),
    ("Conv2d", (-1, 256, 13, 13), 590_080), ("BatchNorm2d", (-1, 256, 13, 13), 512), ("ReLU", (-1, 256, 13, 13), 0),
    ("MaxPool2d", (-1, 256, 6, 6), 0),
    ("AdaptiveAvgPool2d", (-1, 256, 6, 6), 0),
    ("Dropout", (-1, 9216), 0), ("Linear", (-1, 4096), 37_752_832), ("ReLU", (-1, 4096), 0),
    ("Dropout", (-1, 4096), 0), ("Linear", (-1, 4096), 16_781_312), ("ReLU", (-1, 4096), 0),
    ("Linear", (-1, 20), 81_940),
]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def meta_build(spec):
    """Build spec on the meta device: shapes and parameter counts without the cost of real weights."""
    with torch.device("meta"):
        return build(spec)


@pytest.fixture(autouse=True)
def no_real_weights(tmp_path, monkeypatch):
    """Point torch's hub cache at an empty folder and clear the env var, so no machine's real cache leaks in."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv(settings.ALEXNET_WEIGHTS, raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("a test tried to download weights")

    monkeypatch.setattr(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.__class__, "get_state_dict", no_download)
    return hub


@pytest.fixture(scope="module")
def imagenet_state():
    """Return a random ImageNet-shaped AlexNet state dict (1000 classes)."""
    with torch.device("meta"):
        shapes = torchvision.models.alexnet().state_dict()
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=gen) * 0.01 for k, v in shapes.items()}


@pytest.fixture(scope="module")
def weights_file(imagenet_state, tmp_path_factory):
    """Write the random state dict with torch.save, once for the module."""
    path = tmp_path_factory.mktemp("weights") / WEIGHTS_FILE
    torch.save(imagenet_state, path)
    return path


def assert_loaded(model, state, num_classes=20):
    assert torch.equal(model.features[0].weight, state["features.0.weight"])
    assert torch.equal(model.classifier[4].weight, state["classifier.4.weight"])
    assert model.classifier[6].out_features == num_classes
    assert all(p.device.type == "cpu" for p in model.parameters())


# ---- the course kit's networks


@pytest.mark.parametrize("size, flat", [(227, 10_816), (112, 16 * 12 * 12), (64, 16 * 6 * 6)])
def test_simple_classifier_sizes(size, flat):
    model = SimpleClassifier(image_size=size)
    assert model.flat_features == flat
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 20)


def test_simple_classifier_refuses_tiny_images():
    with pytest.raises(UserError, match="at least"):
        SimpleClassifier(image_size=16)


def test_alexnet_from_scratch_is_torchvisions_with_20_outputs():
    model = alexnet()
    with torch.device("meta"):
        reference = torchvision.models.alexnet(num_classes=20)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 20)


def test_pretrained_from_argument_with_frozen_features(weights_file, imagenet_state):
    model = alexnet(pretrained=True, weights_path=weights_file, freeze_features=True)
    assert_loaded(model, imagenet_state)
    assert not any(p.requires_grad for p in model.features.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    model(torch.zeros(2, 3, 64, 64)).sum().backward()
    assert model.features[0].weight.grad is None and model.classifier[6].weight.grad is not None


def test_pretrained_from_env_var(weights_file, imagenet_state, monkeypatch):
    monkeypatch.setenv(settings.ALEXNET_WEIGHTS, str(weights_file))
    model = model_from_name("alexnet-pretrained", image_size=64)
    assert_loaded(model, imagenet_state)
    assert all(p.requires_grad for p in model.parameters())  # fine-tunes everything by default


def test_pretrained_from_hub_cache(weights_file, imagenet_state, no_real_weights):
    (no_real_weights / "checkpoints").mkdir(parents=True)
    (no_real_weights / "checkpoints" / WEIGHTS_FILE).symlink_to(weights_file)
    model = model_from_name("alexnet-pretrained-frozen", num_classes=5, image_size=64)
    assert_loaded(model, imagenet_state, num_classes=5)
    assert not any(p.requires_grad for p in model.features.parameters())


def test_pretrained_from_torch_home(weights_file, tmp_path, monkeypatch):
    monkeypatch.undo()  # the real torch.hub.get_dir, steered by TORCH_HOME alone
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(settings.ALEXNET_WEIGHTS, raising=False)
    assert models.alexnet_cache_path() == tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE
    models.alexnet_cache_path().parent.mkdir(parents=True)
    models.alexnet_cache_path().symlink_to(weights_file)
    assert alexnet(pretrained=True).classifier[6].out_features == 20


def test_missing_weights_say_where_to_put_them(no_real_weights):
    with pytest.raises(UserError) as info:
        alexnet(pretrained=True)
    message = str(info.value)
    assert str(no_real_weights / "checkpoints" / WEIGHTS_FILE) in message
    assert "https://download.pytorch.org/models/" + WEIGHTS_FILE in message
    assert settings.ALEXNET_WEIGHTS in message


def test_missing_file_named_by_argument_or_env(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="nope.pth .weights_path. does not exist"):
        alexnet(pretrained=True, weights_path=tmp_path / "nope.pth")
    monkeypatch.setenv(settings.ALEXNET_WEIGHTS, str(tmp_path / "gone.pth"))
    with pytest.raises(UserError, match=r"gone.pth \(from \$MP3KIT_ALEXNET_WEIGHTS\) does not exist"):
        alexnet(pretrained=True)


def test_download_only_when_allowed_and_failure_is_clear(imagenet_state, monkeypatch):
    weights_class = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.__class__
    monkeypatch.setattr(weights_class, "get_state_dict", lambda self, **kw: imagenet_state)
    assert_loaded(alexnet(pretrained=True, allow_download=True), imagenet_state)

    def offline(self, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(weights_class, "get_state_dict", offline)
    with pytest.raises(UserError, match="Downloading the pretrained AlexNet weights failed .*network is unreachable"):
        alexnet(pretrained=True, allow_download=True)
    # By default $MP3KIT_ALLOW_DOWNLOAD decides, which is also what the missing-weights message offers.
    monkeypatch.setenv(settings.ALLOW_DOWNLOAD, "1")
    with pytest.raises(UserError, match="Downloading the pretrained AlexNet weights failed"):
        alexnet(pretrained=True)
    monkeypatch.delenv(settings.ALLOW_DOWNLOAD)
    with pytest.raises(UserError, match="downloading is off: .* or set MP3KIT_ALLOW_DOWNLOAD=1 to let mp3kit download it"):
        alexnet(pretrained=True)


def test_mismatched_or_corrupt_checkpoint(tmp_path):
    small = tmp_path / "simple.pth"
    torch.save(SimpleClassifier().state_dict(), small)
    with pytest.raises(UserError, match="does not match the AlexNet architecture .missing: classifier.1.bias"):
        alexnet(pretrained=True, weights_path=small)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="Cannot read weights file"):
        alexnet(pretrained=True, weights_path=corrupt)


# ---- the spec builder


def test_alexnet_bn_matches_the_seed_reports_table():
    table = architecture_table(meta_build(ALEXNET_BN), (3, 227, 227))
    assert [(r["type"], r["output_shape"], r["params"]) for r in table.rows] == SEED_SUMMARY
    assert table.rows[0]["input_shape"] == (-1, 3, 227, 227) and table.rows[0]["kernel"] == "11x11 s4 p2"
    assert table.total_params == sum(p for _, _, p in SEED_SUMMARY) == table.trainable_params


def test_basenet_is_torchvisions_alexnet():
    with torch.device("meta"):
        ours, reference = build(BASENET).state_dict(), torchvision.models.alexnet(num_classes=20).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}


def test_seed_ablation_rows_are_cumulative_and_run_at_227():
    assert [label for label, _ in SEED_ABLATION][:2] == ["BaseNet", "+ 1 BatchNorm"]
    counts = []
    for _, spec in SEED_ABLATION:
        assert json.loads(json.dumps(spec)) == spec  # goes into config.json unchanged
        rows = architecture_table(meta_build(spec)).rows
        assert rows[-1]["output_shape"] == (-1, 20)
        counts.append((sum(r["type"] == "BatchNorm2d" for r in rows), sum(r["type"] == "Conv2d" for r in rows)))
    assert counts == [(0, 5), (1, 5), (3, 5), (5, 5), (5, 7), (5, 10)]
    assert SEED_ABLATION[3][1]["blocks"] == ALEXNET_BN["blocks"]


def test_spec_features_build_and_run():
    spec = {
        "name": "tiny-resnet",
        "bn": True,
        "blocks": [
            {"conv": 16, "k": 3, "pool": 2},
            {"conv1x1": 8, "bn": False},
            {"res": 8},  # identity shortcut
            {"res": 24, "s": 2},  # projection shortcut
            {"conv": 24, "repeat": 2, "pool": [2, 2]},
        ],
        "pool": "global",
        "head": [32],
        "dropout": 0.2,
    }
    model = build(json.dumps(spec), num_classes=7)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 7)
    types = [type(m).__name__ for m in model.modules()]
    assert types.count("Residual") == 2 and types.count("Dropout") == 1
    conv1x1 = model.features[4]
    assert conv1x1.kernel_size == (1, 1) and not isinstance(model.features[5], nn.BatchNorm2d)
    assert model.classifier[1].in_features == 24  # global pooling: channels only
    rows = architecture_table(model, (3, 64, 64)).rows
    assert rows[-1]["output_shape"] == (-1, 7)
    assert sum(r["params"] for r in rows) == n_params(model)


def test_dropout_with_an_empty_head_sits_before_the_output():
    model = build({"blocks": [{"conv": 4}], "pool": "global", "dropout": 0.3})
    assert [type(m).__name__ for m in model.classifier] == ["Dropout", "Linear"]


def test_spec_from_a_json_file(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"blocks": [{"conv": 8, "pool": 2}], "pool": "adaptive2"}))
    model = model_from_name(str(path), image_size=32)
    assert model.classifier[-1].in_features == 8 * 2 * 2


def test_variant_helpers_copy_and_never_mutate():
    before = json.dumps(BASENET)
    wider = with_changes(BASENET, head=[1024], dropout=0.2, pool="global")
    bn = with_block_changes(BASENET, [0, -1], bn=True)
    deeper = with_blocks_inserted(BASENET, 5, {"conv1x1": 128})
    assert json.dumps(BASENET) == before
    assert wider["head"] == [1024] and wider["blocks"] == BASENET["blocks"]
    assert [b.get("bn", False) for b in bn["blocks"]] == [True, False, False, False, True]
    assert deeper["blocks"][-1] == {"conv1x1": 128} and len(deeper["blocks"]) == 6
    with pytest.raises(UserError, match="block index 9"):
        with_block_changes(BASENET, 9, bn=True)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"blocks": []}, "key 'blocks' is missing or empty"),
        ({"layers": [{"conv": 8}]}, "key 'layers' is unknown"),
        ({"blocks": [{"conv": 8, "kernel": 3}]}, "block 0: unknown key 'kernel'"),
        ({"blocks": [{"k": 3}]}, "block 0: has none of"),
        ({"blocks": [{"conv": 8, "res": 8}]}, "give exactly one"),
        ({"blocks": [{"conv": 0}]}, "block 0 key 'conv': got 0"),
        ({"blocks": [{"conv": 8, "bn": 1}]}, "block 0 key 'bn': got 1; use true or false"),
        ({"blocks": [{"conv": 8, "s": 1.5}]}, "block 0 key 's'"),
        ({"blocks": [{"conv1x1": 8, "k": 3}]}, "conv1x1 block has k=1"),
        ({"blocks": [{"conv": 8, "pool": "max"}]}, "block 0 key 'pool'"),
        ({"blocks": [{"conv": 8, "pool": [3, 2, 2]}]}, "padding 2 is more than half"),
        ({"blocks": [{"conv": 8}], "pool": "avg"}, "key 'pool': got 'avg'"),
        ({"blocks": [{"conv": 8}], "head": 4096}, "key 'head'"),
        ({"blocks": [{"conv": 8}], "dropout": 1.0}, "key 'dropout'"),
        ({"blocks": [{"conv": 8}], "bn": "yes"}, "key 'bn'"),
        ('{"blocks": [', "not valid JSON"),
        ("[1, 2]", "neither JSON nor an existing .json file"),
        (42, "must be an object"),
    ],
)
def test_bad_specs_name_the_key(spec, fragment):
    with pytest.raises(UserError, match="Model spec") as info:
        build(spec)
    assert fragment in str(info.value)


# ---- names and tables


def test_model_from_name_knows_every_name():
    assert isinstance(model_from_name("simple", image_size=64), SimpleClassifier)
    with torch.device("meta"):  # shapes only: skip the cost of random AlexNet-sized weights
        for name in ("alexnet", "alexnet-bn", "basenet"):
            assert model_from_name(name).classifier[-1].out_features == 20
        spec_net = model_from_name(with_changes(ALEXNET_BN, head=[256]), num_classes=3)
    assert spec_net.classifier[-1].out_features == 3


def test_model_from_name_errors():
    with pytest.raises(UserError, match=f"use one of {', '.join(models.MODELS)}"):
        model_from_name("resnet50")
    assert tuple(models.MODELS) == ("simple", "alexnet", "alexnet-pretrained", "alexnet-pretrained-frozen", "alexnet-bn",
                                    "basenet")
    with pytest.raises(UserError, match="use one of"):
        model_from_name("resnet50")
    with pytest.raises(UserError, match="only used by alexnet-pretrained"):
        model_from_name("simple", weights_path="w.pth")
    with pytest.raises(UserError, match="cannot take 64 px images"), torch.device("meta"):
        model_from_name(SEED_ABLATION[-1][1], image_size=64)


def test_architecture_table_text_markdown_and_frozen_count():
    model = SimpleClassifier(image_size=64)
    models.freeze_feature_layers(model)
    table = architecture_table(model, (3, 64, 64))
    assert table.total_params == n_params(model)
    assert table.trainable_params == sum(p.numel() for p in model.classifier.parameters())
    md = table.to_markdown().splitlines()
    assert md[0] == "| # | type | kernel | input | output | channels | params |"
    assert md[2] == "| 1 | Conv2d | 5x5 | 3x64x64 | 64x60x60 | 3 -> 64 | 4,864 |"
    assert len([line for line in md if line.startswith("|")]) == 2 + len(table.rows)
    assert md[-1].startswith("One 3x64x64 image in, 20 scores out. Total parameters: ") and "frozen 27,952" in md[-1]
    assert "Conv2d" in repr(table) and "Total parameters" in str(table)
    assert model.training  # the table's eval-mode pass leaves the mode as it was


def test_one_label_for_every_model_name_or_spec():
    assert models.label("simple") == "simple"
    assert models.label("AlexNet-BN") == "alexnet-bn"
    assert models.label("seed") == "seed"  # a name this version does not know (a run's config.json) shows as written
    assert models.label(ALEXNET_BN) == "alexnet-bn" and models.label({"blocks": [{"conv": 8}]}) == "custom"
    assert models.label(None) == "custom"
    from mp3kit.train import TrainConfig

    assert TrainConfig(model={"name": "mine", "blocks": [{"conv": 8}]}).model_label() == "mine"
    assert TrainConfig(model=" AlexNet-BN").model == "alexnet-bn"  # kept as the registry spells it


def test_spec_or_name_parses_specs_and_keeps_names(tmp_path):
    spec = {"name": "tiny", "blocks": [{"conv": 8}]}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    assert models.spec_or_name("alexnet") == "alexnet" and models.spec_or_name("Alexnet") == "alexnet"
    assert models.spec_or_name(json.dumps(spec)) == spec == models.spec_or_name(str(path)) == models.spec_or_name(spec)
    path.write_text('{"blocks": [')
    with pytest.raises(UserError, match=r"Model spec file .*tiny.json is not valid JSON"):
        models.spec_or_name(str(path))
    with pytest.raises(UserError, match="neither JSON nor an existing .json file"):
        models.spec_or_name(str(tmp_path / "missing.json"))


def _layers(model):
    """Return (type, kernel, stride, in, out) of every conv, linear and pool layer of a model, in order."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            out.append(("conv", m.kernel_size, m.stride, m.in_channels, m.out_channels))
        elif isinstance(m, nn.Linear):
            out.append(("linear", None, None, m.in_features, m.out_features))
        elif isinstance(m, nn.MaxPool2d):
            out.append(("pool", m.kernel_size, m.stride, None, None))
    return out


def test_width_scales_channels_and_hidden_units_and_keeps_the_layers():
    with torch.device("meta"):
        full, narrow = model_from_name("alexnet-bn"), model_from_name("alexnet-bn", width=0.125)
    wide, thin = _layers(full), _layers(narrow)
    # The same layers with the same kernels and strides; only the widths change (the output stays 20).
    assert [(t, k, s) for t, k, s, _, _ in wide] == [(t, k, s) for t, k, s, _, _ in thin]
    convs = [c_out for t, _, _, _, c_out in thin if t == "conv"]
    assert convs == [8, 24, 48, 32, 32]
    assert [c_out for t, _, _, _, c_out in thin if t == "linear"] == [512, 512, 20]
    assert thin[0][3] == 3  # RGB in
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters()) / 40
    assert models.scaled(ALEXNET_BN, 1) == models.parse_spec(ALEXNET_BN)
    assert models.scaled({"blocks": [{"conv": 3}], "head": [5]}, 0.1) == {"blocks": [{"conv": 1}], "head": [1]}


def test_alexnet_at_a_width_is_basenet_scaled_and_the_fixed_networks_keep_their_sizes():
    with torch.device("meta"):
        narrow = model_from_name("alexnet", width=0.25)
        basenet = model_from_name("basenet", width=0.25)
        simple, simple_narrow = model_from_name("simple", image_size=64), model_from_name("simple", image_size=64, width=0.25)
    assert _layers(narrow) == _layers(basenet) and _layers(narrow)[0][4] == 16
    assert narrow.spec["name"] == "alexnet"  # its layer table and config still say which network it is
    # The course's simple classifier is not scaled: width is for the networks trained from scratch.
    assert _layers(simple) == _layers(simple_narrow)


def test_width_is_recorded_in_the_config_and_must_be_positive():
    from mp3kit.train import TrainConfig

    assert TrainConfig().width == 1.0
    assert TrainConfig.from_dict({k: v for k, v in TrainConfig().to_dict().items() if k != "width"}).width == 1.0
    with pytest.raises(UserError, match="width"):
        TrainConfig(width=0)


# ---- the registry: one entry per name answers every question about it


def test_each_name_answers_from_its_registry_entry():
    pretrained = [name for name, entry in models.MODELS.items() if entry.pretrained]
    assert pretrained == ["alexnet-pretrained", "alexnet-pretrained-frozen"]
    for name, entry in models.MODELS.items():
        assert models.label(name) == name and models.scales_with_width(name) == entry.scales_with_width
        with torch.device("meta"):  # shapes only; imagenet=False: the layers without the ImageNet file
            full = model_from_name(name, image_size=64, imagenet=False)
            narrow = model_from_name(name, image_size=64, width=0.25, imagenet=False)
        assert (n_params(narrow) < n_params(full)) == entry.scales_with_width, name
        assert (not any(p.requires_grad for p in full.features.parameters())) == entry.frozen, name
        if name not in pretrained:
            with pytest.raises(UserError, match="only used by alexnet-pretrained and alexnet-pretrained-frozen"):
                model_from_name(name, image_size=64, weights_path="w.pth")


def test_a_name_added_to_the_registry_is_a_model_everywhere(tmp_path, monkeypatch):
    from mp3kit import cli
    from mp3kit.train import TrainConfig, build_model
    from mp3kit.widgets import TrainPanel

    tiny = {"name": "tiny", "blocks": [{"conv": 16, "s": 2}], "pool": "global", "head": []}
    entry = models.ModelEntry("tiny", lambda num_classes, size, width: build(models.scaled(tiny, width), num_classes))
    monkeypatch.setitem(models.MODELS, "tiny", entry)
    config = TrainConfig(model="Tiny", image_size=32, width=0.5)
    assert config.model == "tiny" and config.model_label() == "tiny" and config.default_name().startswith("tiny-")
    assert build_model(config).features[0].out_channels == 8
    assert cli.config_from_args(cli.build_parser().parse_args(["train", "--model", "tiny"])).model == "tiny"
    panel = TrainPanel(runs_dir=tmp_path / "runs", base_config=TrainConfig(image_size=32))
    assert [value for _, value in panel.controls["model"].options] == ["simple", "tiny"]
    with pytest.raises(UserError, match="use one of simple, .*, basenet, tiny, a spec"):
        TrainConfig(model="tinny")


def test_a_students_class_and_a_spec_answer_the_same_questions():
    class Net(nn.Module):
        def __init__(self, num_classes=20):
            super().__init__()
            self.features = nn.Conv2d(3, 4, 3)
            self.classifier = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.classifier(self.features(x).mean((2, 3)))

    spec = {"name": "mine", "blocks": [{"conv": 8}]}
    for model, label, scales in [(Net, "Net", False), (spec, "mine", True), (json.dumps(spec), "mine", True)]:
        entry = models.entry(model)
        assert (entry.label, entry.pretrained, entry.scales_with_width, entry.frozen) == (label, False, scales, False)
        assert models.label(model) == label and models.scales_with_width(model) == scales
    assert model_from_name(Net, image_size=32, width=0.25).features.out_channels == 4  # its sizes are its code's
    with pytest.raises(UserError, match="pass the class itself"):
        models.entry(Net())
