"""What a pair is between the phases of its training: prepared (arrays, labels, split), fitted here
(FittedPair) or fitted and packed by a worker (PackedFit). Plain data, in a module of its own so the phases
(pipeline), the worker and the promotion gate (registry) all depend on it and not on each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from config.settings import TimeframeSpec
from ml.src.training.labels import Thresholds
from ml.src.training.pair_result import PairRequest
from ml.src.training.scoring import SlicePredictions
from ml.src.training.splits import PurgedSplit


@dataclass
class PreparedPair:
    request: PairRequest
    spec: TimeframeSpec
    ts: pd.Series  # labelled rows only
    x: np.ndarray
    codes: np.ndarray
    returns: np.ndarray
    thresholds: Thresholds
    split: PurgedSplit
    split_info: dict[str, Any]
    n_bars: int
    n_cached: int
    n_computed: int
    timings: dict[str, float] = field(default_factory=dict)
    feature_names: tuple[str, ...] = ()  # the columns of x, in order
    feature_version: str = ""  # the version of the cached columns (ML_VOL_FEATURES changes it)
    scale: np.ndarray | None = None  # ex_ante_vol: each row's ex-ante horizon volatility (labels use it)
    context: tuple[str, ...] = ()  # context symbols whose columns are in x
    notes: tuple[str, ...] = ()  # one line per context symbol the pair trains without


@dataclass
class FittedPair:
    models: dict[str, Any]
    weights: dict[str, float]
    metrics: dict[str, Any]
    timings: dict[str, float]
    bundle_extras: dict[
        str, Any
    ]  # calibration, decision rule, penalty, trading threshold: saved in the bundle
    test: SlicePredictions  # every predictor on the test rows (promotion reuses them)
    walk_forward: dict[str, Any] | None = None
    oos: SlicePredictions | None = (
        None  # walk-forward test blocks pooled (the verdict's and promotion's rows)
    )

    @property
    def test_proba(self) -> np.ndarray:
        """The ensemble's class probabilities on the test rows."""
        return self.test.probas["ensemble"]


@dataclass
class PackedFit:
    """What a worker sends back: the numbers for the ledger and the artifact, already serialized."""

    weights: dict[str, float]
    metrics: dict[str, Any]
    timings: dict[str, float]
    test: SlicePredictions  # every predictor on the test rows (promotion compares them row by row)
    walk_forward: dict[str, Any] | None
    oos: SlicePredictions | None  # the walk-forward test blocks pooled
    trained_at: datetime
    artifact: bytes
    library_versions: dict[str, str] = field(default_factory=dict)
    worker: str = ""  # host:pid of the process that fitted it
    worker_peak_rss_mb: float = 0.0  # that process's peak resident memory so far
