"""One (symbol, timeframe) pair, from bars to a recorded ensemble, in three phases.

prepare_pair (store reads, features, labels, split) -> fit_pair (pure compute, runs in a worker process)
-> persist_pair (artifact + result row). Any expected problem raises PairFailure with a one-line reason.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from config.settings import Settings, TimeframeSpec
from ml.src.data.records import ModelVersionRecord
from ml.src.data.store import StoreError, TrainingStore
from ml.src.features.feature_cache import FeatureError, cache_in_use, features_for_window
from ml.src.features.technical_indicators import FEATURE_COLUMNS, FEATURE_SET_VERSION, WARMUP_BARS
from ml.src.training import artifacts, report_data
from ml.src.training.labels import (
    CLASSES,
    Thresholds,
    forward_returns,
    label_codes,
    thresholds_for,
)
from ml.src.training.metrics import (
    class_counts,
    empty_classes,
    label_metrics,
    majority_class,
    persistence_predictions,
    prefixed,
    prior_proba,
    proba_metrics,
)
from ml.src.training.models import MODEL_NAMES, fit_ensemble
from ml.src.training.pair_result import PairRequest, PairResult
from ml.src.training.registry import PromotionDecision
from ml.src.training.splits import PurgedSplit, SplitError, purged_split
from ml.src.training.trading_metrics import information_coefficient, trading_metrics
from ml.src.training.walk_forward import walk_forward
from ml.src.training.weights import blend, direction_score, equal_weights

log = logging.getLogger("ml.training")


class PairFailure(RuntimeError):
    """A pair that cannot be trained; str() is the one-line reason recorded with the result."""


class NotEnoughHistory(PairFailure):
    """No bars, or too few for the warm-up and three slices: a failure for a pair the user named, a skip for a
    pair of the universe (--all / the scheduler)."""


@dataclass
class PreparedPair:
    request: PairRequest
    spec: TimeframeSpec
    ts: pd.Series  # labelled rows only
    x: np.ndarray
    codes: np.ndarray
    returns: np.ndarray
    thresholds: Thresholds
    split: PurgedSplit
    split_info: dict[str, Any]
    n_bars: int
    n_cached: int
    n_computed: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class FittedPair:
    models: dict[str, Any]
    weights: dict[str, float]
    weights_fallback: bool
    metrics: dict[str, Any]
    timings: dict[str, float]
    test_proba: np.ndarray  # the ensemble's class probabilities on the test rows (promotion reuses them)
    walk_forward: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------------- prepare
def _read_window(store: TrainingStore, req: PairRequest, target: int, warmup: int) -> pd.DataFrame:
    if req.lookback_days is None:
        return store.read_bars(req.symbol, req.timeframe, end=req.as_of, limit=target + warmup)
    latest = store.read_bars(req.symbol, req.timeframe, end=req.as_of, limit=1)
    if latest.empty:
        return latest
    anchor = latest["ts"].iloc[-1]
    start = anchor - timedelta(days=req.lookback_days)
    window = store.read_bars(req.symbol, req.timeframe, end=anchor, start=start, limit=target)
    if window.empty:
        return window
    history = store.read_bars(
        req.symbol, req.timeframe, end=window["ts"].iloc[0] - timedelta(microseconds=1), limit=warmup
    )
    return pd.concat([history, window], ignore_index=True)


def check_bars(bars: pd.DataFrame, label: str, spec: TimeframeSpec) -> None:
    """Reject bars a model must not learn from: NaN/inf, non-positive prices, holes in the series."""
    values = bars[["open", "high", "low", "close", "volume"]].to_numpy(dtype="float64")
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise PairFailure(
            f"{label}: bar at {bars['ts'].iloc[int(np.argmax(bad))].isoformat()} has NaN or inf values"
        )
    nonpos = (values[:, :4] <= 0).any(axis=1)
    if nonpos.any():
        raise PairFailure(
            f"{label}: bar at {bars['ts'].iloc[int(np.argmax(nonpos))].isoformat()} has a price <= 0"
        )
    gaps = bars["ts"].diff().dt.total_seconds().to_numpy()[1:] / 86400.0
    if gaps.size and np.nanmax(gaps) > spec.max_gap_days:
        i = int(np.nanargmax(gaps))
        raise PairFailure(
            f"{label}: gap of {gaps[i]:.1f} days between bars {bars['ts'].iloc[i].isoformat()} and "
            f"{bars['ts'].iloc[i + 1].isoformat()} (max_gap_days={spec.max_gap_days:g})"
        )


def prepare_pair(store: TrainingStore, req: PairRequest, settings: Settings) -> PreparedPair:
    label = f"{req.symbol}/{req.timeframe}"
    spec = settings.timeframes[req.timeframe]
    h = spec.horizon_bars
    target = req.target_bars or spec.target_bars
    warmup = max(spec.warmup_bars, WARMUP_BARS)
    min_rows = settings.min_rows_per_split
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    # the revision BEFORE the bars: a change after this read makes the next run retrain, never the reverse
    revision = store.bar_revision(req.symbol, req.timeframe)
    bars = _read_window(store, req, target, warmup)
    timings["load"] = time.perf_counter() - t0
    if bars.empty:
        where = f" up to {req.as_of.isoformat()}" if req.as_of else ""
        raise NotEnoughHistory(f"{label}: no bars in the {store.name} store{where}")
    check_bars(bars, label, spec)
    # warm-up + at least min_rows per split + two purges + the h unlabelled rows at the end
    need = warmup + 3 * min_rows + 3 * h
    if len(bars) < need:
        raise NotEnoughHistory(
            f"{label}: only {len(bars)} bars; need at least {need} "
            f"({warmup} warm-up + 3 x {min_rows} rows per split + 3 x {h} horizon/purge)"
        )

    t0 = time.perf_counter()
    try:
        feats = features_for_window(
            store,
            req.symbol,
            req.timeframe,
            bars,
            warmup,
            revision=revision,
            use_cache=cache_in_use(settings.feature_cache, store),
        )
    except FeatureError as exc:
        raise PairFailure(str(exc)) from exc
    timings["features"] = time.perf_counter() - t0

    frame = feats.frame
    returns_all = forward_returns(frame["close"], h)
    n_labelled = len(frame) - h  # the last h rows have no known future
    try:
        split = purged_split(n_labelled, h, settings.train_fraction, settings.valid_fraction, min_rows)
    except SplitError as exc:
        raise PairFailure(f"{label}: {exc}") from exc
    returns = returns_all[:n_labelled]
    thresholds = thresholds_for(settings.threshold_mode, returns[split.train], spec.threshold)
    codes = label_codes(returns, thresholds)
    empty = empty_classes(codes[split.train])
    if empty:
        raise PairFailure(
            f"{label}: class {', '.join(empty)} has no samples in train (counts {class_counts(codes[split.train])}, "
            f"thresholds {thresholds.lower:+.4f}/{thresholds.upper:+.4f})"
        )
    ts = frame["ts"].iloc[:n_labelled].reset_index(drop=True)
    return PreparedPair(
        request=req,
        spec=spec,
        ts=ts,
        x=frame.loc[: n_labelled - 1, list(FEATURE_COLUMNS)].to_numpy(dtype="float64"),
        codes=codes,
        returns=returns,
        thresholds=thresholds,
        split=split,
        split_info={
            **split.boundaries(ts),
            "data_end": bars["ts"].iloc[-1].isoformat(),
            "data_revision": revision,
        },
        n_bars=len(bars),
        n_cached=feats.n_cached,
        n_computed=feats.n_computed,
        timings=timings,
    )


# ------------------------------------------------------------------------------------------------------- fit
def evaluate(
    probas: dict[str, dict[str, np.ndarray]],
    weights: dict[str, float],
    prep: PreparedPair,
    settings: Settings,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics on valid and test for each model, the fitted and the equal-weight blend, and the baselines.

    Returns (metrics, the fitted ensemble's probabilities per part).
    """
    s = prep.split
    parts = ("valid", "test")
    y = {"valid": prep.codes[s.valid], "test": prep.codes[s.test]}
    ens = {part: blend(probas[part], weights) for part in parts}
    equal = equal_weights(list(weights))
    scored = {
        **{name: {part: probas[part][name] for part in parts} for name in MODEL_NAMES},
        "ensemble": ens,
        "equal_weight": {part: blend(probas[part], equal) for part in parts},
    }
    out: dict[str, Any] = {
        name: {k: v for part in parts for k, v in prefixed(part, proba_metrics(y[part], p[part])).items()}
        for name, p in scored.items()
    }
    train = prep.codes[s.train]
    major = majority_class(train)
    baseline: dict[str, Any] = {"name": "majority class of train", "majority_class": CLASSES[major]}
    persistence: dict[str, Any] = {"name": "last fully known label (t - h)"}
    for part, rows in (("valid", s.valid), ("test", s.test)):
        n = rows.stop - rows.start
        base = label_metrics(y[part], np.full(n, major))
        base["log_loss"] = proba_metrics(y[part], prior_proba(train, n))["log_loss"]
        baseline.update(prefixed(part, base))
        persistence.update(
            prefixed(part, label_metrics(y[part], persistence_predictions(prep.codes, rows, s.purge_bars)))
        )
    out["baseline"] = baseline
    out["persistence"] = persistence
    out["class_counts"] = {
        "train": class_counts(train),
        "valid": class_counts(y["valid"]),
        "test": class_counts(y["test"]),
    }
    out["thresholds"] = prep.thresholds.to_dict()
    # Signal quality: does the direction score rank the realised horizon returns? And a simple trading read.
    out["ic"] = {
        part: information_coefficient(direction_score(ens[part]), prep.returns[rows])
        for part, rows in (("valid", s.valid), ("test", s.test))
    }
    out["trading"] = trading_metrics(
        ens["test"].argmax(axis=1),
        prep.returns[s.test],
        horizon=prep.spec.horizon_bars,
        bars_per_year=prep.spec.bars_per_year,
        fee_bps=settings.trading_fee_bps,
        slippage_bps=settings.trading_slippage_bps,
        allow_short=settings.trading_allow_short,
    ).to_dict()
    return out, ens


def fit_pair(prep: PreparedPair, settings: Settings, n_threads: int = 1) -> FittedPair:
    """Fit the members on train, the weights on valid, and score everything on valid and test."""
    s = prep.split
    fit = fit_ensemble(
        prep.x, prep.codes, s.train, s.valid, {"valid": s.valid, "test": s.test}, settings, n_threads
    )
    timings = fit.timings
    t0 = time.perf_counter()
    metrics, ens = evaluate(fit.probas, fit.weights, prep, settings)
    metrics["weights_fallback"] = fit.weights_fallback
    timings["weights"] += time.perf_counter() - t0
    metrics["charts"] = chart_data(prep, fit.models, fit.weights, ens["test"], settings)
    wf = None
    if settings.walk_forward_folds > 0:
        t0 = time.perf_counter()
        try:
            wf = walk_forward(
                prep.x,
                prep.returns,
                prep.ts,
                folds=settings.walk_forward_folds,
                horizon=prep.spec.horizon_bars,
                threshold=prep.spec.threshold,
                settings=settings,
                n_threads=n_threads,
            )
        except ValueError as exc:
            wf = {"error": str(exc), "folds": [], "summary": {}}
        timings["walk_forward"] = time.perf_counter() - t0
    return FittedPair(
        models=fit.models,
        weights=fit.weights,
        weights_fallback=fit.weights_fallback,
        metrics=metrics,
        timings=timings,
        test_proba=ens["test"],
        walk_forward=wf,
    )


def chart_data(
    prep: PreparedPair,
    models: dict[str, Any],
    weights: dict[str, float],
    test_proba: np.ndarray,
    settings: Settings,
) -> dict[str, Any]:
    """What the report draws for this pair, recorded with the result (see report_data)."""
    s = prep.split
    return {
        "equity": report_data.equity_curves(
            test_proba.argmax(axis=1),
            prep.returns[s.test],
            prep.ts.iloc[s.test],
            horizon=prep.spec.horizon_bars,
            fee_bps=settings.trading_fee_bps,
            slippage_bps=settings.trading_slippage_bps,
            allow_short=settings.trading_allow_short,
        ),
        "reliability": report_data.reliability(test_proba, prep.codes[s.test]),
        "feature_importance": report_data.feature_importance(models, weights, FEATURE_COLUMNS),
    }


# --------------------------------------------------------------------------------------------------- persist
def library_versions() -> dict[str, str]:
    import platform

    import joblib
    import lightgbm
    import sklearn
    import talib

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "lightgbm": lightgbm.__version__,
        "joblib": joblib.__version__,
        "ta-lib": talib.__version__,
    }


# The exact versions (with hashes) the install came from; the dev lock pins the same runtime versions.
LOCK_FILE = Path(__file__).resolve().parents[3] / "requirements.lock"


@cache
def lock_sha256() -> str | None:
    """sha256 of requirements.lock, so a bundle names the environment that can load it; None without the file."""
    try:
        return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()
    except OSError:
        return None


def persist_pair(
    store: TrainingStore,
    prep: PreparedPair,
    fitted: FittedPair,
    *,
    run_id: str,
    models_dir: Path,
    trained_at: datetime,
    duration_s: float,
    promotion: PromotionDecision | None = None,
    artifact_key: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> PairResult:
    """Write the artifact, then the result row and model version together; no row without its artifact.

    The champion pointer moves (if `promotion` says so) in the same store transaction, after the artifact is
    on disk. The ledger gets the path relative to `models_dir` (and, with a key, the artifact's signature).
    If recording fails, the store is read back before anything is deleted: a write whose reply was lost after
    it committed is a success, and an artifact is only deleted when its row is known to be absent.
    """
    req = prep.request
    t0 = time.perf_counter()
    path = artifacts.artifact_path(models_dir, req.symbol, req.timeframe, run_id, trained_at)
    bundle = {
        "symbol": req.symbol,
        "timeframe": req.timeframe,
        "run_id": run_id,
        "trained_at": trained_at.isoformat(),
        "models": fitted.models,
        "weights": fitted.weights,
        "classes": list(CLASSES),
        "feature_names": list(FEATURE_COLUMNS),
        "feature_version": FEATURE_SET_VERSION,
        "timeframe_settings": prep.spec.model_dump(),
        "thresholds": prep.thresholds.to_dict(),
        "split": prep.split_info,
        "metrics": fitted.metrics,
        "library_versions": library_versions(),
        "lock_sha256": lock_sha256(),
    }
    saved = artifacts.save_artifact(bundle, models_dir, path, artifact_key)
    timings = {**prep.timings, **fitted.timings, "save": time.perf_counter() - t0}
    result = PairResult(
        symbol=req.symbol,
        timeframe=req.timeframe,
        status="succeeded",
        horizon_bars=prep.spec.horizon_bars,
        n_train=prep.split.n_train,
        n_valid=prep.split.n_valid,
        n_test=prep.split.n_test,
        split=prep.split_info,
        weights=fitted.weights,
        metrics=fitted.metrics,
        artifact_path=saved.relative,
        artifact_sha256=saved.sha256,
        artifact_signature=saved.signature,
        artifact_file=str(saved.path),
        duration_s=duration_s + timings["save"],
        timings=timings,
        walk_forward=fitted.walk_forward,
        promotion=promotion.to_dict() if promotion else None,
    )
    version = ModelVersionRecord(
        symbol=req.symbol,
        timeframe=req.timeframe,
        run_id=run_id,
        artifact_path=saved.relative,
        artifact_sha256=saved.sha256,
        artifact_signature=saved.signature,
        feature_version=FEATURE_SET_VERSION,
        trained_at=trained_at,
        weights=fitted.weights,
        metrics={k: fitted.metrics[k] for k in ("ensemble", "baseline", "persistence")},
        is_champion=bool(promotion and promotion.promote),
    )
    try:
        store.record_result(result.to_record(run_id), version)
    except StoreError as exc:
        label = f"{req.symbol}/{req.timeframe}"
        try:
            row = store.find_result(run_id, req.symbol, req.timeframe)
        except StoreError as again:
            # Unknown outcome: the row may exist and point at the file, so the file stays (an orphan file is
            # harmless, a champion pointing at nothing is not).
            raise StoreError(
                f"{exc}; outcome unknown (read-back failed: {again}); artifact kept at {saved.relative}"
            ) from None
        if row is not None and row.get("artifact_sha256") == saved.sha256:
            note = f"{label}: recording the result failed ({exc}) but it had been committed (read back)"
            log.warning("%s", note)
            if warn is not None:
                warn(note)
            return result
        saved.path.unlink(missing_ok=True)  # the row is known to be absent: an artifact nobody can find
        raise
    return result


def no_new_bars_reason(store: TrainingStore, req: PairRequest) -> str | None:
    """Why this pair needs no training now, or None.

    Skipped when the pair's latest successful training used the same data revision (no bar inserted, changed
    or deleted since; whoever wrote them) and its latest bar (up to --as-of) is no newer than the bar that
    training ended on. Without revisions (bars exposed through a view), only the latest timestamp is compared.
    """
    if req.force:
        return None
    last = store.last_training(req.symbol, req.timeframe)
    if last is None or last.data_end is None:
        return None
    revision = store.bar_revision(req.symbol, req.timeframe)
    if revision is not None and revision != last.revision:
        return None  # bars were inserted, corrected or deleted since that training
    latest = store.read_bars(req.symbol, req.timeframe, end=req.as_of, limit=1)
    if latest.empty or latest["ts"].iloc[-1] > pd.Timestamp(last.data_end):
        return None
    return f"no new bars (latest {latest['ts'].iloc[-1].isoformat()} already trained on; --force to retrain)"
