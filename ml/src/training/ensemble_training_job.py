"""Train one ensemble per (symbol, timeframe) and record the run.

    python -m ml.src.training.ensemble_training_job --symbol AAPL --timeframes d1 w1 --json

Exit codes: 0 every pair succeeded, 1 a pair (or the run) failed, 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from config.settings import TIMEFRAMES, Settings, get_settings, settings_error_line
from ml.src.data.load_bars import SYMBOL_RE
from ml.src.data.records import RunOutcome, RunRecord
from ml.src.data.store import StoreError, TrainingStore, open_store, unique_upper
from ml.src.training.leases import LeaseRenewer, holder_name, lease_name
from ml.src.training.pipeline import (
    FittedPair,
    PairFailure,
    PairRequest,
    PairResult,
    PreparedPair,
    failed_result,
    fit_pair,
    library_versions,
    no_new_bars_reason,
    persist_pair,
    prepare_pair,
    skipped_result,
)
from ml.src.training.registry import decide_promotion, prune_versions
from ml.src.training.run_report import RunReport, summary_table

log = logging.getLogger("ml.training")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds an overlapping lease; try again later
EXIT_INTERRUPTED = 130

_STOP = threading.Event()


def request_stop() -> None:
    """Ask the running job to finish the pair in progress and stop (SIGTERM / Ctrl-C handlers call this)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    _STOP.clear()


def install_stop_handlers() -> Callable[[], None]:
    """SIGTERM / first Ctrl-C: finish the pair in progress, then stop; a second Ctrl-C aborts at once.

    Returns a function that restores the previous handlers (only the main thread can install them).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    clear_stop()

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and stop_requested():
            raise KeyboardInterrupt
        log.warning("%s: finishing the pair in progress, then stopping", signal.Signals(signum).name)
        request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


class UsageError(ValueError):
    """Bad flags: exit code 2."""


# ------------------------------------------------------------------------------------------------- helpers
def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_as_of(text: str) -> datetime:
    try:
        ts = pd.Timestamp(text)
    except ValueError as exc:
        raise UsageError(f"--as-of {text!r} is not an ISO-8601 timestamp") from exc
    if ts is pd.NaT:
        raise UsageError(f"--as-of {text!r} is not an ISO-8601 timestamp")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def git_sha() -> str | None:
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def worker_count(settings: Settings, requested: int | None, n_pairs: int) -> int:
    n = requested if requested is not None else settings.workers
    if n <= 0:
        n = os.cpu_count() or 1
    return max(1, min(n, n_pairs))


def one_line(exc: BaseException) -> str:
    """An exception as one line for the ledger (its first line; the traceback goes to the log)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group: the parent decides (finish the pair, then stop), not the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _fit_in_worker(prep: PreparedPair, settings: Settings) -> FittedPair:
    # One thread per fit when pairs run side by side: OpenMP learners on oversubscribed cores slow down badly.
    return fit_pair(prep, settings, n_threads=1)


# ---------------------------------------------------------------------------------------------------- run
def train_pairs(
    store: TrainingStore,
    settings: Settings,
    requests: Sequence[PairRequest],
    *,
    run_id: str,
    workers: int = 1,
    progress: Callable[[int, int, PairResult], None] | None = None,
) -> list[PairResult]:
    """Prepare each pair (store I/O, here), fit it (in a worker process when workers > 1), persist it (here).

    A pair that fails is recorded as failed and the others go on.
    """
    total = len(requests)
    results: dict[int, PairResult] = {}
    done = 0

    def finish(i: int, result: PairResult) -> None:
        nonlocal done
        results[i] = result
        if result.status != "succeeded":
            try:
                store.record_result(result.to_record(run_id))
            except StoreError as exc:
                log.error("%s/%s: could not record the failure: %s", result.symbol, result.timeframe, exc)
        done += 1
        if progress:
            progress(done, total, result)

    def persist(i: int, prep: PreparedPair, fitted: FittedPair, t0: float) -> None:
        req = prep.request
        try:
            decision = decide_promotion(store, prep, fitted, settings)
            result = persist_pair(
                store,
                prep,
                fitted,
                run_id=run_id,
                models_dir=settings.models_dir,
                trained_at=utcnow(),
                duration_s=time.perf_counter() - t0,
                promotion=decision,
            )
        except (StoreError, OSError) as exc:
            result = failed_result(req, f"{req.symbol}/{req.timeframe}: {exc}", time.perf_counter() - t0)
        else:
            pruned = prune_versions(store, req.symbol, req.timeframe, settings.keep_versions)
            log.debug(
                "%s/%s: %s (%s); %d old version(s) pruned",
                req.symbol,
                req.timeframe,
                "champion" if decision.promote else "challenger",
                decision.reason,
                pruned,
            )
        finish(i, result)

    def fit_failed(i: int, req: PairRequest, exc: BaseException, t0: float) -> None:
        log.error("%s/%s: fit failed", req.symbol, req.timeframe, exc_info=exc)
        reason = f"{req.symbol}/{req.timeframe}: fit failed: {one_line(exc)}"
        finish(i, failed_result(req, reason, time.perf_counter() - t0))

    def prepare(i: int, req: PairRequest) -> tuple[PreparedPair | None, float]:
        t0 = time.perf_counter()
        try:
            reason = no_new_bars_reason(store, req)
            if reason is not None:
                finish(i, skipped_result(req, reason, time.perf_counter() - t0))
                return None, t0
            return prepare_pair(store, req, settings), t0
        except (PairFailure, StoreError) as exc:
            horizon = settings.timeframes[req.timeframe].horizon_bars
            finish(i, failed_result(req, str(exc), time.perf_counter() - t0, horizon))
        except Exception as exc:  # a bug must not stop the other pairs; the reason still gets recorded
            log.exception("%s/%s: unexpected error while preparing", req.symbol, req.timeframe)
            finish(
                i,
                failed_result(
                    req,
                    f"{req.symbol}/{req.timeframe}: {type(exc).__name__}: {one_line(exc)}",
                    time.perf_counter() - t0,
                ),
            )
        return None, t0

    if workers <= 1:
        for i, req in enumerate(requests):
            if stop_requested():
                break
            prep, t0 = prepare(i, req)
            if prep is None:
                continue
            try:
                # one thread even when alone: OpenMP learners on busy (shared) cores slow down by 10-40x
                fitted = fit_pair(prep, settings, n_threads=1)
            except Exception as exc:
                fit_failed(i, req, exc, t0)
                continue
            persist(i, prep, fitted, t0)
    else:
        pending: dict[Future[FittedPair], tuple[int, PreparedPair, float]] = {}
        ctx = None
        if sys.platform != "win32":
            # Workers fork from a server that has imported the pipeline (sklearn, LightGBM) once, instead of
            # each importing it (~2 s) while the cores are needed for fitting.
            ctx = get_context("forkserver")
            ctx.set_forkserver_preload(["ml.src.training.pipeline"])
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_ignore_sigint) as pool:

            def drain(block: bool) -> None:
                for fut in [f for f in pending if block or f.done()]:
                    i, prep, t0 = pending.pop(fut)
                    req = prep.request
                    try:
                        fitted = fut.result()
                    except Exception as exc:
                        fit_failed(i, req, exc, t0)
                        continue
                    persist(i, prep, fitted, t0)

            for i, req in enumerate(requests):
                if stop_requested():
                    break
                prep, t0 = prepare(i, req)
                if prep is not None:
                    pending[pool.submit(_fit_in_worker, prep, settings)] = (i, prep, t0)
                drain(block=False)
                # keep at most 2x workers prepared pairs in flight: bounded memory, workers never idle
                while len(pending) >= 2 * workers:
                    next(iter(pending)).result()
                    drain(block=False)
            while pending:
                drain(block=True)
    return [results[i] for i in sorted(results)]


def start_run(store: TrainingStore, settings: Settings, scope: dict[str, Any], trigger: str) -> RunReport:
    config = {**settings.public_dict(), "scope": scope}
    run = RunRecord(
        run_id=str(uuid.uuid4()),
        started_at=utcnow(),
        trigger=trigger,
        host=socket.gethostname(),
        pid=os.getpid(),
        git_sha=git_sha(),
        package_versions=library_versions(),
        config=config,
        config_hash=config_hash(config),
        scope=scope,
    )
    store.start_run(run)
    return RunReport(run_id=run.run_id, started_at=run.started_at, store=store.name)


def finish_run(store: TrainingStore, report: RunReport, status: str | None = None) -> None:
    report.finished_at = utcnow()
    report.status = status or report.final_status()
    c = report.counts
    outcome = RunOutcome(
        status=report.status,
        finished_at=report.finished_at,
        n_pairs=len(report.results),
        n_succeeded=c["succeeded"],
        n_failed=c["failed"],
        n_skipped=c["skipped"],
        error=report.error,
    )
    try:
        store.finish_run(report.run_id, outcome)
    except StoreError as exc:
        log.error("run %s: could not record the run's end: %s", report.run_id, exc)
        report.error = report.error or f"could not record the run's end: {exc}"


def run_job(
    store: TrainingStore,
    settings: Settings,
    symbols: Sequence[str],
    timeframes: Sequence[str],
    *,
    as_of: datetime | None = None,
    lookback_days: float | None = None,
    target_bars: int | None = None,
    workers: int | None = None,
    force: bool = False,
    trigger: str = "manual",
    progress: Callable[[int, int, PairResult], None] | None = None,
) -> RunReport:
    """Record a run, take the leases of its pairs, train them, release the leases, record the outcome."""
    requests = [
        PairRequest(
            symbol=s,
            timeframe=tf,
            as_of=as_of,
            lookback_days=lookback_days,
            target_bars=target_bars,
            force=force,
        )
        for s in symbols
        for tf in timeframes
    ]
    scope = {
        "symbols": list(symbols),
        "timeframes": list(timeframes),
        "as_of": as_of.isoformat() if as_of else None,
        "lookback_days": lookback_days,
        "target_bars": target_bars,
        "force": force,
    }
    io_start = store.io_seconds
    report = start_run(store, settings, scope, trigger)
    names = [lease_name(r.symbol, r.timeframe) for r in requests]
    holder = holder_name(report.run_id)
    grant = store.acquire_leases(names, holder, settings.lease_ttl_s, report.run_id)
    if not grant.acquired:
        until = grant.expires_at.isoformat() if grant.expires_at else "?"
        report.locked_by = f"lease {grant.name} is held by {grant.holder} until {until}"
        report.error = f"another run is active: {report.locked_by}"
        finish_run(store, report, status="skipped")
        return report
    if grant.taken_over:
        dead = [t["run_id"] for t in grant.taken_over if t.get("run_id")]
        n = store.mark_runs_abandoned(dead, f"abandoned: its lease expired and run {report.run_id} took over")
        log.warning("took over %d expired lease(s); %d run(s) marked abandoned", len(grant.taken_over), n)

    def lost(reason: str) -> None:
        log.error("run %s: %s; stopping after the pair in progress", report.run_id, reason)
        report.error = reason
        request_stop()

    n_workers = worker_count(settings, workers, len(requests))
    log.info(
        "run %s: %d pair(s), %d worker(s), %s store", report.run_id, len(requests), n_workers, store.name
    )
    try:
        with LeaseRenewer(store, names, holder, settings.lease_ttl_s, lost, report.run_id):
            report.results = train_pairs(
                store, settings, requests, run_id=report.run_id, workers=n_workers, progress=progress
            )
        if stop_requested():
            report.interrupted = True
            report.error = (
                report.error or f"interrupted after {len(report.results)} of {len(requests)} pair(s)"
            )
        report.store_io_s = store.io_seconds - io_start
        finish_run(store, report, status="interrupted" if report.interrupted else None)
    finally:
        try:
            store.release_leases(names, holder)
        except StoreError as exc:  # they expire on their own after lease_ttl_s
            log.error("run %s: could not release leases: %s", report.run_id, exc)
    return report


# ----------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ml.src.training.ensemble_training_job",
        description=(
            "Train a RandomForest + gradient-boosting ensemble per (symbol, timeframe) on the store's bars, "
            "validate it on a later slice, save the bundle under ML_MODELS_DIR and record the run in the store "
            "(Supabase when SUPABASE_URL is set, else the embedded SQLite store at ML_LOCAL_DB)."
        ),
        epilog=(
            "Exit codes: 0 every pair succeeded or was skipped; 1 a pair or the run failed; 2 bad usage or "
            "settings; 75 another run holds an overlapping lease (nothing trained); 130 interrupted."
        ),
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument("--symbol", help="train one symbol")
    who.add_argument("--symbols", nargs="+", metavar="SYMBOL", help="train these symbols")
    who.add_argument(
        "--all", action="store_true", help="train every active symbol in the store's symbols table"
    )
    p.add_argument(
        "--timeframes",
        nargs="+",
        choices=TIMEFRAMES,
        default=list(TIMEFRAMES),
        metavar="TF",
        help=f"timeframes to train (default: all of {' '.join(TIMEFRAMES)})",
    )
    p.add_argument(
        "--lookback",
        type=float,
        metavar="DAYS",
        help="only bars within DAYS of the latest bar (or of --as-of); default: no limit",
    )
    p.add_argument(
        "--target-bars",
        type=int,
        metavar="N",
        help="bars in the training window (default: the timeframe's target_bars setting)",
    )
    p.add_argument(
        "--as-of",
        metavar="TS",
        help="train as if it were TS: ignore later bars (ISO-8601; no offset means UTC)",
    )
    p.add_argument(
        "--walk-forward",
        type=int,
        metavar="K",
        help="also evaluate K expanding-window folds, refitting models and weights per fold "
        "(default: ML_WALK_FORWARD_FOLDS, 0 = off)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="train even pairs whose latest bar was already trained on (default: skip them as 'no new bars')",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="pairs fitted in parallel processes (default: ML_WORKERS, 0 = one per core)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (run_id, status, results); logs go to stderr",
    )
    p.add_argument(
        "--trigger",
        choices=("manual", "scheduled", "api"),
        default="manual",
        help="recorded in the run ledger (the scheduler passes 'scheduled')",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def resolve_scope(args: argparse.Namespace, settings: Settings, store: TrainingStore | None) -> list[str]:
    if args.all:
        assert store is not None
        symbols = store.list_active_symbols()
        if not symbols:
            raise UsageError(
                "--all: the store has no active symbols (load bars first: python -m ml.src.data.load_bars)"
            )
    elif args.symbol:
        symbols = [args.symbol]
    elif args.symbols:
        symbols = list(args.symbols)
    else:
        symbols = list(settings.default_symbols)
    symbols = unique_upper(symbols)
    bad = [s for s in symbols if not SYMBOL_RE.match(s)]
    if bad:
        raise UsageError(f"invalid symbol(s): {', '.join(bad)}")
    return symbols


def _check_args(args: argparse.Namespace) -> None:
    if args.lookback is not None and args.lookback <= 0:
        raise UsageError("--lookback must be a positive number of days")
    if args.target_bars is not None and args.target_bars < 1:
        raise UsageError("--target-bars must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise UsageError("--workers must be >= 0")
    if args.walk_forward is not None and not 0 <= args.walk_forward <= 20:
        raise UsageError("--walk-forward must be between 0 and 20 folds")


def setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )


def _progress_line(done: int, total: int, r: PairResult) -> None:
    if r.status == "succeeded" and r.metrics:
        m = r.metrics
        log.info(
            "[%d/%d] %s/%s succeeded in %.2fs: test acc %.3f, balanced %.3f (majority %.3f, persistence %.3f)",
            done,
            total,
            r.symbol,
            r.timeframe,
            r.duration_s,
            m["ensemble"]["test_accuracy"],
            m["ensemble"]["test_balanced_accuracy"],
            m["baseline"]["test_accuracy"],
            m["persistence"]["test_accuracy"],
        )
    else:
        log.warning("[%d/%d] %s/%s %s: %s", done, total, r.symbol, r.timeframe, r.status, r.error)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    setup_logging(args.quiet, args.verbose)
    try:
        _check_args(args)
        as_of = parse_as_of(args.as_of) if args.as_of else None
        settings = Settings()
        if args.walk_forward is not None:
            settings = settings.model_copy(update={"walk_forward_folds": args.walk_forward})
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as exc:
        print(settings_error_line(exc), file=sys.stderr)
        return EXIT_USAGE

    try:
        store = open_store(settings)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    with store:
        try:
            symbols = resolve_scope(args, settings, store)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        restore_signals = install_stop_handlers()
        try:
            report = run_job(
                store,
                settings,
                symbols,
                args.timeframes,
                as_of=as_of,
                lookback_days=args.lookback,
                target_bars=args.target_bars,
                workers=args.workers,
                force=args.force,
                trigger=args.trigger,
                progress=_progress_line,
            )
        except StoreError as exc:
            print(f"error: cannot record the run: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            restore_signals()

    if report.locked_by:
        print(f"error: {report.error}; this run ({report.run_id}) is recorded as skipped", file=sys.stderr)
    table = summary_table(report)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report.to_json(), default=str))
    else:
        print(table)
    return report.exit_code()


# ------------------------------------------------------------------------------------------ seed's Python API
def train_ensemble_for_symbol_timeframe(
    db: TrainingStore | None = None,
    symbol: str = "AAPL",
    timeframe: str = "d1",
    lookback_days: float | None = None,
    *,
    target_bars: int | None = None,
    as_of: datetime | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Train one pair as its own run; the seed's return shape (models/weights/models_path) plus the result."""
    settings = settings or get_settings()
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"unknown timeframe {timeframe!r}; expected one of {TIMEFRAMES}")
    store = db or open_store(settings)
    try:
        report = run_job(
            store,
            settings,
            [symbol.upper()],
            [timeframe],
            force=True,  # an explicit API call means "train now"
            as_of=as_of,
            lookback_days=lookback_days,
            target_bars=target_bars,
            workers=1,
            trigger="api",
        )
    finally:
        if db is None:
            store.close()
    result = report.results[0]
    out = result.to_json()
    out["run_id"] = report.run_id
    out["success"] = result.status == "succeeded"
    if result.status == "succeeded" and result.metrics:
        out["models"] = {
            name: {k: v for k, v in result.metrics[name].items() if not isinstance(v, list)}
            for name in ("rf", "gb")
        }
        out["models_path"] = result.artifact_path
        out["validation_accuracy"] = result.metrics["ensemble"]["valid_accuracy"]
        out["baseline_accuracy"] = result.metrics["baseline"]["test_accuracy"]
    return out


if __name__ == "__main__":
    sys.exit(main())
