"""Kaggle submission CSV: writing, checking every kind of bad file, scoring; the predictions CSV."""

import os

import numpy as np
import pytest
import torch

from mp3kit.kaggle import check_kaggle_csv, kaggle_score, write_kaggle_csv
from mp3kit.metrics import average_precision, mean_average_precision
from mp3kit.util import UserError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
GOOD_ROWS = [f"{i},0.5" for i in range(20)]


def write(tmp_path, lines, name="sub.csv"):
    """Write lines to a CSV file in tmp_path and return its path."""
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_roundtrip_score_is_one_minus_map(tmp_path):
    rng = np.random.default_rng(0)
    targets = (rng.random((300, 20)) < 0.2).astype(int)
    targets[0] = 1
    scores = rng.normal(size=(300, 20)) + targets
    path = write_kaggle_csv(tmp_path / "sub.csv", average_precision(targets, scores))
    assert check_kaggle_csv(path) == []
    lines = path.read_text().splitlines()
    assert lines[0] == "id,category" and len(lines) == 21
    assert [line.split(",")[0] for line in lines[1:]] == [str(i) for i in range(20)]
    assert kaggle_score(path) == pytest.approx(1 - mean_average_precision(targets, scores), abs=1e-12)


def test_accepts_torch_and_a_class_mapping(tmp_path):
    aps = torch.linspace(0.1, 0.9, 20)
    assert kaggle_score(write_kaggle_csv(tmp_path / "a.csv", aps)) == pytest.approx(1 - aps.double().mean().item())
    pytest.importorskip("mp3kit.data")
    mapping = {c: float(i) / 20 for i, c in enumerate(VOC_CLASSES)}
    path = write_kaggle_csv(tmp_path / "b.csv", dict(reversed(list(mapping.items()))))  # order of keys must not matter
    assert path.read_text().splitlines()[4] == f"3,{1 - 3 / 20!r}"


@pytest.mark.parametrize(
    "aps, problem",
    [
        ([0.5] * 19, "exactly 20"),
        ([0.5] * 19 + [float("nan")], "NaN"),
        ([0.5] * 19 + [1.5], "outside"),
        ([0.5] * 19 + [-0.1], "outside"),
        (["a"] * 20, "not numbers"),
    ],
)
def test_refuses_bad_aps_and_keeps_the_existing_file(tmp_path, aps, problem):
    path = write(tmp_path, ["id,category", *GOOD_ROWS])
    before = path.read_bytes()
    with pytest.raises(UserError, match=problem):
        write_kaggle_csv(path, aps)
    assert path.read_bytes() == before


def test_failed_write_leaves_the_existing_file_intact(tmp_path, monkeypatch):
    path = write(tmp_path, ["id,category", *GOOD_ROWS])
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_kaggle_csv(path, [0.9] * 20)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]  # no temporary file left behind


@pytest.mark.parametrize(
    "lines, fragment",
    [
        ([], "is empty"),
        (GOOD_ROWS, "no header line"),
        (["Id,Category", *GOOD_ROWS], "header"),
        (["id,category", *GOOD_ROWS[:19]], "19 data rows"),
        (["id,category", *GOOD_ROWS, "20,0.5"], "outside 0 to 19"),
        (["id,category", *GOOD_ROWS[:19], "3,0.5"], "repeats line 5"),
        (["id,category", *GOOD_ROWS[:19], "x,0.5"], "'x' is not an integer"),
        (["id,category", *GOOD_ROWS[:19], "19,abc"], "'abc' is not a number"),
        (["id,category", *GOOD_ROWS[:19], "19,1.2"], "outside [0, 1]"),
        (["id,category", *GOOD_ROWS[:19], "19,nan"], "outside [0, 1]"),
        (["id,category", *GOOD_ROWS[:19], "19,0.5,7"], "3 fields"),
    ],
)
def test_each_bad_csv_gets_a_clear_problem(tmp_path, lines, fragment):
    path = write(tmp_path, lines)
    problems = check_kaggle_csv(path)
    assert problems, "a bad file passed the check"
    assert any(fragment in p for p in problems), problems
    assert all(str(path) in p for p in problems)
    with pytest.raises(UserError):
        kaggle_score(path)


def test_problem_names_the_line(tmp_path):
    path = write(tmp_path, ["id,category", *GOOD_ROWS[:19], "19,abc"])
    assert check_kaggle_csv(path) == [f"{path} line 21: value 'abc' is not a number; write 1 - AP as a decimal."]


def test_missing_file(tmp_path):
    problems = check_kaggle_csv(tmp_path / "nope.csv")
    assert len(problems) == 1 and "does not exist" in problems[0]
    with pytest.raises(UserError, match="does not exist"):
        kaggle_score(tmp_path / "nope.csv")


def test_tolerates_bom_crlf_and_trailing_blank_lines(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(("\ufeffid,category\r\n" + "\r\n".join(GOOD_ROWS) + "\r\n\r\n").encode("utf-8"))
    assert check_kaggle_csv(path) == []
    assert kaggle_score(path) == pytest.approx(0.5)


# ---------------------------------------------------------------- the convention of a run's CSV


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from mp3kit import synth, train

    torch.manual_seed(0)
    config = train.TrainConfig(model="simple", image_size=32, epochs=1, batch_size=50, optimizer="adam", lr=1e-3)
    return train.fit(config, synth.ensure_synthetic(), name="final", runs_dir=tmp_path_factory.mktemp("runs"),
                     progress=False)


def _values(path) -> np.ndarray:
    return np.array([float(line.split(",")[1]) for line in path.read_text().splitlines()[1:]])


def test_a_runs_csv_follows_the_convention_asked_each_equal_to_scikit_learns_ap(finished_run, tmp_path, capsys):
    from sklearn.metrics import average_precision_score

    from mp3kit import cli, kaggle, runs

    recorded = runs.load_test_scores(finished_run)
    t, s, d = recorded["targets"], recorded["scores"], recorded["difficult"]
    assert d.any(axis=0).sum() >= 5  # the synthetic test split has difficult-only labels in several classes
    # The course's kit: a difficult-only label is a positive. VOC: that image takes no part in the class's AP.
    course = np.array([average_precision_score(np.maximum(t[:, c], d[:, c]), s[:, c]) for c in range(20)])
    voc = np.array([average_precision_score(t[~d[:, c], c], s[~d[:, c], c]) for c in range(20)])

    assert cli.main(["submit", "--run", str(finished_run.path), "--out", str(tmp_path / "course.csv")]) == 0
    said_course = capsys.readouterr().out
    assert cli.main(["submit", "--run", str(finished_run.path), "--out", str(tmp_path / "voc.csv"),
                     "--voc-convention"]) == 0
    said_voc = capsys.readouterr().out
    np.testing.assert_allclose(_values(tmp_path / "course.csv"), 1 - course, atol=1e-12)
    np.testing.assert_allclose(_values(tmp_path / "voc.csv"), 1 - voc, atol=1e-12)
    np.testing.assert_allclose(1 - _values(tmp_path / "voc.csv"), finished_run.test_ap, atol=1e-9)  # test mAP's AP
    differ = np.abs(course - voc) > 1e-9
    assert differ.any() and not differ[~d.any(axis=0)].any()  # only classes with difficult-only labels change

    # Each score line says its convention and the score of its own file.
    assert "course convention (difficult-only labels count as positives" in said_course
    assert f"{kaggle_score(tmp_path / 'course.csv'):.5f}" in said_course
    assert "VOC convention (difficult-only labels left out" in said_voc
    assert f"{kaggle_score(tmp_path / 'voc.csv'):.5f}" in said_voc
    np.testing.assert_allclose(kaggle.kaggle_aps(finished_run), course, atol=1e-12)  # the course's is the default


def test_writing_the_same_csv_again_leaves_the_file_untouched(tmp_path):
    # A notebook run again must not change a finished run's files (mp3kit report compares them byte for byte).
    aps = [0.5 + 0.01 * i for i in range(20)]
    path = write_kaggle_csv(tmp_path / "kaggle.csv", aps)
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))
    write_kaggle_csv(path, aps)
    assert path.stat().st_mtime_ns == stamp - 10**9
    write_kaggle_csv(path, [0.4, *aps[1:]])
    assert path.stat().st_mtime_ns != stamp - 10**9 and path.read_text().splitlines()[1] == "0,0.6"
