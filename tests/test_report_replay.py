"""The report shows a pair's latest replay (issue 19, item 5): the replay's record beside the live record and the
validation score, the equity curve of its calls against buy-and-hold and the rolling hit rate and IC with their
baselines, every chart a <figure> with the <table> of its numbers; each table holds the replay's own --json
numbers. The health report (--json and the table) carries the same record and verdict.

Real bars: GSPC d1 from ml/sample_data, trained once by the job (its champion) and replayed over its last 150
bars, retrained every 30 (~10 s).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from ml.src.cli import replay as replay_cli
from ml.src.cli import report as report_cli
from ml.src.cli import train as job_cli
from tests.factories import SAMPLE_DATA
from tests.test_report_truth import column, same, tables_of

pytestmark = pytest.mark.slow

WINDOW = 50  # report_data.REPLAY_WINDOW: the page says it in the chart's title


@dataclass
class Replayed:
    root: Path
    train: dict[str, Any]  # the job's --json result of the pair
    replay: dict[str, Any]  # the replay's --json pair
    health: list[dict[str, Any]]  # report --json
    table: str  # the report's table


def _json(main: Any, args: list[str]) -> tuple[int, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replayed]:
    from ml.src.data.load_bars import main as load_main

    root = tmp_path_factory.mktemp("replay_report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUPABASE_URL", "")
        mp.delenv("SUPABASE_SERVICE_ROLE_KEY", raising=False)
        mp.delenv("SUPABASE_KEY", raising=False)
        mp.setenv("ML_LOCAL_DB", str(root / "store.sqlite3"))
        mp.setenv("ML_MODELS_DIR", str(root / "models"))
        mp.setenv("ML_WORKERS", "1")
        assert load_main(["--quiet", str(SAMPLE_DATA / "GSPC_d1.csv")]) == 0
        code, job = _json(job_cli.main, ["--pairs", "GSPC:d1", "--json", "-q"])
        assert code == 0, job
        code, rep = _json(
            replay_cli.main, ["--pairs", "GSPC:d1", "--last", "150", "--retrain-every", "30", "--json", "-q"]
        )
        assert code == 0, rep
        assert report_cli.main(["--html", str(root / "site")]) == 0
        code, health = _json(report_cli.main, ["--json"])
        assert code == 0
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert report_cli.main([]) == 0
        yield Replayed(root, job["results"][0], rep["pairs"][0], health, out.getvalue())


def _realised(pair: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in pair["forecasts"] if f["realised_label"] is not None]


def test_the_equity_table_is_the_replays_calls_and_buy_and_hold(replayed: Replayed) -> None:
    rep, rec = replayed.replay, replayed.replay["record"]
    rows = tables_of(replayed.root / "site" / "pairs" / "GSPC_d1.html")["replay_equity"]
    done = _realised(rep)
    h = rep["horizon_bars"]
    # one hold every h realised bars, from the first; the last values are the record's net total returns + 1
    assert len(rows) == -(-len(done) // h)
    assert [pd.Timestamp(t) for t in column(rows, 0)] == [pd.Timestamp(f["bar_ts"]) for f in done[::h]]
    assert same(rows[-1][1], 1 + rec["net_total_return"])
    assert same(rows[-1][2], 1 + rec["buy_and_hold_net_total_return"])
    # buy-and-hold compounds the realised returns of those bars, one round trip of costs in all
    hold = np.cumprod([1 + f["realised_return"] for f in done[::h]])
    assert same(rows[0][2], hold[0] - 0.001)  # the entry's 10 bps one way (fees + slippage)


def test_the_rolling_table_is_the_replays_hit_rate_and_ic_with_their_baselines(replayed: Replayed) -> None:
    rows = tables_of(replayed.root / "site" / "pairs" / "GSPC_d1.html")["replay_rolling"]
    done = _realised(replayed.replay)
    assert len(rows) == len(done) - WINDOW + 1
    for k, row in enumerate(rows):
        window = done[k : k + WINDOW]
        assert pd.Timestamp(row[0]) == pd.Timestamp(window[-1]["bar_ts"])

        def hits(call: str, window: list[dict[str, Any]] = window) -> float | None:
            moved = [f for f in window if f[call] != "NEUTRAL" and f["realised_label"] != "NEUTRAL"]
            return float(np.mean([f[call] == f["realised_label"] for f in moved])) if moved else None

        assert same(row[1], hits("label")), (k, row)
        assert same(row[2], hits("persistence_label")), (k, row)
        score = [f["p_bullish"] - f["p_bearish"] for f in window]
        assert same(row[3], spearmanr(score, [f["realised_return"] for f in window]).statistic), (k, row)
        assert row[4] == "0.0000"


class _RecordTable(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._on = False
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and dict(attrs).get("data-chart") == "replay_record":
            self._on = True
        elif self._on and tag == "tr":
            self.rows.append([])
        elif self._on and tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag: str) -> None:
        if self._on and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None
        elif tag == "table":
            self._on = False


def test_the_replay_record_sits_beside_the_live_record_and_the_validation_score(replayed: Replayed) -> None:
    parser = _RecordTable()
    parser.feed((replayed.root / "site" / "pairs" / "GSPC_d1.html").read_text(encoding="utf-8"))
    header, *rows = parser.rows
    assert header == ["measure", "replay", "live record", "validation (run shown)"]
    got = {r[0]: r[1:] for r in rows}
    rep, rec = replayed.replay, replayed.replay["record"]
    ens = replayed.train["metrics"]["ensemble"]
    assert got["realised rows"][0] == str(rep["n_realised"])
    assert got["realised rows"][1] == "0"  # no live forecast was made: the live record is empty
    assert got["realised rows"][2] == str(replayed.train["n_valid"])
    for measure, key in (
        ("balanced accuracy", "balanced_accuracy"),
        ("persistence balanced accuracy", "persistence_balanced_accuracy"),
        ("majority balanced accuracy", "majority_balanced_accuracy"),
        ("hit rate", "hit_rate"),
        ("IC", "ic"),
        ("IC p-value", "ic_p_value"),
        ("log loss", "log_loss"),
        ("prior log loss", "prior_log_loss"),
        ("net Sharpe of the calls", "net_sharpe"),
        ("buy-and-hold net Sharpe", "buy_and_hold_net_sharpe"),
    ):
        assert same(got[measure][0], rec[key]), (measure, got[measure], rec[key])
    assert same(got["balanced accuracy"][2], ens["valid_balanced_accuracy"])
    assert same(got["verdict p-value"][0], rec["verdict"]["p_value"])
    assert same(got["verdict q-value (across the replay's pairs)"][0], rec["verdict"]["q_value"])


def test_the_health_report_carries_the_replays_record_and_verdict(replayed: Replayed) -> None:
    (pair,) = [h for h in replayed.health if (h["symbol"], h["timeframe"]) == ("GSPC", "d1")]
    rep = replayed.replay
    assert pair["replay"]["record"] == rep["record"]
    assert pair["replay"]["verdict"] == rep["record"]["verdict"]
    assert (pair["replay"]["n_realised"], pair["replay"]["retrain_every"]) == (rep["n_realised"], 30)
    assert pd.Timestamp(pair["replay"]["last_bar_ts"]) == pd.Timestamp(rep["last_bar_ts"])
    head, _, line = replayed.table.splitlines()[1:4]
    assert "rep_verdict" in head
    cells = line.split()
    assert str(rep["n_realised"]) in cells and f"{rep['record']['balanced_accuracy']:.3f}" in cells
    assert rep["record"]["verdict"]["verdict"] in cells
