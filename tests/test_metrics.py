"""mAP: equal to scikit-learn per class, difficult masking, missing positives, VOC07 11-point AP."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from mp3kit.metrics import NoPositivesWarning, average_precision, chance_map, mean_average_precision


def sklearn_aps(targets, scores, keep=None):
    """Return scikit-learn's AP per column, on the rows keep[:, c] (all rows if None)."""
    out = []
    for c in range(targets.shape[1]):
        rows = slice(None) if keep is None else keep[:, c]
        out.append(average_precision_score(targets[rows, c], scores[rows, c]))
    return np.array(out)


def random_case(seed, n=500, c=20, prevalence=0.1):
    """Return random (targets, scores) with every class holding at least one positive."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < prevalence).astype(np.uint8)
    targets[0] = 1
    scores = rng.normal(size=(n, c)) + targets  # informative but imperfect
    return targets, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_sklearn_on_random_scores(seed):
    targets, scores = random_case(seed)
    np.testing.assert_allclose(average_precision(targets, scores), sklearn_aps(targets, scores), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_equals_sklearn_with_tied_scores(decimals):
    targets, scores = random_case(3)
    scores = np.round(scores, decimals)  # many runs of equal scores
    np.testing.assert_allclose(average_precision(targets, scores), sklearn_aps(targets, scores), rtol=1e-12, atol=1e-12)


def test_all_scores_equal_gives_prevalence():
    targets = np.array([[1], [0], [0], [1]])
    assert average_precision(targets, np.zeros((4, 1)))[0] == pytest.approx(0.5)


def test_equals_sklearn_with_heavy_imbalance():
    rng = np.random.default_rng(4)
    targets = np.zeros((5000, 3), dtype=np.uint8)
    targets[rng.integers(5000), 0] = 1  # one positive in 5000
    targets[:, 1] = 1
    targets[rng.integers(5000), 1] = 0  # one negative in 5000
    targets[:50, 2] = 1
    scores = rng.random((5000, 3))
    np.testing.assert_allclose(average_precision(targets, scores), sklearn_aps(targets, scores), rtol=1e-12, atol=1e-12)


def test_accepts_torch_tensors():
    targets, scores = random_case(5)
    t_targets = torch.from_numpy(targets).bool()
    t_scores = torch.from_numpy(scores).float().requires_grad_()  # a live graph must not matter
    expected = sklearn_aps(targets, t_scores.detach().double().numpy())
    np.testing.assert_allclose(average_precision(t_targets, t_scores), expected, rtol=1e-12)
    assert mean_average_precision(t_targets, t_scores) == pytest.approx(expected.mean(), rel=1e-12)


def test_one_class_as_vector():
    targets, scores = random_case(6, c=1)
    ap = average_precision(targets[:, 0], scores[:, 0])
    assert ap.shape == (1,)
    assert ap[0] == pytest.approx(average_precision_score(targets[:, 0], scores[:, 0]), rel=1e-12)


def test_difficult_entries_are_left_out_of_their_class():
    targets, scores = random_case(7)
    rng = np.random.default_rng(7)
    difficult = (rng.random(targets.shape) < 0.05) & (targets == 0)  # difficult-only: not a positive
    difficult[1:4, 0] = True  # give the difficult rows high scores too, so dropping them matters
    targets[1:4, 0] = 0
    scores[1:4, 0] = 10.0
    expected = sklearn_aps(targets, scores, keep=~difficult)
    np.testing.assert_allclose(average_precision(targets, scores, difficult), expected, rtol=1e-12, atol=1e-12)
    assert not np.allclose(expected, sklearn_aps(targets, scores))  # the mask changed something


def test_difficult_mask_with_ties_equals_sklearn_on_kept_rows():
    targets, scores = random_case(8)
    scores = np.round(scores, 1)
    difficult = (np.random.default_rng(8).random(targets.shape) < 0.1) & (targets == 0)
    np.testing.assert_allclose(
        average_precision(targets, scores, difficult), sklearn_aps(targets, scores, keep=~difficult), rtol=1e-12, atol=1e-12
    )


def test_count_difficult_makes_them_positives():
    targets, scores = random_case(9)
    difficult = (np.random.default_rng(9).random(targets.shape) < 0.05) & (targets == 0)
    expected = sklearn_aps(targets | difficult, scores)
    np.testing.assert_allclose(average_precision(targets, scores, difficult, count_difficult=True), expected, rtol=1e-12)
    assert mean_average_precision(targets, scores, difficult, count_difficult=True) == pytest.approx(expected.mean(), rel=1e-12)


def test_class_without_positives_is_nan_with_a_warning_and_left_out_of_the_mean():
    targets, scores = random_case(10, c=3)
    targets[:, 1] = 0
    with pytest.warns(NoPositivesWarning, match="Class 1 "):
        ap = average_precision(targets, scores)
    assert np.isnan(ap[1]) and not np.isnan(ap[[0, 2]]).any()
    with pytest.warns(NoPositivesWarning, match="2 of 3 classes"):
        m = mean_average_precision(targets, scores)
    assert m == pytest.approx(np.mean(ap[[0, 2]]))


def test_class_with_only_difficult_positives_counts_as_no_positives():
    targets = np.array([[0], [0], [1]])
    difficult = np.array([[1], [0], [0]], dtype=bool)
    targets[2, 0] = 0
    with pytest.warns(NoPositivesWarning):
        assert np.isnan(average_precision(targets, np.array([[0.9], [0.5], [0.1]]), difficult)[0])


def test_class_names_appear_in_the_warning():
    with pytest.warns(NoPositivesWarning, match=r"0 \(cat\)"):
        average_precision(np.zeros((3, 1)), np.ones((3, 1)), classes=["cat"])


def test_no_class_with_positives_raises():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoPositivesWarning)
        with pytest.raises(ValueError, match="No class has a positive"):
            mean_average_precision(np.zeros((4, 2)), np.ones((4, 2)))


@pytest.mark.parametrize(
    "targets, scores, problem",
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "same shape"),
        (np.array([[2], [0]]), np.zeros((2, 1)), "only 0 and 1"),
        (np.array([[1], [0]]), np.array([[np.nan], [0.0]]), "NaN"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "at least one"),
    ],
)
def test_bad_inputs_raise(targets, scores, problem):
    with pytest.raises(ValueError, match=problem):
        average_precision(targets, scores)


# VOC07 11-point interpolated AP: mean over t in {0, 0.1, ..., 1} of the best precision at recall >= t.
@pytest.mark.parametrize(
    "targets, scores, expected",
    [
        # points (P, R): (1, .5) (.5, .5) (2/3, 1) (.5, 1) -> six thresholds see 1, five see 2/3
        ([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6], (6 * 1 + 5 * 2 / 3) / 11),
        ([1, 1, 0, 0], [0.9, 0.8, 0.7, 0.6], 1.0),  # perfect ranking
        ([0, 0, 1], [0.9, 0.8, 0.7], 1 / 3),  # the positive last: precision 1/3 at every recall
        # points: (0, 0) (1/2, 1/3) (2/3, 2/3) (3/5, 1) -> t=0..0.3: 2/3 (4x); 0.4..0.6: 2/3 (3x); 0.7..1: 3/5 (4x)
        ([0, 1, 1, 0, 1], [5, 4, 3, 2, 1], (7 * 2 / 3 + 4 * 3 / 5) / 11),
        ([1, 0], [0.5, 0.5], 0.5),  # a tie is one threshold: one point (P=.5, R=1)
    ],
)
def test_voc07_eleven_point_hand_cases(targets, scores, expected):
    ap = average_precision(np.array(targets)[:, None], np.array(scores, dtype=float)[:, None], voc07=True)
    assert ap[0] == pytest.approx(expected, abs=1e-12)


def test_voc07_ignores_difficult_rows():
    targets = np.array([[1], [0], [1], [0]])
    difficult = np.array([[0], [1], [0], [0]], dtype=bool)  # drops the false positive ranked second
    ap = average_precision(targets, np.array([[0.9], [0.8], [0.7], [0.6]]), difficult, voc07=True)
    assert ap[0] == pytest.approx(1.0)


def test_chance_map_is_the_mean_prevalence_and_what_random_scores_average():
    rng = np.random.default_rng(7)
    targets = (rng.random((400, 5)) < [0.05, 0.1, 0.2, 0.4, 0.6]).astype(np.uint8)
    difficult = (rng.random((400, 5)) < 0.05) & (targets == 0)
    counted = ~difficult
    by_hand = np.mean([targets[counted[:, c], c].mean() for c in range(5)])
    assert chance_map(targets, difficult) == pytest.approx(by_hand, rel=1e-12)
    random_maps = [mean_average_precision(targets, rng.random((400, 5)), difficult) for _ in range(200)]
    assert np.mean(random_maps) == pytest.approx(by_hand, abs=0.01)
