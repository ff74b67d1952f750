"""Command line of the replay (`python -m ml.src.training.replay`, `swiftbolt-ml replay`): flags, the pairs,
the table or JSON of ml.src.training.replay.run_replay, and the exit code."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from ml.src.cli.failures import UsageError, one_line_failure
from ml.src.cli.options import add_execution, add_output, add_pair_selection
from ml.src.common.cli_parser import OneLineParser
from ml.src.common.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED
from ml.src.common.log_setup import setup_logging
from ml.src.training.replay import run_replay

if TYPE_CHECKING:
    from config.settings import Settings
    from ml.src.data.store import TrainingStore
    from ml.src.training.replay_loop import ReplayPlan
    from ml.src.training.replay_record import PairReplay, ReplayReport

log = logging.getLogger("ml.replay")

DEFAULT_LAST = 250


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="python -m ml.src.training.replay",
        description=(
            "Replay the nightly loop over each pair's last N bars: retrain every K bars on the bars known then "
            "(the training job's split, members, calibration and weights), apply the promotion gate against the "
            "replay's champion of that moment, forecast every bar with that champion and fill each forecast's "
            "realised outcome from the bars. Prints each pair's record (hit rate, balanced accuracy, log loss, "
            "IC with its p-value, the persistence and majority baselines, net Sharpe of the calls and of "
            "buy-and-hold) and stores the replay apart from the live record (ml_replays, ml_replay_pairs, "
            "ml_replay_forecasts). Never creates, promotes or retires a live champion; writes no model files."
        ),
        epilog=(
            "Exit codes: 0 every pair replayed (or was skipped); 1 a pair or the replay failed (the store "
            "refusing included); 2 bad usage or settings; 130 interrupted. A replay takes no training lease: it "
            "can run beside the job."
        ),
    )
    add_pair_selection(
        p,
        "replay",
        "replay every active symbol of the store x --timeframes where the store has bars (the others, and pairs "
        "with too little history, are skipped); also what no selection flag means",
        "GOOG:d1 IBM:w1",
    )
    p.add_argument(
        "--last",
        type=int,
        default=DEFAULT_LAST,
        metavar="N",
        help=f"replay each pair's last N bars: one forecast per bar (default {DEFAULT_LAST}); the first "
        "replayed bar needs the timeframe's minimum training history before it",
    )
    p.add_argument(
        "--retrain-every",
        type=int,
        metavar="K",
        help="bars between retrain points, anchored on the first replayed bar (default: the schedule's "
        "cadence for the timeframe: the daily group trains once per trading day, so d1 every bar, h1 every "
        "7 bars; the weekly group once a week, so w1 every bar)",
    )
    add_execution(p, "retrain fits")
    add_output(
        p,
        "print one JSON object on stdout: replay_id, status, and per pair its record and every forecast (bar_ts, "
        "trained_through, p_bearish, p_neutral, p_bullish, label, realised_return, realised_label); the summary "
        "table goes to stderr",
    )
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.last < 1:
        raise UsageError("--last must be >= 1")
    if args.retrain_every is not None and args.retrain_every < 1:
        raise UsageError("--retrain-every must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise UsageError("--workers must be >= 0")
    if args.pairs is not None and args.timeframes is not None:
        raise UsageError("--pairs names each pair's timeframe: do not combine it with --timeframes")
    if args.dask is not None and not args.dask.strip():
        raise UsageError("--dask needs a scheduler address, e.g. tls://scheduler:8786")


def _job_args(args: argparse.Namespace) -> argparse.Namespace:
    """The training job's selection flags, so pairs are chosen exactly as the job chooses them."""
    return argparse.Namespace(
        pairs=args.pairs,
        all=args.all,
        symbol=args.symbol,
        symbols=args.symbols,
        timeframes=args.timeframes,
        as_of=None,
        lookback=None,
        target_bars=None,
        force=False,
    )


def plan_pairs(
    args: argparse.Namespace, settings: Settings, store: TrainingStore | None
) -> tuple[list[ReplayPlan], list[PairReplay]]:
    """The pairs to replay, and the pairs of the universe recorded as skipped/failed without replaying."""
    from ml.src.cli.train import resolve_pairs, selects_universe
    from ml.src.training.replay_loop import ReplayPlan, default_retrain_every
    from ml.src.training.replay_record import PairReplay

    job_args = _job_args(args)
    planned, _ = resolve_pairs(job_args, settings, store if selects_universe(job_args, settings) else None)
    plans: list[ReplayPlan] = []
    unplanned: list[PairReplay] = []
    for p in planned:
        req = p.request
        every = args.retrain_every or default_retrain_every(settings, req.timeframe)
        if p.status is not None:
            unplanned.append(
                PairReplay(req.symbol, req.timeframe, p.status, error=p.reason, retrain_every=every)
            )
            continue
        plans.append(ReplayPlan(req.symbol, req.timeframe, args.last, every, explicit=req.explicit))
    return plans, unplanned


def summary_table(report: ReplayReport) -> str:
    head = (
        f"{'pair':<12} {'status':<9} {'K':>3} {'retr':>4} {'prom':>4} {'fcst':>5} {'real':>5} "
        f"{'hit':>6} {'bal_acc':>7} {'persist':>7} {'major':>6} {'logloss':>7} {'prior':>6} {'ic':>6} "
        f"{'ic_p':>6} {'sharpe':>6} {'b&h':>6} {'verdict':<8} {'p':>5} {'q':>5}"
    )
    lines = [f"replay {report.replay_id}: {report.status}", head]

    def f(x: Any, width: int, digits: int = 3) -> str:
        return f"{x:>{width}.{digits}f}" if isinstance(x, float) else f"{'-':>{width}}"

    for p in report.pairs:
        r = p.record
        line = (
            f"{p.symbol + '/' + p.timeframe:<12} {p.status:<9} {p.retrain_every or 0:>3} {p.retrains:>4} "
            f"{p.promotions:>4} {p.n_forecasts:>5} {p.n_realised:>5} "
        )
        if r is not None:
            line += (
                f"{f(r.hit_rate, 6)} {f(r.balanced_accuracy, 7)} {f(r.persistence_balanced_accuracy, 7)} "
                f"{f(r.majority_balanced_accuracy, 6)} {f(r.log_loss, 7)} {f(r.prior_log_loss, 6)} "
                f"{f(r.ic, 6)} {f(r.ic_p_value, 6)} {f(r.net_sharpe, 6, 2)} {f(r.buy_and_hold_net_sharpe, 6, 2)}"
            )
            v = p.verdict or {}
            line += f" {v.get('verdict', '-'):<8} {f(v.get('p_value'), 5)} {f(v.get('q_value'), 5)}"
        if p.error:
            line += f" {p.error}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_or_exit_code(argv)
    if isinstance(args, int):
        return args
    setup_logging(args.quiet, args.verbose)
    from pydantic import ValidationError

    from config.settings import Settings
    from ml.src.data.store import StoreError
    from ml.src.data.store_factory import open_store

    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        _check_args(args)
        settings = Settings()
        if settings.vol_features or settings.context_symbols or settings.threshold_mode == "ex_ante_vol":
            # the replay cuts its windows from the default feature set and labels: another set would not be
            # what the job trains, so no record is better than a wrong one
            raise UsageError(
                "the replay covers the default features and labels only: unset ML_VOL_FEATURES, "
                "ML_CONTEXT_SYMBOLS and ML_THRESHOLD_MODE=ex_ante_vol for it"
            )
        dask_address = args.dask or settings.dask_address
        if dask_address:
            from ml.src.training.dask_executor import InsecureDaskAddress, check_dask_address

            try:
                check_dask_address(dask_address, settings.dask_allow_insecure)
            except InsecureDaskAddress as exc:
                raise UsageError(str(exc)) from None
        store = open_store(settings)
    except (UsageError, ValidationError, StoreError) as exc:
        return one_line_failure(exc)
    with store:
        try:
            plans, unplanned = plan_pairs(args, settings, store)
            report = run_replay(
                store,
                settings,
                plans,
                unplanned=unplanned,
                workers=args.workers,
                dask_address=args.dask,
                scope={"pairs": [f"{p.symbol}:{p.timeframe}" for p in plans], "last": args.last},
            )
        except (UsageError, StoreError) as exc:
            return one_line_failure(exc)
        except KeyboardInterrupt:
            print("error: interrupted; the replay is recorded as interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    table = summary_table(report)
    cost = f"wall {time.perf_counter() - t0:.1f}s, CPU of this process {time.process_time() - cpu0:.1f}s"
    if args.json:
        print(table, file=sys.stderr)
        out = report.to_json()
        out["wall_s"] = round(time.perf_counter() - t0, 3)
        print(json.dumps(out, default=str, allow_nan=False))
    else:
        print(table)
        print(cost)
    return EXIT_FAILED if report.exit_code() else 0


if __name__ == "__main__":
    sys.exit(main())
