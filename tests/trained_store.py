"""An embedded store with trained champions, a month of daily forecasts and their outcomes, built once per session
from the shipped sample bars by the real job and forecast step (tests copy it; see conftest.trained_store)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from config.settings import Settings
from ml.src.data.local_db import SqliteStore
from ml.src.inference.forecast_job import run_forecasts
from ml.src.training.outcomes import fill_outcomes
from ml.src.training.run_loop import run_job
from tests.factories import sample_bars

GOOG_TRAINED = 1200  # GOOG d1 trains as of its bar 1199, then forecasts the next 25 trading days


def build(root: Path) -> dict[str, Path]:
    settings = Settings(
        _env_file=None,
        supabase_url=None,
        local_db=root / "store.sqlite3",
        models_dir=root / "models",
        walk_forward_folds=3,
    )
    goog = sample_bars("GOOG", "d1")
    with SqliteStore(settings.local_db) as store:
        store.upsert_bars("GOOG", "d1", goog)
        store.upsert_bars("IBM", "w1", sample_bars("IBM", "w1"))
        store.upsert_symbols(["GOOG", "IBM"])
        as_of = goog["ts"].iloc[GOOG_TRAINED - 1].to_pydatetime()
        for tf in ("d1", "w1"):
            report = run_job(
                store,
                settings,
                ["IBM"] if tf == "w1" else ["GOOG"],
                [tf],
                workers=1,
                as_of=as_of if tf == "d1" else None,
            )
            assert all(r.status == "succeeded" for r in report.results), [r.error for r in report.results]
        for k in range(GOOG_TRAINED - 1, GOOG_TRAINED + 24):
            run_forecasts(store, settings, [("GOOG", "d1")], as_of=goog["ts"].iloc[k] + pd.Timedelta(hours=8))
        run_forecasts(store, settings, [("GOOG", "w1"), ("IBM", "w1")])
        fill_outcomes(store, "GOOG", "d1")
    return {"db": settings.local_db, "models": settings.models_dir}
