"""Real bars for tests, never synthetic, from one of two places.

* ``sample_bars`` / ``sample_csv``: the daily and weekly bars the project ships in ``ml/sample_data`` (GOOG, IBM,
  GSPC, IXIC; see its README). Every test whose point does not depend on the timeframe or on a particular symbol
  uses these, so a fresh clone runs it.
* ``ml_test_bars`` / ``ml_test_csv``: the folder named by ``ML_TEST_DATA`` (default ``../shared/data`` beside
  the repo), for tests that need intraday bars or a symbol the project does not ship. When the folder is absent
  such a test is skipped with one line naming it, except under ``CI=true``, where a skipped test counts as a
  failure: there its absence fails the test.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "ml" / "sample_data"


def ml_test_data_dir() -> Path:
    """The ``ML_TEST_DATA`` folder (relative paths are relative to the repo root), present or not."""
    raw = os.environ.get("ML_TEST_DATA") or "../shared/data"
    path = Path(raw).expanduser()
    return (path if path.is_absolute() else REPO / path).resolve()


def require_ml_test_data() -> Path:
    """The ``ML_TEST_DATA`` folder; skips the calling test when it is absent (fails it under ``CI=true``)."""
    path = ml_test_data_dir()
    if path.is_dir():
        return path
    reason = f"ML_TEST_DATA not found: {path} (intraday and extra symbols' bars; CI clones ../shared beside the repo)"
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"{reason}; under CI=true it must be present", pytrace=False)
    pytest.skip(reason)


def ml_test_files() -> list[str]:
    """Names of the ``ML_TEST_DATA`` CSVs, for parametrizing; empty when the folder is absent."""
    path = ml_test_data_dir()
    return sorted(p.name for p in path.glob("*.csv")) if path.is_dir() else []


@cache
def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"real bars file missing: {path}")
    return pd.read_csv(path, parse_dates=["ts"])


def _slice(frame: pd.DataFrame, last: int | None, first: int | None) -> pd.DataFrame:
    if last is not None:
        frame = frame.iloc[-last:]
    if first is not None:
        frame = frame.iloc[:first]
    return frame.reset_index(drop=True).copy()


def sample_csv(symbol: str, timeframe: str) -> Path:
    return SAMPLE_DATA / f"{symbol}_{timeframe}.csv"


def sample_bars(
    symbol: str, timeframe: str, last: int | None = None, first: int | None = None
) -> pd.DataFrame:
    """The shipped file's bars: the `last` N rows, or the `first` N rows, or all."""
    return _slice(_read(sample_csv(symbol, timeframe)), last, first)


def fit_sample_pair(store: Any, symbol: str, timeframe: str, settings: Any) -> tuple[Any, Any]:
    """A shipped pair's last 700 bars in `store`, prepared (500 target bars) and fitted as the job fits them.

    Returns (PreparedPair, EnsembleFit); the members also score the test slice. Imported lazily so the modules
    that only need bars do not load the learners.
    """
    from ml.src.training.models import fit_ensemble
    from ml.src.training.pair_result import PairRequest
    from ml.src.training.pipeline import prepare_pair

    store.upsert_bars(symbol, timeframe, sample_bars(symbol, timeframe, last=700))
    prep = prepare_pair(store, PairRequest(symbol, timeframe, target_bars=500), settings)
    s = prep.split
    fit = fit_ensemble(prep.x, prep.codes, s.train, s.valid, {"test": s.test}, settings, purge=5)
    return prep, fit


def ml_test_csv(symbol: str, timeframe: str) -> Path:
    return require_ml_test_data() / f"{symbol}_{timeframe}.csv"


def ml_test_bars(
    symbol: str, timeframe: str, last: int | None = None, first: int | None = None
) -> pd.DataFrame:
    """An ``ML_TEST_DATA`` file's bars (skips or fails as ``require_ml_test_data`` does when the folder is absent)."""
    return _slice(_read(ml_test_csv(symbol, timeframe)), last, first)
