"""TrainConfig's fields are the one list of settings: validate(), the command line and the panel are read from them."""

import dataclasses
import math
import subprocess
import sys
from dataclasses import dataclass

import pytest

from mp3kit import cli
from mp3kit.config import Control, TrainConfig, setting, settings_of
from mp3kit.util import UserError
from mp3kit.widgets import TrainPanel

# Fields whose value is not a plain choice, switch, number or tuple of numbers: (flags, value, bad flags, error).
SPECIAL = {
    "model": (["--model", "alexnet-bn"], "alexnet-bn", ["--model", "seed"], "Unknown model 'seed'"),
    "pretrained_weights": (["--pretrained-weights", "w.pth", "--model", "alexnet-pretrained"], "w.pth",
                           ["--pretrained-weights", "w.pth"], "only used by a pretrained model"),
    "device": (["--device", "cuda:1"], "cuda:1", ["--device", "gpu"], "TrainConfig.device='gpu' is not a device"),
    "pos_weight": (["--pos-weight", ",".join(["2"] * 20)], [2.0] * 20, ["--pos-weight", "1,2"],
                   "TrainConfig.pos_weight=[1.0, 2.0] must be"),
}


def _case(s):
    """Return (flags, the value they set, flags with a value that cannot work, what the error says) for a setting."""
    if s.name in SPECIAL:
        return SPECIAL[s.name]
    field = f"TrainConfig.{s.name}="
    if s.choices:
        other = next(c for c in s.choices if c != s.default)
        return [s.flag, other], other, [s.flag, "bogus"], f"argument {s.flag}: invalid choice: 'bogus'"
    if s.kind is bool:
        return [s.flag if not s.default else "--no-" + s.flag[2:]], not s.default, None, None
    if s.kind is tuple:
        value = tuple(0.5 + i / 10 for i in range(len(s.items)))
        return [s.flag, *map(str, value)], value, [s.flag, *["nan"] * len(s.items)], field
    if s.kind is int:
        value = (s.default or s.low or 0) + 3
        bad = [s.flag, str(s.low - 1)] if s.low is not None else [s.flag, "1.5"]
        return [s.flag, str(value)], value, bad, field if s.low is not None else f"argument {s.flag}: invalid int"
    if s.kind is float:
        value = s.default / 2 if s.default else 0.25
        return [s.flag, str(value)], value, [s.flag, "nan"], field
    raise AssertionError(f"no command-line case for the setting {s.name} ({s.kind}): add one to SPECIAL")


FIELDS = [s.name for s in settings_of(TrainConfig)]


def test_every_field_has_a_case_and_help():
    assert FIELDS == [f.name for f in dataclasses.fields(TrainConfig)]
    for s in settings_of(TrainConfig):
        assert s.help, f"{s.name} has no help"
        _case(s)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_is_settable_from_the_command_line(name):
    (s,) = [s for s in settings_of(TrainConfig) if s.name == name]
    flags, value, _, _ = _case(s)
    config = cli.config_from_args(cli.build_parser().parse_args(["train", *flags]))
    assert getattr(config, name) == value
    others = {f: getattr(config, f) for f in FIELDS if f not in (name, "model")}
    assert others == {f: getattr(TrainConfig(), f) for f in others}, "another field changed"
    lr_find = cli.config_from_args(cli.build_parser().parse_args(["lr-find", *flags]))
    assert getattr(lr_find, name) == value


@pytest.mark.parametrize("name", [n for n in FIELDS if n != "freeze_features"])
def test_every_field_refuses_a_value_that_cannot_work_in_one_line_with_exit_2(name, tmp_path, capsys):
    (s,) = [s for s in settings_of(TrainConfig) if s.name == name]
    _, _, bad, error = _case(s)
    argv = ["train", *bad, "--runs-dir", str(tmp_path / "runs"), "--data-root", str(tmp_path / "nowhere")]
    try:
        status = cli.main(argv)
    except SystemExit as exc:  # argparse's own refusal: a usage line and the error
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2 and error in err, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(("mp3kit: ", "mp3kit train: error: "))
    assert not (tmp_path / "runs").exists()


def test_the_step_schedule_is_set_from_the_command_line():
    args = cli.build_parser().parse_args(["train", "--schedule", "step", "--step-size", "3", "--gamma", "0.5",
                                          "--optimizer", "adam", "--betas", "0.8", "0.99", "--eps", "1e-6"])
    config = cli.config_from_args(args)
    assert (config.schedule, config.step_size, config.gamma) == ("step", 3, 0.5)
    assert (config.betas, config.eps) == ((0.8, 0.99), 1e-6)


def test_values_a_field_cannot_take_name_the_field():
    for changes, message in [
        ({"momentum": -0.1}, "TrainConfig.momentum=-0.1 must be a number of at least 0."),
        ({"epochs": 2.5}, "TrainConfig.epochs=2.5 must be a whole number of at least 1."),
        ({"epochs": True}, "TrainConfig.epochs=True must be a whole number of at least 1."),
        ({"lr": math.inf}, "TrainConfig.lr=inf must be a positive number."),
        ({"max_images": 1}, "TrainConfig.max_images=1 must be a whole number of at least 2, or None."),
        ({"betas": (0.9, 1.0)}, "TrainConfig.betas=(0.9, 1.0) must be 2 numbers of at least 0 and below 1."),
        ({"freeze_features": "yes"}, "TrainConfig.freeze_features='yes' must be True or False."),
        ({"pos_weight": [1.0] * 19 + [-1.0]}, "TrainConfig.pos_weight="),
    ]:
        with pytest.raises(UserError) as info:
            TrainConfig(**changes)
        assert str(info.value).startswith(message), str(info.value)
    assert TrainConfig(max_images=None, pos_weight="balanced", betas=[0.5, 0.6]).betas == (0.5, 0.6)


@dataclass
class Smoothed(TrainConfig):
    """A TrainConfig with one more field, as a later version (or a student) might add one."""

    label_smoothing: float = setting(0.0, "how far each target moves towards 0.5", low=0, below=0.5,
                                     panel=Control("Smoothing", "slider", 0, 0.4, step=0.05))


def test_a_field_added_in_a_subclass_is_validated_and_has_a_flag(capsys):
    with pytest.raises(UserError, match=r"^Smoothed.label_smoothing=0.7 must be a number of at least 0 and below 0.5\.$"):
        Smoothed(label_smoothing=0.7)
    parser = cli.build_parser(Smoothed)
    config = cli.config_from_args(parser.parse_args(["train", "--label-smoothing", "0.1", "--epochs", "3"]))
    assert type(config) is Smoothed and (config.label_smoothing, config.epochs) == (0.1, 3)
    assert Smoothed.from_dict(config.to_dict()) == config
    with pytest.raises(UserError, match="Smoothed.label_smoothing=0.6"):
        cli.config_from_args(parser.parse_args(["lr-find", "--label-smoothing", "0.6"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--label-smoothing LABEL_SMOOTHING how far each target moves towards 0.5 (default 0.0)" in shown
    assert "--label-smoothing" not in cli.build_parser().format_help()


def test_a_field_added_in_a_subclass_gets_its_control_in_the_panel(tmp_path):
    panel = TrainPanel(runs_dir=tmp_path / "runs", base_config=Smoothed(image_size=32, label_smoothing=0.2))
    control = panel.controls["label_smoothing"]
    assert (control.description, control.min, control.max, control.step, control.value) == ("Smoothing", 0, 0.4, 0.05,
                                                                                           0.2)
    assert panel.config() == panel.base_config, "untouched controls must give the base config"
    left, right = panel.widget.children[1].children
    assert control in right.children and len(left.children) == 4  # two columns, the buttons last
    control.value = 0.35
    changed = panel.config()
    assert type(changed) is Smoothed and changed.label_smoothing == 0.35
    assert list(panel.controls) == ["model", "optimizer", "lr", "epochs", "batch_size", "augment", "eval_every",
                                    "label_smoothing"]


def test_help_lists_every_setting_without_importing_torch():
    code = ("import sys; from mp3kit import cli\n"
            "try:\n    cli.main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("no torch")
    for s in settings_of(TrainConfig):
        assert f"{s.flag} " in out.stdout or f"{s.flag}," in out.stdout, s.flag


def test_a_spec_file_is_kept_as_the_spec_it_says_so_editing_it_makes_a_new_run(tmp_path):
    import json

    path = tmp_path / "net.json"
    path.write_text(json.dumps({"blocks": [{"conv": 8, "pool": 2}], "pool": "adaptive2"}))
    from_python = TrainConfig(model=str(path))
    from_cli = cli.config_from_args(cli.build_parser().parse_args(["train", "--model", str(path)]))
    assert from_python.identity() == from_cli.identity() and isinstance(from_python.model, dict)
    path.write_text(json.dumps({"blocks": [{"conv": 16, "pool": 2}], "pool": "adaptive2"}))
    edited = TrainConfig(model=str(path))
    assert edited.identity() != from_python.identity() and edited.default_name() != from_python.default_name()
