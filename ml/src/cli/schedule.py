"""Command line of the scheduler: `python -m ml.src.scheduler [--print-schedule | --once] [-v]` (`swiftbolt-ml
schedule`). It hands the scheduler its runners, the training, forecast and replay commands, so the scheduler
knows nothing of the layers above it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import ValidationError

from config.settings import Settings, settings_error_line
from ml.src.common.cli_parser import OneLineParser
from ml.src.common.exit_codes import EXIT_OK, EXIT_USAGE
from ml.src.scheduler.jobs import ScheduleError, format_schedule, job_specs

log = logging.getLogger("ml.scheduler")


def train_timeframes(timeframes: Sequence[str]) -> int:
    """The default runner: train every active symbol on these timeframes, in this process; the exit code."""
    argv = ["--all", "--timeframes", *timeframes, "--trigger", "scheduled", "--quiet"]
    from ml.src.cli.train import main as training_main

    return training_main(argv)


def forecast_timeframes(timeframes: Sequence[str]) -> int:
    """The default forecaster: every active symbol's champions forecast these timeframes; the exit code."""
    argv = ["--all", "--timeframes", *timeframes, "--quiet"]
    from ml.src.cli.forecast import main as forecast_main

    return forecast_main(argv)


def replay_timeframes(timeframes: Sequence[str], last: int) -> int:
    """The default replayer: replay every active symbol's last `last` bars on these timeframes; the exit code."""
    argv = ["--all", "--timeframes", *timeframes, "--last", str(int(last)), "--quiet"]
    from ml.src.cli.replay import main as replay_main

    return replay_main(argv)


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="python -m ml.src.scheduler",
        description=(
            "Run the nightly training on a schedule (APScheduler, UTC cron from ML_SCHEDULE_* settings): "
            "train-daily after the US close on NYSE trading days, train-weekly once a week. SIGTERM or "
            "Ctrl-C lets the pair in progress finish, marks the run interrupted and stops."
        ),
        epilog=(
            "Exit codes: 0 ok (and after SIGTERM when running for ever); 2 invalid settings; with --once the "
            "worst of the training job's codes (1 failed, 75 another run active, 130 interrupted)."
        ),
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--print-schedule",
        action="store_true",
        help="list the jobs and their next three fire times (UTC and New York), then exit",
    )
    mode.add_argument(
        "--once", action="store_true", help="run every scheduled group now, one after another, then exit"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging from the scheduler")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_or_exit_code(argv)
    if isinstance(args, int):
        return args
    try:
        settings = Settings()
        specs = job_specs(settings)
    except ValidationError as exc:
        print(settings_error_line(exc), file=sys.stderr)
        return EXIT_USAGE
    except ScheduleError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not [s for s in specs if s.kind == "train"]:
        print(
            "invalid settings: schedule_daily_timeframes and schedule_weekly_timeframes are both empty: "
            "nothing to schedule",
            file=sys.stderr,
        )
        return EXIT_USAGE

    if args.print_schedule:
        print(format_schedule(specs, datetime.now(UTC)))
        return EXIT_OK

    from ml.src.scheduler.service import configure_logging, run_once, serve

    restore_logging = configure_logging(args.verbose)
    try:
        if args.once:
            return run_once(
                settings, train_timeframes, forecaster=forecast_timeframes, replayer=replay_timeframes
            )
        return serve(settings, train_timeframes, forecaster=forecast_timeframes, replayer=replay_timeframes)
    finally:
        restore_logging()
