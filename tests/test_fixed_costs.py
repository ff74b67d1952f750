"""What a run pays besides fitting: imports, process start, artifact writes, SQLite commits.

No timings are asserted (the machine is shared); what is checked is what makes them small: which modules a
command imports, which executor a run gets, how many commits a pair costs, what an artifact write leaves.
"""

from __future__ import annotations

import io
import os
import pickle
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

import joblib
import pytest
from pydantic import SecretStr

from config.settings import Settings
from ml.src.data.local_db import SqliteStore
from ml.src.training import artifacts
from ml.src.training.executors import InProcessExecutor, ProcessPoolPairExecutor, open_executor
from ml.src.training.pair_result import PairRequest
from ml.src.training.run_loop import train_pairs
from ml.src.training.worker import FitSpec, library_versions
from tests.factories import sample_bars

REPO = Path(__file__).resolve().parents[1]
LEARNERS = ("sklearn", "scipy", "lightgbm")


def imported_modules(*args: str) -> set[str]:
    """Top-level packages a fresh interpreter imports to run `python -X importtime args...`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "SUPABASE_"))}
    env["ML_LOCAL_DB"] = "/nonexistent/never-opened.sqlite3"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln.split("|")[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    return {name.split(".")[0] for name in lines}


@pytest.mark.parametrize(
    "command",
    [
        ("-m", "ml.src.training.ensemble_training_job", "--help"),
        ("-m", "ml.src.data.load_bars", "--help"),
        ("-m", "ml.src.scheduler", "--print-schedule"),
        ("-c", "import ml.src.training.run_loop, ml.src.training.dask_executor"),
    ],
)
def test_commands_never_import_the_learners(command: tuple[str, ...]) -> None:
    mods = imported_modules(*command)
    assert not mods & set(LEARNERS), sorted(mods & set(LEARNERS))


def test_help_imports_neither_pandas_nor_pydantic() -> None:
    mods = imported_modules("-m", "ml.src.training.ensemble_training_job", "--help")
    assert not mods & {"pandas", "numpy", "pydantic", "pydantic_settings"}, sorted(mods)


def test_library_versions_come_from_metadata_without_importing(monkeypatch) -> None:
    versions = library_versions()
    assert {"python", "numpy", "pandas", "scikit-learn", "lightgbm", "joblib", "ta-lib"} <= set(versions)
    assert "missing" not in versions.values()
    import sklearn

    assert versions["scikit-learn"] == sklearn.__version__
    assert library_versions() is versions  # computed once per process


def test_a_worker_gets_the_fit_settings_only_and_no_secret(ml_env) -> None:
    settings = Settings(
        supabase_url="https://example.invalid",
        supabase_service_role_key=SecretStr("sk-very-secret"),
        artifact_key=SecretStr("artifact-key-0123456789"),
        rf_n_estimators=17,
    )
    fit = settings.fit
    assert not hasattr(fit, "supabase_url") and not hasattr(fit, "artifact_key")
    assert not any(isinstance(v, SecretStr) for v in fit.__dict__.values())
    blob = pickle.dumps(FitSpec(settings=fit, run_id="r"))
    for leaked in (
        b"sk-very-secret",
        b"example.invalid",
        b"artifact-key-0123456789",
        str(settings.local_db).encode(),
    ):
        assert leaked not in blob
    assert fit.rf_n_estimators == 17  # the model settings travel unchanged


def test_the_executor_fits_the_run(ml_env) -> None:
    settings = Settings()
    small = open_executor(settings, workers=2, n_pairs=settings.pool_min_pairs - 1)
    assert isinstance(small, InProcessExecutor)
    assert isinstance(open_executor(settings, workers=1, n_pairs=50), InProcessExecutor)
    pool = open_executor(settings, workers=2, n_pairs=max(settings.pool_min_pairs, 2))
    try:
        assert isinstance(pool, ProcessPoolPairExecutor) and pool.slots == 2
        assert pool.submit(pow, 2, 10).result(timeout=120) == 1024
    finally:
        pool.close()


def test_in_process_futures_carry_the_exception() -> None:
    fut = InProcessExecutor().submit(int, "not a number")
    assert fut.done() and isinstance(fut.exception(), ValueError)


@pytest.mark.parametrize("compress", [0, 1])
def test_artifacts_load_with_joblib_and_pickle_and_leave_no_temp_file(tmp_path: Path, compress: int) -> None:
    bundle = {"models": {"x": [1.5, 2.5]}, "weights": {"x": 1.0}}
    data = artifacts.pack_bundle(bundle, compress=compress)
    path = tmp_path / "a" / "b.joblib"
    sha = artifacts.write_artifact(data, path)
    assert sha == artifacts.sha256_file(path)
    assert joblib.load(path)["models"] == bundle["models"]
    assert pickle.loads(zlib.decompress(path.read_bytes()))["format"] == artifacts.BUNDLE_FORMAT
    if not compress:  # stored, not compressed: the pickle's bytes as they are, framed with a checksum
        assert len(data) - len(pickle.dumps({"format": 1, **bundle}, protocol=5)) < 64
    assert [p.name for p in path.parent.iterdir()] == ["b.joblib"]
    assert artifacts.load_bundle(path, sha, key=None)["weights"] == {"x": 1.0}
    # a bundle of the format before (joblib, zlib level 3) still loads
    old = tmp_path / "old.joblib"
    buf = io.BytesIO()
    joblib.dump({"format": artifacts.BUNDLE_FORMAT, **bundle}, buf, compress=3)
    old.write_bytes(buf.getvalue())
    assert artifacts.load_bundle(old, artifacts.sha256_file(old), key=None)["weights"] == {"x": 1.0}


def test_sqlite_runs_in_wal_with_synchronous_normal(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "s.sqlite3") as store:
        assert store._conn.execute("pragma journal_mode").fetchone()[0] == "wal"
        assert store._conn.execute("pragma synchronous").fetchone()[0] == 1  # NORMAL


@pytest.mark.slow
def test_one_commit_per_pair(embedded_store: SqliteStore, ml_env: Path) -> None:
    pairs = (("IBM", "d1"), ("GSPC", "w1"))
    for symbol, tf in pairs:
        embedded_store.upsert_bars(symbol, tf, sample_bars(symbol, tf, last=600))
    commits: list[str] = []

    def trace(sql: str) -> None:
        if sql.strip().upper().startswith(("COMMIT", "END")):
            commits.append(sql)

    conn: sqlite3.Connection = embedded_store._conn
    settings = Settings()
    from ml.src.training.run_loop import start_run

    run_id = start_run(embedded_store, settings, {}, "manual").run_id
    conn.set_trace_callback(trace)
    try:
        results = train_pairs(
            embedded_store,
            settings,
            [PairRequest(s, tf, target_bars=350) for s, tf in pairs],
            run_id=run_id,
            executor=InProcessExecutor(),
        )
    finally:
        conn.set_trace_callback(None)
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    # a pair's writes: its result, model version and champion pointer in one transaction, plus the feature
    # cache's own (non-durable) one when features were computed; retention commits nothing when nothing goes
    assert len(commits) == 2 * len(pairs), commits
    assert embedded_store.count_bars("IBM", "d1") == 600
    assert len(embedded_store.list_results(run_id)) == 2
