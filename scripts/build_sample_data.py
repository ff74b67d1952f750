"""Regenerate the real OHLCV sample bars shipped in ml/sample_data/.

The bars are copied (never invented, interpolated or filled) from data files that ship inside two
PyPI packages:

* ``bokeh_sampledata`` -- ``bokeh_sampledata/_data/stocks.csv.gz`` (Quandl WIKI prices, declared
  Public Domain by the package): GOOG and IBM, unadjusted OHLCV.
* ``arch==8.0.0`` -- ``arch/data/sp500/sp500.csv.gz`` (^GSPC) and ``arch/data/nasdaq/nasdaq.csv.gz``
  (^IXIC), Yahoo Finance format; saved as GSPC and IXIC.

Both packages must be installed in the interpreter that runs this script. They are NOT project
dependencies; use a throwaway virtualenv, e.g.::

    python -m venv /tmp/sd && /tmp/sd/bin/pip install --no-deps bokeh_sampledata arch==8.0.0
    /tmp/sd/bin/python scripts/build_sample_data.py

Only the package data files are read (the packages are located with ``importlib.util.find_spec``
and never imported), so ``--no-deps`` installs are enough and only the standard library is needed.
The output is deterministic: running the script twice produces identical bytes.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import importlib.metadata
import importlib.util
import math
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import groupby, pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = REPO_ROOT / "ml" / "sample_data"
DEFAULT_MAX_DAILY_ROWS = 2500

NEW_YORK = ZoneInfo("America/New_York")
SESSION_OPEN = time(9, 30)
HEADER = ("ts", "open", "high", "low", "close", "volume")
PRICE_DECIMALS = 6
# A close-to-close fall at least this large in an unadjusted stock series would suggest an
# unhandled split (2:1 -> -50 %, 3:1 -> -66 %); the build refuses to continue if one is seen.
SPLIT_SUSPECT_RETURN = -0.40

ARCH_VERSION = "8.0.0"

# Drop reasons (counted per symbol and reported in the README).
DROP_NON_FINITE = "non-finite value"
DROP_NON_POSITIVE = "non-positive price"
DROP_OHLC = "OHLC rule violated (high < max(open, close) or low > min(open, close))"
DROP_NEGATIVE_VOLUME = "negative volume"
DROP_WEEKEND = "weekend date"
DROP_PLACEHOLDER = "pre-listing placeholder (open=high=low=close, volume 0)"


@dataclass(frozen=True)
class Source:
    """One output symbol and where its rows come from."""

    symbol: str
    package: str
    package_path: str  # path of the data file inside the installed package
    licence: str
    description: str
    adjustment: str
    date_format: str
    ticker: str | None = None  # value of the ``Ticker`` column to keep (multi-ticker files only)
    check_splits: bool = False


SOURCES: tuple[Source, ...] = (
    Source(
        symbol="GOOG",
        package="bokeh_sampledata",
        package_path="bokeh_sampledata/_data/stocks.csv.gz",
        licence="Package BSD-3-Clause; `stocks` module states the data is Public Domain (Quandl WIKI prices)",
        description="rows with Ticker == GOOG (Google pre-2014 history, GOOGL in the source); Open, High, Low, Close, Volume",
        adjustment="unadjusted (no split inside the range, checked; `Adj Close` column not used)",
        date_format="%Y-%m-%d",
        ticker="GOOG",
        check_splits=True,
    ),
    Source(
        symbol="IBM",
        package="bokeh_sampledata",
        package_path="bokeh_sampledata/_data/stocks.csv.gz",
        licence="Package BSD-3-Clause; `stocks` module states the data is Public Domain (Quandl WIKI prices)",
        description="rows with Ticker == IBM; Open, High, Low, Close, Volume",
        adjustment="unadjusted (no split inside the range, checked; `Adj Close` column not used)",
        date_format="%Y-%m-%d",
        ticker="IBM",
        check_splits=True,
    ),
    Source(
        symbol="GSPC",
        package="arch",
        package_path="arch/data/sp500/sp500.csv.gz",
        licence="NCSA (arch package licence; index values originally from Yahoo Finance)",
        description="S&P 500 index (^GSPC); Open, High, Low, Close, Volume",
        adjustment="none needed (price index; `Adj Close` == `Close` in the source, not used)",
        date_format="%m/%d/%Y",
    ),
    Source(
        symbol="IXIC",
        package="arch",
        package_path="arch/data/nasdaq/nasdaq.csv.gz",
        licence="NCSA (arch package licence; index values originally from Yahoo Finance)",
        description="NASDAQ Composite index (^IXIC); Open, High, Low, Close, Volume",
        adjustment="none needed (price index; `Adj Close` == `Close` in the source, not used)",
        date_format="%m/%d/%Y",
    ),
)


@dataclass(frozen=True)
class Bar:
    day: date
    open: float
    high: float
    low: float
    close: float
    volume: int


@dataclass
class SymbolResult:
    source: Source
    package_version: str
    source_sha256: str
    source_rows: int
    valid_rows: int
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    worst_close_to_close: float | None = None
    zero_volume_days: list[date] = field(default_factory=list)
    files: dict[str, tuple[int, str, str, str, int]] = field(default_factory=dict)
    # timeframe -> (rows, first ts, last ts, sha256, bytes)


# --------------------------------------------------------------------------------------------------
# Reading sources
# --------------------------------------------------------------------------------------------------


def package_file(package: str, rel_path: str) -> Path:
    """Locate a data file inside an installed package without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"package {package!r} is not installed in {sys.executable}; "
            "install bokeh_sampledata and arch==8.0.0 (see --help)"
        )
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    path = pkg_dir.parent / rel_path
    if not path.is_file():
        raise SystemExit(f"{rel_path} not found in the installed {package!r} package ({pkg_dir})")
    return path


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_volume(text: str) -> float:
    value = float(text)
    if math.isfinite(value) and not value.is_integer():
        raise ValueError(f"non-integer volume {text!r}")
    return value


def read_rows(path: Path, src: Source) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if src.ticker is not None:
        rows = [r for r in rows if r["Ticker"] == src.ticker]
    if not rows:
        raise SystemExit(f"{src.symbol}: no rows found in {src.package_path}")
    return rows


def clean_rows(raw: Iterable[dict[str, str]], src: Source, dropped: Counter[str]) -> list[Bar]:
    """Parse rows and DROP (never repair) invalid ones, counting the reason."""
    bars: list[Bar] = []
    for row in raw:
        day = datetime.strptime(row["Date"].strip(), src.date_format).date()
        o, h, lo, c = (float(row[k]) for k in ("Open", "High", "Low", "Close"))
        v = parse_volume(row["Volume"])
        if not all(math.isfinite(x) for x in (o, h, lo, c, v)):
            dropped[DROP_NON_FINITE] += 1
            continue
        if min(o, h, lo, c) <= 0:
            dropped[DROP_NON_POSITIVE] += 1
            continue
        if h < max(o, c) or lo > min(o, c):
            dropped[DROP_OHLC] += 1
            continue
        if v < 0:
            dropped[DROP_NEGATIVE_VOLUME] += 1
            continue
        if day.weekday() >= 5:
            dropped[DROP_WEEKEND] += 1
            continue
        bars.append(Bar(day, o, h, lo, c, int(v)))

    bars.sort(key=lambda b: b.day)
    days = [b.day for b in bars]
    if len(set(days)) != len(days):
        dupes = sorted(d for d, n in Counter(days).items() if n > 1)
        raise SystemExit(f"{src.symbol}: duplicate dates in source: {dupes[:5]}")

    # Pre-listing placeholders: leading rows with a flat price and no volume.
    lead = 0
    while lead < len(bars):
        b = bars[lead]
        if not (b.volume == 0 and b.open == b.high == b.low == b.close):
            break
        lead += 1
    if lead:
        dropped[DROP_PLACEHOLDER] += lead
        bars = bars[lead:]
    return bars


def worst_close_to_close(bars: Sequence[Bar]) -> float | None:
    moves = [cur.close / prev.close - 1.0 for prev, cur in pairwise(bars)]
    return min(moves) if moves else None


# --------------------------------------------------------------------------------------------------
# Aggregation and output
# --------------------------------------------------------------------------------------------------


def session_open_utc(day: date) -> str:
    local = datetime.combine(day, SESSION_OPEN, tzinfo=NEW_YORK)
    return local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def weekly(bars: Sequence[Bar]) -> list[Bar]:
    """Monday-Friday weeks: first open, max high, min low, last close, summed volume.

    The week's bar is stamped with its first session present; weeks without rows are not written.
    """
    out: list[Bar] = []
    for _, grouped in groupby(bars, key=lambda b: b.day - timedelta(days=b.day.weekday())):
        week = list(grouped)
        out.append(
            Bar(
                day=week[0].day,
                open=week[0].open,
                high=max(b.high for b in week),
                low=min(b.low for b in week),
                close=week[-1].close,
                volume=sum(b.volume for b in week),
            )
        )
    return out


def fmt_price(x: float) -> str:
    text = f"{round(x, PRICE_DECIMALS):.{PRICE_DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def render_csv(bars: Sequence[Bar]) -> bytes:
    lines = [",".join(HEADER)]
    for b in bars:
        lines.append(
            ",".join(
                (
                    session_open_utc(b.day),
                    fmt_price(b.open),
                    fmt_price(b.high),
                    fmt_price(b.low),
                    fmt_price(b.close),
                    str(b.volume),
                )
            )
        )
    return ("\n".join(lines) + "\n").encode("ascii")


def validate_csv(data: bytes, name: str) -> tuple[int, str, str]:
    """Re-read a rendered file and check every rule; returns (rows, first ts, last ts)."""
    reader = csv.reader(data.decode("ascii").splitlines())
    header = next(reader)
    if tuple(header) != HEADER:
        raise SystemExit(f"{name}: bad header {header}")
    prev: datetime | None = None
    first = last = ""
    n = 0
    for row in reader:
        ts_text, *rest = row
        if len(rest) != 5 or not ts_text.endswith("Z"):
            raise SystemExit(f"{name}: malformed row {row}")
        ts = datetime.strptime(ts_text, "%Y-%m-%dT%H:%M:%SZ")
        o, h, lo, c = (float(x) for x in rest[:4])
        v = int(rest[4])
        if prev is not None and ts <= prev:
            raise SystemExit(f"{name}: ts not strictly increasing at {ts_text}")
        if not all(math.isfinite(x) for x in (o, h, lo, c)):
            raise SystemExit(f"{name}: non-finite value at {ts_text}")
        if min(o, h, lo, c) <= 0 or v < 0:
            raise SystemExit(f"{name}: non-positive price or negative volume at {ts_text}")
        if h < max(o, c) or lo > min(o, c):
            raise SystemExit(f"{name}: OHLC rule violated at {ts_text}")
        prev = ts
        first = first or ts_text
        last = ts_text
        n += 1
    if n == 0:
        raise SystemExit(f"{name}: no rows")
    return n, first, last


# --------------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------------


def render_readme(results: Sequence[SymbolResult], max_daily_rows: int) -> bytes:
    out: list[str] = []
    w = out.append
    w("# Sample OHLCV bars (real data)")
    w("")
    w(
        "Real daily and weekly OHLCV bars so the training pipeline can run on a fresh machine without "
        "network access or a database. **Nothing here is synthetic**: every daily row is a row of the "
        "source file listed below, with the prices only rounded to 6 decimals. No value was invented, "
        "interpolated, forward-filled or repaired; source rows that break a rule were dropped and are "
        "counted below. Weekly rows are plain aggregations of the valid daily source rows."
    )
    w("")
    w("Regenerate (byte-identical) with `scripts/build_sample_data.py` in a throwaway virtualenv:")
    w("")
    w("```sh")
    w("python -m venv /tmp/sd && /tmp/sd/bin/pip install --no-deps bokeh_sampledata arch==8.0.0")
    w("/tmp/sd/bin/python scripts/build_sample_data.py")
    w("```")
    w("")
    w("## Format")
    w("")
    w("- File name `SYMBOL_TF.csv`, `TF` = `d1` (daily) or `w1` (weekly).")
    w("- Columns exactly `ts,open,high,low,close,volume`.")
    w(
        "- `ts` is the UTC instant the bar opens: the 09:30 America/New_York session open of the "
        "(first) trading day, converted with `zoneinfo` (14:30Z in winter, 13:30Z in summer). "
        "Early-close days are not marked."
    )
    w(
        "- Prices rounded to 6 decimals (trailing zeros removed), volume an integer "
        "(shares for GOOG/IBM, as reported by Yahoo Finance for the indices)."
    )
    w(f"- `d1`: the last {max_daily_rows} valid daily rows of each source series (all rows if fewer).")
    w(
        "- `w1`: Monday–Friday weeks built from **all** valid daily rows of the source (not only the "
        "kept `d1` rows, so no week is cut in half by the row limit and the weekly history is longer "
        "than the daily one): first open, max high, min low, last close, summed volume; `ts` = opening "
        "instant of the week's first session present. A week is written only if it has at least one "
        "daily row, so holiday weeks are short and a week cut by the start or end of the source (e.g. "
        "the IPO week of GOOG, the week of 2018-12-31 for GSPC/IXIC, which holds only that Monday) is "
        "partial."
    )
    w(
        "- Every file is checked after rendering: ts strictly increasing (no duplicates), no NaN/inf, "
        "all prices > 0, volume >= 0, high >= max(open, close), low <= min(open, close)."
    )
    w(
        "- Gaps are real market closures, not missing data (e.g. 2001-09-11..14, 2007-01-02, "
        "2012-10-29..30) and are left as gaps."
    )
    w("")
    w("## Provenance")
    w("")
    w("| Symbol | Package | Path inside the package | Licence | What was taken | Adjustment |")
    w("|---|---|---|---|---|---|")
    for r in results:
        s = r.source
        w(
            f"| {s.symbol} | `{s.package}=={r.package_version}` | `{s.package_path}` | {s.licence} | "
            f"{s.description} | {s.adjustment} |"
        )
    w("")
    w("Source files (sha256 of the gzip file as installed):")
    w("")
    seen: set[str] = set()
    for r in results:
        key = f"{r.source.package}/{r.source.package_path}"
        if key in seen:
            continue
        seen.add(key)
        w(f"- `{r.source.package}=={r.package_version}` `{r.source.package_path}`: `{r.source_sha256}`")
    w("")
    w("## Files")
    w("")
    w("| File | Rows | First ts | Last ts | Bytes | sha256 |")
    w("|---|---:|---|---|---:|---|")
    for r in results:
        for tf in ("d1", "w1"):
            n, first, last, digest, size = r.files[tf]
            w(f"| `{r.source.symbol}_{tf}.csv` | {n} | {first} | {last} | {size} | `{digest}` |")
    w("")
    w("## Rows dropped or not kept")
    w("")
    w(
        "| Symbol | Source rows | Dropped (invalid) | Why | Valid rows | Not kept in d1 (row limit) | "
        "Worst close-to-close move |"
    )
    w("|---|---:|---:|---|---:|---:|---:|")
    for r in results:
        total = sum(r.dropped.values())
        why = "; ".join(f"{k}: {v}" for k, v in sorted(r.dropped.items())) or "none"
        worst = "n/a" if r.worst_close_to_close is None else f"{r.worst_close_to_close:+.2%}"
        w(
            f"| {r.source.symbol} | {r.source_rows} | {total} | {why} | {r.valid_rows} | {r.truncated} | "
            f"{worst} |"
        )
    w("")
    w(
        f"The stock series (GOOG, IBM) are unadjusted; the build aborts if any close-to-close move is "
        f"at or below {SPLIT_SUSPECT_RETURN:.0%} (which would indicate a 2:1 or 3:1 split), so neither "
        "contains a split in range. GOOG's unadjusted prices are pre-2014-split Class A levels."
    )
    notes = [r for r in results if r.zero_volume_days]
    if notes:
        w("")
        w(
            "Rows with volume 0 in the source are kept as-is (volume >= 0 is valid; nothing is filled): "
            + "; ".join(
                f"{r.source.symbol}: " + ", ".join(d.isoformat() for d in r.zero_volume_days) for r in notes
            )
            + "."
        )
    w("")
    return "\n".join(out).encode("utf-8")


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def build(out_dir: Path, max_daily_rows: int) -> dict[Path, bytes]:
    try:
        arch_version = importlib.metadata.version("arch")
    except importlib.metadata.PackageNotFoundError:
        arch_version = ""
    if arch_version != ARCH_VERSION:
        raise SystemExit(f"arch=={ARCH_VERSION} is required (found {arch_version or 'nothing'}); see --help")

    outputs: dict[Path, bytes] = {}
    results: list[SymbolResult] = []
    for src in SOURCES:
        path = package_file(src.package, src.package_path)
        raw = read_rows(path, src)
        dropped: Counter[str] = Counter()
        bars = clean_rows(raw, src, dropped)
        result = SymbolResult(
            source=src,
            package_version=importlib.metadata.version(src.package),
            source_sha256=sha256_file(path),
            source_rows=len(raw),
            valid_rows=len(bars),
            dropped=dropped,
            worst_close_to_close=worst_close_to_close(bars),
            zero_volume_days=[b.day for b in bars if b.volume == 0],
        )
        if (
            src.check_splits
            and result.worst_close_to_close is not None
            and result.worst_close_to_close <= SPLIT_SUSPECT_RETURN
        ):
            raise SystemExit(
                f"{src.symbol}: close-to-close move of {result.worst_close_to_close:.1%} looks like a split"
            )

        daily = bars[-max_daily_rows:]
        result.truncated = len(bars) - len(daily)
        for tf, series in (("d1", daily), ("w1", weekly(bars))):
            name = f"{src.symbol}_{tf}.csv"
            data = render_csv(series)
            n, first, last = validate_csv(data, name)
            result.files[tf] = (n, first, last, hashlib.sha256(data).hexdigest(), len(data))
            outputs[out_dir / name] = data
        results.append(result)

    outputs[out_dir / "README.md"] = render_readme(results, max_daily_rows)
    return outputs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build_sample_data.py",
        description=(
            "Write real daily (d1) and weekly (w1) OHLCV sample bars for GOOG, IBM, GSPC and IXIC, plus "
            "a provenance README, into ml/sample_data/. REQUIRES the PyPI packages `bokeh_sampledata` and "
            "`arch==8.0.0` to be installed in the Python that runs this script (they are not project "
            "dependencies: `python -m venv /tmp/sd && /tmp/sd/bin/pip install --no-deps bokeh_sampledata "
            "arch==8.0.0`, then run this script with /tmp/sd/bin/python). Only their data files are read; "
            "the packages are never imported. Output is deterministic."
        ),
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help=f"output directory (default: {DEFAULT_OUT_DIR.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--max-daily-rows",
        type=int,
        default=DEFAULT_MAX_DAILY_ROWS,
        help=f"keep at most this many most recent daily rows per symbol (default: {DEFAULT_MAX_DAILY_ROWS})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the files in --out-dir differ from what would be generated",
    )
    args = parser.parse_args(argv)
    if args.max_daily_rows < 1:
        parser.error("--max-daily-rows must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir: Path = args.out_dir
    outputs = build(out_dir, args.max_daily_rows)

    if args.check:
        stale = [p for p, data in outputs.items() if not p.is_file() or p.read_bytes() != data]
        for p in stale:
            print(f"out of date: {p}", file=sys.stderr)
        return 1 if stale else 0

    out_dir.mkdir(parents=True, exist_ok=True)
    for p, data in outputs.items():
        p.write_bytes(data)
        print(f"wrote {p} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
