"""One honest reading of a slice of rows: every model beside every baseline, on the same scores.

Used for the valid and test slices of a pair and for every walk-forward fold, so the JSON, the ledger, the
summary table and the walk-forward summary all read the same numbers:

- models (`ensemble`, `equal_weight`, `rf`, `gb`): calibrated probabilities, class decisions by
  metrics.decide (the class most above its training share), accuracy, balanced accuracy, macro F1, log loss,
  hit rate of directional calls on rows that moved, IC of P(bull) - P(bear) with a block-permutation p-value;
- `majority` (the training slice's most common class) and `persistence` (the label of row t - h): the same
  label scores; they have no probabilities, so no log loss;
- `prior` (the training class mix as a probability forecast): log loss; its class decision is the majority.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.src.training.metrics import (
    decide,
    hit_rate,
    label_metrics,
    persistence_predictions,
    proba_metrics,
)
from ml.src.training.stats import block_length, ic_with_pvalue
from ml.src.training.weights import direction_score

if TYPE_CHECKING:
    from ml.src.training.models import EnsembleFit  # the learners: imported where fits happen, not here

MODELS: tuple[str, ...] = ("ensemble", "equal_weight", "rf", "gb")
BASELINES: tuple[str, ...] = ("majority", "persistence", "prior")
NAMES: tuple[str, ...] = (*MODELS, *BASELINES)


@dataclass
class SlicePredictions:
    """Truth, realised returns and each predictor's output on some rows (indices into the labelled rows)."""

    rows: np.ndarray
    codes: np.ndarray
    returns: np.ndarray
    probas: dict[str, np.ndarray]  # models and "prior"
    preds: dict[str, np.ndarray]  # models, "prior", "majority", "persistence"

    def take(self, keep: np.ndarray) -> SlicePredictions:
        return SlicePredictions(
            rows=self.rows[keep],
            codes=self.codes[keep],
            returns=self.returns[keep],
            probas={k: v[keep] for k, v in self.probas.items()},
            preds={k: v[keep] for k, v in self.preds.items()},
        )


def slice_predictions(
    fit: EnsembleFit, part: str, rows: slice, codes: np.ndarray, returns: np.ndarray, horizon: int
) -> SlicePredictions:
    """Predictions of a fitted ensemble (and the baselines of its fit rows) on one of its predicted parts."""
    probas = {
        **fit.calibrated(part),
        "ensemble": fit.ensemble(part),
        "equal_weight": fit.equal_weight(part),
    }
    n = rows.stop - rows.start
    probas["prior"] = np.tile(fit.prior, (n, 1))
    preds = {name: decide(p, fit.prior) for name, p in probas.items()}
    preds["majority"] = preds["prior"]  # decide() sends the prior's ties to the majority class
    preds["persistence"] = persistence_predictions(codes, rows, horizon)
    return SlicePredictions(
        rows=np.arange(rows.start, rows.stop),
        codes=np.asarray(codes[rows]),
        returns=np.asarray(returns[rows], dtype="float64"),
        probas=probas,
        preds=preds,
    )


def concat(parts: Sequence[SlicePredictions]) -> SlicePredictions:
    """Rows of several slices (e.g. walk-forward test blocks) pooled in order."""
    first = parts[0]
    return SlicePredictions(
        rows=np.concatenate([p.rows for p in parts]),
        codes=np.concatenate([p.codes for p in parts]),
        returns=np.concatenate([p.returns for p in parts]),
        probas={k: np.concatenate([p.probas[k] for p in parts]) for k in first.probas},
        preds={k: np.concatenate([p.preds[k] for p in parts]) for k in first.preds},
    )


def score_slice(
    sp: SlicePredictions, *, horizon: int, ic_permutations: int = 0, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """name -> scores on these rows (no confusion matrices for the baselines' probabilities: they have none)."""
    y = sp.codes
    out: dict[str, dict[str, Any]] = {}
    block = block_length(horizon)
    for name in NAMES:
        pred = sp.preds[name]
        if name in sp.probas:
            m = proba_metrics(y, sp.probas[name], pred)
        else:
            m = {**label_metrics(y, pred), "log_loss": None}
        m["hit_rate"], m["hit_rows"] = hit_rate(y, pred)
        if name in MODELS:
            ic, p = ic_with_pvalue(
                direction_score(sp.probas[name]), sp.returns, block, n_perm=ic_permutations, seed=seed
            )
            m["ic"], m["ic_pvalue"] = ic, p
        out[name] = m
    return out
