"""The findings rule: verdicts follow the stated margins exactly, and a missing run is "not run", never a pass."""

import math

import pytest

from mp3kit import findings
from mp3kit.findings import MARGIN, NEAR_CHANCE, NOT_REPRODUCED, NOT_RUN, REPRODUCED, Claim, Finding

CHANCE = 0.07


def test_beats_needs_the_margin_against_every_other_run():
    claim = Claim("beats", ("a", "b", "c"))
    assert findings.check_claim(claim, {"a": 0.30, "b": 0.20, "c": 0.30 - MARGIN}, CHANCE) == REPRODUCED
    assert findings.check_claim(claim, {"a": 0.30, "b": 0.20, "c": 0.30 - MARGIN / 2}, CHANCE) == NOT_REPRODUCED
    assert findings.check_claim(claim, {"a": 0.10, "b": 0.20, "c": 0.0}, CHANCE) == NOT_REPRODUCED


def test_not_better_holds_for_a_lower_or_equal_run_and_fails_for_a_clear_gain():
    claim = Claim("not_better", ("extra-convs", "before"))
    assert findings.check_claim(claim, {"extra-convs": 0.31, "before": 0.36}, CHANCE) == REPRODUCED
    assert findings.check_claim(claim, {"extra-convs": 0.36 + MARGIN / 2, "before": 0.36}, CHANCE) == REPRODUCED
    assert findings.check_claim(claim, {"extra-convs": 0.40, "before": 0.36}, CHANCE) == NOT_REPRODUCED


def test_chance_claims():
    assert findings.check_claim(Claim("above_chance", ("a",)), {"a": 0.147}, CHANCE) == REPRODUCED
    assert findings.check_claim(Claim("above_chance", ("a",)), {"a": 0.08}, CHANCE) == NOT_REPRODUCED
    near = Claim("near_chance", ("a",))
    assert findings.check_claim(near, {"a": CHANCE + NEAR_CHANCE / 2}, CHANCE) == REPRODUCED
    assert findings.check_claim(near, {"a": CHANCE + NEAR_CHANCE + 0.01}, CHANCE) == NOT_REPRODUCED


def test_a_missing_run_is_not_run_unless_another_claim_already_failed():
    f = Finding("8", "pretrained far beats scratch", (Claim("beats", ("pretrained", "scratch")),))
    assert findings.check(f, {"scratch": 0.1}, CHANCE) == NOT_RUN
    assert findings.check(f, {"pretrained": None, "scratch": 0.1}, CHANCE) == NOT_RUN
    two = Finding("9", "x", (Claim("beats", ("adam", "sgd")), Claim("beats", ("bn", "adam"))))
    assert findings.check(two, {"adam": 0.1, "sgd": 0.3}, CHANCE) == NOT_REPRODUCED
    assert findings.check(two, {"adam": 0.3, "sgd": 0.1, "bn": 0.4}, CHANCE) == REPRODUCED


def test_rows_show_the_runs_own_numbers_and_references_only_when_asked():
    f = Finding("4", "Adam beats SGD", (Claim("beats", ("adam", "sgd")),), seed="0.2079 vs 0.1468")
    maps, labels = {"adam": 0.2079, "sgd": 0.1468}, {"adam": "Adam 1e-4", "sgd": "SGD 0.01"}
    (row,) = findings.rows([f], maps, labels, CHANCE)
    assert row["verdict"] == REPRODUCED
    assert "Adam 1e-4 0.2079 vs SGD 0.01 0.1468" in row["this report's runs (test mAP)"]
    assert "seed report" not in row
    (row,) = findings.rows([f], maps, labels, CHANCE, references=True)
    assert row["seed report"] == "0.2079 vs 0.1468"


def test_findings_survive_a_json_round_trip():
    f = Finding("9", "ablation", (Claim("beats", ("b", "a"), "Adam beats SGD"), Claim("near_chance", ("a",))),
                seed="0.15 -> 0.27", published="")
    assert Finding.from_dict(f.to_dict()) == f


@pytest.mark.parametrize("kind, keys", [("beats", ("a",)), ("near_chance", ("a", "b")), ("wins", ("a", "b"))])
def test_malformed_claims_are_refused(kind, keys):
    with pytest.raises(ValueError):
        Claim(kind, keys)


def test_with_several_seeds_a_difference_counts_when_it_exceeds_twice_the_pooled_standard_deviation():
    beats, not_better = Claim("beats", ("a", "b")), Claim("not_better", ("a", "b"))
    # Means 0.30 and 0.28: above the fixed margin, but each pair of seeds is 0.04 apart (pooled SD 0.028).
    noisy = {"a": [0.28, 0.32], "b": [0.26, 0.30]}
    assert findings.pooled_std([0.28, 0.32], [0.26, 0.30]) == pytest.approx(math.sqrt(0.0008))
    assert findings.check_claim(beats, noisy, CHANCE) == NOT_REPRODUCED
    assert findings.check_claim(not_better, noisy, CHANCE) == REPRODUCED
    # Means 0.305 and 0.300: under the fixed margin, but each pair of seeds is 0.002 apart (pooled SD 0.0014).
    steady = {"a": [0.304, 0.306], "b": [0.299, 0.301]}
    assert findings.check_claim(beats, steady, CHANCE) == REPRODUCED
    assert findings.check_claim(not_better, steady, CHANCE) == NOT_REPRODUCED
    # One run with seeds, the other with one: the spread of the seeded one decides.
    assert findings.comparison_rule([0.304, 0.306], 0.30) == (findings.SPREAD, pytest.approx(2 * math.sqrt(2e-6)))
    assert findings.check_claim(beats, {"a": [0.304, 0.306], "b": 0.30}, CHANCE) == REPRODUCED
    # A single seed each: the fixed margin, as before.
    assert findings.comparison_rule(0.305, 0.30) == (findings.FIXED, MARGIN)
    assert findings.check_claim(beats, {"a": 0.305, "b": 0.30}, CHANCE) == NOT_REPRODUCED
    # Chance claims take the mean.
    assert findings.check_claim(Claim("above_chance", ("a",)), {"a": [0.08, 0.12]}, CHANCE) == REPRODUCED


def test_the_findings_table_says_which_rule_judged_each_finding():
    seeded = Finding("9", "Adam beats SGD, augmentation helps", (Claim("beats", ("adam", "sgd")),
                                                                 Claim("beats", ("aug", "adam"))))
    fixed = Finding("10", "final beats SGD", (Claim("beats", ("final", "sgd")),))
    chance = Finding("1", "leaves chance", (Claim("above_chance", ("sgd",)),))
    maps = {"sgd": 0.20, "adam": [0.28, 0.30], "aug": [0.29, 0.33], "final": 0.40}
    labels = {k: k.upper() for k in maps}
    rows = findings.rows([seeded, fixed, chance], maps, labels, CHANCE)
    assert rows[0]["rule"] == f"measured spread: 2 × pooled SD = {2 * math.sqrt(0.0002):.4f}, {2 * math.sqrt(0.0005):.4f}"
    assert rows[1]["rule"] == f"fixed margin {MARGIN}" and rows[2]["rule"] == "fixed margins"
    assert "ADAM 0.2900 ± 0.0141 (2 seeds) vs SGD 0.2000" in rows[0]["this report's runs (test mAP)"]
    # Without seeds every finding is judged by the fixed margins the note under the table states: no column.
    assert "rule" not in findings.rows([fixed], {"sgd": 0.2, "final": 0.4}, labels, CHANCE)[0]
