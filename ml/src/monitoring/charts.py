"""The report's pictures: one matplotlib Figure per chart (Agg, no pyplot state), drawn from recorded data only.

Each function takes what a run or the forecast step recorded and returns a Chart: the Figure and the table of
the numbers it plots (the page prints it under the picture: its text alternative, and what the tests compare
with the run's `--json`). Each function builds the table first and plots those same values, so picture and
table cannot disagree. Without data it raises NoData with a one-line reason the page shows instead. Every key is
read defensively: results from older runs (or from a newer metrics layout) draw what they have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

CLASSES = ("BEARISH", "NEUTRAL", "BULLISH")
COLORS = {
    "model": "#1f5fa8",
    "hold": "#8c8c8c",
    "majority": "#d08c2c",
    "persistence": "#7a4fa0",
    "chance": "#b33",
}
# the walk-forward chart's bars: every model and baseline a fold scores, in this order (ml.src.training.scoring)
FOLD_SERIES = {
    "ensemble": COLORS["model"],
    "equal_weight": "#6b9bd2",
    "rf": "#2e8b57",
    "gb": "#8fbc8f",
    "majority": COLORS["majority"],
    "persistence": COLORS["persistence"],
    "prior": "#c8a2c8",
}
CHANCE = 1 / 3  # balanced accuracy of any constant call over three classes
CLASS_COLORS = {"BEARISH": "#c0392b", "NEUTRAL": "#7f8c8d", "BULLISH": "#27ae60"}


class NoData(ValueError):
    """Nothing recorded to draw this chart from; str() says why."""


@dataclass
class ChartTable:
    """The numbers a chart plots: a header and one row per plotted point (None = not recorded)."""

    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)


@dataclass
class Chart:
    figure: Figure
    table: ChartTable


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and np.isfinite(v) else None


def _figure(w: float = 7.5, h: float = 3.6) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    return fig


def _dates(ax: Any) -> None:
    """Readable, non-overlapping date ticks (2009, Feb, Mar ... instead of full dates side by side)."""
    locator = AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def equity(charts: Mapping[str, Any] | None) -> Chart:
    eq = (charts or {}).get("equity") or {}
    ts, model, hold = eq.get("ts") or [], eq.get("strategy_net") or [], eq.get("buy_and_hold_net") or []
    if not ts or len(ts) != len(model) or len(ts) != len(hold):
        raise NoData("no equity curve recorded for this run (runs before the report recorded none)")
    table = ChartTable(
        ["hold ends", "strategy, net equity", "buy and hold, net equity"],
        [[str(t), _num(m), _num(h)] for t, m, h in zip(ts, model, hold, strict=True)],
    )
    model = [r[1] for r in table.rows]
    hold = [r[2] for r in table.rows]
    x = pd.to_datetime(pd.Series(ts), utc=True)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(x, model, color=COLORS["model"], lw=1.8, marker="o", ms=2.5, label="strategy, net of costs")
    ax.plot(x, hold, color=COLORS["hold"], lw=1.4, ls="--", label="buy and hold, net")
    ax.axhline(1.0, color="#444", lw=0.6)
    _dates(ax)
    ax.set_ylabel("equity (start = 1)")
    ax.set_title(
        f"Test slice: {len(ts)} holds of {eq.get('horizon', '?')} bars, {eq.get('cost_bps_one_way', '?')} bps per side"
    )
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return Chart(fig, table)


def confusion(matrix: Sequence[Sequence[float]] | None, title: str = "Test slice") -> Chart:
    try:
        m = np.asarray(matrix if matrix is not None else [], dtype="float64")
    except (TypeError, ValueError):
        raise NoData("no test confusion matrix recorded") from None
    if m.shape != (3, 3):
        raise NoData("no test confusion matrix recorded")
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    table = ChartTable(
        ["true class", *(f"predicted {c}" for c in CLASSES), "rows", "recall"],
        [
            [c, *(int(v) for v in m[i]), int(rows[i, 0]), float(share[i, i]) if rows[i, 0] > 0 else None]
            for i, c in enumerate(CLASSES)
        ],
    )
    fig = _figure(5.2, 4.2)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(3):
        for j in range(3):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if share[i, j] > 0.55 else "#111",
            )
    ax.set_xticks(range(3), CLASSES)
    ax.set_yticks(range(3), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: counts and share of each true class")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return Chart(fig, table)


def fold_scores(fold: Mapping[str, Any], name: str) -> float | None:
    """A fold's test balanced accuracy of model or baseline `name` (walk_forward.run_fold: metrics.<name>)."""
    metrics = fold.get("metrics")
    entry = metrics.get(name) if isinstance(metrics, Mapping) else None
    return _num(entry.get("balanced_accuracy")) if isinstance(entry, Mapping) else None


def walk_forward(wf: Mapping[str, Any] | None, off_reason: str | None = None) -> Chart:
    """Test balanced accuracy of every fold, each model beside the baselines of the same rows, over chance."""
    if not wf:
        raise NoData(off_reason or "walk-forward was off for this run")
    folds = [f for f in wf.get("folds") or [] if isinstance(f, Mapping)]
    names = [n for n in FOLD_SERIES if any(fold_scores(f, n) is not None for f in folds)]
    ok = [f for f in folds if "error" not in f and any(fold_scores(f, n) is not None for n in names)]
    if not ok:
        raise NoData(f"no walk-forward fold could be scored ({wf.get('error') or 'every fold failed'})")
    table = ChartTable(
        ["fold", "test from", "test to", *names, "error"],
        [
            [
                f.get("fold", i),
                str(f.get("test_start", ""))[:10],
                str(f.get("test_end", ""))[:10],
                *(fold_scores(f, n) for n in names),
                f.get("error"),
            ]
            for i, f in enumerate(folds)
        ],
    )
    plotted = [row for row, f in zip(table.rows, folds, strict=True) if f in ok]
    n = len(plotted)
    x = np.arange(n)
    width = 0.84 / len(names)
    fig = _figure()
    ax = fig.add_subplot()
    for k, name in enumerate(names):
        values = [row[3 + k] for row in plotted]
        ax.bar(
            x + (k - (len(names) - 1) / 2) * width,
            [v if v is not None else np.nan for v in values],  # nothing recorded: no bar, never a zero
            width,
            color=FOLD_SERIES[name],
            label=name,
        )
    ax.axhline(CHANCE, color=COLORS["chance"], lw=1.0, ls=":", label="chance (1/3)")
    ax.set_xticks(x, [f"fold {row[0]}\n{row[1]}" for row in plotted], fontsize=8)
    ax.set_ylabel("test balanced accuracy")
    ax.set_ylim(0, 1)
    skipped = len(folds) - n
    ax.set_title(
        f"Walk-forward: {n} fold(s) scored{f', {skipped} failed' if skipped else ''}; balanced accuracy of "
        "each model beside the baselines",
        fontsize=10,
    )
    ax.legend(loc="upper right", fontsize=7, ncol=4)
    ax.grid(axis="y", alpha=0.3)
    return Chart(fig, table)


def importance(charts: Mapping[str, Any] | None) -> Chart:
    fi = (charts or {}).get("feature_importance") or {}
    top = [t for t in fi.get("top") or [] if isinstance(t, Sequence) and len(t) == 2]
    if not top:
        raise NoData("no feature importance recorded for this run")
    table = ChartTable(["feature", "share of importance"], [[str(t[0]), _num(t[1])] for t in top])
    names = [str(r[0]) for r in table.rows][::-1]
    values = [r[1] if r[1] is not None else np.nan for r in table.rows][::-1]
    fig = _figure(7.5, 0.22 * len(names) + 1.2)
    ax = fig.add_subplot()
    ax.barh(names, values, color=COLORS["model"])
    ax.set_xlabel("share of importance")
    ax.set_title(f"Top {len(names)} features: share of the blended importance", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return Chart(fig, table)


def reliability(charts: Mapping[str, Any] | None) -> Chart:
    rel = (charts or {}).get("reliability") or {}
    present = [c for c in CLASSES if (rel.get(c) or {}).get("mean_predicted")]
    if not present:
        raise NoData("no reliability data recorded for this run")
    table = ChartTable(["class", "bin", "mean predicted", "observed frequency", "rows"])
    for c in present:
        d = rel[c]
        counts = list(d.get("count") or [])
        for i, (p, o) in enumerate(zip(d["mean_predicted"], d.get("observed") or [], strict=False)):
            table.rows.append([c, i, _num(p), _num(o), counts[i] if i < len(counts) else None])
    fig = _figure(5.6, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#444", lw=0.8, ls="--", label="perfectly calibrated")
    for c in present:
        mine = [r for r in table.rows if r[0] == c]
        ax.plot(
            [r[2] if r[2] is not None else np.nan for r in mine],
            [r[3] if r[3] is not None else np.nan for r in mine],
            marker="o",
            color=CLASS_COLORS[c],
            label=f"{c} ({sum(r[4] or 0 for r in mine)} rows)",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed frequency")
    ax.set_title("Reliability on the test slice")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return Chart(fig, table)


def history(results: Sequence[Mapping[str, Any]]) -> Chart:
    """Test balanced accuracy of each succeeded run of the pair (oldest first), beside its baselines."""
    table = ChartTable(["run", "started", "run id", "ensemble", "majority", "persistence"])
    for r in results:
        m = r.get("metrics") or {}
        started = pd.Timestamp(r.get("started_at")) if r.get("started_at") else None
        ensemble = _num((m.get("ensemble") or {}).get("test_balanced_accuracy"))
        if started is None or ensemble is None:
            continue
        table.rows.append(
            [
                len(table.rows) + 1,
                started.isoformat(),
                str(r.get("run_id", "")),
                ensemble,
                _num((m.get("majority") or m.get("baseline") or {}).get("test_balanced_accuracy")),
                _num((m.get("persistence") or {}).get("test_balanced_accuracy")),
            ]
        )
    if not table.rows:
        raise NoData("no scored runs yet")
    x = [row[0] for row in table.rows]
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(x, [row[3] for row in table.rows], color=COLORS["model"], marker="o", label="ensemble")
    for k, name in ((4, "majority"), (5, "persistence")):
        values = [row[k] for row in table.rows]
        if any(v is not None for v in values):
            ax.plot(
                x,
                [v if v is not None else np.nan for v in values],
                color=COLORS[name],
                marker=".",
                ls="--",
                label=name,
            )
    ax.axhline(CHANCE, color=COLORS["chance"], lw=0.8, ls=":", label="chance (1/3)")
    ax.set_xticks(x, [f"{row[0]}\n{row[1][:10]}" for row in table.rows], fontsize=7)
    ax.set_xlabel("run")
    ax.set_ylabel("test balanced accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"Score history: {len(table.rows)} run(s)")
    ax.legend(loc="upper right", fontsize=8, ncol=4)
    ax.grid(alpha=0.3)
    return Chart(fig, table)


def live(forecasts: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None) -> Chart:
    if not forecasts:
        raise NoData("no forecasts yet (python -m ml.src.inference.forecast_job)")
    table = ChartTable(["bar", "label", "direction score", "realised label", "call"])
    for f in sorted(forecasts, key=lambda r: (str(r.get("bar_ts")), r.get("model_version_id") or 0)):
        realised = f.get("realised_label")
        table.rows.append(
            [
                str(f.get("bar_ts")),
                f.get("label"),
                _num(f.get("direction_score")),
                realised,
                "waiting for its horizon"
                if realised is None
                else "right"
                if f.get("label") == realised
                else "wrong",
            ]
        )
    x = pd.to_datetime(pd.Series([row[0] for row in table.rows]), utc=True)
    y = np.array([row[2] if row[2] is not None else np.nan for row in table.rows], dtype="float64")
    calls = np.array([row[4] for row in table.rows])
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    for name, color in (("right", "#27ae60"), ("wrong", "#c0392b"), ("waiting for its horizon", "#9aa5b1")):
        mask = calls == name
        if mask.any():
            ax.scatter(x[mask], y[mask], s=22, color=color, label=name)
    ax.axhline(0, color="#444", lw=0.6)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("direction score P(bull) - P(bear)")
    s = summary or {}

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, int | float) else "n/a"

    ax.set_title(
        f"Live record: {s.get('n_realised', 0)} of {s.get('n_forecasts', len(table.rows))} realised; balanced acc "
        f"{fmt(s.get('balanced_accuracy'))} (persistence {fmt(s.get('persistence_balanced_accuracy'))}, chance "
        f"{fmt(s.get('chance_balanced_accuracy'))}); IC {fmt(s.get('ic'))}",
        fontsize=9,
    )
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    _dates(ax)
    return Chart(fig, table)


def replay_equity(series: Mapping[str, Any] | None) -> Chart:
    """The replay's calls traded over the whole replay against buy-and-hold (report_data.replay_series)."""
    eq = (series or {}).get("equity") or {}
    ts, model, hold = eq.get("ts") or [], eq.get("strategy_net") or [], eq.get("buy_and_hold_net") or []
    if not ts or len(ts) != len(model) or len(ts) != len(hold):
        raise NoData("no realised replay forecasts for this pair (python -m ml.src.training.replay)")
    table = ChartTable(
        ["hold starts", "replay calls, net equity", "buy and hold, net equity"],
        [[str(t), _num(m), _num(h)] for t, m, h in zip(ts, model, hold, strict=True)],
    )
    x = pd.to_datetime(pd.Series(ts), utc=True)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(
        x,
        [r[1] for r in table.rows],
        color=COLORS["model"],
        lw=1.8,
        marker="o",
        ms=2.5,
        label="replay calls, net",
    )
    ax.plot(x, [r[2] for r in table.rows], color=COLORS["hold"], lw=1.4, ls="--", label="buy and hold, net")
    ax.axhline(1.0, color="#444", lw=0.6)
    _dates(ax)
    ax.set_ylabel("equity (start = 1)")
    ax.set_title(
        f"Replay: {len(ts)} holds of {eq.get('horizon', '?')} bars, {eq.get('cost_bps_one_way', '?')} bps per side"
    )
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return Chart(fig, table)


def replay_rolling(series: Mapping[str, Any] | None) -> Chart:
    """Rolling hit rate (beside persistence's) and IC (beside 0) over the replay (report_data.replay_series)."""
    roll = (series or {}).get("rolling") or {}
    ts = roll.get("ts") or []
    if not ts:
        raise NoData(
            f"fewer realised replay forecasts than the rolling window ({roll.get('window', '?')}) for this pair"
        )
    table = ChartTable(
        ["window ends", "hit rate", "persistence hit rate", "IC", "IC baseline (no information)"],
        [
            [str(t), _num(h), _num(p), _num(ic), 0.0]
            for t, h, p, ic in zip(
                ts,
                roll.get("hit_rate") or [],
                roll.get("persistence_hit_rate") or [],
                roll.get("ic") or [],
                strict=True,
            )
        ],
    )
    x = pd.to_datetime(pd.Series(ts), utc=True)

    def col(i: int) -> np.ndarray:
        return np.array([r[i] if r[i] is not None else np.nan for r in table.rows], dtype="float64")

    fig = _figure(7.5, 4.6)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(x, col(1), color=COLORS["model"], lw=1.6, label="hit rate of the calls")
    top.plot(x, col(2), color=COLORS["persistence"], lw=1.2, ls="--", label="persistence")
    top.axhline(0.5, color="#444", lw=0.6)
    top.set_ylabel("hit rate")
    top.legend(loc="best", fontsize=8)
    top.grid(alpha=0.3)
    bottom.plot(x, col(3), color=COLORS["model"], lw=1.6, label="IC")
    bottom.axhline(0.0, color=COLORS["chance"], lw=0.8, ls="--", label="no information (0)")
    bottom.set_ylabel("Spearman IC")
    bottom.legend(loc="best", fontsize=8)
    bottom.grid(alpha=0.3)
    _dates(bottom)
    top.set_title(f"Replay, trailing {roll.get('window', '?')} realised forecasts", fontsize=9)
    return Chart(fig, table)
