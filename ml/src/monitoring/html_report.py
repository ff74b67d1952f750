"""The static report: index.html (every pair with its verdict and flags) and one page of charts per pair.

Plain HTML with relative links, inline CSS, PNG charts and no JavaScript: it opens from disk or behind any static
server. Every chart sits in a <figure> with its caption and a <table> of the numbers it plots. Written to a
temporary folder beside DIR and moved into place at the end, so a failed build never leaves half a report; the
files are world-readable (folders 0755, files 0644) for a static server running as another user. DIR is replaced
only when this report wrote it (the MARKER file inside it) or it is empty: anything else is refused.
Everything drawn comes from what the store records (results, champion, forecasts); a symbol or timeframe read
back from the store names a file only after the identifier check (ml.src.data.identifiers).
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.settings import TIMEFRAMES, Settings
from ml.src.data.identifiers import check_pair
from ml.src.data.store import TrainingStore
from ml.src.inference.live_record import summarise
from ml.src.monitoring import charts
from ml.src.monitoring.report import PairHealth, build_report, stored_pair
from ml.src.monitoring.report_dir import MARKER, MARKER_TEXT, check_report_dir
from ml.src.training.report_data import replay_series

DIR_MODE, FILE_MODE = 0o755, 0o644


def _publish_modes(root: Path) -> None:
    """Folders 0755 and files 0644 whatever the umask (mkdtemp makes 0700): a static server's user reads them."""
    os.chmod(root, DIR_MODE)
    for path in root.rglob("*"):
        os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)


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


def _fmt(v: Any, pct: bool = False) -> str:
    if not isinstance(v, int | float):
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def pair_slug(symbol: str, timeframe: str) -> str:
    """The pair's file name stem; only for valid identifiers (a ledger symbol such as ../../x never gets here)."""
    symbol, timeframe = check_pair(symbol, timeframe)
    return f"{symbol}_{timeframe}"


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def _flags(h: PairHealth | None) -> str:
    flags = h.shown if h else ["UNTRAINED"]  # no succeeded run: no champion, nothing is OK
    return "".join(f'<span class="flag flag-{_e(f)}">{_e(f)}</span>' for f in flags)


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


PAIR_WIDE = frozenset({"history", "live"})  # drawn once per page, from every run / forecast of the pair


def _wf_off_reason(pair: PairData, result: dict[str, Any]) -> str:
    if (pair.latest or {}).get("walk_forward") and result is not pair.latest:
        return (
            "walk-forward was off for the champion's run; the latest run's folds are under Latest run below"
        )
    if any(r.get("walk_forward") for r in pair.history) or (pair.latest or {}).get("walk_forward"):
        return "walk-forward was off for this run (an earlier run of the pair had one)"
    return "walk-forward was off for this run (train with --walk-forward K to see fold scores)"


def _draw(pair: PairData, result: dict[str, Any]) -> dict[str, Callable[[], charts.Chart]]:
    m = result.get("metrics") or {}
    recorded = m.get("charts")
    return {
        "equity": lambda: charts.equity(recorded),
        "confusion": lambda: charts.confusion((m.get("ensemble") or {}).get("test_confusion")),
        "walk_forward": lambda: charts.walk_forward(result.get("walk_forward"), _wf_off_reason(pair, result)),
        "importance": lambda: charts.importance(recorded),
        "reliability": lambda: charts.reliability(recorded),
        "history": lambda: charts.history(pair.history),
        "live": lambda: charts.live(pair.forecasts, pair.live),
    }


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f'<td class="num">{"n/a" if value is None else _e(value)}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.4f}</td>'
    return f"<td>{_e(value)}</td>"


def chart_table_html(key: str, table: charts.ChartTable) -> str:
    """The chart's numbers as a table (4 decimals): its text alternative, and what the tests read."""
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in table.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.rows)
    return (
        f"<details><summary>the numbers plotted ({len(table.rows)} rows)</summary>"
        f'<table class="chart-data" data-chart="{_e(key)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></details>"
    )


def _numbers_table(pair: PairData, result: dict[str, Any]) -> str:
    m = result.get("metrics") or {}
    ens, base, pers = m.get("ensemble") or {}, majority_of(m), m.get("persistence") or {}
    prior, ic = m.get("prior") or {}, m.get("ic") or {}
    trading = m.get("trading") or {}
    net = (trading.get("net") or {}).get("sharpe")
    hold = ((trading.get("buy_and_hold") or {}).get("net") or {}).get("sharpe")
    live = pair.live

    def beside_baselines(key: str) -> tuple[str, str, str]:
        # the same score of both class baselines, never a different metric
        label = key.replace("_", " ")
        return label, _fmt(ens.get(key)), f"majority {_fmt(base.get(key))}, persistence {_fmt(pers.get(key))}"

    rows = [
        beside_baselines("test_balanced_accuracy"),
        beside_baselines("valid_balanced_accuracy"),
        beside_baselines("test_accuracy"),
        (
            "test log loss",
            _fmt(ens.get("test_log_loss")),
            f"prior (class mix of train) {_fmt(prior.get('test_log_loss'))}; lower is better",
        ),
        (
            "test IC",
            _fmt(ic.get("test")),
            f"block-permutation p {_fmt(ic.get('test_pvalue'))}; 0 = no rank information",
        ),
        ("net Sharpe (test)", _fmt(net), f"buy and hold {_fmt(hold)}"),
        (
            "live balanced accuracy",
            _fmt(live.get("balanced_accuracy")),
            f"{live.get('n_realised', 0)} realised of {live.get('n_forecasts', 0)}; chance "
            f"{_fmt(live.get('chance_balanced_accuracy'))}, persistence {_fmt(live.get('persistence_balanced_accuracy'))}",
        ),
        (
            "live hit rate / IC",
            f"{_fmt(live.get('hit_rate'))} / {_fmt(live.get('ic'))}",
            f"{live.get('n_directional', 0)} directional calls on rows that moved",
        ),
    ]
    body = "".join(
        f'<tr><th>{_e(a)}</th><td class="num">{_e(b)}</td><td>{_e(c)}</td></tr>' for a, b, c in rows
    )
    return f"<table><tr><th>measure</th><th>model</th><th>beside</th></tr>{body}</table>"


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


def _replay_record_table(pair: PairData) -> str:
    """The replay's record beside the live record and the validation score of the run shown (the champion's)."""
    row = pair.replay or {}
    rec = row.get("record") or {}
    verdict = rec.get("verdict") or {}
    live = pair.live
    m = pair.result.get("metrics") or {}
    ens, pers = m.get("ensemble") or {}, m.get("persistence") or {}
    rows: list[list[Any]] = [
        ["realised rows", row.get("n_realised"), live.get("n_realised", 0), pair.result.get("n_valid")],
        [
            "balanced accuracy",
            rec.get("balanced_accuracy"),
            live.get("balanced_accuracy"),
            ens.get("valid_balanced_accuracy"),
        ],
        [
            "persistence balanced accuracy",
            rec.get("persistence_balanced_accuracy"),
            live.get("persistence_balanced_accuracy"),
            pers.get("valid_balanced_accuracy"),
        ],
        ["majority balanced accuracy", rec.get("majority_balanced_accuracy"), None, None],
        ["hit rate", rec.get("hit_rate"), live.get("hit_rate"), None],
        ["IC", rec.get("ic"), live.get("ic"), None],
        ["IC p-value", rec.get("ic_p_value"), None, None],
        ["log loss", rec.get("log_loss"), None, ens.get("valid_log_loss")],
        ["prior log loss", rec.get("prior_log_loss"), None, None],
        ["net Sharpe of the calls", rec.get("net_sharpe"), None, None],
        ["buy-and-hold net Sharpe", rec.get("buy_and_hold_net_sharpe"), None, None],
        ["verdict p-value", verdict.get("p_value"), None, None],
        ["verdict q-value (across the replay's pairs)", verdict.get("q_value"), None, None],
    ]
    table = charts.ChartTable(["measure", "replay", "live record", "validation (run shown)"], rows)
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in table.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in table.rows)
    return f'<table class="chart-data" data-chart="replay_record"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _replay_section(pair: PairData, img_dir: Path, site: ReportSite) -> list[str]:
    slug = pair_slug(pair.symbol, pair.timeframe)
    row = pair.replay
    if row is None:
        return [
            "<h2>Replay</h2>",
            '<p class="nodata">This pair was never replayed (python -m ml.src.training.replay --pairs '
            f"{_e(pair.symbol)}:{_e(pair.timeframe)} --last 250).</p>",
        ]
    verdict = (row.get("record") or {}).get("verdict") or {}
    parts = [
        "<h2>Replay</h2>",
        f'<p class="note">Replay {_e(row.get("replay_id", "?"))}: the nightly loop re-run over the bars '
        f"{_e(row.get('first_bar_ts', '?'))} to {_e(row.get('last_bar_ts', '?'))}, retrained every "
        f"{_e(row.get('retrain_every', '?'))} bars ({_e(row.get('retrains', '?'))} retrains, "
        f"{_e(row.get('promotions', '?'))} promotions), {_e(row.get('n_forecasts', '?'))} forecasts of which "
        f"{_e(row.get('n_realised', '?'))} realised. Replay verdict "
        f'<span class="verdict">{_e(verdict.get("verdict", "n/a"))}</span> (basis replay).</p>',
        _replay_record_table(pair),
    ]
    draws = {
        "replay_equity": lambda: charts.replay_equity(pair.replay_series),
        "replay_rolling": lambda: charts.replay_rolling(pair.replay_series),
    }
    for key, title, caption in REPLAY_CHARTS:
        parts.append(f"<h2>{_e(title)}</h2>")
        try:
            chart = draws[key]()
        except charts.NoData as exc:
            parts.append(f'<p class="nodata">{_e(exc)}</p>')
            continue
        path = img_dir / f"{key}.png"
        chart.figure.savefig(path, format="png", pil_kwargs={"compress_level": 3})
        site.images.append(path)
        parts.append(
            f'<figure data-chart="{key}"><img src="{_e(slug)}/{key}.png" '
            f'alt="{_e(title)} of {_e(pair.symbol)} {_e(pair.timeframe)}; its numbers are in the table below">'
            f"<figcaption>{_e(caption)}</figcaption>{chart_table_html(key, chart.table)}</figure>"
        )
    return parts


def _run_summary(r: dict[str, Any]) -> str:
    split = r.get("split") or {}
    return (
        f"run {_e(r.get('run_id', '?'))} started {_e(r.get('started_at', '?'))}; test slice "
        f"{_e(split.get('test_start', '?'))} to {_e(split.get('test_end', '?'))} ({_e(r.get('n_test', '?'))} rows)"
    )


def _charts(
    pair: PairData, result: dict[str, Any], keys: Sequence[str], prefix: str, img_dir: Path, site: ReportSite
) -> list[str]:
    parts: list[str] = []
    draws = _draw(pair, result)
    slug = pair_slug(pair.symbol, pair.timeframe)
    for key, title, caption in CHARTS:
        if key not in keys:
            continue
        shown = f"{title} ({prefix.rstrip('_')} run)" if prefix else title
        parts.append(f"<h2>{_e(shown)}</h2>")
        try:
            chart = draws[key]()
        except charts.NoData as exc:
            parts.append(f'<p class="nodata">{_e(exc)}</p>')
            continue
        path = img_dir / f"{prefix}{key}.png"
        chart.figure.savefig(path, format="png", pil_kwargs={"compress_level": 3})  # zlib 6: ~2x for ~4% less
        site.images.append(path)
        parts.append(
            f'<figure data-chart="{_e(prefix)}{key}"><img src="{_e(slug)}/{_e(prefix)}{key}.png" '
            f'alt="{_e(shown)} of {_e(pair.symbol)} {_e(pair.timeframe)}; its numbers are in the table below">'
            f"<figcaption>{_e(caption)}</figcaption>{chart_table_html(prefix + key, chart.table)}</figure>"
        )
    return parts


def _pair_page(pair: PairData, folder: Path, site: ReportSite) -> str:
    slug = pair_slug(pair.symbol, pair.timeframe)
    img_dir = folder / slug
    img_dir.mkdir(parents=True, exist_ok=True)
    champ = pair.champion or {}
    parts = [
        '<p><a href="../index.html">&larr; all pairs</a></p>',
        f"<h1>{_e(pair.symbol)} {_e(pair.timeframe)}</h1>",
        f'<p>verdict <span class="verdict">{_e(verdict_of(pair.result.get("metrics")))}</span> '
        f"(q {_e(verdict_q_of(pair.result.get('metrics')))}) &nbsp; {_flags(pair.health)}</p>",
    ]
    if pair.champion_result is not None:
        also = " It is also the latest run." if pair.latest is None else ""
        parts.append(
            f'<p class="note">Champion: version {_e(champ.get("id", "?"))} trained {_e(champ.get("trained_at", "?"))}; '
            f"the numbers and charts below are of the champion's training run: {_run_summary(pair.champion_result)}."
            f"{_e(also)}</p>"
        )
    elif pair.champion is not None:
        parts.append(
            f'<p class="note">Champion: version {_e(champ.get("id", "?"))} trained {_e(champ.get("trained_at", "?"))}; '
            "its training run is no longer in the ledger.</p>"
        )
    else:
        parts.append('<p class="note">No champion: no run of this pair was promoted.</p>')
    if pair.latest is not None:
        parts.append(f'<p class="note latest">{_e(pair.latest_note())}</p>')
    if pair.health and pair.health.reasons:
        parts.append('<p class="note">' + _e("; ".join(pair.health.reasons)) + "</p>")
    all_keys = [k for k, _, _ in CHARTS]
    if pair.champion_result is not None:
        parts.append(_numbers_table(pair, pair.champion_result))
        parts += _charts(pair, pair.champion_result, all_keys, "", img_dir, site)
    parts += _replay_section(pair, img_dir, site)
    latest = pair.latest
    if latest is not None:
        parts.append(
            f'<h2 class="latest">Latest run, not the champion&#39;s ({_e(pair.latest_label())})</h2>'
        )
        if latest.get("status") == "succeeded":
            parts.append(f'<p class="note">{_run_summary(latest)}</p>')
            parts.append(_numbers_table(pair, latest))
            own = [k for k in all_keys if k not in PAIR_WIDE]
            keys = own if pair.champion_result is not None else all_keys
            parts += _charts(
                pair, latest, keys, "" if pair.champion_result is None else "latest_", img_dir, site
            )
    if pair.champion_result is None and (latest is None or latest.get("status") != "succeeded"):
        parts += _charts(pair, {}, sorted(PAIR_WIDE), "", img_dir, site)
    return _page(f"{pair.symbol} {pair.timeframe}: SwiftBolt ML report", "\n".join(parts))


def _index(
    pairs: Sequence[PairData], store_name: str, generated: datetime, refused: Sequence[str] = ()
) -> str:
    rows = []
    for p in pairs:
        m = p.result.get("metrics") or {}
        ens, base, pers = m.get("ensemble") or {}, majority_of(m), m.get("persistence") or {}
        live = p.live
        rows.append(
            "<tr>"
            f'<td><a href="pairs/{_e(pair_slug(p.symbol, p.timeframe))}.html">{_e(p.symbol)} {_e(p.timeframe)}</a></td>'
            f'<td class="verdict">{_e(verdict_of(m))}</td><td class="num">{_e(verdict_q_of(m))}</td>'
            f"<td>{_flags(p.health)}</td>"
            f'<td class="num">{_e(_fmt(ens.get("test_balanced_accuracy")))}</td>'
            f'<td class="num">{_e(_fmt(base.get("test_balanced_accuracy")))}</td>'
            f'<td class="num">{_e(_fmt(pers.get("test_balanced_accuracy")))}</td>'
            f'<td class="num">{_e(live.get("n_realised", 0))} / {_e(live.get("n_forecasts", 0))}</td>'
            f'<td class="num">{_e(_fmt(live.get("balanced_accuracy")))}</td>'
            f"<td>{_e((p.champion or {}).get('trained_at', 'none'))}</td>"
            f"<td>{_e(p.latest_label())}</td>"
            "</tr>"
        )
    table = (
        "<table><tr><th>pair</th><th>verdict</th><th>q</th><th>flags</th><th>test bal. acc.</th><th>majority</th>"
        "<th>persistence</th><th>live realised / made</th><th>live bal. acc.</th><th>champion trained</th>"
        "<th>latest run</th></tr>" + "".join(rows) + "</table>"
        if rows
        else '<p class="nodata">No trained pairs yet.</p>'
    )
    ignored = (
        '<p class="nodata">Ledger rows with an invalid symbol or timeframe, left out: '
        + _e("; ".join(refused))
        + "</p>"
        if refused
        else ""
    )
    body = (
        "<h1>SwiftBolt ML: models, baselines and live record</h1>"
        f'<p class="note">Generated {_e(generated.isoformat(timespec="seconds"))} from the {_e(store_name)} store. '
        "Balanced accuracy is the mean recall over the three classes; the majority baseline scores 1/3 on it by "
        "construction. The verdict is the run's own (skill / no-skill / worse; n/a when the run recorded none); "
        "q is its Benjamini-Hochberg q-value across that run's pairs (skill needs q at or below ML_VERDICT_FDR). "
        "Flags: RETRAIN (score fell or champion expired), DISABLE (champion not beating its baselines), LIVE "
        "(live forecasts not beating their baselines), NO-SKILL / WORSE (the latest verdict), BELOW-BASELINE "
        "(the champion did not beat its best baseline in the latest run); OK only when none of these applies. "
        "Latest run: champion when the champion's run is the latest, else what became of the latest run.</p>"
        f"{ignored}{table}"
    )
    return _page("SwiftBolt ML report", body)


@dataclass
class Collected:
    pairs: list[PairData]
    refused: list[str]  # ledger rows left out for an invalid symbol or timeframe, one line each


def collect(
    store: TrainingStore,
    settings: Settings,
    health: Sequence[PairHealth],
    pairs: Sequence[tuple[str, str]] | None = None,
    run_id: str | None = None,
) -> Collected:
    """Every pair with a result (or `pairs`); `run_id`: that run's result is the pair's latest (--report)."""
    wanted = set(pairs) if pairs is not None else None
    refused: list[str] = []
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in store.results_history(include_failed=True):
        key = stored_pair(row, "training_results", refused)
        if key is not None:
            runs[key].append(row)
    if run_id is not None:  # this run's own rows, skipped ones too (a skip names no file of its own)
        started = (store.get_run(run_id) or {}).get("started_at")
        for row in store.list_results(run_id):
            key = stored_pair(row, "training_results", refused)
            if key is not None and not any(str(r.get("id")) == str(row.get("id")) for r in runs[key]):
                runs[key].append({**row, "started_at": started})
    forecasts: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in store.list_forecasts():
        key = stored_pair(row, "ml_forecasts", refused)
        if key is not None:
            forecasts[key].append(row)
    by_health = {(h.symbol, h.timeframe): h for h in health}
    out = []
    keys = sorted(runs, key=lambda k: (k[0], TIMEFRAMES.index(k[1])))
    for key in keys:
        if wanted is not None and key not in wanted:
            continue
        rows = runs[key]
        history = [r for r in rows if r.get("status") == "succeeded"]
        champion = store.get_champion(*key)
        own = [r for r in history if champion and str(r.get("run_id")) == str(champion.get("run_id"))]
        champion_result = own[-1] if own else None
        mine = [r for r in rows if run_id is not None and str(r.get("run_id")) == run_id]
        latest: dict[str, Any] | None = mine[-1] if mine else rows[-1]
        if champion_result is not None and latest is champion_result:
            latest = None
        replay = store.latest_replay(*key)
        series = (
            replay_series(
                replay["forecasts"],
                horizon=int(replay.get("horizon_bars") or settings.timeframes[key[1]].horizon_bars),
                fee_bps=settings.trading_fee_bps,
                slippage_bps=settings.trading_slippage_bps,
                allow_short=settings.trading_allow_short,
            )
            if replay is not None
            else None
        )
        out.append(
            PairData(
                symbol=key[0],
                timeframe=key[1],
                history=history,
                champion_result=champion_result,
                latest=latest,
                champion=champion,
                forecasts=forecasts.get(key, []),
                health=by_health.get(key),
                replay=replay,
                replay_series=series,
            )
        )
    return Collected(out, refused)


def write_html_report(
    store: TrainingStore,
    settings: Settings,
    out_dir: Path,
    *,
    health: Sequence[PairHealth] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    run_id: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReportSite:
    """Write the report for every trained pair (or `pairs`) to out_dir, replacing an earlier report there.
    `run_id`: show that run as each pair's latest (the training job's --report). `progress` gets one line
    before the first page and one per pair page (drawing takes ~1 s a pair). ReportDirError when out_dir is
    not a folder a report may replace (check_report_dir)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    check_report_dir(out_dir)  # before any drawing, and again before the swap
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if health is None:
        health = build_report(store, settings)
    got = collect(store, settings, health, pairs, run_id)
    data = got.pairs
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    site = ReportSite(out_dir=tmp)
    try:
        (tmp / MARKER).write_text(MARKER_TEXT, encoding="utf-8")
        folder = tmp / "pairs"
        folder.mkdir()
        if progress is not None:
            progress(f"report: drawing {len(data)} pair page(s) for {out_dir}")
        for i, pair in enumerate(data, 1):
            t_pair = time.perf_counter()
            page = folder / f"{pair_slug(pair.symbol, pair.timeframe)}.html"
            page.write_text(_pair_page(pair, folder, site), encoding="utf-8")
            site.pages.append(page)
            if progress is not None:
                progress(
                    f"report [{i}/{len(data)}] {pair.symbol}/{pair.timeframe}: page written in "
                    f"{time.perf_counter() - t_pair:.1f}s"
                )
        index = tmp / "index.html"
        index.write_text(_index(data, store.name, datetime.now(UTC), got.refused), encoding="utf-8")
        site.pages.insert(0, index)
        _publish_modes(tmp)
        check_report_dir(out_dir)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{time.time_ns()}")
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    site.pages = [out_dir / p.relative_to(tmp) for p in site.pages]
    site.images = [out_dir / p.relative_to(tmp) for p in site.images]
    site.out_dir = out_dir
    site.seconds = time.perf_counter() - t0
    return site
