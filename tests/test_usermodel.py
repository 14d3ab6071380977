"""A student's own nn.Module as a model: it trains, resumes, is reused only while its code is unchanged, and says so."""

from __future__ import annotations

import json
import textwrap
import threading

import pytest
import torch
from torch import nn

from mp3kit import models, runs, synth, train, usermodel
from mp3kit.train import TrainConfig
from mp3kit.util import UserError

SMALL = dict(image_size=64, epochs=2, max_images=24, batch_size=12, eval_every=1)


def define(source: str, name: str = "Net", filename: str = "<cell>") -> type:
    """Define a class from source as a notebook cell does: compiled under a file name that linecache holds."""
    import linecache

    text = textwrap.dedent(source)
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    namespace = {"__name__": "__main__", "nn": nn, "torch": torch}
    exec(compile(text, filename, "exec"), namespace)
    return namespace[name]


NET = """
class Net(nn.Module):
    def __init__(self, num_classes=20, bn=False, scale=1.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.norm = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.head = nn.Linear(8, num_classes)
        self.scale = scale

    def forward(self, x):
        x = torch.relu(self.norm(self.conv(x)))  # (B, 8, h, w)
        return self.head(x.mean((2, 3))) * self.scale  # (B, 20)
"""


@pytest.fixture(scope="module")
def voc_root():
    return synth.ensure_synthetic()


def digest(model) -> str:
    return TrainConfig(model=model, **SMALL).model.digest


def test_the_same_code_has_the_same_identity_and_a_change_to_the_code_a_new_one():
    first, again = define(NET, filename="<cell-1>"), define(NET, filename="<cell-2>")  # the cell run twice
    assert digest(first) == digest(again)
    commented = define(NET.replace("# (B, 20)", "# scores, one per class\n        # more notes"), filename="<cell-3>")
    assert digest(commented) == digest(first)  # comments and spacing are not the network
    edited = define(NET.replace("x.mean((2, 3))", "x.amax((2, 3))"), filename="<cell-4>")  # forward only: same layers
    assert digest(edited) != digest(first)


def test_a_callables_arguments_are_part_of_its_identity_even_when_the_layers_stay_the_same():
    Net = define(NET)
    twice = lambda: Net(scale=2.0)  # noqa: E731
    thrice = lambda: Net(scale=3.0)  # noqa: E731  (same layers, same repr: only the constant differs)
    assert len({digest(Net), digest(twice), digest(thrice), digest(lambda: Net(bn=True))}) == 4
    assert digest(lambda: Net(scale=2.0)) == digest(twice)  # the same call written again
    width = 2.0
    by_variable = lambda: Net(scale=width)  # noqa: E731
    before = digest(by_variable)
    width = 3.0  # noqa: F841 (read by by_variable's closure)
    assert digest(by_variable) != before


def test_the_run_records_the_code_and_the_checkpoint_holds_weights_only(voc_root, tmp_path):
    Net = define(NET)
    run = train.fit(TrainConfig(model=lambda: Net(bn=True), **SMALL), name="mine", runs_dir=tmp_path, progress=False)
    model = json.loads((run.path / "config.json").read_text())["model"]
    assert model["module"] == "Net" and "def forward" in model["code"]["Net"] and "Net(bn=True)" in model["builder"]
    assert "BatchNorm2d(8" in model["repr"] and len(model["digest"]) == 12
    state = torch.load(run.checkpoint_path, weights_only=True)  # plain tensors: no pickled class
    assert set(state["model"]) == set(Net(bn=True).state_dict())
    listed = runs.list_runs(tmp_path)
    assert [models.label(r.config["model"]) for r in listed] == ["Net"]


def test_reused_while_unchanged_retrained_when_the_class_changes(voc_root, tmp_path):
    Net = define(NET)
    first = train.fit(TrainConfig(model=Net, **SMALL), name="final", runs_dir=tmp_path, progress=False, reuse=True)
    again = train.fit(TrainConfig(model=define(NET, filename="<rerun>"), **SMALL), name="final", runs_dir=tmp_path,
                      progress=False, reuse=True)
    assert (first.origin, again.origin) == ("trained", "reused")
    edited = define(NET.replace("stride=2", "stride=1"))
    changed = train.fit(TrainConfig(model=edited, **SMALL), name="final", runs_dir=tmp_path, progress=False, reuse=True)
    assert changed.origin == "trained" and "stride=(1, 1)" in changed.config["model"]["repr"]


def test_a_stopped_run_resumes_with_the_class_and_says_what_it_needs_without_it(voc_root, tmp_path):
    Net = define(NET)
    config = TrainConfig(model=Net, **{**SMALL, "epochs": 3})
    stop = threading.Event()
    stopped = train.fit(config, name="mine", runs_dir=tmp_path, progress=False,
                        callback=lambda run: stop.set() if len(run.history) == 1 else None, stop=stop)
    assert stopped.status == "stopped" and len(stopped.history) == 1
    resumed = train.fit(config, name="mine", runs_dir=tmp_path, progress=False, resume=True)
    assert resumed.origin == "resumed" and resumed.complete and len(resumed.history) == 3
    recorded = TrainConfig.from_dict(resumed.config)  # a new kernel: only the record, no class
    with pytest.raises(UserError, match=r"run the cell that defines Net again and pass it as the model"):
        train.build_model(recorded)
    with pytest.raises(UserError, match="pass it as the model"):
        train.load_model(resumed)
    loaded = train.load_model(resumed, model=Net)
    assert isinstance(loaded, Net)
    with pytest.raises(UserError, match="is not the network the run"):
        train.load_model(resumed, model=lambda: Net(bn=True))


def test_a_class_defined_in_an_ipython_cell_has_its_source_recorded():
    # IPython (Jupyter and Colab run it) keeps each cell's code in linecache; a class there has no file.
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_cell("import torch\nfrom torch import nn\n" + NET, store_history=True).raise_error()
        Net = shell.user_ns["Net"]
        with pytest.raises((OSError, TypeError)):
            import inspect

            inspect.getsource(Net)  # what plain inspect manages in a notebook
        assert "def forward(self, x):" in usermodel.class_source(Net)
    finally:
        InteractiveShell.clear_instance()


def test_a_class_whose_source_cannot_be_read_is_recorded_by_its_layers_and_says_so(capsys):
    namespace = {"__name__": "__main__", "nn": nn, "torch": torch}
    exec(compile(textwrap.dedent(NET), "<no source>", "exec"), namespace)  # not in linecache
    config = TrainConfig(model=namespace["Net"], **SMALL)
    out = capsys.readouterr().out
    assert "The source of Net could not be read" in out and out.count("\n") == 1
    assert config.model.record["code"] == {"Net": None} and "Conv2d(3, 8" in config.model.record["repr"]


def test_num_classes_is_passed_when_the_class_takes_it():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(3, 20)

        def forward(self, x):
            return self.head(x.mean((2, 3)))

    class Given(Fixed):
        def __init__(self, num_classes=5):
            super().__init__()
            self.head = nn.Linear(3, num_classes)

    assert train.build_model(TrainConfig(model=Fixed, image_size=32))(torch.zeros(2, 3, 32, 32)).shape == (2, 20)
    assert train.build_model(TrainConfig(model=Given, image_size=32)).head.out_features == 20


@pytest.mark.parametrize("source, message", [
    ("return self.head(x.mean((2, 3)))[:, :10]", "returns shape (1, 10) for one 64 px image: it must return (batch, 20)"),
    ("return self.head(x.flatten(1))", "cannot take 64 px images in layer head (Linear(in_features=8"),
])
def test_a_network_whose_shapes_do_not_fit_stops_before_training_with_one_sentence(source, message, tmp_path):
    broken = define(NET.replace("return self.head(x.mean((2, 3))) * self.scale  # (B, 20)", source))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        train.fit(TrainConfig(model=broken, **SMALL), name="broken", runs_dir=tmp_path, progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "broken").exists()  # nothing written before it trained


def test_a_module_object_or_a_non_module_class_is_refused_with_the_fix():
    Net = define(NET)
    with pytest.raises(UserError, match=r"pass the class itself \(model=Net\)"):
        TrainConfig(model=Net())
    with pytest.raises(UserError, match="is not an nn.Module"):
        TrainConfig(model=dict.__class__("NotAModule", (), {}))
    with pytest.raises(UserError, match=r"returned a int, not an nn.Module"):
        TrainConfig(model=lambda: 3)
