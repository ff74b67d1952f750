"""The CSV loader: every rejection names the file, the line and the problem, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.src.data import load_bars
from ml.src.data.local_db import SqliteStore
from tests.factories import sample_bars, sample_csv


def write(tmp_path: Path, name: str, frame) -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%SZ", na_rep="NaN")
    return path


def corrupt(kind: str):
    bars = sample_bars("IBM", "d1", last=40)
    bars["volume"] = bars["volume"].astype("float64")
    if kind == "nan":
        bars.loc[9, "close"] = np.nan
    elif kind == "inf":
        bars.loc[9, "volume"] = np.inf
    elif kind == "duplicate":
        bars.loc[9, "ts"] = bars.loc[8, "ts"]
    elif kind == "unsorted":
        bars.loc[[8, 9], "ts"] = bars.loc[[9, 8], "ts"].to_numpy()
    elif kind == "high":
        bars.loc[9, "high"] = max(bars.loc[9, "open"], bars.loc[9, "close"]) * 0.99
    elif kind == "low":
        bars.loc[9, "low"] = min(bars.loc[9, "open"], bars.loc[9, "close"]) * 1.01
    elif kind == "volume":
        bars.loc[9, "volume"] = -1
    return bars


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", "line 11: close 'NaN' is NaN, inf or not a number"),  # header is line 1, row 9 is line 11
        ("inf", "line 11: volume 'inf' is NaN, inf or not a number"),
        ("duplicate", "line 11: duplicate ts"),
        ("unsorted", "line 11: ts"),
        ("high", "line 11: high < max(open, close)"),
        ("low", "line 11: low > min(open, close)"),
        ("volume", "line 11: negative volume"),
    ],
)
def test_bad_file_is_rejected_whole(kind, message, embedded_store: SqliteStore, tmp_path, capsys) -> None:
    path = write(tmp_path, "IBM_d1.csv", corrupt(kind))
    assert load_bars.main([str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"load_bars: {path}: ") and message in err and "\n" not in err
    assert embedded_store.count_bars("IBM", "d1") == 0
    assert embedded_store.list_active_symbols() == []


def test_good_files_load_idempotently_and_register_symbols(
    embedded_store: SqliteStore, tmp_path, capsys
) -> None:
    files = [str(sample_csv("GOOG", "w1")), str(sample_csv("IXIC", "d1"))]
    assert load_bars.main([*files, "--quiet"]) == 0
    assert load_bars.main([*files, "--quiet"]) == 0
    assert embedded_store.count_bars("GOOG", "w1") == 446 and embedded_store.count_bars("IXIC", "d1") == 2500
    assert embedded_store.list_active_symbols() == ["GOOG", "IXIC"]
    renamed = write(tmp_path, "bars.csv", sample_bars("GSPC", "w1", last=30))
    assert load_bars.main([str(renamed), "--symbol", "gspc", "--timeframe", "w1", "--quiet"]) == 0
    assert embedded_store.count_bars("GSPC", "w1") == 30
    assert load_bars.main([str(renamed), "--symbol", "gspc", "--timeframe", "w1", "--if-missing"]) == 0


def test_one_bad_file_does_not_stop_the_others(embedded_store, tmp_path, capsys) -> None:
    bad = write(tmp_path, "IBM_d1.csv", corrupt("low"))
    assert load_bars.main([str(bad), str(sample_csv("GOOG", "w1")), "--quiet"]) == 1
    assert embedded_store.count_bars("GOOG", "w1") == 446 and embedded_store.count_bars("IBM", "d1") == 0


def test_file_name_and_timestamp_problems(embedded_store, tmp_path, capsys) -> None:
    odd = write(tmp_path, "IBM-daily.csv", sample_bars("IBM", "d1", last=5))
    assert load_bars.main([str(odd)]) == 1
    assert "name is not SYMBOL_TF.csv" in capsys.readouterr().err
    naive = tmp_path / "IBM_d1.csv"
    naive.write_text("ts,open,high,low,close,volume\n2020-01-02T14:30:00,1,2,0.5,1.5,100\n")
    assert load_bars.main([str(naive)]) == 1
    assert "line 2: ts '2020-01-02T14:30:00' has no UTC offset" in capsys.readouterr().err
    empty = tmp_path / "IBM_h1.csv"
    empty.write_text("ts,open,high,low,close,volume\n2020-01-02T14:30:00Z,1,2,0.5,,100\n")
    assert load_bars.main([str(empty)]) == 1
    assert "line 2: close is empty" in capsys.readouterr().err
    wrong = tmp_path / "IBM_w1.csv"
    wrong.write_text("date,o,h,l,c,v\n")
    assert load_bars.main([str(wrong)]) == 1
    assert "expected ['ts', 'open', 'high', 'low', 'close', 'volume']" in capsys.readouterr().err


def test_if_missing_checks_the_pair_the_file_would_load_into(embedded_store, capsys) -> None:
    # the file is named GOOG_w1 but --symbol says ALPHA: --if-missing must look at ALPHA/w1
    assert load_bars.main([str(sample_csv("GOOG", "w1")), "--quiet"]) == 0
    assert (
        load_bars.main([str(sample_csv("GOOG", "w1")), "--symbol", "ALPHA", "--if-missing", "--quiet"]) == 0
    )
    assert embedded_store.count_bars("ALPHA", "w1") == 446
