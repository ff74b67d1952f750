"""Settings by component: every ML_* setting belongs to exactly one group, keeps its environment name, and a
component gets its group's values (the worker: the fit group, which has no secret by construction)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from config.settings import COMPONENTS, FitSettings, Settings, SplitSettings


def test_the_groups_partition_the_settings() -> None:
    seen: dict[str, str] = {}
    for group, cls in COMPONENTS.items():
        for name in cls.model_fields:
            assert name not in seen, f"{name} is in {seen.get(name)} and {group}"
            seen[name] = group
    assert set(seen) == set(Settings.model_fields)
    assert set(FitSettings.model_fields) == {
        n for g in ("split", "models", "evaluation") for n in COMPONENTS[g].model_fields
    }


def test_environment_names_are_unchanged_and_reach_the_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_RF_N_ESTIMATORS", "7")
    monkeypatch.setenv("ML_THRESHOLD_K", "0.75")
    monkeypatch.setenv("ML_SCHEDULE_DAILY_CRON", "0 23 * * mon-fri")
    monkeypatch.setenv("ML_MONITOR_DISABLE_RUNS", "4")
    monkeypatch.setenv("ML_WORKERS", "3")
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "service-key")
    settings = Settings()
    assert settings.fit.rf_n_estimators == 7 and settings.fit.threshold_k == 0.75
    assert isinstance(settings.fit, SplitSettings)
    assert settings.schedule.schedule_daily_cron == "0 23 * * mon-fri"
    assert settings.monitoring.monitor_disable_runs == 4
    assert settings.execution.workers == 3
    store = settings.store
    assert store.uses_supabase and store.supabase_service_role_key == SecretStr("service-key")


def test_the_fit_group_carries_no_secret_and_no_address() -> None:
    fields = FitSettings.model_fields
    assert not {"supabase_url", "supabase_service_role_key", "artifact_key", "local_db", "models_dir"} & set(
        fields
    )
    assert all(f.annotation is not SecretStr for f in fields.values())
