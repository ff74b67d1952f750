"""The run loop: record a run, take its leases, train its pairs, record the outcome.

prepare (store I/O, in this process) -> fit + pack (worker.fit_task, on whatever executor the run uses: this
process, a local pool or a Dask cluster) -> persist (here). A pair that fails is recorded with a one-line reason and the others go on. Bookkeeping problems (retention,
heartbeats, sweeps, a lost reply reconciled) are recorded as the run's warnings and never stop it, and every
way out of a run (done, interrupted, a second Ctrl-C, an unexpected exception) writes its final status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from config.settings import Settings
from ml.src.common.stop import stop_requested
from ml.src.data.store import StoreError, TrainingStore
from ml.src.training.artifacts import ensure_models_dir
from ml.src.training.executors import worker_count
from ml.src.training.pair_result import PairResult
from ml.src.training.pair_scheduler import PairScheduler, one_line, train_pairs
from ml.src.training.run_report import RunReport
from ml.src.training.run_session import RunSession, finish_run, run_scope, start_run, start_sweeps
from ml.src.training.universe import PairOptions, PlannedPair, cross, named_pairs
from ml.src.training.verdict import apply_fdr_dicts, judge_replay, replay_priors

__all__ = [
    "PairScheduler",
    "RunSession",
    "finish_run",
    "run_job",
    "settle_verdicts",
    "start_run",
    "train_pairs",
    "worker_count",
]

log = logging.getLogger("ml.training")


def settle_verdicts(
    store: TrainingStore,
    results: Sequence[PairResult],
    run_id: str,
    fdr: float,
    warn: Callable[[str], None],
) -> int:
    """The run's verdicts under false-discovery control, once its pairs are done.

    First each pair's verdict moves to the densest evidence it has (densest_verdict): the rows of the pair's
    latest finished replay that ends at or before the run's data end, when there is one, else what the pair was
    judged on (walk-forward when folds ran, else the test slice).

    The Benjamini-Hochberg q-values of the succeeded pairs' p-values (apply_fdr: skill needs q <= fdr) replace
    each result's metrics.verdict in memory (what --json and the summary print) and in the ledger, all pairs in
    one store call (record_verdicts: every verdict or none). A store failure is a warning: the ledger then keeps
    the verdicts written with the pairs (q_value null, never skill). Returns the number of pairs settled.
    """
    judged = {
        (r.symbol, r.timeframe): r
        for r in results
        if r.status == "succeeded" and r.metrics and isinstance(r.metrics.get("verdict"), dict)
    }
    if not judged:
        return 0
    for r in judged.values():
        assert r.metrics is not None
        r.metrics["verdict"] = densest_verdict(store, r, r.metrics["verdict"], warn)
    settled = apply_fdr_dicts({k: r.metrics["verdict"] for k, r in judged.items() if r.metrics}, fdr)
    for key, r in judged.items():
        assert r.metrics is not None
        r.metrics["verdict"] = settled[key]
    try:
        store.record_verdicts(run_id, settled)
    except StoreError as exc:
        warn(f"could not record the run's q-values (verdicts stay as written with each pair): {exc}")
    return len(settled)


def densest_verdict(
    store: TrainingStore, result: PairResult, verdict: dict[str, Any], warn: Callable[[str], None]
) -> dict[str, Any]:
    """The pair's verdict on the densest honest evidence: the replay rows of its latest finished replay that
    covers no bar after the run's own data end (basis "replay"), else `verdict` (walk-forward or test) as it
    is. A replay with no realised row, or stored without its steps' priors, leaves `verdict` as it is; so does a
    store failure (a warning)."""
    data_end = (result.split or {}).get("data_end")
    if data_end is None or result.horizon_bars is None:
        return verdict
    try:
        latest = store.latest_replay(result.symbol, result.timeframe, through=pd.Timestamp(data_end))
    except StoreError as exc:
        warn(
            f"{result.symbol}/{result.timeframe}: could not read its latest replay (verdict on {verdict.get('basis')}): {exc}"
        )
        return verdict
    if latest is None or latest.get("horizon_bars") != result.horizon_bars:
        return verdict
    forecasts = latest["forecasts"]
    priors = replay_priors(forecasts, latest.get("steps") or [])
    if priors is None:
        return verdict
    replayed = judge_replay(
        forecasts,
        priors,
        horizon=result.horizon_bars,
        z=float(verdict["z"]),
        fdr=verdict.get("fdr"),
        replay_id=str(latest["replay_id"]),
    )
    if replayed is None:
        return verdict
    return replayed.to_dict()


def run_job(
    store: TrainingStore,
    settings: Settings,
    symbols: Sequence[str] = (),
    timeframes: Sequence[str] = (),
    *,
    pairs: Sequence[PlannedPair] | None = None,
    as_of: datetime | None = None,
    lookback_days: float | None = None,
    target_bars: int | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    force: bool = False,
    trigger: str = "manual",
    progress: Callable[[int, int, PairResult], None] | None = None,
    scope_extra: dict[str, Any] | None = None,
) -> RunReport:
    """Record a run, take the leases of its pairs, train them, release the leases, record the outcome.

    The pairs are `pairs` (see universe.py) or else every symbol x timeframe, as named pairs. The models
    directory is checked (writable) before anything is recorded or computed: ArtifactError.
    """
    options = PairOptions(as_of=as_of, lookback_days=lookback_days, target_bars=target_bars, force=force)
    planned = list(pairs) if pairs is not None else named_pairs(cross(symbols, timeframes), options)
    ensure_models_dir(settings.models_dir)
    io_start = store.io_seconds
    report = start_run(store, settings, run_scope(planned, options, scope_extra), trigger)
    session = RunSession(
        store, settings, report, planned, progress, io_start=io_start, settle_verdicts=settle_verdicts
    )
    total = len(planned)
    try:
        start_sweeps(store, settings, report.run_id, session.warn)
        to_train = [i for i, p in enumerate(planned) if p.status is None]
        if not session.acquire([planned[i].request for i in to_train]):
            return report
        session.record_decided()
        if to_train:
            session.train(to_train, workers, dask_address)
        if stop_requested():
            report.interrupted = True
            report.error = report.error or f"interrupted after {len(session.done)} of {total} pair(s)"
        session.end(status="interrupted" if report.interrupted else None)
    except KeyboardInterrupt:
        # A second Ctrl-C: stop at once, but the run row still says how it ended.
        report.interrupted = True
        error = f"aborted by a second interrupt after {len(session.done)} of {total} pair(s)"
        session.end(status="interrupted", error=error, settle=False)
        raise
    except Exception as exc:  # a bug or a store failure outside any pair: recorded, never left `running`
        log.exception("run %s failed", report.run_id)
        # the pairs that did succeed still get their q-values (among themselves)
        session.end(status="failed", error=f"run failed: {type(exc).__name__}: {one_line(exc)}")
    return report
