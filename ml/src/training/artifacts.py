"""Model bundles on disk: written atomically, verified by sha256 before anything is unpickled."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib

from ml.src.training.ensemble import EnsembleModel

BUNDLE_FORMAT = 1
# Libraries whose pickled models a bundle holds: a different major version refuses to load, a different minor
# version loads with a warning (the models may predict differently).
CHECKED_LIBRARIES = ("scikit-learn", "lightgbm")

log = logging.getLogger("ml.artifacts")


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


class LibraryVersionWarning(UserWarning):
    """A bundle was saved with another minor version of a library whose models it holds."""


def running_version(library: str) -> str | None:
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return None


def _major_minor(version: str) -> tuple[str, str]:
    parts = version.split(".")
    return parts[0], parts[1] if len(parts) > 1 else "0"


def check_library_versions(path: str | Path, recorded: dict[str, Any] | None) -> None:
    """Refuse a bundle saved with another major version of scikit-learn or LightGBM; warn on another minor one."""
    recorded = recorded or {}
    for lib in CHECKED_LIBRARIES:
        saved, running = recorded.get(lib), running_version(lib)
        if not saved or not running:
            continue  # not recorded (or not installed: unpickling its models fails on its own)
        (saved_major, saved_minor), (run_major, run_minor) = _major_minor(str(saved)), _major_minor(running)
        if saved_major != run_major:
            raise ArtifactError(
                f"artifact {path} was saved with {lib} {saved}, this is {lib} {running}: a different major "
                f"version; refusing to load (retrain, or install {lib}=={saved})"
            )
        if saved_minor != run_minor:
            message = f"artifact {path} was saved with {lib} {saved}, this is {lib} {running}: predictions may differ"
            log.warning("%s", message)
            warnings.warn(message, LibraryVersionWarning, stacklevel=3)


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
    check_library_versions(path, bundle.get("library_versions"))
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
