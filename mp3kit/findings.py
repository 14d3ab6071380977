"""Check the seed report's findings on a report's own runs: "reproduced", "not reproduced" or "not run".

A notebook declares a finding where it makes the runs (Experiment.finding); the report checks every declared
finding against results.json with the rule below, so the verdicts are functions of the recorded test mAPs only.

The rule, stated in the report next to the table:
- "A beats B": A's test mAP exceeds B's by at least MARGIN;
- "A does not beat B": A's test mAP exceeds B's by less than MARGIN (it may be lower);
- where A or B ran with several seeds, the measured spread replaces the fixed margin: A's mean test mAP beats B's
  when it exceeds it by more than twice their pooled standard deviation (pooled over the runs with several seeds);
- "A leaves chance": A's (mean) test mAP is at least CHANCE_MARGIN above the chance level;
- "A is near chance": A's (mean) test mAP is less than NEAR_CHANCE above the chance level;
- a finding made of several claims is reproduced when every claim holds, and "not run" when one of its runs is
  missing (skipped, failed or not trained) and none of the claims that could be checked failed.

A run's test mAP is given (maps) as a number, or as the list of its seeds' test mAPs when it ran with several.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mp3kit.table import MISSING

MARGIN = 0.01
CHANCE_MARGIN = 0.02
NEAR_CHANCE = 0.05
KINDS = ("beats", "not_better", "above_chance", "near_chance")
REPRODUCED, NOT_REPRODUCED, NOT_RUN = "reproduced", "not reproduced", "not run"
RULE = (
    f"Rule: A *beats* B when A's test mAP is higher by at least {MARGIN}; A *does not beat* B when it is higher by "
    f"less than {MARGIN}. Where A or B ran with several seeds, their means are compared and the measured spread "
    "replaces that fixed margin: A beats B when its mean is higher by more than twice their pooled standard deviation. "
    f"A run *leaves chance* when its (mean) test mAP is at least {CHANCE_MARGIN} above the chance level and is *near "
    f"chance* when it is less than {NEAR_CHANCE} above it. A finding is reproduced when all its claims hold, and not "
    "run when one of its runs is missing (skipped, failed, or no ImageNet weights)."
)
SPREAD, FIXED = "spread", "margin"  # the two rules a comparison is judged by (comparison_rule)


@dataclass(frozen=True)
class Claim:
    """One checkable comparison: kind over run keys (beats / not_better: the first key against each of the others)."""

    kind: str
    keys: tuple
    text: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim kind {self.kind!r} is not one of {', '.join(KINDS)}")
        pair = self.kind in ("beats", "not_better")
        if len(self.keys) < (2 if pair else 1) or (not pair and len(self.keys) != 1):
            raise ValueError(f"a {self.kind!r} claim takes {'two or more run keys' if pair else 'one run key'}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "keys": list(self.keys), "text": self.text}

    @classmethod
    def from_dict(cls, d: dict) -> Claim:
        return cls(d["kind"], tuple(d["keys"]), d.get("text", ""))


@dataclass(frozen=True)
class Finding:
    """A conclusion of the seed report, as claims over one notebook's runs, with the seed's and published figures."""

    number: str
    text: str
    claims: tuple
    seed: str = ""  # the seed report's own figures, shown beside the student's on real VOC
    published: str = ""  # published figures for the same comparison, with their source

    def to_dict(self) -> dict:
        return {"number": self.number, "text": self.text, "claims": [c.to_dict() for c in self.claims],
                "seed": self.seed, "published": self.published}

    @classmethod
    def from_dict(cls, d: dict) -> Finding:
        return cls(str(d["number"]), d["text"], tuple(Claim.from_dict(c) for c in d["claims"]), d.get("seed", ""),
                   d.get("published", ""))


def _values(score) -> list:
    """Return a run's test mAP as a list: its seeds' values, its one value, or [] when it is missing."""
    if score is None:
        return []
    return [float(v) for v in score] if isinstance(score, (list, tuple)) else [float(score)]


def _mean(values: list) -> float:
    return sum(values) / len(values)


def pooled_std(*groups) -> float | None:
    """Return the pooled sample standard deviation of groups of values, or None when no group has two."""
    dof = sum(len(g) - 1 for g in groups if g)
    if dof == 0:
        return None
    squares = sum(sum((v - _mean(g)) ** 2 for v in g) for g in groups if g)
    return math.sqrt(squares / dof)


def comparison_rule(a, b) -> tuple[str, float]:
    """Return the rule that judges whether run a's test mAP beats run b's, and its threshold: the measured spread
    (twice the pooled standard deviation) when either ran with several seeds, else the fixed MARGIN."""
    spread = pooled_std(_values(a), _values(b))
    return (FIXED, MARGIN) if spread is None else (SPREAD, 2 * spread)


def _beats(a, b) -> bool:
    rule, threshold = comparison_rule(a, b)
    gain = _mean(_values(a)) - _mean(_values(b))
    return gain > threshold if rule == SPREAD else gain >= threshold


def check_claim(claim: Claim, maps: dict, chance: float) -> str:
    """Return the verdict of one claim given each run key's test mAP, or the list of its seeds' (None or absent: the
    run is missing)."""
    values = [maps.get(k) for k in claim.keys]
    if any(not _values(v) for v in values):
        return NOT_RUN
    first, others = values[0], values[1:]
    if claim.kind == "beats":
        ok = all(_beats(first, other) for other in others)
    elif claim.kind == "not_better":
        ok = not any(_beats(first, other) for other in others)
    elif claim.kind == "above_chance":
        ok = _mean(_values(first)) - chance >= CHANCE_MARGIN
    else:  # near_chance
        ok = _mean(_values(first)) - chance < NEAR_CHANCE
    return REPRODUCED if ok else NOT_REPRODUCED


def rule_used(finding: Finding, maps: dict) -> str:
    """Return which rule judged the finding's comparisons: the fixed margin, the measured spread (with its thresholds,
    twice the pooled standard deviation), or both, for the claims whose runs are all there."""
    thresholds = {SPREAD: [], FIXED: []}
    for claim in finding.claims:
        values = [maps.get(k) for k in claim.keys]
        if claim.kind in ("beats", "not_better") and all(_values(v) for v in values):
            for other in values[1:]:
                rule, threshold = comparison_rule(values[0], other)
                thresholds[rule].append(threshold)
    parts = []
    if thresholds[SPREAD]:
        parts.append("measured spread: 2 × pooled SD = " + ", ".join(f"{t:.4f}" for t in thresholds[SPREAD]))
    if thresholds[FIXED] or not parts:
        parts.append(f"fixed margin {MARGIN}" if thresholds[FIXED] else "fixed margins")
    return "; ".join(parts)


def check(finding: Finding, maps: dict, chance: float) -> str:
    """Return the verdict of a finding: not reproduced if any claim fails, else not run if any is missing."""
    verdicts = [check_claim(c, maps, chance) for c in finding.claims]
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    return NOT_RUN if NOT_RUN in verdicts else REPRODUCED


def evidence(finding: Finding, maps: dict, labels: dict, chance: float) -> str:
    """Return the runs' own numbers behind a finding, one clause per claim, e.g. "Adam 1e-4 0.2079 vs SGD 0.01 0.1468"
    (a run with several seeds as "0.2079 ± 0.0100 (2 seeds)", mean ± standard deviation)."""
    def num(key):
        values = _values(maps.get(key))
        if not values:
            return f"{labels.get(key, key)} not run"
        if len(values) == 1:
            return f"{labels.get(key, key)} {values[0]:.4f}"
        return f"{labels.get(key, key)} {_mean(values):.4f} ± {pooled_std(values):.4f} ({len(values)} seeds)"

    parts = []
    for claim in finding.claims:
        lead = f"{claim.text}: " if claim.text else ""
        if claim.kind in ("beats", "not_better"):
            parts.append(lead + num(claim.keys[0]) + " vs " + ", ".join(num(k) for k in claim.keys[1:]))
        else:
            parts.append(lead + num(claim.keys[0]) + f" (chance {chance:.4f})")
    return "; ".join(parts)


def seeded(maps: dict) -> bool:
    """Return True when a run in maps ran with several seeds, so that not every finding is judged by the fixed margins."""
    return any(len(_values(v)) > 1 for v in maps.values())


def rows(findings: list, maps: dict, labels: dict, chance: float, references: bool = False,
         rules: bool | None = None) -> list[dict]:
    """Return one table row per finding: number, finding, the runs' numbers, verdict, and with rules (default: when
    a run in maps has several seeds) the rule that judged it, and with references the reference figures."""
    rules = seeded(maps) if rules is None else rules
    out = []
    for f in findings:
        row = {"#": f.number, "finding (seed report)": f.text, "this report's runs (test mAP)": evidence(f, maps, labels, chance),
               "verdict": check(f, maps, chance)}
        if rules:
            row["rule"] = rule_used(f, maps)
        if references:
            row["seed report"] = f.seed or MISSING
            row["published"] = f.published or MISSING
        out.append(row)
    return out
