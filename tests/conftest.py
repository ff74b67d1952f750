from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ml.src.data.local_db import SqliteStore

pytest_plugins = ["tests.plugins.supabase_stack"]


@pytest.fixture()
def ml_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated embedded store and models dir; no Supabase, whatever the developer's shell or .env says."""
    monkeypatch.setenv("SUPABASE_URL", "")
    monkeypatch.delenv("SUPABASE_SERVICE_ROLE_KEY", raising=False)
    monkeypatch.delenv("SUPABASE_KEY", raising=False)
    monkeypatch.setenv("ML_LOCAL_DB", str(tmp_path / "store.sqlite3"))
    monkeypatch.setenv("ML_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ML_WORKERS", "1")
    return tmp_path


@pytest.fixture()
def embedded_store(ml_env: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(ml_env / "store.sqlite3")
    yield store
    store.close()
