"""Command line of the training job: flags -> scope -> run_loop.run_job -> summary table / JSON, exit code.

    python -m ml.src.training.ensemble_training_job --symbol AAPL --timeframes d1 w1 --json

Only the standard library is imported until the flags are parsed, so `--help` and usage errors answer at
once (~0.05 s of CPU); pandas and pydantic come with the settings, the learners only where pairs are fitted.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import TYPE_CHECKING, Any

from config.timeframes import TIMEFRAMES
from ml.src.common.cli_parser import OneLineParser
from ml.src.common.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from ml.src.common.log_setup import setup_logging

if TYPE_CHECKING:
    from config.settings import ExecutionSettings, Settings
    from ml.src.data.store import TrainingStore
    from ml.src.training.pair_result import PairResult
    from ml.src.training.universe import PlannedPair

from ml.src.cli.failures import UsageError, missing_bars_note, one_line_failure, parse_as_of
from ml.src.cli.options import add_execution, add_output, add_pair_selection

log = logging.getLogger("ml.training")


def build_parser() -> OneLineParser:
    p = OneLineParser(
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
    add_pair_selection(
        p,
        "train",
        "train the pairs that exist: every active symbol of the store's symbols table x --timeframes, where the "
        "store has bars (the others are recorded as skipped); also what a run with no selection flag trains, "
        "unless ML_DEFAULT_SYMBOLS names symbols",
        "AAPL:d1 SPY:h1",
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
        "--pooled-models",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per timeframe, also fit each pair a pooled candidate on every pair's training rows and keep it "
        "only where it beats the local model out of sample; metrics.pooling says which "
        "(default: ML_POOLED_MODELS, off)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="train even pairs whose latest bar was already trained on (default: skip them as 'no new bars')",
    )
    add_execution(p, "pairs")
    p.add_argument(
        "--trigger",
        choices=("manual", "scheduled", "api"),
        default="manual",
        help="recorded in the run ledger (the scheduler passes 'scheduled')",
    )
    p.add_argument(
        "--report",
        metavar="DIR",
        help="after the run, write the static HTML report of the run's pairs, this run beside each champion "
        "(charts, verdicts, live record) "
        "to DIR (see python -m ml.src.monitoring.report --html)",
    )
    add_output(p, "print one JSON object on stdout (run_id, status, results); logs go to stderr")
    return p


def resolve_pairs(
    args: argparse.Namespace, settings: Settings, store: TrainingStore | None
) -> tuple[list[PlannedPair], dict[str, Any]]:
    """The run's pairs and how they were selected (recorded in the run's scope). UsageError on bad input."""
    from ml.src.data.identifiers import IdentifierError, normalise_symbol, parse_pair
    from ml.src.training.universe import PairOptions, cross, named_pairs, universe_pairs

    options = PairOptions(
        as_of=parse_as_of(args.as_of) if args.as_of else None,
        lookback_days=args.lookback,
        target_bars=args.target_bars,
        force=args.force,
    )
    timeframes = list(args.timeframes or TIMEFRAMES)
    try:
        if args.pairs is not None:
            return named_pairs([parse_pair(p) for p in args.pairs], options), {"selection": "pairs"}
        if selects_universe(args, settings):
            assert store is not None
            symbols = store.list_active_symbols()
            if not symbols:
                flag = (
                    "--all" if args.all else "no --symbol/--symbols/--pairs/--all and no ML_DEFAULT_SYMBOLS"
                )
                raise UsageError(
                    f"{flag}: the {store.name} store has no active symbols (load bars first: "
                    "python -m ml.src.data.load_bars ml/sample_data/*.csv, or make run)"
                )
            return universe_pairs(store, symbols, timeframes, options), {"selection": "all"}
        if args.symbol is not None:
            names = [args.symbol]
        elif args.symbols is not None:
            names = list(args.symbols)
        else:
            names = list(settings.default_symbols)
        symbols = list(dict.fromkeys(normalise_symbol(n) for n in names))
    except IdentifierError as exc:
        raise UsageError(str(exc)) from None
    return named_pairs(cross(symbols, timeframes), options), {"selection": "named"}


def selects_universe(args: argparse.Namespace, settings: Settings) -> bool:
    """--all, or no selection flag and no ML_DEFAULT_SYMBOLS (the default): the pairs the store has bars for.

    A flagless run trains what is loaded, so right after `make run` it works on the sample data instead of
    failing on symbols nobody loaded."""
    if args.all:
        return True
    named = args.pairs is not None or args.symbol is not None or args.symbols is not None
    return not named and not settings.default_symbols


def _check_args(args: argparse.Namespace) -> None:
    if args.lookback is not None and not (math.isfinite(args.lookback) and args.lookback > 0):
        raise UsageError("--lookback must be a positive, finite number of days")
    if args.target_bars is not None and args.target_bars < 1:
        raise UsageError("--target-bars must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise UsageError("--workers must be >= 0")
    if args.walk_forward is not None and not 0 <= args.walk_forward <= 20:
        raise UsageError("--walk-forward must be between 0 and 20 folds")
    if args.pairs is not None and args.timeframes is not None:
        raise UsageError("--pairs names each pair's timeframe: do not combine it with --timeframes")
    if args.as_of is not None:
        parse_as_of(args.as_of)
    if args.dask is not None and not args.dask.strip():
        raise UsageError("--dask needs a scheduler address, e.g. tls://scheduler:8786")
    if args.report is not None:
        from pathlib import Path

        from ml.src.monitoring.report_dir import ReportDirError, check_report_dir

        try:  # before any training: a run must not end on a report it may not write
            check_report_dir(Path(args.report))
        except ReportDirError as exc:
            raise UsageError(f"--report: {exc}") from None


def _pool_likely(args: argparse.Namespace, execution: ExecutionSettings) -> bool:
    """Will this run fit on local worker processes? (--all usually means many pairs; a single named pair,
    --workers 1 or a Dask cluster never does.) Reads the settings as parsed, not the environment again."""
    if args.workers == 1 or args.dask or execution.dask_address:
        return False
    if execution.workers == 1 and args.workers is None:
        return False
    if args.pairs is not None:
        return len(args.pairs) >= 2
    if args.all or not (args.symbol or args.symbols):  # every active symbol, or ML_DEFAULT_SYMBOLS
        return True
    named = 1 if args.symbol else len(args.symbols)
    return named * len(args.timeframes or TIMEFRAMES) >= 2


def _pending_verdict(v: dict[str, Any]) -> str:
    """A pair's verdict as it finishes: its q-value (and so any skill) comes once the run's pairs are done."""
    if v.get("verdict") == "worse" or v.get("q_value") is not None:
        return str(v.get("verdict"))
    p = v.get("p_value")
    return (
        f"p {p:.3f}, verdict after the run's q-values"
        if isinstance(p, int | float)
        else str(v.get("verdict"))
    )


def _progress_line(done: int, total: int, r: PairResult) -> None:
    if r.status == "succeeded" and r.metrics:
        m = r.metrics
        log.info(
            "[%d/%d] %s/%s succeeded in %.2fs: %s; test balanced accuracy %.3f (majority %.3f, persistence %.3f), "
            "log loss %.3f (prior %.3f)",
            done,
            total,
            r.symbol,
            r.timeframe,
            r.duration_s,
            _pending_verdict(m["verdict"]),
            m["ensemble"]["test_balanced_accuracy"],
            m["majority"]["test_balanced_accuracy"],
            m["persistence"]["test_balanced_accuracy"],
            m["ensemble"]["test_log_loss"],
            m["prior"]["test_log_loss"],
        )
    elif r.status == "skipped":  # expected: no new bars, nothing to train yet
        log.info("[%d/%d] %s/%s skipped: %s", done, total, r.symbol, r.timeframe, r.error)
    else:
        log.warning("[%d/%d] %s/%s %s: %s", done, total, r.symbol, r.timeframe, r.status, r.error)


def write_run_report(store: TrainingStore, settings: Settings, report: Any, out_dir: str) -> int:
    """--report DIR: the HTML report of the run's pairs, each showing this run beside its champion; 0, or
    EXIT_FAILED when it cannot be written."""
    from pathlib import Path

    from ml.src.data.store import StoreError
    from ml.src.monitoring.html_report import write_html_report
    from ml.src.monitoring.report_dir import ReportDirError

    pairs = [(r.symbol, r.timeframe) for r in report.results]
    try:
        site = write_html_report(
            store, settings, Path(out_dir), pairs=pairs, run_id=report.run_id, progress=log.info
        )
    except (StoreError, OSError, ReportDirError) as exc:
        print(f"error: cannot write the report to {out_dir}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    log.info("%s", site.summary_line())
    return 0


def _checked_settings(args: argparse.Namespace) -> Settings:
    """The run's settings, with every check that must pass before a store is opened or anything computed."""
    from config.settings import Settings
    from ml.src.training.artifacts import ensure_models_dir

    _check_args(args)
    settings = Settings()
    if _pool_likely(args, settings.execution):
        from ml.src.training.executors import start_pool_server

        start_pool_server()  # imports the learners on another core while this process gets going
    if args.walk_forward is not None:
        settings = settings.model_copy(update={"walk_forward_folds": args.walk_forward})
    if args.pooled_models is not None:
        settings = settings.model_copy(update={"pooled_models": args.pooled_models})
    if not selects_universe(args, settings):
        resolve_pairs(args, settings, None)  # named pairs are checked before anything is opened
    dask_address = args.dask or settings.dask_address
    if dask_address:
        from ml.src.training.dask_executor import InsecureDaskAddress, check_dask_address

        try:  # a worker can run code in this process: no cluster without TLS (before anything is opened)
            check_dask_address(dask_address, settings.dask_allow_insecure)
        except InsecureDaskAddress as exc:
            raise UsageError(str(exc)) from None
    # before any store or compute: a run that cannot save its models must not start
    ensure_models_dir(settings.models_dir)
    return settings


def _print_outcome(args: argparse.Namespace, report: Any, missing: str | None, report_code: int) -> int:
    """The summary table (or JSON), the run's one-line error if any, and the exit code."""
    from ml.src.training.run_report import summary_table

    if report.locked_by:
        print(f"error: {report.error}; this run ({report.run_id}) is recorded as skipped", file=sys.stderr)
    elif report.status == "failed" and report.error:
        print(f"error: {report.error}", file=sys.stderr)
    table = summary_table(report)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report.to_json(), default=str))
    else:
        print(table)
    if missing:
        print(missing, file=sys.stderr)
    code = report.exit_code()
    return EXIT_FAILED if code == 0 and report_code else code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_or_exit_code(argv)
    if isinstance(args, int):
        return args
    setup_logging(args.quiet, args.verbose)
    from pydantic import ValidationError

    from ml.src.common.stop import install_stop_handlers
    from ml.src.data.store import StoreError
    from ml.src.data.store_factory import open_store
    from ml.src.training.artifacts import ArtifactError

    try:
        settings = _checked_settings(args)
        store = open_store(settings)
    except (UsageError, ValidationError, ArtifactError, StoreError) as exc:
        return one_line_failure(exc)
    with store:
        try:
            pairs, scope = resolve_pairs(args, settings, store)
        except (UsageError, StoreError) as exc:
            return one_line_failure(exc)
        from ml.src.training.run_loop import run_job

        restore_signals = install_stop_handlers()
        try:
            report = run_job(
                store,
                settings,
                pairs=pairs,
                as_of=parse_as_of(args.as_of) if args.as_of else None,
                lookback_days=args.lookback,
                target_bars=args.target_bars,
                workers=args.workers,
                dask_address=args.dask,
                force=args.force,
                trigger=args.trigger,
                progress=_progress_line,
                scope_extra=scope,
            )
        except StoreError as exc:
            print(f"error: cannot record the run: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except ArtifactError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("error: aborted by a second interrupt; the run is recorded as interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            restore_signals()
        report_code = 0
        if args.report and not report.locked_by:
            report_code = write_run_report(store, settings, report, args.report)
        missing = missing_bars_note(store, report.results)
    return _print_outcome(args, report, missing, report_code)
