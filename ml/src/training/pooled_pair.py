"""Models that learn across symbols, in the job (ML_POOLED_MODELS, issue 20 item 3): a pair's pooled candidate
and the choice between it and the pair's local model.

The pooled candidate of a pair is fitted on the pair's own train rows plus every other pair of the timeframe's
rows whose label was fully known (its h-bar future closed) by the time the pair's last train label was
(pooled.pooled_training_rows): nothing of the pair's valid or test period, from any pair, is learnt from. Its
calibration and weights come from the pair's own valid rows, and it is scored on the pair's own test rows and
walk-forward blocks (pooled.pooled_walk_forward), with the pair's own labels and baselines. Where the pairs of a
timeframe share a calendar the pooled rows are the same for all of them: one pooled model per timeframe,
calibrated per pair.

Local is the incumbent: the pooled candidate is the pair's model only when it beats the local one on the rows
both predicted out of sample (walk-forward blocks and test slice) by the promotion gate's paired rule
(registry.promotion_rule: difference > promotion_z block standard errors, and both baselines beaten). The
choice, with both scores, is `metrics.pooling` in the ledger and in the bundle; the chosen model then meets the
champion at the gate like any challenger.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from config.settings import FitSettings
from ml.src.training.metrics import majority_class
from ml.src.training.pair_fit import evaluate, finish_fit, fit_pair
from ml.src.training.pair_state import FittedPair, PreparedPair
from ml.src.training.pooled import (
    PoolMember,
    own_baselines,
    pooled_training_rows,
    pooled_walk_forward,
)
from ml.src.training.scoring import SlicePredictions, concat, score_slice, slice_predictions

Scope = Literal["local", "pooled"]


def pool_member(prep: PreparedPair) -> PoolMember:
    """What another pair's pooled fit may learn from this pair (pooled_training_rows keeps its known rows)."""
    req = prep.request
    return PoolMember(
        label=f"{req.symbol}/{req.timeframe}",
        x=prep.x,
        returns=prep.returns,
        ts=prep.ts,
        horizon=prep.spec.horizon_bars,
        threshold=prep.spec.threshold,
        scale=prep.scale,
    )


def pool_peers(prep: PreparedPair, prepared: list[PreparedPair]) -> list[PoolMember]:
    """The other pairs of `prep`'s timeframe whose columns are the same (a context symbol one pair lacks makes
    other columns: that pair is not pooled with it)."""
    tf = prep.request.timeframe
    return [
        pool_member(p)
        for p in prepared
        if p is not prep
        and p.request.timeframe == tf
        and p.request.symbol != prep.request.symbol
        and tuple(p.feature_names) == tuple(prep.feature_names)
    ]


@dataclass(frozen=True)
class PoolingChoice:
    """Local vs pooled for one pair: which one the pair keeps, and the paired evidence for it."""

    selected: Scope
    reason: str
    metric: str
    peers: dict[str, int] = field(default_factory=dict)  # other pair -> its rows the pooled fit learnt from
    n_rows: int = 0  # rows both candidates predicted out of sample
    window: dict[str, Any] | None = None
    local: float | None = None  # the metric on those rows
    pooled: float | None = None
    difference: float | None = None  # pooled - local
    std_error: float | None = None
    z: float | None = None
    log_loss: dict[str, float] = field(default_factory=dict)  # local, pooled, prior (the pair's train mix)
    baselines: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_pooled_pair(
    prep: PreparedPair, peers: list[PoolMember], settings: FitSettings, n_threads: int = 1
) -> tuple[FittedPair, dict[str, int]]:
    """The pair's pooled candidate, scored like fit_pair scores the local one (same rows, labels, baselines).

    Returns it with the rows each peer gave its main fit. Raises ValueError when there is nothing to pool or
    a class is missing."""
    from ml.src.training.models import fit_ensemble

    s = prep.split
    h = prep.spec.horizon_bars
    if s.train.start != 0:
        raise ValueError("the pooled fit expects the train slice to start at the first row")
    cutoff = pd.Timestamp(prep.ts.iloc[s.train.stop - 1 + h])  # when the pair's last train label was known
    x_other, codes_other, used = pooled_training_rows(peers, cutoff, settings)
    if not used:
        raise ValueError(
            f"no other pair has {settings.min_rows_per_split} rows known by {cutoff.isoformat()}"
        )
    n_o = len(codes_other)
    x = np.vstack([x_other, prep.x])
    codes = np.concatenate([codes_other, prep.codes])
    returns = np.concatenate([np.full(n_o, np.nan), prep.returns])

    def shifted(rows: slice) -> slice:
        return slice(rows.start + n_o, rows.stop + n_o)

    fit = fit_ensemble(
        x,
        codes,
        slice(0, n_o + s.train.stop),
        shifted(s.valid),
        {"test": shifted(s.test)},
        settings,
        purge=h,
        n_threads=n_threads,
    )
    own_train = prep.codes[s.train]
    preds = {
        part: own_baselines(slice_predictions(fit, part, shifted(rows), codes, returns, h), n_o, own_train)
        for part, rows in (("valid", s.valid), ("test", s.test))
    }
    t0 = time.perf_counter()
    metrics, preds = evaluate(fit, prep, settings, preds=preds)
    fit.timings["evaluate"] = time.perf_counter() - t0
    wf, oos = None, None
    if settings.walk_forward_folds > 0:
        t0 = time.perf_counter()
        wf, oos = pooled_walk_forward_report(prep, peers, settings)
        fit.timings["walk_forward"] = time.perf_counter() - t0
    fitted = finish_fit(prep, settings, fit, metrics, preds, wf, oos)
    return fitted, {label: int(info["rows"]) for label, info in used.items()}


def pooled_walk_forward_report(
    prep: PreparedPair, peers: list[PoolMember], settings: FitSettings
) -> tuple[dict[str, Any], SlicePredictions | None]:
    """The pooled candidate's walk-forward: walk_forward's blocks, each fitted on the pooled rows known by the
    fold's last fit label; the same report shape as the local walk-forward's."""
    from ml.src.training.walk_forward import FOLD_KEYS, summarise

    h = prep.spec.horizon_bars
    try:
        blocks, info = pooled_walk_forward(pool_member(prep), peers, settings.walk_forward_folds, settings)
    except ValueError as exc:
        return {"error": str(exc), "folds": [], "summary": {}}, None
    folds: list[dict[str, Any]] = []
    ok = iter(blocks)
    for k, meta in enumerate(info):
        fold: dict[str, Any] = {"fold": k, **meta}
        if "error" not in meta:
            sp = next(ok)
            fold["test_start"] = prep.ts.iloc[int(sp.rows[0])].isoformat()
            fold["test_end"] = prep.ts.iloc[int(sp.rows[-1])].isoformat()
            fold["metrics"] = {
                name: {key: m.get(key) for key in FOLD_KEYS if key in m}
                for name, m in score_slice(sp, horizon=h).items()
            }
        folds.append(fold)
    return {"folds": folds, "summary": summarise(folds)}, (concat(blocks) if blocks else None)


def out_of_sample_rows(fitted: FittedPair, prep: PreparedPair) -> SlicePredictions:
    """A candidate's out-of-sample predictions by row: walk-forward blocks before the test slice, then the test
    slice (the promotion gate's challenger rows)."""
    from ml.src.training.registry import challenger_rows

    return challenger_rows(fitted, prep)


def choose_scope(
    prep: PreparedPair,
    local: FittedPair,
    pooled: FittedPair,
    settings: FitSettings,
    peers: dict[str, int],
) -> PoolingChoice:
    """Local unless the pooled candidate wins on the rows both predicted out of sample, by the gate's rule."""
    from ml.src.training.metrics import log_loss_rows
    from ml.src.training.registry import promotion_rule, row_scores
    from ml.src.training.stats import block_length

    metric = settings.promotion_metric
    h = prep.spec.horizon_bars
    a, b = out_of_sample_rows(local, prep), out_of_sample_rows(pooled, prep)
    rows = np.intersect1d(a.rows, b.rows)
    if rows.size < settings.min_rows_per_split:
        return PoolingChoice(
            "local", f"only {rows.size} rows predicted by both: too few to compare; local kept", metric, peers
        )
    a, b = a.take(np.isin(a.rows, rows)), b.take(np.isin(b.rows, rows))
    y = prep.codes[rows]  # one truth for both, as at the gate: this run's labels
    local_rows = row_scores(metric, y, a.preds["ensemble"])
    pooled_rows = row_scores(metric, y, b.preds["ensemble"])
    major = majority_class(prep.codes[prep.split.train])
    baselines = {
        "majority": row_scores(metric, y, np.full(rows.size, major)),
        "persistence": row_scores(metric, y, prep.codes[rows - h]),
    }
    promote, why, d = promotion_rule(
        pooled_rows,
        local_rows,
        baselines,
        block=block_length(h),
        z=settings.promotion_z,
        baseline_margin=settings.promotion_baseline_margin,
    )
    prior = np.bincount(prep.codes[prep.split.train], minlength=3).astype("float64")
    prior /= prior.sum()
    losses = {
        "local": float(log_loss_rows(y, a.probas["ensemble"]).mean()),
        "pooled": float(log_loss_rows(y, b.probas["ensemble"]).mean()),
        "prior": float(log_loss_rows(y, np.tile(prior, (rows.size, 1))).mean()),
    }
    lv, pv = float(local_rows.sum()), float(pooled_rows.sum())
    return PoolingChoice(
        "pooled" if promote else "local",
        f"{metric} pooled {pv:.4f} vs local {lv:.4f}: {why.replace('champion', 'local')}",
        metric,
        peers,
        n_rows=int(rows.size),
        window={
            "start": prep.ts.iloc[int(rows[0])].isoformat(),
            "end": prep.ts.iloc[int(rows[-1])].isoformat(),
            "walk_forward_rows": int((rows < prep.split.test.start).sum()),
        },
        local=lv,
        pooled=pv,
        difference=d.diff,
        std_error=d.se,
        z=settings.promotion_z,
        log_loss=losses,
        baselines={k: float(v.sum()) for k, v in baselines.items()},
    )


def fit_pair_local_or_pooled(
    prep: PreparedPair, peers: list[PoolMember], settings: FitSettings, n_threads: int = 1
) -> FittedPair:
    """Fit the local model and, with peers, the pooled candidate; keep the one choose_scope picks. The choice
    is `metrics.pooling` (and the bundle's `pooling`) whichever wins."""
    local = fit_pair(prep, settings, n_threads=n_threads)
    if not peers:
        choice = PoolingChoice(
            "local", "no other pair of the timeframe with the same columns", settings.promotion_metric
        )
        return _with_choice(local, choice)
    try:
        pooled, used = fit_pooled_pair(prep, peers, settings, n_threads=n_threads)
    except ValueError as exc:
        choice = PoolingChoice("local", f"no pooled candidate: {exc}", settings.promotion_metric)
        return _with_choice(local, choice)
    choice = choose_scope(prep, local, pooled, settings, used)
    winner = pooled if choice.selected == "pooled" else local
    # the time of both fits is what the pair cost
    for key, value in (pooled.timings if winner is local else local.timings).items():
        winner.timings[f"{'pooled' if winner is local else 'local'}_{key}"] = value
    return _with_choice(winner, choice)


def _with_choice(fitted: FittedPair, choice: PoolingChoice) -> FittedPair:
    fitted.metrics["pooling"] = choice.to_dict()
    fitted.bundle_extras["pooling"] = {"selected": choice.selected, "peers": dict(choice.peers)}
    return fitted
