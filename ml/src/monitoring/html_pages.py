"""The report's pages as HTML: a pair's page (its champion's run, the latest run, the replay, each chart a
<figure> with the table of its numbers) and the index. Pure rendering: html_report collects and writes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ml.src.monitoring import charts
from ml.src.monitoring.html_parts import (
    CHARTS,
    PAIR_WIDE,
    REPLAY_CHARTS,
    PairData,
    ReportSite,
    esc,
    flags_html,
    fmt,
    majority_of,
    page,
    pair_slug,
    verdict_of,
    verdict_q_of,
)
from ml.src.monitoring.html_tables import chart_table_html, numbers_table, replay_record_table


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


def _replay_section(pair: PairData, img_dir: Path, site: ReportSite) -> list[str]:
    slug = pair_slug(pair.symbol, pair.timeframe)
    row = pair.replay
    if row is None:
        return [
            "<h2>Replay</h2>",
            '<p class="nodata">This pair was never replayed (python -m ml.src.training.replay --pairs '
            f"{esc(pair.symbol)}:{esc(pair.timeframe)} --last 250).</p>",
        ]
    verdict = (row.get("record") or {}).get("verdict") or {}
    parts = [
        "<h2>Replay</h2>",
        f'<p class="note">Replay {esc(row.get("replay_id", "?"))}: the nightly loop re-run over the bars '
        f"{esc(row.get('first_bar_ts', '?'))} to {esc(row.get('last_bar_ts', '?'))}, retrained every "
        f"{esc(row.get('retrain_every', '?'))} bars ({esc(row.get('retrains', '?'))} retrains, "
        f"{esc(row.get('promotions', '?'))} promotions), {esc(row.get('n_forecasts', '?'))} forecasts of which "
        f"{esc(row.get('n_realised', '?'))} realised. Replay verdict "
        f'<span class="verdict">{esc(verdict.get("verdict", "n/a"))}</span> (basis replay).</p>',
        replay_record_table(pair),
    ]
    draws = {
        "replay_equity": lambda: charts.replay_equity(pair.replay_series),
        "replay_rolling": lambda: charts.replay_rolling(pair.replay_series),
    }
    for key, title, caption in REPLAY_CHARTS:
        parts.append(f"<h2>{esc(title)}</h2>")
        try:
            chart = draws[key]()
        except charts.NoData as exc:
            parts.append(f'<p class="nodata">{esc(exc)}</p>')
            continue
        path = img_dir / f"{key}.png"
        chart.figure.savefig(path, format="png", pil_kwargs={"compress_level": 3})
        site.images.append(path)
        parts.append(
            f'<figure data-chart="{key}"><img src="{esc(slug)}/{key}.png" '
            f'alt="{esc(title)} of {esc(pair.symbol)} {esc(pair.timeframe)}; its numbers are in the table below">'
            f"<figcaption>{esc(caption)}</figcaption>{chart_table_html(key, chart.table)}</figure>"
        )
    return parts


def _run_summary(r: dict[str, Any]) -> str:
    split = r.get("split") or {}
    return (
        f"run {esc(r.get('run_id', '?'))} started {esc(r.get('started_at', '?'))}; test slice "
        f"{esc(split.get('test_start', '?'))} to {esc(split.get('test_end', '?'))} ({esc(r.get('n_test', '?'))} rows)"
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
        parts.append(f"<h2>{esc(shown)}</h2>")
        try:
            chart = draws[key]()
        except charts.NoData as exc:
            parts.append(f'<p class="nodata">{esc(exc)}</p>')
            continue
        path = img_dir / f"{prefix}{key}.png"
        chart.figure.savefig(path, format="png", pil_kwargs={"compress_level": 3})  # zlib 6: ~2x for ~4% less
        site.images.append(path)
        parts.append(
            f'<figure data-chart="{esc(prefix)}{key}"><img src="{esc(slug)}/{esc(prefix)}{key}.png" '
            f'alt="{esc(shown)} of {esc(pair.symbol)} {esc(pair.timeframe)}; its numbers are in the table below">'
            f"<figcaption>{esc(caption)}</figcaption>{chart_table_html(prefix + key, chart.table)}</figure>"
        )
    return parts


def pair_page(pair: PairData, folder: Path, site: ReportSite) -> str:
    slug = pair_slug(pair.symbol, pair.timeframe)
    img_dir = folder / slug
    img_dir.mkdir(parents=True, exist_ok=True)
    champ = pair.champion or {}
    parts = [
        '<p><a href="../index.html">&larr; all pairs</a></p>',
        f"<h1>{esc(pair.symbol)} {esc(pair.timeframe)}</h1>",
        f'<p>verdict <span class="verdict">{esc(verdict_of(pair.result.get("metrics")))}</span> '
        f"(q {esc(verdict_q_of(pair.result.get('metrics')))}) &nbsp; {flags_html(pair.health)}</p>",
    ]
    if pair.champion_result is not None:
        also = " It is also the latest run." if pair.latest is None else ""
        parts.append(
            f'<p class="note">Champion: version {esc(champ.get("id", "?"))} trained {esc(champ.get("trained_at", "?"))}; '
            f"the numbers and charts below are of the champion's training run: {_run_summary(pair.champion_result)}."
            f"{esc(also)}</p>"
        )
    elif pair.champion is not None:
        parts.append(
            f'<p class="note">Champion: version {esc(champ.get("id", "?"))} trained {esc(champ.get("trained_at", "?"))}; '
            "its training run is no longer in the ledger.</p>"
        )
    else:
        parts.append('<p class="note">No champion: no run of this pair was promoted.</p>')
    if pair.latest is not None:
        parts.append(f'<p class="note latest">{esc(pair.latest_note())}</p>')
    if pair.health and pair.health.reasons:
        parts.append('<p class="note">' + esc("; ".join(pair.health.reasons)) + "</p>")
    all_keys = [k for k, _, _ in CHARTS]
    if pair.champion_result is not None:
        parts.append(numbers_table(pair, pair.champion_result))
        parts += _charts(pair, pair.champion_result, all_keys, "", img_dir, site)
    parts += _replay_section(pair, img_dir, site)
    latest = pair.latest
    if latest is not None:
        parts.append(
            f'<h2 class="latest">Latest run, not the champion&#39;s ({esc(pair.latest_label())})</h2>'
        )
        if latest.get("status") == "succeeded":
            parts.append(f'<p class="note">{_run_summary(latest)}</p>')
            parts.append(numbers_table(pair, latest))
            own = [k for k in all_keys if k not in PAIR_WIDE]
            keys = own if pair.champion_result is not None else all_keys
            parts += _charts(
                pair, latest, keys, "" if pair.champion_result is None else "latest_", img_dir, site
            )
    if pair.champion_result is None and (latest is None or latest.get("status") != "succeeded"):
        parts += _charts(pair, {}, sorted(PAIR_WIDE), "", img_dir, site)
    return page(f"{pair.symbol} {pair.timeframe}: SwiftBolt ML report", "\n".join(parts))


def index_page(
    pairs: Sequence[PairData], store_name: str, generated: datetime, refused: Sequence[str] = ()
) -> str:
    rows = []
    for p in pairs:
        m = p.result.get("metrics") or {}
        ens, base, pers = m.get("ensemble") or {}, majority_of(m), m.get("persistence") or {}
        live = p.live
        rows.append(
            "<tr>"
            f'<td><a href="pairs/{esc(pair_slug(p.symbol, p.timeframe))}.html">{esc(p.symbol)} {esc(p.timeframe)}</a></td>'
            f'<td class="verdict">{esc(verdict_of(m))}</td><td class="num">{esc(verdict_q_of(m))}</td>'
            f"<td>{flags_html(p.health)}</td>"
            f'<td class="num">{esc(fmt(ens.get("test_balanced_accuracy")))}</td>'
            f'<td class="num">{esc(fmt(base.get("test_balanced_accuracy")))}</td>'
            f'<td class="num">{esc(fmt(pers.get("test_balanced_accuracy")))}</td>'
            f'<td class="num">{esc(live.get("n_realised", 0))} / {esc(live.get("n_forecasts", 0))}</td>'
            f'<td class="num">{esc(fmt(live.get("balanced_accuracy")))}</td>'
            f"<td>{esc((p.champion or {}).get('trained_at', 'none'))}</td>"
            f"<td>{esc(p.latest_label())}</td>"
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
        + esc("; ".join(refused))
        + "</p>"
        if refused
        else ""
    )
    body = (
        "<h1>SwiftBolt ML: models, baselines and live record</h1>"
        f'<p class="note">Generated {esc(generated.isoformat(timespec="seconds"))} from the {esc(store_name)} store. '
        "Balanced accuracy is the mean recall over the three classes; the majority baseline scores 1/3 on it by "
        "construction. The verdict is the run's own (skill / no-skill / worse; n/a when the run recorded none); "
        "q is its Benjamini-Hochberg q-value across that run's pairs (skill needs q at or below ML_VERDICT_FDR). "
        "Flags: RETRAIN (score fell or champion expired), DISABLE (champion not beating its baselines), LIVE "
        "(live forecasts not beating their baselines), NO-SKILL / WORSE (the latest verdict), BELOW-BASELINE "
        "(the champion did not beat its best baseline in the latest run); OK only when none of these applies. "
        "Latest run: champion when the champion's run is the latest, else what became of the latest run.</p>"
        f"{ignored}{table}"
    )
    return page("SwiftBolt ML report", body)
