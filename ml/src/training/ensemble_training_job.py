"""Train one ensemble per (symbol, timeframe) and record the run.

    python -m ml.src.training.ensemble_training_job --symbol AAPL --timeframes d1 w1 --json

The command line lives in ml.src.cli.train (also `swiftbolt-ml train`), the run loop in run_loop; this module
keeps the entry point the design names and the seed's Python API (`train_ensemble_for_symbol_timeframe`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

    from config.settings import Settings
    from ml.src.data.store import TrainingStore

__all__ = ["train_ensemble_for_symbol_timeframe"]


def train_ensemble_for_symbol_timeframe(
    db: TrainingStore | None = None,
    symbol: str = "AAPL",
    timeframe: str = "d1",
    lookback_days: float | None = None,
    *,
    target_bars: int | None = None,
    as_of: datetime | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Train one pair as its own run; the seed's return shape (models/weights/models_path) plus the result.

    Raises IdentifierError (a ValueError) for an invalid symbol or timeframe, before anything is opened or
    written; ArtifactError when ML_MODELS_DIR is not writable.
    """
    from config.settings import Settings
    from ml.src.data.identifiers import check_timeframe, normalise_symbol
    from ml.src.data.store_factory import open_store
    from ml.src.training.run_loop import run_job

    symbol = normalise_symbol(symbol)
    timeframe = check_timeframe(timeframe)
    settings = settings or Settings()  # the environment as it is now (not a cached copy)

    store = db or open_store(settings)
    try:
        report = run_job(
            store,
            settings,
            [symbol],
            [timeframe],
            force=True,  # an explicit API call means "train now"
            as_of=as_of,
            lookback_days=lookback_days,
            target_bars=target_bars,
            workers=1,
            trigger="api",
        )
    finally:
        if db is None:
            store.close()
    result = report.results[0]
    out = result.to_json()
    out["run_id"] = report.run_id
    out["success"] = result.status == "succeeded"
    if result.status == "succeeded" and result.metrics:
        out["models"] = {
            name: {k: v for k, v in result.metrics[name].items() if not isinstance(v, list)}
            for name in ("rf", "gb")
        }
        out["models_path"] = result.artifact_file  # absolute; the ledger's artifact_path is relative
        out["validation_accuracy"] = result.metrics["ensemble"]["valid_accuracy"]
        out["baseline_accuracy"] = result.metrics["majority"]["test_accuracy"]
    return out


if __name__ == "__main__":
    from ml.src.cli.train import main

    sys.exit(main())
