"""The job's fits on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on localhost.

Same results as a local run, no secret on the wire or in a worker's log, and a worker killed mid-run either
retried elsewhere or failed in one line, with nothing half-written.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config.settings import Settings
from ml.src.cli.train import main
from ml.src.data.local_db import SqliteStore
from ml.src.data.supabase_db import SupabaseStore
from ml.src.training.artifacts import load_ensemble
from ml.src.training.worker import FitSpec
from tests.factories import sample_bars
from tests.plugins.dask_cluster import REPO, LocalCluster, local_cluster

pytestmark = pytest.mark.slow

PAIRS = (("GOOG", "d1", 700), ("IBM", "w1", 679), ("GSPC", "d1", 700))
TARGET = "450"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # debug logging on the workers: whatever a task carries has every chance to reach their logs
    import dask.config

    with (
        local_cluster(
            tmp_path_factory.mktemp("dask"), 2, worker_env={"DASK_LOGGING__DISTRIBUTED": "debug"}
        ) as c,
        dask.config.set(c.client_config),  # the job's side of mutual TLS, through Dask's own settings
    ):
        yield c


def load_pairs(store: Any, pairs: tuple[tuple[str, str, int], ...] = PAIRS) -> None:
    for symbol, tf, n in pairs:
        store.upsert_bars(symbol, tf, sample_bars(symbol, tf, last=n))
    store.upsert_symbols(sorted({p[0] for p in pairs}))


def job_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json", "--quiet"])
    return code, json.loads(capsys.readouterr().out)


def by_pair(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{r['symbol']}/{r['timeframe']}": r for r in out["results"] if r["status"] == "succeeded"}


def pair_args(pairs: tuple[tuple[str, str, int], ...] = PAIRS) -> list[str]:
    return ["--symbols", *sorted({p[0] for p in pairs}), "--timeframes", *sorted({p[1] for p in pairs})]


def test_a_cluster_run_gives_exactly_the_local_results(cluster, ml_env, monkeypatch, capsys) -> None:
    local_db, cluster_db = ml_env / "local.sqlite3", ml_env / "cluster.sqlite3"
    for db in (local_db, cluster_db):
        with SqliteStore(db) as store:
            load_pairs(store)
    args = [*pair_args(), "--target-bars", TARGET, "--walk-forward", "2"]

    monkeypatch.setenv("ML_LOCAL_DB", str(local_db))
    monkeypatch.setenv("ML_MODELS_DIR", str(ml_env / "models_local"))
    _, local = job_json([*args, "--workers", "1"], capsys)
    monkeypatch.setenv("ML_LOCAL_DB", str(cluster_db))
    monkeypatch.setenv("ML_MODELS_DIR", str(ml_env / "models_cluster"))
    _, remote = job_json([*args, "--dask", cluster.address], capsys)

    assert local["executor"]["kind"] == "in-process"
    assert remote["executor"]["kind"] == "dask" and remote["executor"]["workers"] == 2
    a, b = by_pair(local), by_pair(remote)
    assert set(a) == set(b) == {f"{s}/{tf}" for s, tf, _ in PAIRS}
    for pair in a:
        for key in ("weights", "metrics", "walk_forward", "split", "n_train", "n_valid", "n_test"):
            assert a[pair][key] == b[pair][key], (pair, key)
        # the work happened on the workers, not in this process
        assert b[pair]["worker"]["id"].split(":")[-1] != str(os.getpid())
        assert b[pair]["worker"]["peak_rss_mb"] > 0
        # and the saved models predict the same probabilities
        ma = load_ensemble(a[pair]["artifact_file"], expected_sha256=a[pair]["artifact_sha256"])
        mb = load_ensemble(b[pair]["artifact_file"], expected_sha256=b[pair]["artifact_sha256"])
        symbol, tf = pair.split("/")
        x = sample_bars(symbol, tf, last=300)
        from ml.src.features.technical_indicators import add_technical_features

        feats = add_technical_features(x).iloc[-50:]
        np.testing.assert_array_equal(ma.predict_proba(feats), mb.predict_proba(feats))
    assert set(remote["executor"]["worker_peak_rss_mb"]) <= {r["worker"]["id"] for r in b.values()}


def test_no_secret_travels_to_or_is_logged_by_a_worker(
    cluster, supabase_stack, tmp_path, monkeypatch, capsys
):
    key = supabase_stack["SUPABASE_SERVICE_ROLE_KEY"]
    monkeypatch.setenv("SUPABASE_URL", supabase_stack["SUPABASE_URL"])
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", key)
    monkeypatch.setenv("ML_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ML_DB_BACKOFF_S", "0.01")
    pairs = (("IXIC", "w1", 700),)
    with SupabaseStore(supabase_stack["SUPABASE_URL"], key) as store:
        load_pairs(store, pairs)
    settings = Settings()
    assert settings.supabase_service_role_key is not None

    # what a task carries besides the prepared arrays
    spec = FitSpec(settings=settings.fit, run_id="r")
    assert key.encode() not in pickle.dumps(spec)
    assert not hasattr(spec.settings, "supabase_service_role_key") and not hasattr(
        spec.settings, "supabase_url"
    )

    code, out = job_json(
        [*pair_args(pairs), "--target-bars", TARGET, "--force", "--dask", cluster.address], capsys
    )
    assert code == 0, out
    assert out["store"] == "supabase" and out["executor"]["kind"] == "dask"
    time.sleep(0.5)  # let the workers flush their logs
    logs = cluster.logs()
    assert "fit_task" in logs or "fit-IXIC-w1" in logs  # debug logs did record the task
    assert key not in logs
    # the JWT's payload alone must not appear either
    assert key.split(".")[1] not in logs


# ------------------------------------------------------------------------------------------ a worker dies
def run_job_process(env: dict[str, str], args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ml.src.training.ensemble_training_job", *args, "--json", "--quiet"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_a_busy_worker(cluster: LocalCluster, job: subprocess.Popen[str], timeout_s: float = 300) -> str:
    """Wait until a worker is fitting a pair, SIGKILL it; returns the pair's task key."""
    from distributed import Client

    deadline = time.monotonic() + timeout_s
    with Client(cluster.address, set_as_default=False, security=cluster.security()) as client:
        while time.monotonic() < deadline and job.poll() is None:
            names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
            for addr, keys in client.processing().items():
                busy = [k for k in keys if str(k).startswith("fit-")]
                if busy and addr in names:
                    time.sleep(0.3)  # well inside the fit, not at its first instruction
                    cluster.kill_worker(names[addr])
                    return str(busy[0])
            time.sleep(0.05)
    raise AssertionError("no worker was seen fitting a pair")


def job_env(ml_env: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "SUPABASE_"))}
    env.update(
        PYTHONPATH=str(REPO),
        ML_LOCAL_DB=str(ml_env / "store.sqlite3"),
        ML_MODELS_DIR=str(ml_env / "models"),
        SUPABASE_URL="",
    )
    return env


def no_half_written_artifacts(models: Path) -> list[Path]:
    return [p for p in models.rglob("*") if p.is_file() and p.suffix != ".joblib"]


def test_a_worker_killed_mid_pair_is_retried_on_the_other(ml_env, embedded_store, tmp_path) -> None:
    pairs = (("GOOG", "d1", 700), ("IBM", "d1", 700), ("GSPC", "d1", 700), ("IXIC", "d1", 700))
    load_pairs(embedded_store, pairs)
    with local_cluster(tmp_path / "dask", 2) as cluster:
        args = [*pair_args(pairs), "--target-bars", TARGET, "--walk-forward", "3", "--dask", cluster.address]
        job = run_job_process({**job_env(ml_env), **cluster.client_env}, args)
        killed = threading.Thread(target=lambda: kill_a_busy_worker(cluster, job), daemon=True)
        killed.start()
        stdout, stderr = job.communicate(timeout=900)
        killed.join(timeout=5)
        assert sum(p.poll() is not None for p in cluster.workers.values()) == 1, "one worker was killed"
    out = json.loads(stdout)
    assert job.returncode == 0, stderr
    assert [r["status"] for r in out["results"]] == ["succeeded"] * len(pairs)
    # the killed worker's pair ran again on the survivor: every pair was fitted by the same process
    assert len({r["worker"]["id"] for r in out["results"]}) <= 2
    models = ml_env / "models"
    assert len(list(models.rglob("*.joblib"))) == len(pairs)
    assert no_half_written_artifacts(models) == []


def test_a_worker_death_past_allowed_failures_fails_that_pair_in_one_line(ml_env, embedded_store, tmp_path):
    pairs = (("GOOG", "d1", 700), ("IBM", "d1", 700), ("GSPC", "d1", 700))
    load_pairs(embedded_store, pairs)
    # a scheduler that gives up on a task at the first worker death it causes
    env = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    with local_cluster(tmp_path / "dask", 2, scheduler_env=env) as cluster:
        args = [*pair_args(pairs), "--target-bars", TARGET, "--walk-forward", "3", "--dask", cluster.address]
        job = run_job_process({**job_env(ml_env), **cluster.client_env}, args)
        box: dict[str, str] = {}
        killer = threading.Thread(
            target=lambda: box.update(key=kill_a_busy_worker(cluster, job)), daemon=True
        )
        killer.start()
        stdout, stderr = job.communicate(timeout=900)
        killer.join(timeout=5)
    out = json.loads(stdout)
    assert job.returncode == 1, stderr
    failed = [r for r in out["results"] if r["status"] == "failed"]
    succeeded = [r for r in out["results"] if r["status"] == "succeeded"]
    # the pair being fitted on the killed worker fails (and any pair already queued on it); the rest train
    assert failed and len(failed) + len(succeeded) == len(pairs), out["results"]
    assert any(box["key"].startswith(f"fit-{r['symbol']}-{r['timeframe']}-") for r in failed)
    with SqliteStore(ml_env / "store.sqlite3") as store:
        rows = {r["symbol"]: r for r in store.list_results(out["run_id"])}
        for bad in failed:
            assert bad["error"].startswith(f"{bad['symbol']}/d1: fit failed: KilledWorker: ")
            assert "\n" not in bad["error"] and bad["artifact_path"] is None
            # nothing of a failed pair on disk or in the registry
            assert store.list_model_versions(bad["symbol"], bad["timeframe"]) == []
            assert (
                rows[bad["symbol"]]["status"] == "failed" and "KilledWorker" in rows[bad["symbol"]]["error"]
            )
            assert not (ml_env / "models" / bad["symbol"]).exists()
        for good in succeeded:
            assert [v["artifact_sha256"] for v in store.list_model_versions(good["symbol"], "d1")] == [
                good["artifact_sha256"]
            ]
    models = ml_env / "models"
    assert len(list(models.rglob("*.joblib"))) == len(succeeded)
    assert no_half_written_artifacts(models) == []


# ------------------------------------------------------------------------------------------ trust boundary
def test_training_through_a_mutual_tls_cluster_and_a_rogue_client_is_refused(
    cluster, ml_env, embedded_store, tmp_path, capsys
) -> None:
    """The module's cluster speaks mutual TLS (certificates made by the test): a run through it trains; a
    client holding a certificate of another CA is refused by the scheduler."""
    from distributed import Client
    from distributed.security import Security

    from tests.plugins.dask_cluster import make_certs

    assert cluster.address.startswith("tls://")
    pairs = (("IBM", "w1", 679),)
    load_pairs(embedded_store, pairs)
    code, out = job_json([*pair_args(pairs), "--target-bars", TARGET, "--dask", cluster.address], capsys)
    assert code == 0, out
    assert out["executor"]["kind"] == "dask" and out["executor"]["address"] == cluster.address
    assert [r["status"] for r in out["results"]] == ["succeeded"]
    rogue = make_certs(tmp_path / "rogue", ("client",))
    security = Security(
        tls_ca_file=str(rogue / "ca.pem"),
        tls_client_cert=str(rogue / "client.pem"),
        tls_client_key=str(rogue / "client.key"),
        require_encryption=True,
    )
    with pytest.raises(OSError, match=r"TLS|certificate|SSL"):
        Client(cluster.address, security=security, timeout=5, set_as_default=False)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "127.0.0.1:8786", "ws://127.0.0.1:8786"])
def test_a_plain_tcp_scheduler_is_refused_before_anything_is_opened(
    address, ml_env, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("ML_LOCAL_DB", str(ml_env / "never.sqlite3"))
    code = main(["--symbol", "IBM", "--timeframes", "w1", "--dask", address, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: Dask address") and "not TLS" in err[0]
    assert "ML_DASK_ALLOW_INSECURE=1" in err[0]
    assert not (ml_env / "never.sqlite3").exists()  # no store was opened
    # the same from the environment (the nightly scheduler's way)
    monkeypatch.setenv("ML_DASK_ADDRESS", address)
    assert main(["--symbol", "IBM", "--timeframes", "w1", "--quiet"]) == 2
    assert "not TLS" in capsys.readouterr().err


def test_tls_without_the_jobs_certificate_is_refused_in_one_line(ml_env, monkeypatch, capsys) -> None:
    import dask.config

    monkeypatch.setenv("ML_LOCAL_DB", str(ml_env / "never.sqlite3"))
    no_certs = {"distributed.comm.tls.ca-file": None, "distributed.comm.tls.client.cert": None}
    with dask.config.set(no_certs):  # whatever another test of the module configured
        code = main(["--symbol", "IBM", "--timeframes", "w1", "--dask", "tls://127.0.0.1:8786", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "distributed.comm.tls.ca-file" in err[0] and "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in err[0]
    assert not (ml_env / "never.sqlite3").exists()


def test_allow_insecure_lets_a_plain_tcp_cluster_train(ml_env, embedded_store, tmp_path, capsys, monkeypatch):
    import dask.config

    pairs = (("IBM", "w1", 679),)
    load_pairs(embedded_store, pairs)
    with (
        dask.config.set({"distributed.comm.require-encryption": False}),
        local_cluster(tmp_path / "dask", 1, tls=False) as plain,
    ):
        assert plain.address.startswith("tcp://")
        assert main([*pair_args(pairs), "--target-bars", TARGET, "--dask", plain.address, "--quiet"]) == 2
        capsys.readouterr()
        monkeypatch.setenv("ML_DASK_ALLOW_INSECURE", "1")
        code, out = job_json([*pair_args(pairs), "--target-bars", TARGET, "--dask", plain.address], capsys)
    assert code == 0 and out["executor"]["kind"] == "dask"
