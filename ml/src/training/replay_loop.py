"""The replay's walk over one pair's history, exactly as the nightly loop would have run it.

For the pair's last N bars, in time order:

* retrain points are the first replayed bar and every K-th bar after it (anchored on the first replayed bar, so a
  store that ends earlier has the same points for the bars both cover);
* at a retrain point t the job's own training runs on the bars known at t's close: the last `target_bars` bars up
  to t (plus the warm-up), labelled, split, fitted, calibrated and weighted by pipeline.label_window and
  pipeline.fit_pair, the functions the training job uses;
* the promotion gate (registry.compare_on_window, with the registry's first-version and max-age rules judged at
  t's time) decides between that model and the replay's champion of that moment;
* every bar from t to the next retrain point is forecast by the champion after that decision (a nightly run
  trains at the close, then forecasts the bar it just trained through), with the bundle's decision rule, as
  ml.src.inference.forecast does;
* each forecast's outcome is close[t + h] / close[t] - 1 of the stored bars, labelled with the forecasting model's
  thresholds, as ml.src.training.outcomes fills it (a bar the training checks refuse realises nothing).

Features are computed once per pair over all its bars: they are causal and prefix-invariant (test_feature_cache),
so the window of a retrain point reads exactly the rows a run as of that bar would compute. Fits do not depend
on the champion, so they run on the executor (pool or Dask) ahead of the gate, which walks them in order. No
artifact is written and no live champion is read or moved: the replay's models live in this process only.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pandas as pd

from config.settings import Settings, TimeframeSpec
from ml.src.data.bar_checks import bar_problems
from ml.src.data.store import TrainingStore
from ml.src.features.feature_cache import FeatureError, cache_in_use, features_for_window
from ml.src.features.technical_indicators import FEATURE_COLUMNS
from ml.src.training.artifacts import ensemble_from_bundle
from ml.src.training.ensemble import EnsembleModel
from ml.src.training.executors import PairExecutor
from ml.src.training.labels import CLASS_CODES, CLASSES
from ml.src.training.metrics import hit_rate, label_metrics, log_loss_rows
from ml.src.training.outcomes import realised_label
from ml.src.training.pair_result import PairRequest
from ml.src.training.pipeline import (
    FittedPair,
    NotEnoughHistory,
    PairFailure,
    PairSkipped,
    PreparedPair,
    build_bundle,
    check_bars,
    label_window,
    library_versions,
    read_end,
    required_bars,
    warmup_bars,
)
from ml.src.training.registry import compare_on_window
from ml.src.training.replay_record import (
    PairReplay,
    ReplayForecast,
    ReplayScores,
    RetrainStep,
)
from ml.src.training.stats import block_length, ic_with_pvalue
from ml.src.training.trading_metrics import trading_metrics
from ml.src.training.verdict import judge_replay

log = logging.getLogger("ml.replay")

TRADING_DAYS_PER_YEAR = 252
WEEKS_PER_YEAR = 52


def default_retrain_every(settings: Settings, timeframe: str) -> int:
    """Bars between two trainings of the pair under the schedule: a timeframe of the daily group trains once per
    trading day (d1: every bar; h1: every 7 bars), one of the weekly group once a week (w1: every bar). A
    timeframe in neither group is retrained when its champion would expire (max_model_age_days, in bars)."""
    spec = settings.timeframes[timeframe]
    if timeframe in settings.schedule_daily_timeframes:
        per_run = spec.bars_per_year / TRADING_DAYS_PER_YEAR
    elif timeframe in settings.schedule_weekly_timeframes:
        per_run = spec.bars_per_year / WEEKS_PER_YEAR
    else:
        per_run = spec.bars_per_year / 365.25 * spec.max_model_age_days
    return max(1, round(per_run))


def retrain_points(n_bars: int, last: int, every: int) -> list[int]:
    """Bar indices of the retrain points: the first replayed bar (n_bars - last) and every `every`-th after it."""
    first = max(0, n_bars - last)
    return list(range(first, n_bars, max(1, every)))


@dataclass(frozen=True)
class ReplayPlan:
    symbol: str
    timeframe: str
    last: int
    retrain_every: int
    explicit: bool = True


@dataclass
class PairSeries:
    """A pair's bars and their features, computed once: `frame` row j is bar j + warmup."""

    bars: pd.DataFrame
    frame: pd.DataFrame
    x: np.ndarray
    warmup: int
    revision: int | None
    refused: np.ndarray  # per bar: the training checks refuse it (realises no outcome)


def load_series(store: TrainingStore, settings: Settings, plan: ReplayPlan) -> PairSeries:
    """The pair's bars closed by now, from the first retrain window's first bar on, and the features of every
    bar after the warm-up (via the feature cache, as training reads them)."""
    label = f"{plan.symbol}/{plan.timeframe}"
    spec = settings.timeframes[plan.timeframe]
    warmup = warmup_bars(spec)
    revision = store.bar_revision(plan.symbol, plan.timeframe)  # before the bars, as in training
    # only what the first retrain window needs before the first replayed bar: the features are prefix-invariant,
    # so a longer read would give the same rows at more cost
    bars = store.read_bars(
        plan.symbol, plan.timeframe, end=read_end(None), limit=plan.last + spec.target_bars + warmup
    )
    if bars.empty:
        raise NotEnoughHistory(f"{label}: no bars in the {store.name} store")
    if len(bars) <= warmup:
        raise PairSkipped(f"{label}: insufficient history: {len(bars)} bars, needs more than {warmup}")
    try:
        feats = features_for_window(
            store,
            plan.symbol,
            plan.timeframe,
            bars,
            warmup,
            revision=revision,
            use_cache=cache_in_use(settings.feature_cache, revision),
        )
    except FeatureError as exc:
        raise PairFailure(str(exc)) from exc
    frame = feats.frame
    return PairSeries(
        bars=bars,
        frame=frame,
        x=frame.loc[:, list(FEATURE_COLUMNS)].to_numpy(dtype="float64"),
        warmup=warmup,
        revision=revision,
        refused=np.array([p is not None for p in bar_problems(bars)], dtype=bool),
    )


def prepare_at(series: PairSeries, plan: ReplayPlan, t: int, settings: Settings) -> PreparedPair:
    """The prepared pair a training run as of bar t would build (prepare_pair's window, from the features
    computed once)."""
    spec = settings.timeframes[plan.timeframe]
    label = f"{plan.symbol}/{plan.timeframe}"
    w0 = max(0, t + 1 - spec.target_bars - series.warmup)
    window = series.bars.iloc[w0 : t + 1]
    check_bars(window, label, spec)
    need, how = required_bars(spec, settings)
    if len(window) < need:
        raise PairSkipped(f"{label}: insufficient history: {len(window)} bars, needs {need} ({how})")
    frame = series.frame.iloc[w0 : t + 1 - series.warmup]
    bar_ts = series.bars["ts"].iloc[t]
    req = PairRequest(plan.symbol, plan.timeframe, as_of=bar_ts.to_pydatetime(), explicit=plan.explicit)
    prep = label_window(req, spec, frame, settings, data_end=bar_ts, revision=series.revision)
    prep.n_bars = len(window)
    return prep


def fit_retrain(prep: PreparedPair, settings: Settings) -> FittedPair:
    """The unit of work shipped to a worker: the training job's fit of one window (one thread)."""
    from ml.src.training import pipeline

    return pipeline.fit_pair(prep, settings, n_threads=1)


def replay_model(prep: PreparedPair, fitted: FittedPair, replay_id: str) -> EnsembleModel:
    """The model exactly as the job would save it (build_bundle), without writing it anywhere."""
    trained_at = pd.Timestamp(prep.split_info["data_end"]).to_pydatetime()
    bundle = build_bundle(prep, fitted, run_id=replay_id, trained_at=trained_at, versions=library_versions())
    return ensemble_from_bundle(bundle)


@dataclass
class Champion:
    model: EnsembleModel
    trained_through: pd.Timestamp


def gate(
    champion: Champion | None,
    prep: PreparedPair,
    fitted: FittedPair,
    settings: Settings,
    at: pd.Timestamp,
) -> tuple[bool, str]:
    """The registry's decision at bar time `at`: first version, an expired champion (older than
    max_model_age_days at `at`), else the paired comparison on the rows neither model trained on."""
    if champion is None:
        return True, "first version of the pair"
    max_age = timedelta(days=prep.spec.max_model_age_days)
    if at - champion.trained_through > max_age:
        return True, "current champion is older than max_model_age_days"
    decision = compare_on_window(champion.model, prep, fitted, settings)
    return decision.promote, decision.reason


def segment_forecasts(
    series: PairSeries, champion: Champion, start: int, stop: int, h: int
) -> list[ReplayForecast]:
    """Forecasts of bars start..stop-1 by one champion, with the bundle's decision rule, and their outcomes."""
    model = champion.model
    x = series.x[start - series.warmup : stop - series.warmup]
    proba = model.predict_proba(x)
    codes = model.decide(proba)
    thresholds = model.metadata.get("thresholds") or {}
    lower, upper = thresholds.get("lower"), thresholds.get("upper")
    close = series.bars["close"].to_numpy(dtype="float64")
    ts = series.bars["ts"]
    n = len(close)
    out: list[ReplayForecast] = []
    for k, t in enumerate(range(start, stop)):
        p = {name: float(v) for name, v in zip(model.classes, proba[k], strict=True)}
        persistence = realised_label(float(close[t] / close[t - h] - 1.0), lower, upper) if t >= h else None
        ret: float | None = None
        realised: str | None = None
        if t + h < n and not series.refused[t] and not series.refused[t + h]:
            ret = float(close[t + h] / close[t] - 1.0)
            realised = realised_label(ret, lower, upper)
        out.append(
            ReplayForecast(
                bar_ts=ts.iloc[t].to_pydatetime(),
                trained_through=champion.trained_through.to_pydatetime(),
                p_bearish=p["BEARISH"],
                p_neutral=p["NEUTRAL"],
                p_bullish=p["BULLISH"],
                label=model.classes[int(codes[k])],
                bar_close=float(close[t]),
                threshold_lower=lower,
                threshold_upper=upper,
                persistence_label=persistence,
                realised_return=ret,
                realised_label=realised,
            )
        )
    return out


def score_record(
    forecasts: Sequence[ReplayForecast],
    priors: Sequence[np.ndarray],
    spec: TimeframeSpec,
    settings: Settings,
) -> ReplayScores:
    """The replay's record over the realised forecasts (see ReplayScores); `priors[i]` is the forecasting
    model's training class mix for forecast i (its decision reference, the prior baseline)."""
    rows = [i for i, f in enumerate(forecasts) if f.realised_label is not None]
    h = spec.horizon_bars
    if not rows:
        return ReplayScores(0, None, 0, None, None, None, None, None, None, None, None, None)
    done = [forecasts[i] for i in rows]
    y = np.array([CLASS_CODES[f.realised_label or ""] for f in done])
    pred = np.array([CLASS_CODES[f.label] for f in done])
    proba = np.array([[f.p_bearish, f.p_neutral, f.p_bullish] for f in done])
    prior = np.array([priors[i] for i in rows])
    ret = np.array([f.realised_return for f in done], dtype="float64")
    persistence = np.array([CLASS_CODES[f.persistence_label] if f.persistence_label else -1 for f in done])
    majority = prior.argmax(axis=1)  # metrics.decide sends the prior to its majority class
    hr, hr_rows = hit_rate(y, pred)
    ic, ic_p = ic_with_pvalue(
        proba[:, 2] - proba[:, 0],
        ret,
        block_length(h),
        n_perm=settings.ic_permutations,
        seed=settings.random_state,
    )
    trade = trading_metrics(
        pred,
        ret,
        horizon=h,
        bars_per_year=spec.bars_per_year,
        fee_bps=settings.trading_fee_bps,
        slippage_bps=settings.trading_slippage_bps,
        allow_short=settings.trading_allow_short,
    )
    return ReplayScores(
        n=len(rows),
        hit_rate=hr,
        hit_rows=hr_rows,
        balanced_accuracy=label_metrics(y, pred)["balanced_accuracy"],
        log_loss=float(log_loss_rows(y, proba).mean()),
        prior_log_loss=float(log_loss_rows(y, prior).mean()),
        ic=ic,
        ic_p_value=ic_p,
        persistence_balanced_accuracy=(
            label_metrics(y, persistence)["balanced_accuracy"] if (persistence >= 0).all() else None
        ),
        majority_balanced_accuracy=label_metrics(y, majority)["balanced_accuracy"],
        net_sharpe=trade.net.sharpe,
        buy_and_hold_net_sharpe=trade.buy_and_hold.net.sharpe,
        net_total_return=trade.net.total_return,
        buy_and_hold_net_total_return=trade.buy_and_hold.net.total_return,
    )


@dataclass
class _PairState:
    plan: ReplayPlan
    result: PairReplay
    series: PairSeries | None = None
    points: list[int] = field(default_factory=list)
    champion: Champion | None = None
    priors: list[np.ndarray] = field(default_factory=list)
    t0: float = 0.0
    cpu0: float = 0.0


@dataclass
class _Task:
    state: _PairState
    index: int  # position among the pair's retrain points
    prep: PreparedPair | None
    error: Exception | None
    future: Future[FittedPair] | None = None


def _tasks(
    store: TrainingStore, settings: Settings, states: Sequence[_PairState]
) -> Iterator[_Task | _PairState]:
    """Per pair: its series (read and featurised once), then one task per retrain point; a pair that cannot
    start is yielded as its own (finished) state."""
    for state in states:
        plan = state.plan
        state.t0, state.cpu0 = time.perf_counter(), time.process_time()
        try:
            state.series = load_series(store, settings, plan)
        except (PairFailure, PairSkipped) as exc:
            skip = isinstance(exc, PairSkipped) or (isinstance(exc, NotEnoughHistory) and not plan.explicit)
            state.result.status, state.result.error = ("skipped" if skip else "failed"), str(exc)
            yield state
            continue
        n = len(state.series.bars)
        state.points = retrain_points(n, plan.last, plan.retrain_every)
        for k, t in enumerate(state.points):
            try:
                prep: PreparedPair | None = prepare_at(state.series, plan, t, settings)
                error: Exception | None = None
            except (PairFailure, PairSkipped) as exc:
                prep, error = None, exc
            if k == 0 and error is not None:
                first = state.series.bars["ts"].iloc[t].isoformat()
                state.result.status = "failed" if plan.explicit else "skipped"
                state.result.error = (
                    f"cannot train at the first replayed bar ({first}): {error}; replay fewer bars (--last)"
                )
                yield state
                break
            yield _Task(state, k, prep, error)


def _finish_pair(state: _PairState, settings: Settings) -> None:
    r = state.result
    spec = settings.timeframes[state.plan.timeframe]
    if r.forecasts:
        r.first_bar_ts, r.last_bar_ts = r.forecasts[0].bar_ts, r.forecasts[-1].bar_ts
        r.n_forecasts = len(r.forecasts)
        r.n_realised = sum(f.realised_label is not None for f in r.forecasts)
        r.record = score_record(r.forecasts, state.priors, spec, settings)
        # the pair's verdict on its own rows; its q-value comes across the replay's pairs (run_replay). No
        # replay_id in it: the replay is the record's own (a job's verdict on these rows names it)
        verdict = judge_replay(
            [f.to_json() for f in r.forecasts],
            state.priors,
            horizon=spec.horizon_bars,
            z=settings.verdict_z,
            fdr=settings.verdict_fdr,
        )
        r.verdict = verdict.to_dict() if verdict is not None else None
    r.duration_s = time.perf_counter() - state.t0
    r.cpu_s = time.process_time() - state.cpu0


def _consume(
    task: _Task, fitted: FittedPair | None, error: Exception | None, settings: Settings, replay_id: str
) -> None:
    """The gate, then the forecasts of the bars up to the next retrain point."""
    state = task.state
    series = state.series
    assert series is not None
    r = state.result
    t = state.points[task.index]
    at = series.bars["ts"].iloc[t]
    if fitted is None or task.prep is None:
        r.failed_retrains += 1
        r.steps.append(RetrainStep(at.to_pydatetime(), "failed", str(error)))
    else:
        r.retrains += 1
        promote, reason = gate(state.champion, task.prep, fitted, settings, at)
        step_prior: tuple[float, ...] | None = None
        if promote:
            r.promotions += 1
            state.champion = Champion(replay_model(task.prep, fitted, replay_id), at)
            step_prior = tuple(float(x) for x in _prior(state.champion))
        r.steps.append(RetrainStep(at.to_pydatetime(), "promoted" if promote else "kept", reason, step_prior))
    stop = state.points[task.index + 1] if task.index + 1 < len(state.points) else len(series.bars)
    if state.champion is None:
        return
    h = settings.timeframes[state.plan.timeframe].horizon_bars
    made = segment_forecasts(series, state.champion, t, stop, h)
    prior = _prior(state.champion)
    r.forecasts.extend(made)
    state.priors.extend([prior] * len(made))


def _prior(champion: Champion) -> np.ndarray:
    """The champion's training class mix: the prior (and majority) baseline of its forecasts."""
    return np.asarray(
        (champion.model.metadata.get("decision") or {}).get("prior") or [1 / len(CLASSES)] * len(CLASSES),
        dtype="float64",
    )


def replay_pairs(
    store: TrainingStore,
    settings: Settings,
    plans: Sequence[ReplayPlan],
    *,
    executor: PairExecutor,
    replay_id: str,
    on_pair: Callable[[PairReplay], None] | None = None,
) -> list[PairReplay]:
    """Replay every planned pair; the fits of all pairs flow through `executor` (at most twice its slots in
    flight), the gates and forecasts run here in each pair's time order. `on_pair` gets each finished pair."""
    fit_settings = settings.fit  # what travels to the workers: the fit group only, no secret
    states = [
        _PairState(
            plan=p,
            result=PairReplay(
                symbol=p.symbol,
                timeframe=p.timeframe,
                status="succeeded",
                retrain_every=p.retrain_every,
                horizon_bars=settings.timeframes[p.timeframe].horizon_bars,
            ),
        )
        for p in plans
    ]
    ahead = max(1, 2 * executor.slots)
    pending: deque[_Task | _PairState] = deque()
    source = _tasks(store, settings, states)

    def finish(state: _PairState) -> None:
        _finish_pair(state, settings)
        if on_pair is not None:
            on_pair(state.result)

    def fill() -> None:
        while sum(isinstance(p, _Task) for p in pending) < ahead:
            item = next(source, None)
            if item is None:
                return
            if isinstance(item, _Task) and item.prep is not None:
                label = f"{item.state.plan.symbol}/{item.state.plan.timeframe}#{item.index}"
                item.future = executor.submit(fit_retrain, item.prep, fit_settings, key=label)
            pending.append(item)

    fill()
    while pending:
        item = pending.popleft()
        if isinstance(item, _PairState):  # a pair that could not start
            finish(item)
        else:
            fitted: FittedPair | None = None
            error: Exception | None = item.error
            if item.future is not None:
                try:
                    fitted = item.future.result()
                except Exception as exc:  # the job records a failed fit as the pair's failure: champion kept
                    error = exc
            _consume(item, fitted, error, settings, replay_id)
            item.prep = None  # the window's arrays are no longer needed
            if item.index == len(item.state.points) - 1:
                finish(item.state)
        fill()
    return [s.result for s in states]


__all__ = [
    "PairSeries",
    "ReplayPlan",
    "default_retrain_every",
    "gate",
    "load_series",
    "prepare_at",
    "replay_pairs",
    "retrain_points",
    "score_record",
    "segment_forecasts",
]
