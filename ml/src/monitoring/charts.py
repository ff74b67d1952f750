"""The report's pictures: one matplotlib Figure per chart (Agg, no pyplot state), drawn from recorded data only.

Each function takes what a run or the forecast step recorded and returns a Figure, or raises NoData with a
one-line reason the page shows instead. Every key is read defensively: results from older runs (or from a
newer metrics layout) draw what they have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
CLASS_COLORS = {"BEARISH": "#c0392b", "NEUTRAL": "#7f8c8d", "BULLISH": "#27ae60"}


class NoData(ValueError):
    """Nothing recorded to draw this chart from; str() says why."""


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


def equity(charts: Mapping[str, Any] | None) -> Figure:
    eq = (charts or {}).get("equity") or {}
    ts, model, hold = eq.get("ts") or [], eq.get("strategy_net") or [], eq.get("buy_and_hold_net") or []
    if not ts or len(ts) != len(model) or len(ts) != len(hold):
        raise NoData("no equity curve recorded for this run (runs before the report recorded none)")
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
    return fig


def confusion(matrix: Sequence[Sequence[float]] | None, title: str = "Test slice") -> Figure:
    m = np.asarray(matrix if matrix is not None else [], dtype="float64")
    if m.shape != (3, 3):
        raise NoData("no test confusion matrix recorded")
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
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
    return fig


def walk_forward(wf: Mapping[str, Any] | None) -> Figure:
    if not wf:
        raise NoData("walk-forward was off for this run (train with --walk-forward K to see fold scores)")
    folds = [f for f in wf.get("folds") or [] if isinstance(f, Mapping) and "error" not in f]
    if not folds:
        raise NoData(f"no walk-forward fold could be scored ({wf.get('error') or 'every fold failed'})")
    # Like with like: each model score beside the baselines' score of the same metric.
    series = {
        "ensemble": ("test_balanced_accuracy", COLORS["model"]),
        "majority": ("majority_test_balanced_accuracy", COLORS["majority"]),
        "persistence": ("persistence_test_balanced_accuracy", COLORS["persistence"]),
    }
    metric = "balanced accuracy"
    if all(_num(f.get("majority_test_balanced_accuracy")) is None for f in folds):
        series = {
            "ensemble": ("test_accuracy", COLORS["model"]),
            "majority": ("majority_test_accuracy", COLORS["majority"]),
            "persistence": ("persistence_test_accuracy", COLORS["persistence"]),
        }
        metric = "accuracy"
    n = len(folds)
    x = np.arange(n)
    width = 0.8 / len(series)
    fig = _figure()
    ax = fig.add_subplot()
    for k, (name, (key, color)) in enumerate(series.items()):
        values = [_num(f.get(key)) for f in folds]
        ax.bar(
            x + (k - 1) * width,
            [v if v is not None else 0.0 for v in values],
            width,
            color=color,
            label=name,
        )
    if metric == "balanced accuracy":
        ax.axhline(1 / 3, color=COLORS["chance"], lw=0.8, ls=":", label="chance (1/3)")
    labels = [str(f.get("test_start", ""))[:10] for f in folds]
    ax.set_xticks(x, [f"fold {i}\n{lab}" for i, lab in enumerate(labels)], fontsize=8)
    ax.set_ylabel(f"test {metric}")
    ax.set_ylim(0, 1)
    ax.set_title(f"Walk-forward: {n} folds, ensemble beside the baselines ({metric})")
    ax.legend(loc="upper right", fontsize=8, ncol=4)
    ax.grid(axis="y", alpha=0.3)
    return fig


def importance(charts: Mapping[str, Any] | None) -> Figure:
    fi = (charts or {}).get("feature_importance") or {}
    top = [t for t in fi.get("top") or [] if isinstance(t, Sequence) and len(t) == 2]
    if not top:
        raise NoData("no feature importance recorded for this run")
    names = [str(t[0]) for t in top][::-1]
    values = [float(t[1]) for t in top][::-1]
    fig = _figure(7.5, 0.22 * len(names) + 1.2)
    ax = fig.add_subplot()
    ax.barh(names, values, color=COLORS["model"])
    ax.set_xlabel("share of importance")
    ax.set_title(f"Top {len(names)} features: share of the blended importance", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig


def reliability(charts: Mapping[str, Any] | None) -> Figure:
    rel = (charts or {}).get("reliability") or {}
    present = [c for c in CLASSES if (rel.get(c) or {}).get("mean_predicted")]
    if not present:
        raise NoData("no reliability data recorded for this run")
    fig = _figure(5.6, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#444", lw=0.8, ls="--", label="perfectly calibrated")
    for c in present:
        d = rel[c]
        ax.plot(
            d["mean_predicted"],
            d["observed"],
            marker="o",
            color=CLASS_COLORS[c],
            label=f"{c} ({sum(d.get('count') or [])} rows)",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed frequency")
    ax.set_title("Reliability on the test slice")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def history(results: Sequence[Mapping[str, Any]]) -> Figure:
    rows = []
    for r in results:
        m = r.get("metrics") or {}
        rows.append(
            (
                pd.Timestamp(r.get("started_at")) if r.get("started_at") else None,
                _num((m.get("ensemble") or {}).get("test_balanced_accuracy")),
                _num((m.get("majority") or m.get("baseline") or {}).get("test_balanced_accuracy")),
                _num((m.get("persistence") or {}).get("test_balanced_accuracy")),
            )
        )
    rows = [r for r in rows if r[0] is not None and r[1] is not None]
    if not rows:
        raise NoData("no scored runs yet")
    x = list(range(1, len(rows) + 1))
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(x, [float(r[1] or 0.0) for r in rows], color=COLORS["model"], marker="o", label="ensemble")
    for k, name in ((2, "majority"), (3, "persistence")):
        values = [r[k] for r in rows]
        if any(v is not None for v in values):
            ax.plot(
                x,
                [v if v is not None else np.nan for v in values],
                color=COLORS[name],
                marker=".",
                ls="--",
                label=name,
            )
    ax.set_xticks(x, [f"{i}\n{r[0]:%Y-%m-%d}" for i, r in zip(x, rows, strict=True)], fontsize=7)
    ax.set_xlabel("run")
    ax.set_ylabel("test balanced accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"Score history: {len(rows)} run(s)")
    ax.legend(loc="upper right", fontsize=8, ncol=3)
    ax.grid(alpha=0.3)
    return fig


def live(forecasts: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None) -> Figure:
    if not forecasts:
        raise NoData("no forecasts yet (python -m ml.src.inference.forecast_job)")
    frame = pd.DataFrame(list(forecasts))
    frame["bar_ts"] = pd.to_datetime(frame["bar_ts"], utc=True)
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    realised = (
        frame["realised_label"].notna() if "realised_label" in frame else pd.Series(False, index=frame.index)
    )
    hit = realised & (frame["label"] == frame.get("realised_label"))
    for mask, color, name in (
        (realised & hit, "#27ae60", "right"),
        (realised & ~hit, "#c0392b", "wrong"),
        (~realised, "#9aa5b1", "waiting for its horizon"),
    ):
        if mask.any():
            ax.scatter(
                frame.loc[mask, "bar_ts"], frame.loc[mask, "direction_score"], s=22, color=color, label=name
            )
    ax.axhline(0, color="#444", lw=0.6)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("direction score P(bull) - P(bear)")
    s = summary or {}

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, int | float) else "n/a"

    ax.set_title(
        f"Live record: {s.get('n_realised', 0)} of {s.get('n_forecasts', len(frame))} realised; balanced acc "
        f"{fmt(s.get('balanced_accuracy'))} (persistence {fmt(s.get('persistence_balanced_accuracy'))}, chance "
        f"{fmt(s.get('chance_balanced_accuracy'))}); IC {fmt(s.get('ic'))}",
        fontsize=9,
    )
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    _dates(ax)
    return fig
