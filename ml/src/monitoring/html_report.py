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

import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.settings import TIMEFRAMES, Settings
from ml.src.data.store import TrainingStore
from ml.src.monitoring.html_pages import index_page, pair_page
from ml.src.monitoring.html_parts import PairData, ReportSite, pair_slug, verdict_of, verdict_q_of
from ml.src.monitoring.report import PairHealth, build_report, stored_pair
from ml.src.monitoring.report_dir import MARKER, MARKER_TEXT, check_report_dir
from ml.src.training.report_data import replay_series

DIR_MODE, FILE_MODE = 0o755, 0o644

__all__ = ["ReportSite", "collect", "verdict_of", "verdict_q_of", "write_html_report"]


def _publish_modes(root: Path) -> None:
    """Folders 0755 and files 0644 whatever the umask (mkdtemp makes 0700): a static server's user reads them."""
    os.chmod(root, DIR_MODE)
    for path in root.rglob("*"):
        os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)


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
            page.write_text(pair_page(pair, folder, site), encoding="utf-8")
            site.pages.append(page)
            if progress is not None:
                progress(
                    f"report [{i}/{len(data)}] {pair.symbol}/{pair.timeframe}: page written in "
                    f"{time.perf_counter() - t_pair:.1f}s"
                )
        index = tmp / "index.html"
        index.write_text(index_page(data, store.name, datetime.now(UTC), got.refused), encoding="utf-8")
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
