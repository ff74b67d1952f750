"""What runs on a worker (this process, a local pool process or a Dask worker): fit one prepared pair and pack
its artifact into bytes.

Nothing here opens a store, reads the environment or sees a secret: the task gets the prepared arrays and a
`FitSpec` carrying only the fit settings (`Settings.fit`: no secret and no store address, by construction), and returns a `PackedFit` the main process
writes to disk and records. Measured on 500-bar pairs, the fit is ~90% of a pair's CPU and pickling the models
(LightGBM's model_to_string, the forest's node arrays) most of the rest, so both run here; store reads and writes
stay in the main process, which is the only one holding credentials.

This module is cheap to import (no scikit-learn, scipy or LightGBM): the main process needs its names to submit
tasks. A worker preloads PRELOAD_MODULES once (forkserver preload, or `dask worker --preload`).
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ml.src.training.pair_state import PackedFit
from ml.src.training.provenance import library_versions

if TYPE_CHECKING:
    from config.settings import FitSettings
    from ml.src.training.pair_state import FittedPair, PreparedPair
    from ml.src.training.pooled import PoolMember

# Imported once per worker process before its first task (the learners cost ~1.5 s of CPU to import).
PRELOAD_MODULES: tuple[str, ...] = (
    "ml.src.training.worker",
    "ml.src.training.pipeline",
    "ml.src.training.models",
    "ml.src.training.walk_forward",
    "ml.src.training.pooled_pair",
    "ml.src.training.trading_metrics",
    "lightgbm",
    "scipy.stats",  # imported lazily by the information coefficient
)


@dataclass(frozen=True)
class FitSpec:
    """Everything a worker needs besides the prepared pair."""

    settings: FitSettings  # the fit group only: no secret, no store address, by construction
    run_id: str
    n_threads: int = 1
    compress: int = 0  # zlib level of the packed artifact; 0 = none


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def pack_fit(
    prep: PreparedPair, fitted: FittedPair, *, run_id: str, trained_at: datetime, compress: int = 0
) -> PackedFit:
    """Serialize a fitted pair's bundle; the result carries everything persist_pair needs."""
    from ml.src.training import artifacts
    from ml.src.training.pipeline import build_bundle

    t0 = time.perf_counter()
    versions = library_versions()
    bundle = build_bundle(prep, fitted, run_id=run_id, trained_at=trained_at, versions=versions)
    data = artifacts.pack_bundle(bundle, compress=compress)
    timings = {**fitted.timings, "pack": time.perf_counter() - t0}
    return PackedFit(
        weights=fitted.weights,
        metrics=fitted.metrics,
        timings=timings,
        test=fitted.test,
        walk_forward=fitted.walk_forward,
        oos=fitted.oos,
        trained_at=trained_at,
        artifact=data,
        library_versions=versions,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        worker_peak_rss_mb=peak_rss_mb(),
    )


def fit_pair(prep: PreparedPair, settings: FitSettings, n_threads: int = 1) -> FittedPair:
    from ml.src.training import pipeline

    return pipeline.fit_pair(prep, settings, n_threads=n_threads)


def fit_task(prep: PreparedPair, spec: FitSpec) -> PackedFit:
    """The unit of work shipped to a worker: fit the members, the weights and the metrics; pack the bundle."""
    fitted = fit_pair(prep, spec.settings, n_threads=spec.n_threads)
    return pack_fit(prep, fitted, run_id=spec.run_id, trained_at=datetime.now(UTC), compress=spec.compress)


def fit_pooled_task(prep: PreparedPair, peers: list[PoolMember], spec: FitSpec) -> PackedFit:
    """ML_POOLED_MODELS: fit the local model and the pooled candidate (the timeframe's other pairs' known rows
    among `peers`), keep the one that wins on paired out-of-sample rows, and pack it."""
    from ml.src.training.pooled_pair import fit_pair_local_or_pooled

    fitted = fit_pair_local_or_pooled(prep, peers, spec.settings, n_threads=spec.n_threads)
    return pack_fit(prep, fitted, run_id=spec.run_id, trained_at=datetime.now(UTC), compress=spec.compress)


def warm_up() -> str:
    """A no-op task: makes a worker import PRELOAD_MODULES before the first real pair arrives."""
    import importlib

    for name in PRELOAD_MODULES:
        importlib.import_module(name)
    library_versions()
    return f"{socket.gethostname()}:{os.getpid()}"


def dask_setup(worker: Any = None) -> None:
    """`dask worker --preload ml.src.training.worker`: import the learners when the worker starts, not
    during its first pair."""
    warm_up()
