"""A simple, honest trading read of test-slice direction predictions. Pure functions.

Every h rows (0, h, 2h, ...) the prediction at that row opens a position held for the horizon, so holds never
overlap and each market move is counted once. BULLISH -> long, BEARISH -> short (flat if shorts are not allowed),
NEUTRAL -> flat. A period earns direction * r[t], with r[t] = close[t + h] / close[t] - 1 (labels.forward_returns).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ml.src.training.labels import CLASS_CODES, CLASSES, DIRECTION


def _json_float(x: float | None) -> float | None:
    """None for NaN/inf so the value survives strict JSON encoders."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class PeriodStats:
    """Performance of one return stream over the non-overlapping decision periods."""

    total_return: float
    sharpe: float | None
    max_drawdown: float
    win_rate: float | None
    n_trades: int
    n_periods: int
    exposure: float | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("total_return", "sharpe", "max_drawdown", "win_rate", "exposure"):
            d[k] = _json_float(d[k])
        return d


@dataclass(frozen=True)
class GrossNet:
    gross: PeriodStats
    net: PeriodStats

    def to_dict(self) -> dict[str, Any]:
        return {"gross": self.gross.to_dict(), "net": self.net.to_dict()}


@dataclass(frozen=True)
class TradingReport:
    """The model's strategy (gross/net of costs), buy-and-hold on the same schedule, and the settings used."""

    gross: PeriodStats
    net: PeriodStats
    buy_and_hold: GrossNet
    fee_bps: float
    slippage_bps: float
    allow_short: bool
    horizon: int
    bars_per_year: float
    n_skipped: int  # scheduled decision rows dropped because their realised return is unknown

    def to_dict(self) -> dict[str, Any]:
        return {
            "gross": self.gross.to_dict(),
            "net": self.net.to_dict(),
            "buy_and_hold": self.buy_and_hold.to_dict(),
            "fee_bps": float(self.fee_bps),
            "slippage_bps": float(self.slippage_bps),
            "allow_short": bool(self.allow_short),
            "horizon": int(self.horizon),
            "bars_per_year": float(self.bars_per_year),
            "n_skipped": int(self.n_skipped),
        }


def max_drawdown(period_returns: np.ndarray) -> float:
    """Largest peak-to-trough fall of the compounded equity curve starting at 1.0, as a positive fraction."""
    r = np.asarray(period_returns, dtype="float64")
    equity = np.concatenate(([1.0], np.cumprod(1.0 + r)))
    peak = np.maximum.accumulate(equity)
    return float(np.max(1.0 - equity / peak))


def annualised_sharpe(period_returns: np.ndarray, periods_per_year: float) -> float | None:
    """mean / sample std of per-period returns times sqrt(periods per year); None when undefined."""
    r = np.asarray(period_returns, dtype="float64")
    # Exact-equality check: a float std of identical values can come out as 1e-18 and explode the ratio.
    if r.size < 2 or np.all(r == r[0]):
        return None
    std = float(np.std(r, ddof=1))
    if not std > 0:
        return None
    return _json_float(float(np.mean(r)) / std * math.sqrt(periods_per_year))


def _period_stats(period_returns: np.ndarray, in_trade: np.ndarray, periods_per_year: float) -> PeriodStats:
    n = int(period_returns.size)
    trades = period_returns[in_trade]
    return PeriodStats(
        total_return=float(np.prod(1.0 + period_returns) - 1.0),
        sharpe=annualised_sharpe(period_returns, periods_per_year),
        max_drawdown=max_drawdown(period_returns),
        win_rate=float(np.mean(trades > 0)) if trades.size else None,
        n_trades=int(trades.size),
        n_periods=n,
        exposure=float(np.mean(in_trade)) if n else None,
    )


def _net(directions: np.ndarray, returns: np.ndarray, one_way: float) -> np.ndarray:
    # Costs follow turnover: a position pays one way when it opens and one way when it closes (a flip pays
    # both), each charged to the position's own period. Holding the same direction into the next period is
    # not a new trade, so buy-and-hold pays one round trip in all, not one per period.
    prev = np.concatenate(([0.0], directions[:-1]))
    nxt = np.concatenate((directions[1:], [0.0]))
    entry = np.where(directions != prev, np.abs(directions), 0.0)
    exit_ = np.where(directions != nxt, np.abs(directions), 0.0)
    return directions * returns - one_way * (entry + exit_)


def _gross_net(
    directions: np.ndarray, returns: np.ndarray, one_way: float, periods_per_year: float
) -> GrossNet:
    in_trade = directions != 0
    gross = directions * returns
    net = _net(directions, returns, one_way)
    return GrossNet(
        gross=_period_stats(gross, in_trade, periods_per_year),
        net=_period_stats(net, in_trade, periods_per_year),
    )


def _directions(codes: np.ndarray, allow_short: bool) -> np.ndarray:
    directions = DIRECTION[np.asarray(codes).astype(np.int64)]
    if not allow_short:
        directions = np.where(codes == CLASS_CODES["BEARISH"], 0.0, directions)
    return directions


def fit_confidence_threshold(
    pred_codes: np.ndarray,
    score: np.ndarray,
    realised_returns: np.ndarray,
    *,
    horizon: int,
    fee_bps: float = 5,
    slippage_bps: float = 5,
    allow_short: bool = True,
    quantiles: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9),
) -> tuple[float, float | None]:
    """The |direction score| below which the strategy stays flat, chosen on the given (validation) rows.

    Candidates: 0 (always trade the predicted class), the given quantiles of |score| on these rows, and inf
    (never trade). The one with the highest mean net return per holding period wins, averaged over the h
    possible schedules (offsets 0..h-1) so every row counts; ties go to the higher threshold (fewer trades).
    Returns (threshold, its quantile of |score|; 0 for "always", None for "never").
    """
    codes = np.asarray(pred_codes).ravel()
    s = np.abs(np.asarray(score, dtype="float64").ravel())
    r = np.asarray(realised_returns, dtype="float64").ravel()
    one_way = (float(fee_bps) + float(slippage_bps)) / 1e4
    candidates: list[tuple[float, float | None]] = [(0.0, 0.0)]
    if s.size:
        candidates += [(float(np.quantile(s, q)), q) for q in quantiles]
    candidates.append((math.inf, None))
    best: tuple[float, float | None] = (math.inf, None)
    best_mean = 0.0  # "never trade" earns exactly 0
    for tau, q in reversed(candidates[:-1]):  # highest threshold first, so a tie keeps it
        means = []
        for offset in range(int(horizon)):
            rows = np.arange(offset, r.size, int(horizon))
            rows = rows[np.isfinite(r[rows])]
            if rows.size == 0:
                continue
            d = np.where(s[rows] >= tau, _directions(codes[rows], allow_short), 0.0)
            means.append(float(_net(d, r[rows], one_way).mean()))
        if means and float(np.mean(means)) > best_mean + 1e-15:
            best, best_mean = (tau, q), float(np.mean(means))
    return best


def trading_metrics(
    pred_codes: np.ndarray,
    realised_returns: np.ndarray,
    *,
    horizon: int,
    bars_per_year: float,
    fee_bps: float = 5,
    slippage_bps: float = 5,
    allow_short: bool = True,
    score: np.ndarray | None = None,
    threshold: float | None = None,
) -> TradingReport:
    """Trade the predicted classes on the non-overlapping schedule rows 0, h, 2h, ... and score them.

    pred_codes are class codes aligned with labels.CLASSES (0 BEARISH, 1 NEUTRAL, 2 BULLISH); realised_returns the
    h-bar forward return of each row. Scheduled rows with a non-finite return are skipped, not re-aligned, so the
    remaining holds still never overlap. Opening or closing a position costs (fee_bps + slippage_bps) / 1e4 of
    its notional, so an isolated trade pays a round trip of twice that. With `score` and `threshold`, rows
    whose |score| is below the threshold stay flat (fit_confidence_threshold chooses it on another slice).
    """
    codes = np.asarray(pred_codes).ravel()
    r = np.asarray(realised_returns, dtype="float64").ravel()
    if codes.shape != r.shape:
        raise ValueError(f"pred_codes and realised_returns lengths differ: {codes.size} != {r.size}")
    if int(horizon) != horizon or horizon <= 0:
        raise ValueError("horizon must be a positive integer")
    if not bars_per_year > 0:
        raise ValueError("bars_per_year must be positive")
    if fee_bps < 0 or slippage_bps < 0:
        raise ValueError("fee_bps and slippage_bps must be non-negative")
    if codes.size and not np.isin(codes, np.arange(len(CLASSES))).all():
        raise ValueError(f"pred_codes must be class codes 0..{len(CLASSES) - 1}")
    horizon = int(horizon)

    rows = np.arange(0, r.size, horizon)
    known = np.isfinite(r[rows])
    rows = rows[known]
    period_returns = r[rows]

    directions = _directions(codes[rows], allow_short)
    if score is not None and threshold is not None:
        conf = np.abs(np.asarray(score, dtype="float64").ravel())
        if conf.shape != r.shape:
            raise ValueError(f"score and realised_returns lengths differ: {conf.size} != {r.size}")
        directions = np.where(conf[rows] >= threshold, directions, 0.0)

    one_way = (float(fee_bps) + float(slippage_bps)) / 1e4
    periods_per_year = float(bars_per_year) / horizon
    model = _gross_net(directions, period_returns, one_way, periods_per_year)
    hold = _gross_net(np.ones_like(period_returns), period_returns, one_way, periods_per_year)
    return TradingReport(
        gross=model.gross,
        net=model.net,
        buy_and_hold=hold,
        fee_bps=float(fee_bps),
        slippage_bps=float(slippage_bps),
        allow_short=bool(allow_short),
        horizon=horizon,
        bars_per_year=float(bars_per_year),
        n_skipped=int((~known).sum()),
    )
