"""Phase 3 of a pair: the bundle's bytes on disk (atomic, signed with the key) and its result row and model
version in one store transaction (in the job's process)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.src.data.records import ModelVersionRecord
from ml.src.data.store import StoreError, TrainingStore
from ml.src.training import artifacts
from ml.src.training.labels import (
    CLASSES,
)
from ml.src.training.pair_result import PairResult
from ml.src.training.pair_state import FittedPair, PreparedPair

if TYPE_CHECKING:
    from ml.src.training.pair_state import PackedFit
    from ml.src.training.registry import PromotionDecision


log = logging.getLogger("ml.training")


# --------------------------------------------------------------------------------------------------- persist
# The exact versions (with hashes) the install came from; the dev lock pins the same runtime versions.
LOCK_FILE = Path(__file__).resolve().parents[3] / "requirements.lock"


@cache
def lock_sha256() -> str | None:
    """sha256 of requirements.lock, so a bundle names the environment that can load it; None without the file."""
    try:
        return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()
    except OSError:
        return None


def build_bundle(
    prep: PreparedPair,
    fitted: FittedPair,
    *,
    run_id: str,
    trained_at: datetime,
    versions: dict[str, str],
) -> dict[str, Any]:
    """The artifact's contents: the fitted models and everything needed to use and audit them."""
    req = prep.request
    return {
        "symbol": req.symbol,
        "timeframe": req.timeframe,
        "run_id": run_id,
        "trained_at": trained_at.isoformat(),
        "models": fitted.models,
        "weights": fitted.weights,
        "classes": list(CLASSES),
        "feature_names": list(prep.feature_names),
        "feature_version": prep.feature_version,
        "context": {"symbols": list(prep.context), "notes": list(prep.notes)},
        "timeframe_settings": prep.spec.model_dump(),
        "thresholds": prep.thresholds.to_dict(),
        "split": prep.split_info,
        "metrics": fitted.metrics,
        "library_versions": versions,
        "lock_sha256": lock_sha256(),
        # plain data, so the bundle still loads without this package (ensemble.EnsembleModel applies them)
        **fitted.bundle_extras,
    }


def persist_pair(
    store: TrainingStore,
    prep: PreparedPair,
    fitted: PackedFit,
    *,
    run_id: str,
    models_dir: Path,
    duration_s: float,
    promotion: PromotionDecision | None = None,
    artifact_key: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> PairResult:
    """Write the packed artifact, then the result row and model version together; no row without its artifact.

    The champion pointer moves (if `promotion` says so) in the same store transaction, after the artifact is
    on disk. The ledger gets the path relative to `models_dir` (and, with a key, the artifact's signature,
    computed here: the key never reaches a worker). If recording fails, the store is read back before anything
    is deleted: a write whose reply was lost after it committed is a success, and an artifact is only deleted
    when its row is known to be absent.
    """
    req = prep.request
    t0 = time.perf_counter()
    trained_at = fitted.trained_at
    path = artifacts.artifact_path(models_dir, req.symbol, req.timeframe, run_id, trained_at)
    identity = artifacts.ArtifactIdentity(req.symbol, req.timeframe, run_id)
    saved = artifacts.save_artifact_bytes(fitted.artifact, models_dir, path, artifact_key, identity)
    timings = {**prep.timings, **fitted.timings, "save": time.perf_counter() - t0}
    result = PairResult(
        symbol=req.symbol,
        timeframe=req.timeframe,
        status="succeeded",
        horizon_bars=prep.spec.horizon_bars,
        n_train=prep.split.n_train,
        n_valid=prep.split.n_valid,
        n_test=prep.split.n_test,
        split=prep.split_info,
        weights=fitted.weights,
        metrics=fitted.metrics,
        artifact_path=saved.relative,
        artifact_sha256=saved.sha256,
        artifact_signature=saved.signature,
        artifact_file=str(saved.path),
        duration_s=duration_s + timings["save"],
        timings=timings,
        walk_forward=fitted.walk_forward,
        promotion=promotion.to_dict() if promotion else None,
    )
    version = ModelVersionRecord(
        symbol=req.symbol,
        timeframe=req.timeframe,
        run_id=run_id,
        artifact_path=saved.relative,
        artifact_sha256=saved.sha256,
        artifact_signature=saved.signature,
        feature_version=prep.feature_version,
        trained_at=trained_at,
        weights=fitted.weights,
        metrics={
            k: fitted.metrics[k]
            for k in ("ensemble", "majority", "persistence", "prior", "verdict", "pooling")
            if k in fitted.metrics
        },
        is_champion=bool(promotion and promotion.promote),
    )
    _record_or_roll_back(store, result, version, run_id, saved, warn)
    return result


def _record_or_roll_back(
    store: TrainingStore,
    result: PairResult,
    version: ModelVersionRecord,
    run_id: str,
    saved: artifacts.SavedArtifact,
    warn: Callable[[str], None] | None,
) -> None:
    """Record the result and its version; on a failure read the store back before deleting anything: a write
    whose reply was lost after it committed is a success, and the artifact goes only when its row is absent."""
    try:
        store.record_result(result.to_record(run_id), version)
    except StoreError as exc:
        label = f"{result.symbol}/{result.timeframe}"
        try:
            row = store.find_result(run_id, result.symbol, result.timeframe)
        except StoreError as again:
            # Unknown outcome: the row may exist and point at the file, so the file stays (an orphan file is
            # harmless, a champion pointing at nothing is not).
            raise StoreError(
                f"{exc}; outcome unknown (read-back failed: {again}); artifact kept at {saved.relative}"
            ) from None
        if row is not None and row.get("artifact_sha256") == saved.sha256:
            note = f"{label}: recording the result failed ({exc}) but it had been committed (read back)"
            log.warning("%s", note)
            if warn is not None:
                warn(note)
            return
        saved.path.unlink(missing_ok=True)  # the row is known to be absent: an artifact nobody can find
        raise
