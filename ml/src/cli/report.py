"""Command line of the health report (`python -m ml.src.monitoring.report`, `swiftbolt-ml report`): the
table or JSON of ml.src.monitoring.report.build_report, and with --html the static report of html_report."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from config.settings import TIMEFRAMES, Settings, settings_error_line
from ml.src.common.cli_parser import OneLineParser, timeframe_arg
from ml.src.common.log_setup import quiet_http_clients
from ml.src.data.identifiers import IdentifierError, normalise_symbol
from ml.src.data.store import StoreError
from ml.src.data.store_factory import open_store
from ml.src.monitoring.report import build_report, table, thresholds_in_force
from ml.src.monitoring.report_dir import ReportDirError, check_report_dir


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(
        prog="python -m ml.src.monitoring.report",
        description="Flag pairs to RETRAIN (accuracy fell, or the champion expired) or DISABLE (the champion "
        "no longer beats its baselines). Exit 0; with --fail-on-flag, 3 when any pair is flagged.",
    )
    p.add_argument("--symbol", help="only this symbol")
    p.add_argument("--timeframe", type=timeframe_arg, choices=TIMEFRAMES, help="only this timeframe")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--fail-on-flag", action="store_true", help="exit 3 when any pair is flagged")
    p.add_argument(
        "--html",
        metavar="DIR",
        help="also write the static report (index of pairs with verdicts and flags, a page of charts per pair) "
        "to DIR; open DIR/index.html from disk or serve DIR with any static server",
    )
    args = p.parse_or_exit_code(argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    quiet_http_clients()
    symbol = None
    if args.symbol is not None:
        try:
            symbol = normalise_symbol(args.symbol)
        except IdentifierError as exc:
            print(f"error: --symbol: {exc}", file=sys.stderr)
            return 2
    try:
        settings = Settings()
    except ValidationError as exc:
        print(settings_error_line(exc), file=sys.stderr)
        return 2
    if args.html:
        try:  # before the store is opened: a folder the report may not replace is a usage error
            check_report_dir(Path(args.html))
        except ReportDirError as exc:
            print(f"error: --html: {exc}", file=sys.stderr)
            return 2
    try:
        with open_store(settings) as store:
            refused: list[str] = []
            rows = build_report(store, settings, symbol, args.timeframe, refused=refused)
            for line in refused:
                print(f"warning: {line}", file=sys.stderr)
            rules = thresholds_in_force(store, settings)
            if args.html:
                from ml.src.monitoring.html_report import write_html_report

                site = write_html_report(
                    store,
                    settings,
                    Path(args.html),
                    health=rows,
                    progress=lambda line: print(line, file=sys.stderr, flush=True),
                )
                print(site.summary_line(), file=sys.stderr)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ReportDirError as exc:  # DIR became something else while the report was drawn
        print(f"error: --html: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the report: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.to_dict() for r in rows]))
    else:
        print(
            f"thresholds (monitoring_settings): {rules.metric}, retrain_drop {rules.retrain_drop:g}, "
            f"history_runs {rules.history_runs}, disable_runs {rules.disable_runs}"
        )
        print(table(rows))
    return 3 if args.fail_on_flag and any(r.flags for r in rows) else 0
