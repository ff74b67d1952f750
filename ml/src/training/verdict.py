"""A verdict per pair: does the ensemble know more than the baselines, out of sample? Pure functions.

On the densest honest out-of-sample rows the pair has (its `basis`: replay rows when a replay exists, else
the walk-forward test blocks pooled when folds ran, else the test slice), two paired differences, each with
a block standard error (stats.py):

    d_bal = balanced accuracy(ensemble) - balanced accuracy(best of majority, persistence)
    d_ll  = log loss(prior) - log loss(ensemble)          (positive: better probabilities than the class mix)

p_value is the one-sided p of d_bal > 0 (1 when the rows are too few for a standard error). A run judges
many pairs, so after its pairs finish the p-values of its succeeded pairs become Benjamini-Hochberg q-values
(apply_fdr), and

    worse     if d_bal < -z s.e.(d_bal)  or  d_ll < -z s.e.(d_ll)
    skill     if d_bal > +z s.e.(d_bal)  and d_ll > 0  and  q_value <= fdr
    no-skill  otherwise (including when the rows are too few for a standard error, and while the q-value
              is not known yet: a verdict is never "skill" without false-discovery control)

z is settings.verdict_z (2 by default), fdr settings.verdict_fdr (0.1). "no-skill" is the common, honest
outcome for direction models.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from ml.src.training.labels import CLASS_CODES
from ml.src.training.metrics import balanced_accuracy_rows, log_loss_rows
from ml.src.training.scoring import SlicePredictions
from ml.src.training.stats import PairedDifference, benjamini_hochberg, block_length, paired_difference

SKILL, NO_SKILL, WORSE = "skill", "no-skill", "worse"
# the evidence a verdict can rest on, densest first
REPLAY, WALK_FORWARD, TEST = "replay", "walk_forward", "test"
BASES = (REPLAY, WALK_FORWARD, TEST)
BASELINES = ("majority", "persistence")

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class PairedRows:
    """Paired per-row out-of-sample evidence, oldest row first: the realised label codes, the model's
    probabilities (n x 3) and calls, each baseline's calls on the same rows, and the prior's probabilities
    (the class mix the model was trained on, n x 3). Any source can supply it: the test slice, the pooled
    walk-forward blocks, a replay's forecasts with their realised labels."""

    codes: np.ndarray
    model_proba: np.ndarray
    model_pred: np.ndarray
    baseline_preds: Mapping[str, np.ndarray]
    prior_proba: np.ndarray

    @classmethod
    def from_slice(cls, sp: SlicePredictions, model: str = "ensemble") -> PairedRows:
        return cls(
            codes=sp.codes,
            model_proba=sp.probas[model],
            model_pred=sp.preds[model],
            baseline_preds={name: sp.preds[name] for name in BASELINES},
            prior_proba=sp.probas["prior"],
        )

    @classmethod
    def from_replay(
        cls, forecasts: Sequence[Mapping[str, Any]], priors: Sequence[Sequence[float]] | Sequence[np.ndarray]
    ) -> PairedRows:
        """A replay's realised forecasts as paired rows, oldest first. `forecasts` are forecast rows as the
        replay's --json and the store give them (label, realised_label, persistence_label, p_bearish,
        p_neutral, p_bullish), `priors[i]` the training class mix of the model that made forecast i: the prior
        baseline, and (its argmax, as metrics.decide sends the prior) the majority baseline. Persistence is a
        baseline only when every realised row has its label."""
        if len(forecasts) != len(priors):
            raise ValueError(f"{len(forecasts)} forecasts but {len(priors)} priors")
        rows = [i for i, f in enumerate(forecasts) if f.get("realised_label") is not None]
        done = [forecasts[i] for i in rows]
        prior = np.array([list(priors[i]) for i in rows], dtype="float64").reshape(len(rows), 3)
        baselines: dict[str, np.ndarray] = {"majority": prior.argmax(axis=1) if rows else np.zeros(0, int)}
        if all(f.get("persistence_label") for f in done):
            baselines["persistence"] = np.array(
                [CLASS_CODES[f["persistence_label"]] for f in done], dtype=int
            )
        return cls(
            codes=np.array([CLASS_CODES[f["realised_label"]] for f in done], dtype=int),
            model_proba=np.array(
                [[f["p_bearish"], f["p_neutral"], f["p_bullish"]] for f in done], dtype="float64"
            ).reshape(len(rows), 3),
            model_pred=np.array([CLASS_CODES[f["label"]] for f in done], dtype=int),
            baseline_preds=baselines,
            prior_proba=prior,
        )

    def __len__(self) -> int:
        return len(self.codes)


@dataclass(frozen=True)
class Verdict:
    verdict: str
    basis: str  # one of BASES
    n: int
    z: float
    best_baseline: str
    balanced_accuracy: PairedDifference  # ensemble - best baseline
    log_loss: PairedDifference  # prior - ensemble
    p_value: float  # one-sided, of balanced_accuracy > 0
    q_value: float | None = None  # Benjamini-Hochberg across the run's succeeded pairs; None until known
    fdr: float | None = None  # the false discovery rate skill is held to (settings.verdict_fdr)
    replay_id: str | None = None  # the replay whose rows the verdict rests on (basis "replay")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
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
            "p_value": self.p_value,
            "q_value": self.q_value,
            "fdr": self.fdr,
        }
        if self.replay_id is not None:
            out["replay_id"] = self.replay_id
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        """The inverse of to_dict (what the workers send back and the ledger keeps)."""
        n, block = int(d["n"]), int(d["block"])
        bal = PairedDifference(float(d["balanced_accuracy_diff"]), d.get("balanced_accuracy_se"), n, block)
        ll = PairedDifference(float(d["log_loss_gain"]), d.get("log_loss_gain_se"), n, block)
        return cls(
            verdict=str(d["verdict"]),
            basis=str(d["basis"]),
            n=n,
            z=float(d["z"]),
            best_baseline=str(d["best_baseline"]),
            balanced_accuracy=bal,
            log_loss=ll,
            p_value=float(d["p_value"]) if d.get("p_value") is not None else bal.p_value(),
            q_value=None if d.get("q_value") is None else float(d["q_value"]),
            fdr=None if d.get("fdr") is None else float(d["fdr"]),
            replay_id=None if d.get("replay_id") is None else str(d["replay_id"]),
        )

    def with_q(self, q_value: float, fdr: float) -> Verdict:
        """This verdict once its q-value is known: the label is decided again under the FDR rule."""
        return replace(
            self,
            q_value=float(q_value),
            fdr=float(fdr),
            verdict=label(self.balanced_accuracy, self.log_loss, self.z, float(q_value), float(fdr)),
        )


def label(
    d_bal: PairedDifference, d_ll: PairedDifference, z: float, q: float | None, fdr: float | None
) -> str:
    """The rule of the module docstring."""
    if d_bal.loses(z) or d_ll.loses(z):
        return WORSE
    if d_bal.beats(z) and d_ll.diff > 0 and q is not None and fdr is not None and q <= fdr:
        return SKILL
    return NO_SKILL


def judge_rows(rows: PairedRows, *, horizon: int, z: float, basis: str, fdr: float | None = None) -> Verdict:
    """The verdict on paired per-row evidence, before false-discovery control (q_value None: never skill)."""
    if basis not in BASES:
        raise ValueError(f"unknown verdict basis {basis!r}: one of {', '.join(BASES)}")
    y = rows.codes
    block = block_length(horizon)
    model_bal = balanced_accuracy_rows(y, rows.model_pred)
    baselines = {name: balanced_accuracy_rows(y, pred) for name, pred in rows.baseline_preds.items()}
    if not baselines:
        raise ValueError("a verdict needs at least one baseline's calls")
    best = max(baselines, key=lambda name: float(baselines[name].sum()))
    d_bal = paired_difference(model_bal, baselines[best], block)
    n = max(len(y), 1)
    # per-row contributions that sum to the mean log loss, oriented so that positive favours the model
    d_ll = paired_difference(
        log_loss_rows(y, rows.prior_proba) / n, log_loss_rows(y, rows.model_proba) / n, block
    )
    return Verdict(
        verdict=label(d_bal, d_ll, z, None, fdr),
        basis=basis,
        n=len(y),
        z=float(z),
        best_baseline=best,
        balanced_accuracy=d_bal,
        log_loss=d_ll,
        p_value=d_bal.p_value(),
        q_value=None,
        fdr=None if fdr is None else float(fdr),
    )


def judge(
    sp: SlicePredictions,
    *,
    horizon: int,
    z: float,
    basis: str,
    model: str = "ensemble",
    fdr: float | None = None,
) -> Verdict:
    return judge_rows(PairedRows.from_slice(sp, model), horizon=horizon, z=z, basis=basis, fdr=fdr)


def densest_evidence(
    *,
    test: PairedRows,
    walk_forward: PairedRows | None = None,
    replay: PairedRows | None = None,
) -> tuple[str, PairedRows]:
    """The densest honest out-of-sample evidence a pair has, with its basis: replay rows when a replay
    produced any, else the pooled walk-forward rows when folds ran, else the test slice."""
    if replay is not None and len(replay) > 0:
        return REPLAY, replay
    if walk_forward is not None and len(walk_forward) > 0:
        return WALK_FORWARD, walk_forward
    return TEST, test


def replay_priors(
    forecasts: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]]
) -> list[list[float]] | None:
    """Each stored replay forecast's prior: the class mix of the promoted step it was trained through (a
    forecast's `trained_through` is its model's retrain point). None when a step lacks its prior (a replay
    stored before steps carried it): the rows cannot be judged without the baselines."""
    by_point: dict[Any, list[float]] = {}
    for step in steps:
        if step.get("status") == "promoted":
            if step.get("prior") is None:
                return None
            by_point[_instant(step["trained_through"])] = [float(x) for x in step["prior"]]
    out: list[list[float]] = []
    for f in forecasts:
        prior = by_point.get(_instant(f["trained_through"]))
        if prior is None:
            return None
        out.append(prior)
    return out


def _instant(ts: Any) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_convert("UTC") if t.tzinfo is not None else t.tz_localize("UTC")


def judge_replay(
    forecasts: Sequence[Mapping[str, Any]],
    priors: Sequence[Sequence[float]] | Sequence[np.ndarray],
    *,
    horizon: int,
    z: float,
    fdr: float | None = None,
    replay_id: str | None = None,
) -> Verdict | None:
    """The verdict on a replay's realised forecasts (basis "replay", q-value not yet known); None when none is
    realised."""
    rows = PairedRows.from_replay(forecasts, priors)
    if len(rows) == 0:
        return None
    return replace(judge_rows(rows, horizon=horizon, z=z, basis=REPLAY, fdr=fdr), replay_id=replay_id)


def apply_fdr(verdicts: Mapping[K, Verdict], fdr: float) -> dict[K, Verdict]:
    """Each verdict with its Benjamini-Hochberg q-value across all of `verdicts` (one run's succeeded pairs,
    or one replay's), labels decided again: skill needs q <= fdr."""
    keys = list(verdicts)
    qs = benjamini_hochberg([verdicts[k].p_value for k in keys])
    return {k: verdicts[k].with_q(q, fdr) for k, q in zip(keys, qs, strict=True)}


def apply_fdr_dicts(verdicts: Mapping[K, Mapping[str, Any]], fdr: float) -> dict[K, dict[str, Any]]:
    """apply_fdr on verdicts as the ledger and the workers carry them (Verdict.to_dict)."""
    settled = apply_fdr({k: Verdict.from_dict(v) for k, v in verdicts.items()}, fdr)
    return {k: v.to_dict() for k, v in settled.items()}
