"""Import OHLCV CSVs (`ts,open,high,low,close,volume`) into the configured store.

    python -m ml.src.data.load_bars data/AAPL_d1.csv data/SPY_h1.csv
    python -m ml.src.data.load_bars --symbol AAPL --timeframe d1 bars.csv

Every file is validated whole before anything of it is written; a bad file is reported in one line
(file, line, problem) and skipped. Exit 0 when every file loaded, 1 when any was rejected, 2 for bad usage.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from config.settings import TIMEFRAMES, Settings, settings_error_line
from ml.src.common.cli_parser import OneLineParser, timeframe_arg
from ml.src.common.log_setup import quiet_http_clients
from ml.src.data.bar_checks import first_bad_bar, first_future_bar
from ml.src.data.identifiers import SYMBOL_RE, IdentifierError, normalise_symbol
from ml.src.data.store import BAR_COLUMNS, StoreError, TrainingStore
from ml.src.data.store_factory import open_store

log = logging.getLogger("ml.load_bars")

__all__ = ["SYMBOL_RE", "BarFileError", "LoadedFile", "load_file", "main", "read_bar_file", "resolve_pair"]

FILE_RE = re.compile(r"^(?P<symbol>[A-Za-z0-9.\-^=]+)_(?P<timeframe>m15|h1|h4|d1|w1)$")


class BarFileError(ValueError):
    """A bar file that must not be loaded; str() is the one-line reason."""


@dataclass(frozen=True)
class LoadedFile:
    path: Path
    symbol: str
    timeframe: str
    rows: int


def parse_file_name(path: Path) -> tuple[str, str]:
    match = FILE_RE.match(path.stem)
    if not match:
        raise BarFileError(
            f"{path}: name is not SYMBOL_TF.csv (TF one of {', '.join(TIMEFRAMES)}); "
            "pass --symbol and --timeframe"
        )
    return match["symbol"].upper(), match["timeframe"]


def check_symbol(symbol: str) -> str:
    try:
        return normalise_symbol(symbol)
    except IdentifierError as exc:
        raise BarFileError(str(exc)) from None


def read_bar_file(path: Path) -> pd.DataFrame:
    """Parse and validate one file; raises BarFileError naming the file, the line and the problem."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BarFileError(f"{path}: cannot read CSV: {str(exc).splitlines()[0]}") from exc
    if list(raw.columns) != list(BAR_COLUMNS):
        raise BarFileError(f"{path}: columns are {list(raw.columns)}, expected {list(BAR_COLUMNS)}")
    if raw.empty:
        raise BarFileError(f"{path}: no rows")

    def line(i: int) -> int:  # 1-based file line of data row i (the header is line 1)
        return int(i) + 2

    ts = pd.to_datetime(raw["ts"], utc=True, errors="coerce", format="ISO8601")
    bad_ts = ts.isna()
    if bad_ts.any():
        i = int(np.flatnonzero(bad_ts.to_numpy())[0])
        raise BarFileError(f"{path}: line {line(i)}: ts {raw['ts'].iloc[i]!r} is not an ISO-8601 timestamp")
    naive = ~raw["ts"].str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True)
    if naive.any():
        i = int(np.flatnonzero(naive.to_numpy())[0])
        raise BarFileError(f"{path}: line {line(i)}: ts {raw['ts'].iloc[i]!r} has no UTC offset (write ...Z)")

    # The stores keep timestamps to the microsecond: two rows that differ below it are the same bar there, so
    # they are duplicates here too (and a sub-microsecond part is dropped, as the store would drop it).
    frame = pd.DataFrame({"ts": ts.dt.floor("us")})
    for col in BAR_COLUMNS[1:]:
        values = pd.to_numeric(raw[col], errors="coerce").astype("float64")
        bad = ~np.isfinite(values.to_numpy())
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            text = raw[col].iloc[i]
            if not text.strip():
                raise BarFileError(f"{path}: line {line(i)}: {col} is empty")
            raise BarFileError(f"{path}: line {line(i)}: {col} {text!r} is NaN, inf or not a number")
        frame[col] = values

    dup = frame["ts"].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((frame["ts"] == frame["ts"].iloc[i]).to_numpy())[0])
        same = "" if raw["ts"].iloc[first] == raw["ts"].iloc[i] else " at microsecond precision, as stored"
        raise BarFileError(
            f"{path}: line {line(i)}: duplicate ts {raw['ts'].iloc[i]} (same as line {line(first)}{same})"
        )
    unsorted = (frame["ts"].diff() <= pd.Timedelta(0)).to_numpy()
    if unsorted.any():
        i = int(np.flatnonzero(unsorted)[0])
        raise BarFileError(f"{path}: line {line(i)}: ts {raw['ts'].iloc[i]} is not after the previous row")

    future = first_future_bar(frame["ts"], datetime.now(UTC))
    if future is not None:
        raise BarFileError(
            f"{path}: line {line(future)}: ts {raw['ts'].iloc[future]} is in the future "
            f"(now {datetime.now(UTC).isoformat(timespec='seconds')}): a bar that has not happened yet"
        )
    bad = first_bad_bar(frame)  # the training checks' own per-bar rules (ml.src.data.bar_checks)
    if bad is not None:
        raise BarFileError(f"{path}: line {line(bad.index)}: {bad.problem} (bar {raw['ts'].iloc[bad.index]})")
    return frame


def resolve_pair(path: Path, symbol: str | None, timeframe: str | None) -> tuple[str, str]:
    """The (symbol, timeframe) a file loads into: the flags where given, else its SYMBOL_TF.csv name."""
    if symbol is None or timeframe is None:
        name_symbol, name_tf = parse_file_name(path)
        symbol = symbol or name_symbol
        timeframe = timeframe or name_tf
    if timeframe not in TIMEFRAMES:
        raise BarFileError(
            f"{path}: unknown timeframe {timeframe!r} (expected one of {', '.join(TIMEFRAMES)})"
        )
    return check_symbol(symbol), timeframe


def load_file(store: TrainingStore, path: Path, symbol: str | None, timeframe: str | None) -> LoadedFile:
    symbol, timeframe = resolve_pair(path, symbol, timeframe)
    frame = read_bar_file(path)
    rows = store.upsert_bars(symbol, timeframe, frame)
    store.upsert_symbols([symbol], active=True)
    return LoadedFile(path, symbol, timeframe, rows)


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="python -m ml.src.data.load_bars",
        description="Validate and upsert OHLCV CSV files (ts,open,high,low,close,volume; ts in UTC with Z) "
        "into the configured store (Supabase when SUPABASE_URL is set, else the embedded store ML_LOCAL_DB). "
        "Loading a file registers its symbol as active.",
    )
    p.add_argument("files", nargs="+", type=Path, help="CSV files named SYMBOL_TF.csv (TF: m15 h1 h4 d1 w1)")
    p.add_argument("--symbol", help="symbol for every file (overrides the file name)")
    p.add_argument(
        "--timeframe",
        type=timeframe_arg,
        choices=TIMEFRAMES,
        help="timeframe for every file (overrides the file name)",
    )
    p.add_argument(
        "--if-missing",
        action="store_true",
        help="skip a file whose (symbol, timeframe) already has bars in the store",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only report errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_or_exit_code(argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    quiet_http_clients()
    if args.symbol is not None:
        try:
            args.symbol = normalise_symbol(args.symbol)
        except IdentifierError as exc:
            print(f"load_bars: --symbol: {exc}", file=sys.stderr)
            return 2
    try:
        settings = Settings()
    except ValidationError as exc:
        print(settings_error_line(exc), file=sys.stderr)
        return 2
    failed = 0
    try:
        store = open_store(settings)
    except StoreError as exc:
        print(f"load_bars: {exc}", file=sys.stderr)
        return 1
    with store:
        for path in args.files:
            try:
                if args.if_missing:
                    sym, tf = resolve_pair(path, args.symbol, args.timeframe)
                    if store.count_bars(sym, tf) > 0:
                        log.info("%s: %s/%s already loaded, skipped", path, sym, tf)
                        continue
                loaded = load_file(store, path, args.symbol, args.timeframe)
                log.info(
                    "%s: %d bars -> %s/%s (%s)",
                    path,
                    loaded.rows,
                    loaded.symbol,
                    loaded.timeframe,
                    store.name,
                )
            except (BarFileError, StoreError) as exc:
                failed += 1
                print(f"load_bars: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
