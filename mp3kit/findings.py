"""Check the seed report's findings on a report's own runs: "reproduced", "not reproduced" or "not run".

A notebook declares a finding where it makes the runs (Experiment.finding); the report checks every declared
finding against results.json with the rule below, so the verdicts are functions of the recorded test mAPs only.

The rule, stated in the report next to the table:
- "A beats B": A's test mAP exceeds B's by at least MARGIN;
- "A does not beat B": A's test mAP exceeds B's by less than MARGIN (it may be lower);
- "A leaves chance": A's test mAP is at least CHANCE_MARGIN above the chance level;
- "A is near chance": A's test mAP is less than NEAR_CHANCE above the chance level;
- a finding made of several claims is reproduced when every claim holds, and "not run" when one of its runs is
  missing (skipped, failed or not trained) and none of the claims that could be checked failed.
"""

from __future__ import annotations

from dataclasses import dataclass

from mp3kit.table import MISSING

MARGIN = 0.01
CHANCE_MARGIN = 0.02
NEAR_CHANCE = 0.05
KINDS = ("beats", "not_better", "above_chance", "near_chance")
REPRODUCED, NOT_REPRODUCED, NOT_RUN = "reproduced", "not reproduced", "not run"
RULE = (
    f"Rule: A *beats* B when A's test mAP is higher by at least {MARGIN}; A *does not beat* B when it is higher by "
    f"less than {MARGIN}; a run *leaves chance* when its test mAP is at least {CHANCE_MARGIN} above the chance level "
    f"and is *near chance* when it is less than {NEAR_CHANCE} above it. A finding is reproduced when all its claims "
    "hold, and not run when one of its runs is missing (skipped, failed, or no ImageNet weights)."
)


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


def check_claim(claim: Claim, maps: dict, chance: float) -> str:
    """Return the verdict of one claim given each run key's test mAP (None or absent: the run is missing)."""
    values = [maps.get(k) for k in claim.keys]
    if any(v is None for v in values):
        return NOT_RUN
    first, others = values[0], values[1:]
    if claim.kind == "beats":
        ok = all(first - other >= MARGIN for other in others)
    elif claim.kind == "not_better":
        ok = all(first - other < MARGIN for other in others)
    elif claim.kind == "above_chance":
        ok = first - chance >= CHANCE_MARGIN
    else:  # near_chance
        ok = first - chance < NEAR_CHANCE
    return REPRODUCED if ok else NOT_REPRODUCED


def check(finding: Finding, maps: dict, chance: float) -> str:
    """Return the verdict of a finding: not reproduced if any claim fails, else not run if any is missing."""
    verdicts = [check_claim(c, maps, chance) for c in finding.claims]
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    return NOT_RUN if NOT_RUN in verdicts else REPRODUCED


def evidence(finding: Finding, maps: dict, labels: dict, chance: float) -> str:
    """Return the runs' own numbers behind a finding, one clause per claim, e.g. "Adam 1e-4 0.2079 vs SGD 0.01 0.1468"."""
    def num(key):
        value = maps.get(key)
        return f"{labels.get(key, key)} {'not run' if value is None else f'{value:.4f}'}"

    parts = []
    for claim in finding.claims:
        lead = f"{claim.text}: " if claim.text else ""
        if claim.kind in ("beats", "not_better"):
            parts.append(lead + num(claim.keys[0]) + " vs " + ", ".join(num(k) for k in claim.keys[1:]))
        else:
            parts.append(lead + num(claim.keys[0]) + f" (chance {chance:.4f})")
    return "; ".join(parts)


def rows(findings: list, maps: dict, labels: dict, chance: float, references: bool = False) -> list[dict]:
    """Return one table row per finding: number, finding, the runs' numbers, verdict (and the reference figures)."""
    out = []
    for f in findings:
        row = {"#": f.number, "finding (seed report)": f.text, "this report's runs (test mAP)": evidence(f, maps, labels, chance),
               "verdict": check(f, maps, chance)}
        if references:
            row["seed report"] = f.seed or MISSING
            row["published"] = f.published or MISSING
        out.append(row)
    return out
