"""One (symbol, timeframe) pair, from bars to a recorded ensemble, in three phases, one module each
(pair_prepare, pair_fit, pair_persist); this module names them all in one place.

prepare_pair (store reads, features, labels, split) -> fit_pair (pure compute, runs on a worker, which also
packs the bundle: worker.fit_task) -> persist_pair (artifact bytes + result row). Any expected problem raises
PairFailure with a one-line reason.

The learners (scikit-learn, scipy, LightGBM) are imported inside the fit functions only, so the main process
of a run whose fits happen elsewhere never pays for their import.
"""

from __future__ import annotations

from ml.src.training.pair_fit import BASELINE_NAMES, chart_data, evaluate, fit_pair, trading_read
from ml.src.training.pair_persist import build_bundle, lock_sha256, persist_pair
from ml.src.training.pair_prepare import (
    NotEnoughHistory,
    PairFailure,
    PairSkipped,
    check_bars,
    context_for_window,
    label_window,
    no_new_bars_reason,
    prepare_pair,
    read_end,
    required_bars,
    warmup_bars,
)
from ml.src.training.pair_result import PairRequest
from ml.src.training.pair_state import FittedPair, PackedFit, PreparedPair
from ml.src.training.provenance import library_versions

__all__ = [
    "BASELINE_NAMES",
    "FittedPair",
    "NotEnoughHistory",
    "PackedFit",
    "PairFailure",
    "PairRequest",
    "PairSkipped",
    "PreparedPair",
    "build_bundle",
    "chart_data",
    "check_bars",
    "context_for_window",
    "evaluate",
    "fit_pair",
    "label_window",
    "library_versions",
    "lock_sha256",
    "no_new_bars_reason",
    "persist_pair",
    "prepare_pair",
    "read_end",
    "required_bars",
    "trading_read",
    "warmup_bars",
]
