"""The monitoring thresholds the job is configured with, as the row it publishes to the store."""

from __future__ import annotations

from config.settings import Settings
from ml.src.data.records import MonitoringThresholds


def thresholds_from_settings(settings: Settings) -> MonitoringThresholds:
    return MonitoringThresholds(
        metric=settings.promotion_metric,
        retrain_drop=float(settings.monitor_retrain_drop),
        disable_runs=int(settings.monitor_disable_runs),
        history_runs=int(settings.monitor_history_runs),
        max_model_age_days={tf: float(spec.max_model_age_days) for tf, spec in settings.timeframes.items()},
    )
