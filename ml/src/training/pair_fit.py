"""Phase 2 of a pair: fit the members, calibrate and weight them, score every predictor beside its baselines
and judge the pair (pure compute; runs on a worker). The learners are imported inside the fit only, so a
process whose fits happen elsewhere never pays for their import."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from config.settings import FitSettings
from ml.src.training import report_data
from ml.src.training.labels import (
    CLASSES,
)
from ml.src.training.metrics import class_counts, class_shares, prefixed
from ml.src.training.pair_state import FittedPair, PreparedPair
from ml.src.training.scoring import NAMES, SlicePredictions, concat, score_slice, slice_predictions
from ml.src.training.trading_metrics import fit_confidence_threshold, trading_metrics
from ml.src.training.verdict import PairedRows, densest_evidence, judge_rows
from ml.src.training.weights import direction_score

if TYPE_CHECKING:
    from ml.src.training.models import EnsembleFit


DECISION_RULE = "prior_ratio"  # metrics.decide: the class most above its training share


# ------------------------------------------------------------------------------------------------------- fit
BASELINE_NAMES = {
    "majority": "majority class of train",
    "persistence": "last fully known label (t - h)",
    "prior": "class mix of train, as probabilities",
}


def evaluate(
    fit: EnsembleFit,
    prep: PreparedPair,
    settings: FitSettings,
    preds: dict[str, SlicePredictions] | None = None,
) -> tuple[dict[str, Any], dict[str, SlicePredictions]]:
    """Scores on valid and test for each model, the fitted and the equal-weight blend, and the baselines.

    Returns (metrics, the predictions per part). Valid scores of the ensemble are in-sample for its
    calibration and weights; test scores are out-of-sample for everything. `preds`: the fit's predictions of
    the pair's valid and test rows when they are not the fit's own parts (a pooled fit, pooled_pair.py),
    whose prior baseline is then the pair's own train mix.
    """

    s = prep.split
    h = prep.spec.horizon_bars
    parts = {"valid": s.valid, "test": s.test}
    if preds is None:
        preds = {
            part: slice_predictions(fit, part, rows, prep.codes, prep.returns, h)
            for part, rows in parts.items()
        }
    scores = {
        part: score_slice(sp, horizon=h, ic_permutations=settings.ic_permutations, seed=settings.random_state)
        for part, sp in preds.items()
    }
    out: dict[str, Any] = {
        name: {k: v for part in parts for k, v in prefixed(part, scores[part][name]).items()}
        for name in NAMES
    }
    for name, description in BASELINE_NAMES.items():
        out[name]["name"] = description
    out["majority"]["majority_class"] = CLASSES[int(preds["test"].preds["majority"][0])]
    out["prior"]["class_mix"] = [float(v) for v in preds["test"].probas["prior"][0]]
    y = {"train": prep.codes[s.train], "valid": preds["valid"].codes, "test": preds["test"].codes}
    out["class_counts"] = {k: class_counts(v) for k, v in y.items()}
    out["class_shares"] = {k: class_shares(v) for k, v in y.items()}
    out["thresholds"] = prep.thresholds.to_dict()
    out["ic"] = {  # the ensemble's, also under ensemble.*_ic
        "valid": out["ensemble"]["valid_ic"],
        "test": out["ensemble"]["test_ic"],
        "test_pvalue": out["ensemble"]["test_ic_pvalue"],
    }
    out["combination"] = {**fit.combination.to_dict(), "refit_on_valid": fit.refit}
    out["trading"] = trading_read(preds, prep, settings)
    return out, preds


def trading_read(
    preds: dict[str, SlicePredictions], prep: PreparedPair, settings: FitSettings
) -> dict[str, Any]:
    """Trade the ensemble's test calls net of costs; with a confidence threshold fitted on valid beside it."""
    spec = prep.spec
    kwargs: dict[str, Any] = {
        "horizon": spec.horizon_bars,
        "fee_bps": settings.trading_fee_bps,
        "slippage_bps": settings.trading_slippage_bps,
        "allow_short": settings.trading_allow_short,
    }
    test = preds["test"]
    out = trading_metrics(
        test.preds["ensemble"], test.returns, bars_per_year=spec.bars_per_year, **kwargs
    ).to_dict()
    if settings.trading_confidence:
        valid = preds["valid"]
        tau, q = fit_confidence_threshold(
            valid.preds["ensemble"], direction_score(valid.probas["ensemble"]), valid.returns, **kwargs
        )
        thr = trading_metrics(
            test.preds["ensemble"],
            test.returns,
            bars_per_year=spec.bars_per_year,
            score=direction_score(test.probas["ensemble"]),
            threshold=tau,
            **kwargs,
        )
        out["confidence"] = {
            "threshold": tau if np.isfinite(tau) else None,
            "never_trades": not np.isfinite(tau),
            "valid_quantile": q,
            "fitted_on": "valid",
            "gross": thr.gross.to_dict(),
            "net": thr.net.to_dict(),
        }
    return out


def fit_pair(prep: PreparedPair, settings: FitSettings, n_threads: int = 1) -> FittedPair:
    """Fit the members on train, calibration and weights on valid, score everything on valid and test, run
    the walk-forward folds, and judge the pair on its out-of-sample rows."""
    from ml.src.training.models import fit_ensemble
    from ml.src.training.walk_forward import walk_forward

    s = prep.split
    h = prep.spec.horizon_bars
    fit = fit_ensemble(
        prep.x, prep.codes, s.train, s.valid, {"test": s.test}, settings, purge=h, n_threads=n_threads
    )
    timings = fit.timings
    t0 = time.perf_counter()
    metrics, preds = evaluate(fit, prep, settings)
    timings["evaluate"] = time.perf_counter() - t0
    wf = None
    oos = None
    if settings.walk_forward_folds > 0:
        t0 = time.perf_counter()
        try:
            result = walk_forward(
                prep.x,
                prep.returns,
                prep.ts,
                folds=settings.walk_forward_folds,
                horizon=h,
                threshold=prep.spec.threshold,
                settings=settings,
                n_threads=n_threads,
                scale=prep.scale,
            )
        except ValueError as exc:
            wf = {"error": str(exc), "folds": [], "summary": {}}
        else:
            wf = result.report
            oos = concat(result.pooled) if result.pooled else None
        timings["walk_forward"] = time.perf_counter() - t0
    return finish_fit(prep, settings, fit, metrics, preds, wf, oos)


def finish_fit(
    prep: PreparedPair,
    settings: FitSettings,
    fit: EnsembleFit,
    metrics: dict[str, Any],
    preds: dict[str, SlicePredictions],
    wf: dict[str, Any] | None,
    oos: SlicePredictions | None,
) -> FittedPair:
    """Charts, the verdict on the densest out-of-sample rows and the bundle's extras of a scored fit."""
    h = prep.spec.horizon_bars
    test = preds["test"]
    metrics["charts"] = chart_data(
        prep, fit.models, fit.weights, test.probas["ensemble"], test.preds["ensemble"], settings
    )
    # the densest honest out-of-sample rows: pooled walk-forward blocks when folds ran, else the test slice;
    # its q-value (and so a possible "skill") comes once the run's pairs are done (run_loop.settle_verdicts)
    basis, evidence = densest_evidence(
        test=PairedRows.from_slice(preds["test"]),
        walk_forward=PairedRows.from_slice(oos) if oos is not None else None,
    )
    verdict = judge_rows(evidence, horizon=h, z=settings.verdict_z, basis=basis, fdr=settings.verdict_fdr)
    if oos is not None:
        assert wf is not None
        wf["pooled"] = {
            name: {k: v for k, v in m.items() if k != "confusion"}
            for name, m in score_slice(
                oos, horizon=h, ic_permutations=settings.ic_permutations, seed=settings.random_state
            ).items()
        }
    metrics["verdict"] = verdict.to_dict()
    confidence = metrics["trading"].get("confidence") or {}
    extras = {
        "calibration": {n: c.to_dict() for n, c in fit.combination.calibrators.items()},
        "decision": {"rule": DECISION_RULE, "prior": [float(v) for v in fit.prior]},
        "combination": metrics["combination"],
        "trading_threshold": confidence.get("threshold"),
    }
    return FittedPair(
        models=fit.models,
        weights=fit.weights,
        metrics=metrics,
        timings=fit.timings,
        bundle_extras=extras,
        test=preds["test"],
        walk_forward=wf,
        oos=oos,
    )


def chart_data(
    prep: PreparedPair,
    models: dict[str, Any],
    weights: dict[str, float],
    test_proba: np.ndarray,
    test_pred: np.ndarray,
    settings: FitSettings,
) -> dict[str, Any]:
    """What the report draws for this pair, recorded with the result (see report_data): the ensemble's
    calibrated test probabilities and its class decisions (the ones the trading read trades)."""
    s = prep.split
    return {
        "equity": report_data.equity_curves(
            test_pred,
            prep.returns[s.test],
            prep.ts.iloc[s.test],
            horizon=prep.spec.horizon_bars,
            fee_bps=settings.trading_fee_bps,
            slippage_bps=settings.trading_slippage_bps,
            allow_short=settings.trading_allow_short,
        ),
        "reliability": report_data.reliability(test_proba, prep.codes[s.test]),
        "feature_importance": report_data.feature_importance(models, weights, prep.feature_names),
    }
