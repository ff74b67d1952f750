"""Command line of the forecast step (`python -m ml.src.inference.forecast_job`, `swiftbolt-ml forecast`).

The forecasts themselves are ml.src.inference.forecast_job.run_forecasts; this module parses flags, picks the
pairs, prints the table or the JSON and returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from pydantic import ValidationError

from config.settings import TIMEFRAMES, Settings
from ml.src.cli.failures import UsageError, missing_bars_note, one_line_failure, parse_as_of
from ml.src.common.cli_parser import OneLineParser, timeframe_arg
from ml.src.common.log_setup import setup_logging
from ml.src.common.stop import install_stop_handlers
from ml.src.data.identifiers import IdentifierError, check_symbol, normalise_symbol
from ml.src.data.identifiers import parse_pair as parse_symbol_pair
from ml.src.data.store import StoreError, TrainingStore
from ml.src.data.store_factory import open_store
from ml.src.inference.forecast_job import run_forecasts, table

log = logging.getLogger("ml.inference")


def parse_pair(text: str) -> tuple[str, str]:
    try:
        return parse_symbol_pair(text)
    except IdentifierError as exc:
        raise UsageError(f"--pairs {text!r}: {exc}") from None


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="python -m ml.src.inference.forecast_job",
        description=(
            "Forecast each (symbol, timeframe) with its champion model: read the last bars (feature warm-up plus "
            "one), compute the features of the latest CLOSED bar, predict BEARISH / NEUTRAL / BULLISH and write "
            "one row to ml_forecasts (once per bar and model version). Earlier forecasts whose horizon has "
            "passed get their realised return and label first. A pair with no champion yet, an expired one or "
            "one built for another feature set is skipped; a champion whose file is missing, corrupt or wrongly "
            "signed fails the pair (exit 1)."
        ),
        epilog=(
            "Exit codes: 0 every pair written, unchanged or skipped; 1 a pair or the store failed; 2 bad usage "
            "or settings; 130 interrupted."
        ),
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument(
        "--all",
        action="store_true",
        help="every active symbol of the store's symbols table x --timeframes (also the default when no flag "
        "selects pairs, unless ML_DEFAULT_SYMBOLS names symbols)",
    )
    who.add_argument("--symbols", nargs="+", metavar="SYMBOL", help="these symbols x --timeframes")
    who.add_argument(
        "--pairs",
        nargs="+",
        metavar="SYMBOL:TF",
        help="exactly these pairs, e.g. AAPL:d1 SPY:h1 (ignores --timeframes)",
    )
    p.add_argument(
        "--timeframes",
        nargs="+",
        type=timeframe_arg,
        choices=TIMEFRAMES,
        default=list(TIMEFRAMES),
        metavar="TF",
        help=f"timeframes to forecast (default: all of {' '.join(TIMEFRAMES)})",
    )
    p.add_argument(
        "--as-of",
        metavar="TS",
        help="forecast as if it were TS: the latest bar closed by TS, later bars ignored (ISO-8601; no offset "
        "means UTC; default: now). A bar inside the champion's training data is never forecast.",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (counts, forecasts); logs to stderr",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def selects_universe(args: argparse.Namespace, settings: Settings) -> bool:
    """--all, or no selection flag and no ML_DEFAULT_SYMBOLS (the default), as for the training job."""
    return bool(args.all or (not args.pairs and not args.symbols and not settings.default_symbols))


def resolve_pairs(
    args: argparse.Namespace, settings: Settings, store: TrainingStore
) -> list[tuple[str, str]]:
    """The pairs to forecast; named ones (--pairs, --symbols, ML_DEFAULT_SYMBOLS) fail without bars."""
    if args.pairs:
        pairs = [parse_pair(t) for t in args.pairs]
        return list(dict.fromkeys(pairs))
    if selects_universe(args, settings):
        symbols = store.list_active_symbols()
        if not symbols:  # nothing trained yet, so nothing to forecast: not an error for the scheduled step
            log.warning("--all: the store has no active symbols: nothing to forecast")
            return []
        valid = []
        for symbol in symbols:  # a bad row of the table never trained, so it has nothing to forecast
            try:
                valid.append(check_symbol(symbol))
            except IdentifierError as exc:
                log.warning("skipped a row of the symbols table: %s", exc)
        symbols = valid
    else:
        try:
            symbols = [normalise_symbol(s) for s in (args.symbols or settings.default_symbols)]
        except IdentifierError as exc:
            raise UsageError(str(exc)) from None
    symbols = list(dict.fromkeys(symbols))
    return [(s, tf) for s in symbols for tf in args.timeframes]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_or_exit_code(argv)
    if isinstance(args, int):
        return args
    setup_logging(args.quiet, args.verbose)
    t0 = time.perf_counter()
    try:
        as_of = parse_as_of(args.as_of) if args.as_of else None
        if args.pairs:
            for text in args.pairs:
                parse_pair(text)
        settings = Settings()
        store = open_store(settings)
    except (UsageError, ValidationError, StoreError) as exc:
        return one_line_failure(exc)
    with store:
        try:
            pairs = resolve_pairs(args, settings, store)
        except (UsageError, StoreError) as exc:
            return one_line_failure(exc)
        restore_signals = install_stop_handlers()
        try:
            explicit = not selects_universe(args, settings)
            run = run_forecasts(store, settings, pairs, as_of=as_of, explicit=explicit)
        finally:
            restore_signals()
        missing = missing_bars_note(store, run.results)
    log.info("%d pair(s) in %.1fs", len(pairs), time.perf_counter() - t0)
    text = table(run)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(run.to_json(), default=str))
    else:
        print(text)
    if missing:
        print(missing, file=sys.stderr)
    return run.exit_code()


if __name__ == "__main__":
    sys.exit(main())
