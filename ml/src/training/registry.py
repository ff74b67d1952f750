"""Model registry: which version of a pair is the champion, and which versions are kept.

A new version becomes champion only on out-of-sample evidence. Challenger and champion are scored on the same
most recent rows that neither trained on: rows after the champion's validation slice (+ h, so no label it
learned from reaches them) for which the challenger has an out-of-sample prediction (its test slice, and the
test blocks of its walk-forward folds where there are any). The scores are compared row by row (balanced
accuracy and log loss are sums of per-row contributions), and the challenger is promoted only when

    difference > promotion_z x block standard error of the difference     (stats.paired_difference)

and it beats both baselines on the same rows (majority and persistence for label scores, the class-mix prior
for log loss). The first version of a pair is its champion; an unusable or expired champion is replaced. The
champion's reported score is its score on that window. Pointers move in the store's transaction that records
the result, after the new artifact is on disk.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from config.settings import Settings
from ml.src.data.identifiers import IdentifierError, check_pair
from ml.src.data.store import StoreError, TrainingStore
from ml.src.data.store_factory import open_store
from ml.src.features.context import context_columns
from ml.src.features.technical_indicators import (
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    VOL_FEATURE_COLUMNS,
    VOL_FEATURE_SUFFIX,
)
from ml.src.training.artifacts import ArtifactError, ArtifactIdentity, load_ensemble, resolve_artifact
from ml.src.training.ensemble import EnsembleModel
from ml.src.training.metrics import balanced_accuracy_rows, majority_class
from ml.src.training.stats import PairedDifference, block_length, paired_difference

if TYPE_CHECKING:
    from ml.src.training.pair_state import FittedPair, PackedFit, PreparedPair
    from ml.src.training.scoring import SlicePredictions

log = logging.getLogger("ml.registry")


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    metric: str
    challenger: float | None = None
    champion: float | None = None
    baselines: dict[str, float] = field(default_factory=dict)
    window: dict[str, Any] | None = None
    champion_version_id: int | None = None
    difference: float | None = None  # challenger - champion on the window (higher = better orientation)
    std_error: float | None = None  # block standard error of that difference
    z: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["decision"] = "champion" if self.promote else "challenger"
        return out


def _secret(settings: Settings) -> str | None:
    return settings.artifact_key.get_secret_value() if settings.artifact_key is not None else None


def load_recorded(
    row: dict[str, Any], settings: Settings, symbol: str | None = None, timeframe: str | None = None
) -> EnsembleModel:
    """The model a model_versions row names: its path resolved inside ML_MODELS_DIR, its sha256 (and, with
    ML_ARTIFACT_KEY, its signature over the requested pair and the row's run) checked before anything is
    unpickled; a bundle of another pair or run is refused."""
    path = resolve_artifact(settings.models_dir, row["artifact_path"])
    identity = ArtifactIdentity(
        symbol or str(row.get("symbol") or ""),
        timeframe or str(row.get("timeframe") or ""),
        str(row.get("run_id") or ""),
    )
    return load_ensemble(
        path,
        expected_sha256=row["artifact_sha256"],
        signature=row.get("artifact_signature"),
        key=_secret(settings),
        identity=identity,
    )


def row_scores(metric: str, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-row contributions whose sum is the metric on these rows (both metrics: higher is better)."""
    if metric == "test_balanced_accuracy":
        return balanced_accuracy_rows(y, pred)
    if metric == "test_accuracy":
        return (np.asarray(y) == pred).astype("float64") / max(len(y), 1)
    raise ValueError(f"unknown promotion metric {metric!r}")


def challenger_rows(fitted: FittedPair | PackedFit, prep: PreparedPair) -> SlicePredictions:
    """The challenger's out-of-sample predictions by row: walk-forward test blocks, then its test slice (the
    saved model's own predictions win where both exist)."""
    from ml.src.training.scoring import concat

    if fitted.oos is None:
        return fitted.test
    earlier = fitted.oos.take(fitted.oos.rows < prep.split.test.start)
    return concat([earlier, fitted.test]) if earlier.rows.size else fitted.test


def _champion_expired(current: dict[str, Any], settings: Settings, timeframe: str) -> bool:
    trained = current.get("trained_at")
    if trained is None:
        return False
    max_age = timedelta(days=settings.timeframes[timeframe].max_model_age_days)
    return pd.Timestamp(datetime.now(UTC)) - pd.Timestamp(trained) > max_age


def current_feature_set(settings: Settings | None = None) -> tuple[tuple[str, ...], str]:
    """The base columns and version the settings train on (ML_VOL_FEATURES adds columns and changes it)."""
    if settings is not None and settings.vol_features:
        return tuple(FEATURE_COLUMNS) + VOL_FEATURE_COLUMNS, FEATURE_SET_VERSION + VOL_FEATURE_SUFFIX
    return tuple(FEATURE_COLUMNS), FEATURE_SET_VERSION


def model_context(model: EnsembleModel) -> tuple[str, ...]:
    """The context symbols (ML_CONTEXT_SYMBOLS) whose columns the model was trained on."""
    return tuple((model.metadata.get("context") or {}).get("symbols") or ())


def uses_current_feature_set(model: EnsembleModel, settings: Settings | None = None) -> bool:
    """Trained on this feature set: the same columns AND the same feature-set version.

    Same columns under another version (other smoothing lengths, say) are other inputs: a model fed them is
    judged, or asked to forecast, on features it was not trained on. Context columns count when their symbol is
    still among the settings' ML_CONTEXT_SYMBOLS (a pair whose context lacked bars trained without them).
    """
    columns, current = current_feature_set(settings)
    version = model.metadata.get("feature_version", FEATURE_SET_VERSION)
    context = model_context(model)
    allowed = set(settings.context_symbols) if settings is not None else set()
    if not set(context) <= allowed:
        return False
    expected = columns + tuple(c for sym in context for c in context_columns(sym))
    return tuple(model.feature_names) == expected and version == current


def decide_promotion(
    store: TrainingStore, prep: PreparedPair, fitted: FittedPair | PackedFit, settings: Settings
) -> PromotionDecision:
    metric = settings.promotion_metric
    req = prep.request
    current = store.get_champion(req.symbol, req.timeframe)
    if current is None:
        return PromotionDecision(True, "first version of the pair", metric)
    cid = current.get("id")
    try:
        champion = load_recorded(current, settings, req.symbol, req.timeframe)
    except (ArtifactError, OSError) as exc:
        return PromotionDecision(
            True, f"current champion is unusable ({exc})", metric, champion_version_id=cid
        )
    if not uses_current_feature_set(champion, settings):
        return PromotionDecision(
            True, "current champion uses another feature set", metric, champion_version_id=cid
        )
    if tuple(champion.feature_names) != tuple(prep.feature_names):
        # e.g. the champion had a context symbol this window has no bars for: it cannot be fed these rows
        theirs, ours = model_context(champion), prep.context
        return PromotionDecision(
            True,
            f"current champion has other columns (context {', '.join(theirs) or 'none'}; this run "
            f"{', '.join(ours) or 'none'})",
            metric,
            champion_version_id=cid,
        )
    if _champion_expired(current, settings, req.timeframe):
        return PromotionDecision(
            True, "current champion is older than max_model_age_days", metric, champion_version_id=cid
        )
    return compare_on_window(champion, prep, fitted, settings, champion_version_id=cid)


def compare_on_window(
    champion: EnsembleModel,
    prep: PreparedPair,
    fitted: FittedPair | PackedFit,
    settings: Settings,
    champion_version_id: int | None = None,
) -> PromotionDecision:
    """The paired comparison on the rows neither model trained on (see the module docstring)."""
    metric = settings.promotion_metric
    h = prep.spec.horizon_bars
    chal_rows = challenger_rows(fitted, prep)
    seen_until = pd.Timestamp(
        champion.metadata.get("split", {}).get("valid_end", "1970-01-01T00:00:00+00:00")
    )
    # the champion's last validation label looks h rows past valid_end: start h rows after it
    unseen = np.flatnonzero((prep.ts > seen_until).to_numpy())
    first = int(unseen[0]) + h if unseen.size else len(prep.ts)
    window = chal_rows.take(chal_rows.rows >= first)
    rows = window.rows
    info = {
        "n": int(rows.size),
        "start": prep.ts.iloc[rows[0]].isoformat() if rows.size else None,
        "end": prep.ts.iloc[rows[-1]].isoformat() if rows.size else None,
        "walk_forward_rows": int((rows < prep.split.test.start).sum()),
    }
    if rows.size < settings.min_rows_per_split:
        return PromotionDecision(
            False,
            f"only {rows.size} rows unseen by the champion: too few to compare; champion kept",
            metric,
            window=info,
            champion_version_id=champion_version_id,
            z=settings.promotion_z,
        )

    # one truth for both models: this run's labels on the window
    y = prep.codes[rows]
    champ = row_scores(metric, y, champion.decide(champion.predict_proba(prep.x[rows])))
    chal = row_scores(metric, y, window.preds["ensemble"])
    major = majority_class(prep.codes[prep.split.train])
    baseline_rows = {
        "majority": row_scores(metric, y, np.full(rows.size, major)),
        # the label of row t - h under this run's labels (rows start well after h)
        "persistence": row_scores(metric, y, prep.codes[rows - h]),
    }
    promote, why, d = promotion_rule(
        chal,
        champ,
        baseline_rows,
        block=block_length(h),
        z=settings.promotion_z,
        baseline_margin=settings.promotion_baseline_margin,
    )
    chal_v, champ_v = float(chal.sum()), float(champ.sum())
    return PromotionDecision(
        promote,
        f"{metric} {chal_v:.4f} vs champion {champ_v:.4f}: {why}",
        metric,
        challenger=chal_v,
        champion=champ_v,
        baselines={k: float(v.sum()) for k, v in baseline_rows.items()},
        window=info,
        champion_version_id=champion_version_id,
        difference=d.diff,
        std_error=d.se,
        z=settings.promotion_z,
    )


def promotion_rule(
    challenger: np.ndarray,
    champion: np.ndarray,
    baselines: dict[str, np.ndarray],
    *,
    block: int,
    z: float,
    baseline_margin: float = 0.0,
) -> tuple[bool, str, PairedDifference]:
    """Promote iff sum(challenger - champion) > z x its block s.e. and the challenger's score beats every
    baseline's by more than baseline_margin. Inputs are per-row contributions (higher is better, row_scores)."""
    d = paired_difference(challenger, champion, block)
    se = f"{d.se:.4f}" if d.se is not None else "unknown (too few rows)"
    if not d.beats(z):
        return False, f"difference {d.diff:+.4f} is not above {z:g} x s.e. {se}; champion kept", d
    score = float(challenger.sum())
    for name, rows in baselines.items():
        if score - float(rows.sum()) <= baseline_margin:
            return False, f"beats the champion but not the {name} baseline (+ margin {baseline_margin:g})", d
    return True, f"difference {d.diff:+.4f} > {z:g} x s.e. {se}, and beats the baselines", d


@dataclass(frozen=True)
class Retention:
    """What retention did for a pair: versions whose rows went, and the problems it met (never raised)."""

    pruned: int
    errors: tuple[str, ...] = ()


def prune_versions(
    store: TrainingStore, symbol: str, timeframe: str, keep: int, models_dir: Path | None = None
) -> Retention:
    """Retention: rows first (never the champion), then their files. Errors are returned, never raised: a
    file that cannot be deleted is an orphan, not a reason to stop the run. Files are only ever deleted inside
    `models_dir` (default: the settings' ML_MODELS_DIR), whatever a row says."""
    label = f"{symbol}/{timeframe}"
    try:
        deleted = store.prune_model_versions(symbol, timeframe, keep)
    except StoreError as exc:
        return Retention(0, (f"{label}: retention skipped: {exc}",))
    root = models_dir if models_dir is not None else Settings().models_dir
    errors: list[str] = []
    for row in deleted:
        try:
            resolve_artifact(root, row["artifact_path"]).unlink(missing_ok=True)
        except (ArtifactError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            errors.append(f"{label}: retention could not delete {row.get('artifact_path')}: {reason}")
    return Retention(len(deleted), tuple(errors))


class ChampionError(ArtifactError):
    """No usable champion for a pair (none, expired, or built for another feature set)."""


def load_champion(
    symbol: str,
    timeframe: str,
    *,
    settings: Settings | None = None,
    store: TrainingStore | None = None,
    now: datetime | None = None,
) -> EnsembleModel:
    """The pair's verified champion (store from settings unless given); refuses an expired or stale one.

    The recorded path is resolved against the settings' ML_MODELS_DIR (not the working directory).
    """
    settings = settings or Settings()  # the environment as it is now (not a cached copy)
    try:
        symbol, timeframe = check_pair(symbol, timeframe)
    except IdentifierError as exc:
        raise ChampionError(str(exc)) from None
    own = store is None
    store = store or open_store(settings)
    try:
        row = store.get_champion(symbol, timeframe)
    finally:
        if own:
            store.close()
    if row is None:
        raise ChampionError(f"{symbol}/{timeframe}: no champion model yet (train the pair first)")
    trained = pd.Timestamp(row["trained_at"])
    max_age = timedelta(days=settings.timeframes[timeframe].max_model_age_days)
    now = now or datetime.now(UTC)
    if pd.Timestamp(now) - trained > max_age:
        raise ChampionError(
            f"{symbol}/{timeframe}: champion trained {trained.isoformat()} is older than "
            f"{max_age.days} days (max_model_age_days); retrain it"
        )
    model = load_recorded(row, settings, symbol, timeframe)
    if not uses_current_feature_set(model, settings):
        raise ChampionError(
            f"{symbol}/{timeframe}: champion was trained on a different feature list or version "
            f"({model.metadata.get('feature_version')}) than the current feature set "
            f"({current_feature_set(settings)[1]}); retrain it"
        )
    return model
