"""Model bundles on disk: written atomically, verified by sha256 before anything is unpickled."""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import joblib

from ml.src.training.ensemble import EnsembleModel

BUNDLE_FORMAT = 1


class ArtifactError(RuntimeError):
    """An artifact that must not be used (missing, altered, or of an unknown format)."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_path(models_dir: Path, symbol: str, timeframe: str, run_id: str, trained_at: datetime) -> Path:
    stamp = trained_at.strftime("%Y%m%dT%H%M%SZ")
    return Path(models_dir) / symbol / timeframe / f"{symbol}_{timeframe}_{stamp}_{run_id[:8]}.joblib"


def save_bundle(bundle: dict[str, Any], path: Path) -> str:
    """Write the bundle to `path` via a temp file in the same folder + rename; returns its sha256.

    A crash mid-write leaves only a temp file that no reader ever opens, never a truncated bundle.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            joblib.dump({"format": BUNDLE_FORMAT, **bundle}, fh, compress=3)
            fh.flush()
            os.fsync(fh.fileno())
        digest = sha256_file(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return digest


def load_bundle(path: str | Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """The raw bundle dict; refuses a file whose sha256 differs from the expected one before unpickling it."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise ArtifactError(
                f"artifact {path} has sha256 {actual}, expected {expected_sha256}: refusing to load"
            )
    bundle = joblib.load(path)
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise ArtifactError(f"artifact {path} is not a bundle of format {BUNDLE_FORMAT}")
    return bundle


def ensemble_from_bundle(bundle: dict[str, Any]) -> EnsembleModel:
    meta = {k: v for k, v in bundle.items() if k not in ("models", "weights", "feature_names", "classes")}
    return EnsembleModel(
        models=bundle["models"],
        weights=bundle["weights"],
        feature_names=tuple(bundle["feature_names"]),
        classes=tuple(bundle["classes"]),
        metadata=meta,
    )


def load_ensemble(path: str | Path, expected_sha256: str | None = None) -> EnsembleModel:
    """Load a verified ensemble: `.classes`, `.feature_names`, `.predict_proba(features)`."""
    return ensemble_from_bundle(load_bundle(path, expected_sha256))
