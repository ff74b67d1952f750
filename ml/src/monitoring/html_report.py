"""The static report: index.html (every pair with its verdict and flags) and one page of charts per pair.

Plain HTML with relative links, inline CSS, PNG charts and no JavaScript: it opens from disk or behind any static
server. Written to a temporary folder beside DIR and moved into place at the end, so a failed build never
leaves half a report. Everything drawn comes from what the store records (results, champion, forecasts).
"""

from __future__ import annotations

import html
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
from ml.src.data.store import TrainingStore
from ml.src.inference.live_record import summarise
from ml.src.monitoring import charts
from ml.src.monitoring.report import PairHealth, build_report

CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:24px;color:#1b1f24;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 6px} p.note{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:13px} th,td{border-bottom:1px solid #ddd;padding:5px 9px;text-align:left}
th{background:#f3f5f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
.flag{display:inline-block;padding:1px 6px;border-radius:3px;font-size:12px;margin-right:3px;color:#fff}
.flag-OK{background:#2e7d32} .flag-RETRAIN{background:#b26a00} .flag-DISABLE{background:#b71c1c}
.flag-LIVE{background:#6a1b9a} .verdict{font-weight:bold}
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
    return f"{symbol}_{timeframe}"


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def _flags(h: PairHealth | None) -> str:
    flags = (h.flags if h else []) or ["OK"]
    return "".join(f'<span class="flag flag-{_e(f)}">{_e(f)}</span>' for f in flags)


@dataclass
class PairData:
    symbol: str
    timeframe: str
    history: list[dict[str, Any]]
    result: dict[str, Any]
    is_champion_run: bool
    champion: dict[str, Any] | None
    forecasts: list[dict[str, Any]]
    health: PairHealth | None

    @property
    def live(self) -> dict[str, Any]:
        return summarise(self.forecasts).to_dict() if self.forecasts else {}


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


def _draw(pair: PairData) -> dict[str, Callable[[], Any]]:
    m = pair.result.get("metrics") or {}
    recorded = m.get("charts")
    return {
        "equity": lambda: charts.equity(recorded),
        "confusion": lambda: charts.confusion((m.get("ensemble") or {}).get("test_confusion")),
        "walk_forward": lambda: charts.walk_forward(pair.result.get("walk_forward")),
        "importance": lambda: charts.importance(recorded),
        "reliability": lambda: charts.reliability(recorded),
        "history": lambda: charts.history(pair.history),
        "live": lambda: charts.live(pair.forecasts, pair.live),
    }


def _numbers_table(pair: PairData) -> str:
    m = pair.result.get("metrics") or {}
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


def _pair_page(pair: PairData, folder: Path, site: ReportSite) -> str:
    slug = pair_slug(pair.symbol, pair.timeframe)
    img_dir = folder / slug
    img_dir.mkdir(parents=True, exist_ok=True)
    r = pair.result
    which = (
        "the champion's training run"
        if pair.is_champion_run
        else "the latest training run (not the champion's)"
    )
    champ = pair.champion or {}
    parts = [
        '<p><a href="../index.html">&larr; all pairs</a></p>',
        f"<h1>{_e(pair.symbol)} {_e(pair.timeframe)}</h1>",
        f'<p>verdict <span class="verdict">{_e(verdict_of(r.get("metrics")))}</span> '
        f"(q {_e(verdict_q_of(r.get('metrics')))}) &nbsp; {_flags(pair.health)}</p>",
        f'<p class="note">Charts of {which}: run {_e(r.get("run_id", "?"))} started {_e(r.get("started_at", "?"))}; '
        f"test slice {_e((r.get('split') or {}).get('test_start', '?'))} to {_e((r.get('split') or {}).get('test_end', '?'))} "
        f"({_e(r.get('n_test', '?'))} rows). Champion: version {_e(champ.get('id', 'none'))} trained "
        f"{_e(champ.get('trained_at', 'n/a'))}.</p>",
    ]
    if pair.health and pair.health.reasons:
        parts.append('<p class="note">' + _e("; ".join(pair.health.reasons)) + "</p>")
    parts.append(_numbers_table(pair))
    draws = _draw(pair)
    for key, title, caption in CHARTS:
        parts.append(f"<h2>{_e(title)}</h2>")
        try:
            fig = draws[key]()
        except charts.NoData as exc:
            parts.append(f'<p class="nodata">{_e(exc)}</p>')
            continue
        path = img_dir / f"{key}.png"
        fig.savefig(path, format="png", pil_kwargs={"compress_level": 3})  # zlib 6 costs ~2x for ~4% less
        site.images.append(path)
        parts.append(
            f'<figure><img src="{_e(slug)}/{key}.png" alt="{_e(title)} of {_e(pair.symbol)} {_e(pair.timeframe)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return _page(f"{pair.symbol} {pair.timeframe}: SwiftBolt ML report", "\n".join(parts))


def _index(pairs: Sequence[PairData], store_name: str, generated: datetime) -> str:
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
            "</tr>"
        )
    table = (
        "<table><tr><th>pair</th><th>verdict</th><th>q</th><th>flags</th><th>test bal. acc.</th><th>majority</th>"
        "<th>persistence</th><th>live realised / made</th><th>live bal. acc.</th><th>champion trained</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else '<p class="nodata">No trained pairs yet.</p>'
    )
    body = (
        "<h1>SwiftBolt ML: models, baselines and live record</h1>"
        f'<p class="note">Generated {_e(generated.isoformat(timespec="seconds"))} from the {_e(store_name)} store. '
        "Balanced accuracy is the mean recall over the three classes; the majority baseline scores 1/3 on it by "
        "construction. The verdict is the run's own (skill / no-skill / worse; n/a when the run recorded none); "
        "q is its Benjamini-Hochberg q-value across that run's pairs (skill needs q at or below ML_VERDICT_FDR). "
        "Flags: RETRAIN (score fell or champion expired), DISABLE (champion not beating its baselines), LIVE "
        "(live forecasts not beating their baselines).</p>"
        f"{table}"
    )
    return _page("SwiftBolt ML report", body)


def collect(
    store: TrainingStore,
    settings: Settings,
    health: Sequence[PairHealth],
    pairs: Sequence[tuple[str, str]] | None = None,
) -> list[PairData]:
    wanted = set(pairs) if pairs is not None else None
    history: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in store.results_history():
        history[(row["symbol"], row["timeframe"])].append(row)
    forecasts: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in store.list_forecasts():
        forecasts[(row["symbol"], row["timeframe"])].append(row)
    by_health = {(h.symbol, h.timeframe): h for h in health}
    out = []
    keys = sorted(history, key=lambda k: (k[0], TIMEFRAMES.index(k[1]) if k[1] in TIMEFRAMES else 99))
    for key in keys:
        if wanted is not None and key not in wanted:
            continue
        rows = history[key]
        champion = store.get_champion(*key)
        own = [r for r in rows if champion and str(r.get("run_id")) == str(champion.get("run_id"))]
        result = own[-1] if own else rows[-1]
        out.append(
            PairData(
                symbol=key[0],
                timeframe=key[1],
                history=rows,
                result=result,
                is_champion_run=bool(own),
                champion=champion,
                forecasts=forecasts.get(key, []),
                health=by_health.get(key),
            )
        )
    return out


def write_html_report(
    store: TrainingStore,
    settings: Settings,
    out_dir: Path,
    *,
    health: Sequence[PairHealth] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReportSite:
    """Write the report for every trained pair (or `pairs`) to out_dir, replacing an earlier report there.
    `progress` gets one line before the first page and one per pair page (drawing takes ~1 s a pair)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if health is None:
        health = build_report(store, settings)
    data = collect(store, settings, health, pairs)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    site = ReportSite(out_dir=tmp)
    try:
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
        index.write_text(_index(data, store.name, datetime.now(UTC)), encoding="utf-8")
        site.pages.insert(0, index)
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
