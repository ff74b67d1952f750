"""Model bundles on disk: written atomically inside ML_MODELS_DIR, verified before anything is unpickled.

- Paths: built from validated identifiers, resolved, and refused outside the models directory. The ledger
  records them relative to ML_MODELS_DIR (`AAPL/d1/AAPL_d1_<time>_<run>.joblib`); readers resolve them against
  their own setting.
- Loading reads the file once, checks its sha256 against the expected one (required) and, when an artifact key
  is configured (ML_ARTIFACT_KEY), its HMAC-SHA256 signature against the recorded one (required), and only then
  unpickles those same bytes. Any file that cannot be unpickled raises ArtifactError, whatever the cause.
- The signature covers the bundle's identity (symbol, timeframe, run) as well as its bytes, and a loader checks
  it against the identity it asked for: another pair's path, sha256 and signature copied into a row are refused.
- A recorded signature without a key is refused: removing the key must not switch signing off.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import pickle
import re
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib

from ml.src.data.identifiers import IdentifierError, check_pair
from ml.src.training.ensemble import EnsembleModel

BUNDLE_FORMAT = 1
# Libraries whose pickled models a bundle holds: a different major version refuses to load, a different minor
# version loads with a warning (the models may predict differently).
CHECKED_LIBRARIES = ("scikit-learn", "lightgbm")

log = logging.getLogger("ml.artifacts")
TEMP_GLOB = ".*.joblib.*.tmp"  # save_bundle's temp files: `.<name>.joblib.<random>.tmp`
_RUN_ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z\-]{7,63}$")


class ArtifactError(RuntimeError):
    """An artifact that must not be used (missing, altered, unsigned, corrupt, outside the models directory)."""


class _FromSettings:
    def __repr__(self) -> str:
        return "ML_ARTIFACT_KEY"


FROM_SETTINGS = _FromSettings()
Key = str | bytes | None


def _key_bytes(key: Key | _FromSettings) -> bytes | None:
    if isinstance(key, _FromSettings):
        from pydantic import ValidationError

        from config.settings import Settings, settings_error_line

        try:
            secret = Settings().artifact_key
        except ValidationError as exc:
            raise ArtifactError(settings_error_line(exc)) from None
        key = secret.get_secret_value() if secret is not None else None
    if key is None or key == "" or key == b"":
        return None
    return key.encode() if isinstance(key, str) else bytes(key)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ArtifactIdentity:
    """Whose model a bundle is: what its signature vouches for besides its bytes."""

    symbol: str
    timeframe: str
    run_id: str

    def header(self) -> bytes:
        return f"swiftbolt-artifact/2\n{self.symbol}\n{self.timeframe}\n{self.run_id}\n".encode()


NO_IDENTITY = ArtifactIdentity("", "", "")  # a bundle signed for nobody verifies only as nobody's


def _mac(raw: bytes, data: bytes, identity: ArtifactIdentity | None) -> str:
    mac = hmac.new(raw, (identity or NO_IDENTITY).header(), hashlib.sha256)
    mac.update(data)
    return mac.hexdigest()


def sign_bytes(data: bytes, key: Key | _FromSettings, identity: ArtifactIdentity | None = None) -> str | None:
    """HMAC-SHA256 (hex) of the identity and the bytes under the key, or None without a key."""
    raw = _key_bytes(key)
    return _mac(raw, data, identity) if raw is not None else None


# ------------------------------------------------------------------------------------------------ paths
def models_root(models_dir: str | Path) -> Path:
    return Path(models_dir).expanduser().resolve()


def inside_models_dir(models_dir: str | Path, path: str | Path) -> Path:
    """`path` (relative paths are taken relative to the models directory) resolved, or ArtifactError if it
    is not inside the models directory."""
    root = models_root(models_dir)
    candidate = Path(path).expanduser()
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ArtifactError(f"artifact path {str(path)!r} is outside ML_MODELS_DIR ({root}): refused")
    return resolved


def resolve_artifact(models_dir: str | Path, stored: str | Path) -> Path:
    """The file a ledger row's artifact_path names: relative to ML_MODELS_DIR, never outside it."""
    if not str(stored).strip():
        raise ArtifactError("empty artifact path")
    return inside_models_dir(models_dir, stored)


def relative_artifact_path(models_dir: str | Path, path: str | Path) -> str:
    """The ledger's form of an artifact path: relative to ML_MODELS_DIR, with forward slashes."""
    return inside_models_dir(models_dir, path).relative_to(models_root(models_dir)).as_posix()


def artifact_path(models_dir: Path, symbol: str, timeframe: str, run_id: str, trained_at: datetime) -> Path:
    """`<models_dir>/SYMBOL/TF/SYMBOL_TF_<UTC time>_<run id prefix>.joblib`, absolute and inside models_dir."""
    try:
        symbol, timeframe = check_pair(symbol, timeframe)
    except IdentifierError as exc:
        raise ArtifactError(f"refusing to build an artifact path: {exc}") from None
    if not _RUN_ID_RE.fullmatch(run_id):
        raise ArtifactError(f"refusing to build an artifact path: invalid run id {run_id!r}")
    stamp = trained_at.strftime("%Y%m%dT%H%M%SZ")
    name = f"{symbol}_{timeframe}_{stamp}_{run_id[:8]}.joblib"
    return inside_models_dir(models_dir, Path(symbol) / timeframe / name)


def ensure_models_dir(models_dir: str | Path) -> Path:
    """Prove the models directory can take files (a probe file, created and removed) before any compute.

    A directory that does not exist yet is not created here (the first save does that): its deepest existing
    ancestor must be a writable directory. Returns the resolved path; ArtifactError with one line otherwise.
    """
    root = Path(models_dir).expanduser()
    probe_dir = root
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        if not probe_dir.is_dir():
            raise NotADirectoryError(20, "not a directory", str(probe_dir))
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = "" if probe_dir == root else f" ({probe_dir})"
        raise ArtifactError(f"ML_MODELS_DIR {root} is not a writable directory{where}: {reason}") from None
    return root.resolve()


def sweep_temp_files(models_dir: str | Path, older_than_s: float) -> tuple[list[Path], list[str]]:
    """Delete save_bundle temp files older than `older_than_s` (left by a killed process); (removed, errors).

    Younger ones may belong to a run saving right now and are left alone.
    """
    root = Path(models_dir)
    removed: list[Path] = []
    errors: list[str] = []
    if not root.is_dir():
        return removed, errors
    cutoff = time.time() - older_than_s
    for path in root.rglob(TEMP_GLOB):
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except OSError as exc:
            errors.append(f"cannot remove temp file {path}: {exc.strerror or type(exc).__name__}")
    return removed, errors


BUNDLE_NAME_RE = re.compile(r"^[^/]+_[a-z0-9]+_\d{8}T\d{6}Z_[0-9A-Za-z\-]{8}\.joblib$")  # artifact_path's


def sweep_orphan_bundles(
    models_dir: str | Path, named: set[str], older_than_s: float
) -> tuple[list[Path], list[str]]:
    """Delete bundles no ledger row names (`named`: the ledger's artifact paths) older than `older_than_s`.

    Such a file was renamed into place by a process killed before its row was committed. Younger ones may
    belong to a run recording its row right now. Only files named the way artifact_path names bundles, at
    SYMBOL/TF/, are candidates. Returns (removed, errors).
    """
    root = models_root(models_dir)
    removed: list[Path] = []
    errors: list[str] = []
    if not root.is_dir():
        return removed, errors
    keep: set[Path] = set()
    for stored in named:
        try:
            keep.add(resolve_artifact(root, stored))
        except ArtifactError:
            continue  # a row naming a file outside the models directory protects nothing here
    cutoff = time.time() - older_than_s
    for path in root.glob("*/*/*.joblib"):
        try:
            if (
                not BUNDLE_NAME_RE.fullmatch(path.name)
                or path.is_symlink()
                or not path.is_file()
                or path.resolve() in keep
                or path.stat().st_mtime >= cutoff
            ):
                continue
            path.unlink()
            removed.append(path)
        except OSError as exc:
            errors.append(f"cannot remove orphan bundle {path}: {exc.strerror or type(exc).__name__}")
    return removed, errors


# ------------------------------------------------------------------------------------------- save / load
@dataclass(frozen=True)
class SavedArtifact:
    path: Path  # absolute
    relative: str  # as recorded in the ledger: relative to ML_MODELS_DIR
    sha256: str
    signature: str | None  # HMAC-SHA256 under ML_ARTIFACT_KEY, or None without a key


def pack_bundle(bundle: dict[str, Any], compress: int = 0) -> bytes:
    """The bundle as the bytes of its file: a pickle (protocol 5) in a zlib stream at level `compress`.

    Level 0 stores the pickle uncompressed but still framed by zlib, whose Adler-32 checksum makes a damaged
    file fail to load (ArtifactError) instead of unpickling altered numbers; `joblib.load` reads every level.
    Measured on a 500-bar pair (docs/benchmarks.md): level 0 costs ~2 ms for 1.5 MB; level 1 takes ~12 ms of
    CPU to shrink it to 0.6 MB while writing and syncing the extra 0.9 MB takes ~1 ms, so compression is off
    unless disk space matters more (ML_ARTIFACT_COMPRESS). The C pickler is 5x faster than joblib's Python one
    on the forest's node arrays.
    """
    data = pickle.dumps({"format": BUNDLE_FORMAT, **bundle}, protocol=5)
    return zlib.compress(data, max(0, min(9, compress)))


def current_umask() -> int:
    """This process's umask, read without changing it where the kernel shows it (Linux), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_artifact(data: bytes, path: Path) -> str:
    """Write `data` to `path` atomically (temp file in the same folder, fdatasync, rename); its sha256.

    The sync before the rename is the one the atomic rename needs: without it a crash can leave the new name
    pointing at an empty or partial file. A crash mid-write leaves only a temp file that no reader ever opens
    (swept by a later run), never a truncated bundle.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; a bundle gets the mode any new file would (0666 less the umask), so a
        # reader running as another user of the group can load it
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            (getattr(os, "fdatasync", None) or os.fsync)(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return digest


def save_bundle(bundle: dict[str, Any], path: Path, compress: int = 0) -> str:
    """Write the bundle to `path` via a temp file in the same folder + rename; returns its sha256."""
    return write_artifact(pack_bundle(bundle, compress), path)


def save_artifact_bytes(
    data: bytes,
    models_dir: Path,
    path: Path,
    key: Key | _FromSettings = None,
    identity: ArtifactIdentity | None = None,
) -> SavedArtifact:
    """A packed bundle (pack_bundle, e.g. from a worker) written inside the models directory, with its
    ledger path and (with a key) its signature over `identity` and the bytes, computed here: the key never
    leaves the job's process, and the identity is the pair the job asked for, not what the bytes claim."""
    path = inside_models_dir(models_dir, path)
    sha = write_artifact(data, path)
    try:
        signature = sign_bytes(data, key, identity)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return SavedArtifact(path, relative_artifact_path(models_dir, path), sha, signature)


def save_artifact(
    bundle: dict[str, Any], models_dir: Path, path: Path, key: Key | _FromSettings = None
) -> SavedArtifact:
    """save_bundle inside the models directory, plus its ledger path and (with a key) its signature over the
    bundle's own symbol, timeframe and run (when it names them)."""
    return save_artifact_bytes(pack_bundle(bundle), models_dir, path, key, bundle_identity(bundle))


def bundle_identity(bundle: dict[str, Any]) -> ArtifactIdentity | None:
    if all(bundle.get(k) for k in ("symbol", "timeframe", "run_id")):
        return ArtifactIdentity(str(bundle["symbol"]), str(bundle["timeframe"]), str(bundle["run_id"]))
    return None


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


def _read_verified(
    path: Path,
    expected_sha256: str | None,
    signature: str | None,
    key: Key | _FromSettings,
    identity: ArtifactIdentity | None,
) -> bytes:
    if not expected_sha256:
        raise ArtifactError(
            f"refusing to unpickle {path} without an expected sha256 (pass the ledger's artifact_sha256)"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"artifact not found: {path}") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc.strerror or type(exc).__name__}") from None
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, str(expected_sha256).lower()):
        raise ArtifactError(
            f"artifact {path} has sha256 {actual}, expected {expected_sha256}: refusing to load"
        )
    raw_key = _key_bytes(key)
    if raw_key is None:
        if signature:
            raise ArtifactError(
                f"artifact {path} has a recorded signature but ML_ARTIFACT_KEY is not set: refusing to load "
                "(set the key it was signed with)"
            )
        return data
    if not signature:
        raise ArtifactError(
            f"artifact {path} has no recorded signature and ML_ARTIFACT_KEY is set: refusing to load"
        )
    if not hmac.compare_digest(_mac(raw_key, data, identity), str(signature).lower()):
        whose = f" for {identity.symbol}/{identity.timeframe} run {identity.run_id}" if identity else ""
        raise ArtifactError(f"artifact {path} has an invalid signature{whose}: refusing to load")
    return data


def _check_identity(path: Path, bundle: dict[str, Any], identity: ArtifactIdentity | None) -> None:
    """The unpickled bundle is the model asked for (also without a key, where only the sha256 vouches)."""
    if identity is None:
        return
    for field_name in ("symbol", "timeframe", "run_id"):
        held, wanted = bundle.get(field_name), getattr(identity, field_name)
        if held is not None and str(held) != wanted:
            raise ArtifactError(
                f"artifact {path} holds {field_name} {held!r}, not the requested {wanted!r}: refusing to use it"
            )


def load_bundle(
    path: str | Path,
    expected_sha256: str | None = None,
    *,
    signature: str | None = None,
    key: Key | _FromSettings = FROM_SETTINGS,
    identity: ArtifactIdentity | None = None,
) -> dict[str, Any]:
    """The raw bundle dict, from bytes verified before they are unpickled.

    Refuses (ArtifactError) without an expected sha256 or when it differs; when a key is given (default:
    ML_ARTIFACT_KEY from the settings), without a valid HMAC-SHA256 `signature` over `identity` (the pair and
    run asked for) and the bytes; without a key, when a signature is recorded. A verified file that still
    cannot be unpickled (truncated, flipped byte, zlib or pickle error, wrong format), or that holds another
    pair or run than `identity`, is an ArtifactError too.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    data = _read_verified(path, expected_sha256, signature, key, identity)
    try:
        bundle = joblib.load(io.BytesIO(data))
    except Exception as exc:  # zlib.error, UnpicklingError, EOFError, ValueError, ...: all mean "corrupt"
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ArtifactError(
            f"artifact {path} is corrupt: {type(exc).__name__}{': ' + first if first else ''}"
        ) from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise ArtifactError(f"artifact {path} is not a bundle of format {BUNDLE_FORMAT}")
    _check_identity(path, bundle, identity)
    check_library_versions(path, bundle.get("library_versions"))
    return bundle


def ensemble_from_bundle(bundle: dict[str, Any]) -> EnsembleModel:
    try:
        meta = {k: v for k, v in bundle.items() if k not in ("models", "weights", "feature_names", "classes")}
        return EnsembleModel(
            models=bundle["models"],
            weights=bundle["weights"],
            feature_names=tuple(bundle["feature_names"]),
            classes=tuple(bundle["classes"]),
            metadata=meta,
        )
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"bundle is missing or has a bad {exc}") from None


def load_ensemble(
    path: str | Path,
    expected_sha256: str | None = None,
    *,
    signature: str | None = None,
    key: Key | _FromSettings = FROM_SETTINGS,
    identity: ArtifactIdentity | None = None,
) -> EnsembleModel:
    """Load a verified ensemble: `.classes`, `.feature_names`, `.predict_proba(features)`.

    `expected_sha256` is required (the ledger's artifact_sha256); with ML_ARTIFACT_KEY set, so is `signature`
    (the ledger's artifact_signature), checked for `identity` (the requested pair and the row's run).
    """
    return ensemble_from_bundle(
        load_bundle(path, expected_sha256, signature=signature, key=key, identity=identity)
    )
