"""What every page of the report is made of: the style, the site being written, a pair's data, escaping and
number formats, the verdict and flag cells."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.src.data.identifiers import check_pair
from ml.src.inference.live_record import summarise
from ml.src.monitoring.report import PairHealth

CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:24px;color:#1b1f24;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 6px} p.note{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:13px} th,td{border-bottom:1px solid #ddd;padding:5px 9px;text-align:left}
th{background:#f3f5f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
.flag{display:inline-block;white-space:nowrap;padding:1px 6px;border-radius:3px;font-size:12px;margin-right:3px;color:#fff}
.flag-OK{background:#2e7d32} .flag-RETRAIN{background:#b26a00} .flag-DISABLE{background:#b71c1c}
.flag-LIVE{background:#6a1b9a} .flag-NO-SKILL,.flag-BELOW-BASELINE{background:#8d6e63}
.flag-WORSE{background:#b71c1c} .flag-UNTRAINED{background:#757575} .verdict{font-weight:bold}
.latest{border-left:4px solid #b26a00;padding:2px 12px;margin:18px 0} details{margin-top:6px;font-size:13px}
figure{margin:10px 0 22px} figcaption{font-size:13px;color:#444;max-width:760px} img{border:1px solid #e3e3e3}
.nodata{color:#8a6d3b;background:#fcf8e3;padding:8px 12px;border-radius:4px;font-size:13px}
"""


@dataclass
class ReportSite:
    out_dir: Path
    pages: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.out_dir.rglob("*") if p.is_file())

    def summary_line(self) -> str:
        return (
            f"report: {self.out_dir / 'index.html'} ({len(self.pages)} pages, {len(self.images)} charts, "
            f"{self.size_bytes / 1024:.0f} KiB, {self.seconds:.1f}s)"
        )


def majority_of(metrics: dict[str, Any]) -> dict[str, Any]:
    """The majority baseline's scores ("baseline" in results written before issue 9 named it "majority")."""
    return metrics.get("majority") or metrics.get("baseline") or {}


def verdict_q_of(metrics: dict[str, Any] | None) -> str:
    """The verdict's Benjamini-Hochberg q-value across its run's pairs, formatted; '-' when not recorded."""
    v = (metrics or {}).get("verdict")
    q = v.get("q_value") if isinstance(v, dict) else None
    return f"{q:.3f}" if isinstance(q, int | float) and not isinstance(q, bool) else "-"


def verdict_of(metrics: dict[str, Any] | None) -> str:
    """The result's verdict (skill / no-skill / worse) when the run recorded one, else 'n/a'."""
    v = (metrics or {}).get("verdict")
    if isinstance(v, dict):
        v = v.get("verdict") or v.get("label")
    return str(v) if isinstance(v, str) and v else "n/a"


def fmt(v: Any, pct: bool = False) -> str:
    if not isinstance(v, int | float):
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def pair_slug(symbol: str, timeframe: str) -> str:
    """The pair's file name stem; only for valid identifiers (a ledger symbol such as ../../x never gets here)."""
    symbol, timeframe = check_pair(symbol, timeframe)
    return f"{symbol}_{timeframe}"


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def flags_html(h: PairHealth | None) -> str:
    flags = h.shown if h else ["UNTRAINED"]  # no succeeded run: no champion, nothing is OK
    return "".join(f'<span class="flag flag-{esc(f)}">{esc(f)}</span>' for f in flags)


@dataclass
class PairData:
    """A pair's page: its champion's run and, when it differs, its latest run (failed, not promoted ...)."""

    symbol: str
    timeframe: str
    history: list[dict[str, Any]]  # succeeded results, oldest first
    champion_result: dict[str, Any] | None  # the result row of the champion's run
    latest: dict[str, Any] | None  # the latest run's result row when it is not the champion's run
    champion: dict[str, Any] | None
    forecasts: list[dict[str, Any]]
    health: PairHealth | None
    # the pair's latest finished replay (store.latest_replay: its pair row, forecasts under "forecasts") and
    # what the page draws of it (report_data.replay_series); None when the pair was never replayed
    replay: dict[str, Any] | None = None
    replay_series: dict[str, Any] | None = None

    @property
    def result(self) -> dict[str, Any]:
        """The run whose numbers the index shows: the champion's, else the latest succeeded one."""
        if self.champion_result is not None:
            return self.champion_result
        if self.latest is not None and self.latest.get("status") == "succeeded":
            return self.latest
        return {}

    @property
    def is_champion_run(self) -> bool:
        return self.champion_result is not None

    @property
    def live(self) -> dict[str, Any]:
        return summarise(self.forecasts).to_dict() if self.forecasts else {}

    def latest_label(self) -> str:
        """What the latest run is, beside the champion: 'champion' when it is the champion's run."""
        r = self.latest
        if r is None:
            return "champion" if self.champion_result is not None else "none"
        status = str(r.get("status"))
        if status != "succeeded":
            return status
        return "not promoted" if self.champion is not None else "no champion"

    def latest_note(self) -> str:
        r = self.latest or {}
        head = f"Latest run {r.get('run_id', '?')} started {r.get('started_at', '?')}"
        status = str(r.get("status"))
        if status == "failed":
            text = f"{head}: failed ({r.get('error') or 'no reason recorded'}); the champion is unchanged."
        elif status == "skipped":
            text = f"{head}: skipped ({r.get('error') or 'no reason recorded'}); the champion is unchanged."
        elif self.champion is None:
            text = f"{head}: succeeded, but the pair has no champion."
        else:
            promo = r.get("promotion") or {}
            text = f"{head}: succeeded, not promoted ({promo.get('reason') or 'no promotion decision recorded'})."
        wf = (r.get("walk_forward") or {}).get("folds")
        if wf and not (self.champion_result or {}).get("walk_forward"):
            text += f" It ran a walk-forward of {len(wf)} folds, which the champion's run lacks."
        return text


CHARTS: list[tuple[str, str, str]] = [
    (
        "equity",
        "Equity curve on the test slice",
        "The ensemble's calls traded on non-overlapping holds of the horizon (long BULLISH, short BEARISH, flat "
        "NEUTRAL), net of fees and slippage, against buy-and-hold on the same schedule.",
    ),
    (
        "confusion",
        "Confusion matrix",
        "Rows are what happened, columns what the ensemble said, on the test slice. A useful model is heavy on "
        "the diagonal in every row, not only in the most common class.",
    ),
    (
        "walk_forward",
        "Walk-forward folds",
        "Each fold refits everything on the rows before it and scores the next block; the baselines are scored "
        "in the same metric on the same rows.",
    ),
    (
        "importance",
        "Feature importance",
        "Which inputs the members split on most (RandomForest impurity, LightGBM gain), blended by the ensemble "
        "weights. Importance is not causality.",
    ),
    (
        "reliability",
        "Reliability diagram",
        "Test rows binned by predicted probability: a calibrated model's points lie on the diagonal.",
    ),
    (
        "history",
        "Score history",
        "Test balanced accuracy of each training run of this pair, beside the baselines of the same run.",
    ),
    (
        "live",
        "Live forecast record",
        "Each forecast the champions made at a closed bar: its direction score, and once its horizon passed "
        "whether its label was right. This is out-of-sample evidence no backtest gives.",
    ),
]

REPLAY_CHARTS: list[tuple[str, str, str]] = [
    (
        "replay_equity",
        "Replay: equity curve against buy-and-hold",
        "The replay's calls (each bar forecast by the champion of that moment, python -m ml.src.training.replay) "
        "traded on non-overlapping holds of the horizon, net of fees and slippage, against buy-and-hold on the "
        "same schedule, over the whole replay. The last values are the replay record's net total returns + 1.",
    ),
    (
        "replay_rolling",
        "Replay: rolling hit rate and IC",
        "Over the trailing window of realised replay forecasts: the hit rate of the directional calls beside "
        "persistence's (the label of the h bars up to the bar), and the Spearman IC of P(bull) - P(bear) with "
        "the realised return beside 0, what a forecast without information scores.",
    ),
]


PAIR_WIDE = frozenset({"history", "live"})  # drawn once per page, from every run / forecast of the pair
