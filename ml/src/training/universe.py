"""Which (symbol, timeframe) pairs a run covers, and which of them it trains.

- Named pairs (`--symbol`, `--symbols`, `--pairs`, the defaults, the Python API) are all trained: a named pair
  without bars, or with too little history, is a failure the user should hear about.
- The universe (`--all`, the scheduler) is the data: active symbols x requested timeframes that have bars. A
  pair of the universe without bars is recorded as skipped with its reason (so is one with too little history,
  found while preparing it), and an invalid row of `symbols` fails only its own pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from ml.src.data.identifiers import IdentifierError, check_symbol
from ml.src.data.store import TrainingStore
from ml.src.training.pair_result import PairRequest


@dataclass(frozen=True)
class PairOptions:
    """What every pair of a run is asked to do (the flags other than the pair selection)."""

    as_of: datetime | None = None
    lookback_days: float | None = None
    target_bars: int | None = None
    force: bool = False

    def request(self, symbol: str, timeframe: str, explicit: bool) -> PairRequest:
        return PairRequest(
            symbol=symbol,
            timeframe=timeframe,
            as_of=self.as_of,
            lookback_days=self.lookback_days,
            target_bars=self.target_bars,
            force=self.force,
            explicit=explicit,
        )


@dataclass(frozen=True)
class PlannedPair:
    """A pair of the run: trained when `status` is None, else recorded as `status` with `reason`, untrained."""

    request: PairRequest
    status: str | None = None
    reason: str | None = None


def cross(symbols: Iterable[str], timeframes: Iterable[str]) -> list[tuple[str, str]]:
    tfs = list(dict.fromkeys(timeframes))
    return [(s, tf) for s in dict.fromkeys(symbols) for tf in tfs]


def named_pairs(pairs: Iterable[tuple[str, str]], options: PairOptions | None = None) -> list[PlannedPair]:
    """Pairs the user named: every one is trained (and fails if it has no bars)."""
    options = options or PairOptions()
    return [PlannedPair(options.request(s, tf, explicit=True)) for s, tf in dict.fromkeys(pairs)]


def universe_pairs(
    store: TrainingStore,
    symbols: Sequence[str],
    timeframes: Sequence[str],
    options: PairOptions | None = None,
) -> list[PlannedPair]:
    """Active symbols x timeframes: pairs with bars are trained, the others skipped; invalid symbols fail."""
    options = options or PairOptions()
    valid: list[str] = []
    invalid: dict[str, str] = {}
    for symbol in dict.fromkeys(symbols):
        try:
            valid.append(check_symbol(symbol))
        except IdentifierError as exc:
            invalid[symbol] = f"{exc} (a row of the symbols table: fix it or set active = false)"
    have = store.pairs_with_bars(valid, timeframes) if valid else set()
    out: list[PlannedPair] = []
    for symbol, tf in cross(symbols, timeframes):
        req = options.request(symbol, tf, explicit=False)
        if symbol in invalid:
            out.append(PlannedPair(req, "failed", f"{symbol}/{tf}: {invalid[symbol]}"))
        elif (symbol, tf) not in have:
            out.append(PlannedPair(req, "skipped", f"no bars in the {store.name} store"))
        else:
            out.append(PlannedPair(req))
    return out


def loaded_pairs_line(store: TrainingStore, timeframes: Sequence[str]) -> str:
    """What the store can train, in one line for an error: `GOOG (d1 w1), IBM (d1)`, or how to load bars.

    Named pairs without bars usually mean a symbol the store does not have (the old SPY/QQQ/AAPL defaults on the
    sample data): saying what IS loaded turns "no bars" into something the user can act on."""
    valid: list[str] = []
    for symbol in store.list_active_symbols():
        try:
            valid.append(check_symbol(symbol))
        except IdentifierError:
            continue  # an invalid row never has bars the job can read
    have = store.pairs_with_bars(valid, timeframes) if valid else set()
    parts = []
    for symbol in valid:
        tfs = [tf for tf in timeframes if (symbol, tf) in have]
        if tfs:
            parts.append(f"{symbol} ({' '.join(tfs)})")
    if not parts:
        return (
            f"the {store.name} store has no bars yet (load some: python -m ml.src.data.load_bars "
            "ml/sample_data/*.csv, or make run)"
        )
    return f"the {store.name} store has bars for {', '.join(parts)}"
