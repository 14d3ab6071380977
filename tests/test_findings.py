"""The findings rule: verdicts follow the stated margins exactly, and a missing run is "not run", never a pass."""

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
