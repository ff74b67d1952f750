from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from ml.src.data.local_db import SqliteStore
from ml.src.data.store_factory import open_store

pytest_plugins = ["tests.plugins.supabase_stack"]

_SKIPPED: list[str] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Under CI a skipped test is a failing test, whatever skipped it (a missing package, a missing browser ...).
    if _in_ci() and _SKIPPED and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _in_ci() and _SKIPPED:
        terminalreporter.write_line(
            f"CI=true: {len(_SKIPPED)} skipped test(s) count as failures, e.g. {_SKIPPED[0]}", red=True
        )


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


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Champions, forecasts and outcomes built once per session (tests.trained_store); copy before writing."""
    from tests.trained_store import build

    return build(tmp_path_factory.mktemp("trained"))


@pytest.fixture()
def trained_store(ml_env: Path, trained_template: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """ml_env with a private copy of the trained store; the artifacts are the template's (read-only use)."""
    import shutil

    shutil.copyfile(trained_template["db"], ml_env / "store.sqlite3")
    monkeypatch.setenv("ML_MODELS_DIR", str(trained_template["models"]))
    return ml_env / "store.sqlite3"


@pytest.fixture(params=["embedded", "supabase"])
def env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """Each store in turn, from the environment as a user configures it: the store, its settings, a ticker tag
    unique to the test (the Supabase stack is shared by the session), the store kind and the test's tmp dir."""
    monkeypatch.setenv("ML_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ML_WORKERS", "1")
    monkeypatch.setenv("ML_LOCAL_DB", str(tmp_path / "store.sqlite3"))
    if request.param == "embedded":
        monkeypatch.setenv("SUPABASE_URL", "")
        monkeypatch.delenv("SUPABASE_SERVICE_ROLE_KEY", raising=False)
        monkeypatch.delenv("SUPABASE_KEY", raising=False)
    else:
        stack = request.getfixturevalue("supabase_stack")
        monkeypatch.setenv("SUPABASE_URL", stack["SUPABASE_URL"])
        monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", stack["SUPABASE_SERVICE_ROLE_KEY"])
    settings = Settings()
    store = open_store(settings)
    tag = uuid.uuid4().hex[:6].upper()  # the Supabase stack is shared by the session: own tickers per test
    yield {"store": store, "settings": settings, "tag": tag, "kind": request.param, "tmp": tmp_path}
    store.close()
