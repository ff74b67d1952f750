"""Model registry: which version of a pair is the champion, and which versions are kept.

A new version becomes champion only if, on the same most recent window (rows neither model has seen), it
beats the current champion and every baseline by the configured margins on the chosen metric. The first
version of a pair is its champion. Pointers move in the store's transaction that records the result, after
the new artifact is on disk.
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
from ml.src.features.technical_indicators import FEATURE_COLUMNS
from ml.src.training.artifacts import ArtifactError, load_ensemble, resolve_artifact
from ml.src.training.ensemble import EnsembleModel
from ml.src.training.metrics import label_metrics, majority_class, persistence_predictions

if TYPE_CHECKING:
    from ml.src.training.pipeline import FittedPair, PreparedPair

log = logging.getLogger("ml.registry")

METRIC_KEYS = {
    "test_balanced_accuracy": "balanced_accuracy",
    "test_accuracy": "accuracy",
    "test_macro_f1": "macro_f1",
}


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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["decision"] = "champion" if self.promote else "challenger"
        return out


def _secret(settings: Settings) -> str | None:
    return settings.artifact_key.get_secret_value() if settings.artifact_key is not None else None


def load_recorded(row: dict[str, Any], settings: Settings) -> EnsembleModel:
    """The model a model_versions row names: its path resolved inside ML_MODELS_DIR, its sha256 (and, with
    ML_ARTIFACT_KEY, its signature) checked before anything is unpickled."""
    path = resolve_artifact(settings.models_dir, row["artifact_path"])
    return load_ensemble(
        path,
        expected_sha256=row["artifact_sha256"],
        signature=row.get("artifact_signature"),
        key=_secret(settings),
    )


def _score(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    return float(label_metrics(y, pred)[METRIC_KEYS[metric]])


def decide_promotion(
    store: TrainingStore, prep: PreparedPair, fitted: FittedPair, settings: Settings
) -> PromotionDecision:
    metric = settings.promotion_metric
    req = prep.request
    current = store.get_champion(req.symbol, req.timeframe)
    if current is None:
        return PromotionDecision(True, "first version of the pair", metric)
    cid = current.get("id")
    try:
        champion = load_recorded(current, settings)
    except (ArtifactError, OSError) as exc:
        return PromotionDecision(
            True, f"current champion is unusable ({exc})", metric, champion_version_id=cid
        )
    if tuple(champion.feature_names) != tuple(FEATURE_COLUMNS):
        return PromotionDecision(
            True, "current champion uses another feature set", metric, champion_version_id=cid
        )

    # The same most recent window for both: the new test rows the champion never saw (after its validation
    # slice, whose labels look h bars further ahead).
    test = prep.split.test
    ts_test = prep.ts.iloc[test].reset_index(drop=True)
    seen_until = pd.Timestamp(
        champion.metadata.get("split", {}).get("valid_end", "1970-01-01T00:00:00+00:00")
    )
    unseen = np.flatnonzero((ts_test > seen_until).to_numpy())
    first = int(unseen[0]) + prep.spec.horizon_bars if unseen.size else len(ts_test)
    rows = np.arange(test.start + first, test.stop)
    window = {
        "n": int(rows.size),
        "start": prep.ts.iloc[rows[0]].isoformat() if rows.size else None,
        "end": prep.ts.iloc[rows[-1]].isoformat() if rows.size else None,
    }
    if rows.size < settings.min_rows_per_split:
        return PromotionDecision(
            False,
            f"only {rows.size} test rows unseen by the champion: too few to compare; champion kept",
            metric,
            window=window,
            champion_version_id=cid,
        )

    x, y = prep.x[rows], prep.codes[rows]
    # the challenger's test-row probabilities were computed when it was fitted
    challenger_pred = fitted.test_proba[rows - test.start].argmax(axis=1)
    chal = _score(metric, y, challenger_pred)
    champ = _score(metric, y, champion.predict_proba(x).argmax(axis=1))
    major = majority_class(prep.codes[prep.split.train])
    lo = int(rows[0])
    baselines = {
        "majority": _score(metric, y, np.full(rows.size, major)),
        "persistence": _score(
            metric, y, persistence_predictions(prep.codes, slice(lo, lo + rows.size), prep.spec.horizon_bars)
        ),
    }

    def decision(promote: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(
            promote,
            reason,
            metric,
            challenger=chal,
            champion=champ,
            baselines=baselines,
            window=window,
            champion_version_id=cid,
        )

    if chal <= champ + settings.promotion_margin:
        return decision(
            False,
            f"{metric} {chal:.4f} does not beat the champion's {champ:.4f} + margin {settings.promotion_margin:g}",
        )
    best_name, best = max(baselines.items(), key=lambda kv: kv[1])
    if chal <= best + settings.promotion_baseline_margin:
        return decision(
            False,
            f"{metric} {chal:.4f} does not beat the {best_name} baseline's {best:.4f} + margin "
            f"{settings.promotion_baseline_margin:g}",
        )
    return decision(True, f"{metric} {chal:.4f} beats champion {champ:.4f} and baselines")


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
    model = load_recorded(row, settings)
    if tuple(model.feature_names) != tuple(FEATURE_COLUMNS):
        raise ChampionError(
            f"{symbol}/{timeframe}: champion was trained on a different feature list than the current feature set"
        )
    return model
