"""A verdict per pair: does the ensemble know more than the baselines, out of sample? Pure function.

On the out-of-sample rows of the pair (the walk-forward test blocks pooled when folds ran, else the test
slice), two paired differences, each with a block standard error (stats.py):

    d_bal = balanced accuracy(ensemble) - balanced accuracy(best of majority, persistence)
    d_ll  = log loss(prior) - log loss(ensemble)          (positive: better probabilities than the class mix)

    worse     if d_bal < -z s.e.(d_bal)  or  d_ll < -z s.e.(d_ll)
    skill     if d_bal > +z s.e.(d_bal)  and d_ll > 0
    no-skill  otherwise (including when the rows are too few for a standard error)

z is settings.verdict_z (2 by default). "no-skill" is the common, honest outcome for direction models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ml.src.training.metrics import balanced_accuracy_rows, log_loss_rows
from ml.src.training.scoring import SlicePredictions
from ml.src.training.stats import PairedDifference, block_length, paired_difference

SKILL, NO_SKILL, WORSE = "skill", "no-skill", "worse"


@dataclass(frozen=True)
class Verdict:
    verdict: str
    basis: str  # "walk_forward" or "test"
    n: int
    z: float
    best_baseline: str
    balanced_accuracy: PairedDifference  # ensemble - best baseline
    log_loss: PairedDifference  # prior - ensemble

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "basis": self.basis,
            "n": self.n,
            "z": self.z,
            "best_baseline": self.best_baseline,
            "balanced_accuracy_diff": self.balanced_accuracy.diff,
            "balanced_accuracy_se": self.balanced_accuracy.se,
            "log_loss_gain": self.log_loss.diff,
            "log_loss_gain_se": self.log_loss.se,
            "block": self.balanced_accuracy.block,
        }


def judge(sp: SlicePredictions, *, horizon: int, z: float, basis: str, model: str = "ensemble") -> Verdict:
    y = sp.codes
    block = block_length(horizon)
    model_bal = balanced_accuracy_rows(y, sp.preds[model])
    baselines = {name: balanced_accuracy_rows(y, sp.preds[name]) for name in ("majority", "persistence")}
    best = max(baselines, key=lambda name: float(baselines[name].sum()))
    d_bal = paired_difference(model_bal, baselines[best], block)
    n = max(len(y), 1)
    # per-row contributions that sum to the mean log loss, oriented so that positive favours the model
    d_ll = paired_difference(
        log_loss_rows(y, sp.probas["prior"]) / n, log_loss_rows(y, sp.probas[model]) / n, block
    )
    if d_bal.loses(z) or d_ll.loses(z):
        verdict = WORSE
    elif d_bal.beats(z) and d_ll.diff > 0:
        verdict = SKILL
    else:
        verdict = NO_SKILL
    return Verdict(verdict, basis, len(y), float(z), best, d_bal, d_ll)
