"""The replay: the nightly loop re-run over each pair's last N bars, with its record.

    python -m ml.src.training.replay --pairs GOOG:d1 --last 250 --retrain-every 21 --json   (ml.src.cli.replay)

For each pair it walks the last N bars in time order as the nightly loop would have run (replay_loop): retrain
every K bars on the bars known then, the promotion gate against the replay's champion of that moment, a forecast
at every bar by that champion, and each forecast's realised outcome from the bars. The forecasts and the record
go to the store's replay tables (ml_replays, ml_replay_pairs, ml_replay_forecasts; the `replay_performance`
view in Postgres), apart from the live record: a replay never creates, promotes or retires a live champion and
writes no model artifact.
"""

from __future__ import annotations

import logging
import sys
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from config.settings import Settings
    from ml.src.data.store import TrainingStore
    from ml.src.training.replay_loop import ReplayPlan
    from ml.src.training.replay_record import PairReplay, ReplayReport

log = logging.getLogger("ml.replay")


def run_replay(
    store: TrainingStore,
    settings: Settings,
    plans: list[ReplayPlan],
    *,
    unplanned: list[PairReplay] | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    scope: dict[str, Any] | None = None,
) -> ReplayReport:
    """Replay the planned pairs, store each finished pair (one transaction each) and the replay's status."""
    from datetime import UTC, datetime

    from ml.src.training.executors import InProcessExecutor, ProcessPoolPairExecutor, worker_count
    from ml.src.training.replay_loop import replay_pairs
    from ml.src.training.replay_record import ReplayReport

    replay_id = str(uuid.uuid4())
    report = ReplayReport(replay_id=replay_id, started_at=datetime.now(UTC))
    config = {
        "last": plans[0].last if plans else None,
        "retrain_every": {f"{p.symbol}/{p.timeframe}": p.retrain_every for p in plans},
        "settings": {
            k: v for k, v in settings.model_dump(mode="json").items() if "key" not in k and "url" not in k
        },
    }
    store.start_replay(replay_id, report.started_at, config, scope or {})
    report.pairs.extend(unplanned or [])
    for p in unplanned or []:
        store.record_replay_pair(replay_id, p)
    n_fits = sum(max(1, -(-p.last // p.retrain_every)) for p in plans)
    address = dask_address or settings.dask_address
    if address:
        from ml.src.training.dask_executor import DaskPairExecutor

        executor: Any = DaskPairExecutor(address, settings)
    else:
        n = worker_count(settings, workers, n_fits)
        executor = ProcessPoolPairExecutor(n) if n > 1 else InProcessExecutor()
    report.executor = executor.describe()

    def on_pair(pair: PairReplay) -> None:
        store.record_replay_pair(replay_id, pair)
        report.pairs.append(pair)
        r = pair.record
        if pair.status == "succeeded" and r is not None:
            log.info(
                "%s/%s replayed: %d forecasts (%d realised), %d retrains, %d promotions in %.1fs; balanced "
                "accuracy %s (persistence %s), hit rate %s",
                pair.symbol,
                pair.timeframe,
                pair.n_forecasts,
                pair.n_realised,
                pair.retrains,
                pair.promotions,
                pair.duration_s,
                fmt_score(r.balanced_accuracy),
                fmt_score(r.persistence_balanced_accuracy),
                fmt_score(r.hit_rate),
            )
        else:
            log.warning("%s/%s %s: %s", pair.symbol, pair.timeframe, pair.status, pair.error)

    status_error: str | None = None
    try:
        with executor:
            replay_pairs(store, settings, plans, executor=executor, replay_id=replay_id, on_pair=on_pair)
    except KeyboardInterrupt:
        report.status, status_error = "interrupted", "interrupted"
        report.error = status_error
        store.finish_replay(replay_id, "interrupted", datetime.now(UTC), status_error)
        raise
    from ml.src.data.store import StoreError

    try:
        settle_replay_verdicts(store, report, settings.verdict_fdr)
    except (
        StoreError
    ) as exc:  # the pairs are stored; without their q-values the replay did not finish its job
        log.error("replay %s: could not record the verdicts' q-values: %s", replay_id, exc)
        report.status, report.error = "failed", f"could not record the verdicts' q-values: {exc}"
    report.finish(datetime.now(UTC))
    store.finish_replay(replay_id, report.status, report.finished_at or datetime.now(UTC), report.error)
    return report


def settle_replay_verdicts(store: TrainingStore, report: ReplayReport, fdr: float) -> int:
    """The replay's verdicts under false-discovery control once its pairs are done: Benjamini-Hochberg q-values
    across its succeeded pairs' p-values (skill needs q <= fdr), into each pair's verdict in memory (--json)
    and in the store (record.verdict, every pair or none). Returns the number of pairs settled."""
    from ml.src.training.verdict import apply_fdr_dicts

    judged = {
        (p.symbol, p.timeframe): p for p in report.pairs if p.status == "succeeded" and p.verdict is not None
    }
    if not judged:
        return 0
    settled = apply_fdr_dicts({k: p.verdict for k, p in judged.items() if p.verdict is not None}, fdr)
    for key, p in judged.items():
        p.verdict = settled[key]
    store.record_replay_verdicts(report.replay_id, settled)
    return len(settled)


def fmt_score(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    from ml.src.cli.replay import main

    sys.exit(main())
