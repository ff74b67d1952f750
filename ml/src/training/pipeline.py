"""One (symbol, timeframe) pair, from bars to a recorded ensemble, in three phases.

prepare_pair (store reads, features, labels, split) -> fit_pair (pure compute, runs on a worker, which also
packs the bundle: worker.fit_task) -> persist_pair (artifact bytes + result row). Any expected problem raises
PairFailure with a one-line reason.

The learners (scikit-learn, scipy, LightGBM) are imported inside the fit functions only, so the main process
of a run whose fits happen elsewhere never pays for their import.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from config.settings import FitSettings, Settings, TimeframeSpec
from ml.src.data.bar_checks import first_bad_bar
from ml.src.data.records import ModelVersionRecord
from ml.src.data.store import StoreError, TrainingStore
from ml.src.features.context import ContextResult, load_context
from ml.src.features.feature_cache import FeatureError, cache_in_use, features_for_window
from ml.src.features.technical_indicators import (
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    WARMUP_BARS,
    feature_set,
)
from ml.src.training import artifacts, report_data
from ml.src.training.labels import (
    CLASSES,
    EX_ANTE_MODE,
    ex_ante_scale,
    forward_returns,
    label_codes,
    thresholds_for,
)
from ml.src.training.metrics import class_counts, class_shares, empty_classes, prefixed
from ml.src.training.pair_result import PairRequest, PairResult
from ml.src.training.pair_state import FittedPair, PreparedPair
from ml.src.training.provenance import library_versions
from ml.src.training.scoring import NAMES, SlicePredictions, concat, score_slice, slice_predictions
from ml.src.training.splits import SplitError, min_usable_rows, purged_split
from ml.src.training.trading_metrics import fit_confidence_threshold, trading_metrics
from ml.src.training.verdict import PairedRows, densest_evidence, judge_rows
from ml.src.training.weights import direction_score

if TYPE_CHECKING:
    from ml.src.training.models import EnsembleFit
    from ml.src.training.pair_state import PackedFit
    from ml.src.training.registry import PromotionDecision

__all__ = [
    "FittedPair",
    "PairFailure",
    "PreparedPair",
    "build_bundle",
    "evaluate",
    "fit_pair",
    "library_versions",
    "persist_pair",
    "prepare_pair",
]

DECISION_RULE = "prior_ratio"  # metrics.decide: the class most above its training share

log = logging.getLogger("ml.training")


class PairFailure(RuntimeError):
    """A pair that cannot be trained; str() is the one-line reason recorded with the result."""


class NotEnoughHistory(PairFailure):
    """No bars at all: a failure for a pair the user named, a skip for a pair of the universe (--all / the
    scheduler)."""


class PairSkipped(RuntimeError):
    """Some bars, but fewer than the computed minimum history: skipped (not failed) whoever asked, with
    'insufficient history: N bars, needs M'. Nothing is wrong; the pair trains once it has the bars."""


# --------------------------------------------------------------------------------------------------- prepare
def read_end(as_of: datetime | None) -> datetime:
    """The last bar instant a read for training may return: --as-of, but never after now. A bar dated after now
    (written by another tool, or a vendor's clock) has not closed: it is never trained on."""
    now = datetime.now(UTC)
    return now if as_of is None or as_of > now else as_of


def _read_window(store: TrainingStore, req: PairRequest, target: int, warmup: int) -> pd.DataFrame:
    end = read_end(req.as_of)
    if req.lookback_days is None:
        return store.read_bars(req.symbol, req.timeframe, end=end, limit=target + warmup)
    latest = store.read_bars(req.symbol, req.timeframe, end=end, limit=1)
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
    """Reject bars a model must not learn from or forecast at: every per-bar check the loader runs
    (ml.src.data.bar_checks: NaN/inf, prices <= 0, high/low not bounding open/close, implausible values), and
    holes in the series."""
    bad = first_bad_bar(bars)
    if bad is not None:
        raise PairFailure(f"{label}: bar at {bars['ts'].iloc[bad.index].isoformat()} has {bad.problem}")
    gaps = bars["ts"].diff().dt.total_seconds().to_numpy()[1:] / 86400.0
    if gaps.size and np.nanmax(gaps) > spec.max_gap_days:
        i = int(np.nanargmax(gaps))
        raise PairFailure(
            f"{label}: gap of {gaps[i]:.1f} days between bars {bars['ts'].iloc[i].isoformat()} and "
            f"{bars['ts'].iloc[i + 1].isoformat()} (max_gap_days={spec.max_gap_days:g})"
        )


def required_bars(spec: TimeframeSpec, settings: Settings) -> tuple[int, str]:
    """The fewest bars a pair can train on, and how that number is made up.

    warm-up (the features' look-back) + h unlabelled rows at the end + 2 purges of h + the fewest rows the
    split fractions turn into min_rows_per_split rows per slice.
    """
    h = spec.horizon_bars
    warmup = warmup_bars(spec)
    usable = min_usable_rows(settings.train_fraction, settings.valid_fraction, settings.min_rows_per_split)
    need = warmup + 3 * h + usable
    how = (
        f"{warmup} warm-up + {h} unlabelled + 2 x {h} purged + {usable} rows for "
        f"{settings.min_rows_per_split}+ per train/valid/test slice"
    )
    return need, how


def warmup_bars(spec: TimeframeSpec) -> int:
    """History fetched before the window: the features' own look-back, or more if the timeframe asks."""
    return max(spec.warmup_bars or 0, WARMUP_BARS)


def prepare_pair(store: TrainingStore, req: PairRequest, settings: Settings) -> PreparedPair:
    label = f"{req.symbol}/{req.timeframe}"
    spec = settings.timeframes[req.timeframe]
    h = spec.horizon_bars
    target = req.target_bars or spec.target_bars
    warmup = warmup_bars(spec)
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
    need, how = required_bars(spec, settings)
    if len(bars) < need:
        raise PairSkipped(f"{label}: insufficient history: {len(bars)} bars, needs {need} ({how})")

    t0 = time.perf_counter()
    fset = feature_set(settings.vol_features)
    try:
        feats = features_for_window(
            store,
            req.symbol,
            req.timeframe,
            bars,
            warmup,
            revision=revision,
            use_cache=cache_in_use(settings.feature_cache, revision),
            fset=fset,
        )
    except FeatureError as exc:
        raise PairFailure(str(exc)) from exc
    columns = list(fset.columns)
    frame = feats.frame
    context: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    if settings.context_symbols:
        ctx = context_for_window(
            store, req.symbol, req.timeframe, bars, warmup, settings.context_symbols, settings
        )
        frame = pd.concat([frame, ctx.frame], axis=1)
        columns += list(ctx.frame.columns)
        context, notes = ctx.used, ctx.notes  # the run's warnings (run_loop) say which were left out
    timings["features"] = time.perf_counter() - t0

    scale = None
    if settings.threshold_mode == EX_ANTE_MODE:
        # each row's volatility as of its own bar, from the bars before the window on (the warm-up covers it)
        scale = ex_ante_scale(bars["close"], h)[len(bars) - len(frame) :]
    prep = label_window(
        req,
        spec,
        frame,
        settings,
        data_end=bars["ts"].iloc[-1],
        revision=revision,
        columns=tuple(columns),
        scale=scale,
        feature_version=fset.version,
    )
    prep.n_bars, prep.n_cached, prep.n_computed = len(bars), feats.n_cached, feats.n_computed
    prep.timings, prep.context, prep.notes = timings, context, notes
    return prep


def label_window(
    req: PairRequest,
    spec: TimeframeSpec,
    frame: pd.DataFrame,
    settings: Settings,
    *,
    data_end: pd.Timestamp,
    revision: int | None,
    columns: tuple[str, ...] = FEATURE_COLUMNS,
    scale: np.ndarray | None = None,
    feature_version: str = FEATURE_SET_VERSION,
) -> PreparedPair:
    """Labels, split and thresholds of a training window whose features are computed (`frame`: ts, close and
    the `columns` of the window's bars, warm-up excluded; `scale`: ex_ante_vol's per-row volatility): what the
    job trains on. Shared by prepare_pair and the replay (ml.src.training.replay_loop), which computes a pair's
    features once and cuts windows from them."""
    label = f"{req.symbol}/{req.timeframe}"
    h = spec.horizon_bars
    frame = frame.reset_index(drop=True)
    returns_all = forward_returns(frame["close"], h)
    n_labelled = len(frame) - h  # the last h rows have no known future
    try:
        split = purged_split(
            n_labelled, h, settings.train_fraction, settings.valid_fraction, settings.min_rows_per_split
        )
    except SplitError as exc:
        raise PairFailure(f"{label}: {exc}") from exc
    returns = returns_all[:n_labelled]
    thresholds = thresholds_for(
        settings.threshold_mode, returns[split.train], spec.threshold, settings.threshold_k
    )
    row_scale = scale[:n_labelled] if scale is not None else None
    codes = label_codes(returns, thresholds, row_scale)
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
        x=frame.loc[: n_labelled - 1, list(columns)].to_numpy(dtype="float64"),
        codes=codes,
        returns=returns,
        thresholds=thresholds,
        split=split,
        split_info={
            **split.boundaries(ts),
            "data_end": pd.Timestamp(data_end).isoformat(),
            "data_revision": revision,
        },
        n_bars=len(frame),
        n_cached=0,
        n_computed=len(frame),
        feature_names=tuple(columns),
        feature_version=feature_version,
        scale=row_scale,
    )


def context_for_window(
    store: TrainingStore,
    symbol: str,
    timeframe: str,
    bars: pd.DataFrame,
    warmup: int,
    symbols: list[str] | tuple[str, ...],
    settings: Settings,
) -> ContextResult:
    """The ML_CONTEXT_SYMBOLS columns for the window rows (bars[warmup:], index from 0), and the notes of the
    context symbols left out (no bars, bars missing for some rows, or undefined values in the window)."""
    gaps = {tf: spec.max_gap_days for tf, spec in settings.timeframes.items()}
    ctx = load_context(store, symbol, timeframe, bars, symbols, gaps)
    window = ctx.frame.iloc[warmup:].reset_index(drop=True)
    used, notes = list(ctx.used), list(ctx.notes)
    for name in ctx.used:
        cols = [c for c in window.columns if c.startswith(f"ctx_{name}_")]
        block = window[cols].to_numpy(dtype="float64")
        if not np.isfinite(block).all():
            first = int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            at = bars["ts"].iloc[warmup + first].isoformat()
            notes.append(f"{symbol}/{timeframe}: context {name} undefined at {at}: trained without it")
            window = window.drop(columns=cols)
            used.remove(name)
    return ContextResult(window, tuple(used), tuple(notes))


# ------------------------------------------------------------------------------------------------------- fit
BASELINE_NAMES = {
    "majority": "majority class of train",
    "persistence": "last fully known label (t - h)",
    "prior": "class mix of train, as probabilities",
}


def evaluate(
    fit: EnsembleFit, prep: PreparedPair, settings: FitSettings
) -> tuple[dict[str, Any], dict[str, SlicePredictions]]:
    """Scores on valid and test for each model, the fitted and the equal-weight blend, and the baselines.

    Returns (metrics, the predictions per part). Valid scores of the ensemble are in-sample for its
    calibration and weights; test scores are out-of-sample for everything.
    """

    s = prep.split
    h = prep.spec.horizon_bars
    parts = {"valid": s.valid, "test": s.test}
    preds = {
        part: slice_predictions(fit, part, rows, prep.codes, prep.returns, h) for part, rows in parts.items()
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
    out["prior"]["class_mix"] = [float(v) for v in fit.prior]
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
    test = preds["test"]
    metrics["charts"] = chart_data(
        prep, fit.models, fit.weights, test.probas["ensemble"], test.preds["ensemble"], settings
    )
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
        timings=timings,
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


# --------------------------------------------------------------------------------------------------- persist
# The exact versions (with hashes) the install came from; the dev lock pins the same runtime versions.
LOCK_FILE = Path(__file__).resolve().parents[3] / "requirements.lock"


@cache
def lock_sha256() -> str | None:
    """sha256 of requirements.lock, so a bundle names the environment that can load it; None without the file."""
    try:
        return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()
    except OSError:
        return None


def build_bundle(
    prep: PreparedPair,
    fitted: FittedPair,
    *,
    run_id: str,
    trained_at: datetime,
    versions: dict[str, str],
) -> dict[str, Any]:
    """The artifact's contents: the fitted models and everything needed to use and audit them."""
    req = prep.request
    return {
        "symbol": req.symbol,
        "timeframe": req.timeframe,
        "run_id": run_id,
        "trained_at": trained_at.isoformat(),
        "models": fitted.models,
        "weights": fitted.weights,
        "classes": list(CLASSES),
        "feature_names": list(prep.feature_names),
        "feature_version": prep.feature_version,
        "context": {"symbols": list(prep.context), "notes": list(prep.notes)},
        "timeframe_settings": prep.spec.model_dump(),
        "thresholds": prep.thresholds.to_dict(),
        "split": prep.split_info,
        "metrics": fitted.metrics,
        "library_versions": versions,
        "lock_sha256": lock_sha256(),
        # plain data, so the bundle still loads without this package (ensemble.EnsembleModel applies them)
        **fitted.bundle_extras,
    }


def persist_pair(
    store: TrainingStore,
    prep: PreparedPair,
    fitted: PackedFit,
    *,
    run_id: str,
    models_dir: Path,
    duration_s: float,
    promotion: PromotionDecision | None = None,
    artifact_key: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> PairResult:
    """Write the packed artifact, then the result row and model version together; no row without its artifact.

    The champion pointer moves (if `promotion` says so) in the same store transaction, after the artifact is
    on disk. The ledger gets the path relative to `models_dir` (and, with a key, the artifact's signature,
    computed here: the key never reaches a worker). If recording fails, the store is read back before anything
    is deleted: a write whose reply was lost after it committed is a success, and an artifact is only deleted
    when its row is known to be absent.
    """
    req = prep.request
    t0 = time.perf_counter()
    trained_at = fitted.trained_at
    path = artifacts.artifact_path(models_dir, req.symbol, req.timeframe, run_id, trained_at)
    identity = artifacts.ArtifactIdentity(req.symbol, req.timeframe, run_id)
    saved = artifacts.save_artifact_bytes(fitted.artifact, models_dir, path, artifact_key, identity)
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
        feature_version=prep.feature_version,
        trained_at=trained_at,
        weights=fitted.weights,
        metrics={k: fitted.metrics[k] for k in ("ensemble", "majority", "persistence", "prior", "verdict")},
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
    latest = store.read_bars(req.symbol, req.timeframe, end=read_end(req.as_of), limit=1)
    if latest.empty or latest["ts"].iloc[-1] > pd.Timestamp(last.data_end):
        return None
    bar = latest["ts"].iloc[-1].isoformat()
    trained_to = pd.Timestamp(last.data_end).isoformat()
    if req.as_of is not None and latest["ts"].iloc[-1] < pd.Timestamp(last.data_end):
        # --as-of in the past, after a later training: say that this is why, and how to train as of it anyway
        return (
            f"no new bars up to --as-of {req.as_of.isoformat()} (latest {bar}): the pair's latest model was "
            f"trained on bars up to {trained_to}; --force to train as of {req.as_of.isoformat()} anyway"
        )
    return f"no new bars (latest {bar} already trained on; --force to retrain)"
