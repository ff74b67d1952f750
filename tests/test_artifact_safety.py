"""Artifacts that can't be abused (issue 8, cases 4 and 5): paths stay inside ML_MODELS_DIR, nothing is unpickled
unverified, every corrupt file is an ArtifactError, and with ML_ARTIFACT_KEY every bundle is signed."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import joblib
import pytest

from ml.src.cli.train import main
from ml.src.data.identifiers import IdentifierError
from ml.src.data.local_db import SqliteStore
from ml.src.data.records import ModelVersionRecord, ResultRecord, RunRecord
from ml.src.training.artifacts import (
    ArtifactError,
    ArtifactIdentity,
    artifact_path,
    load_bundle,
    load_ensemble,
    resolve_artifact,
    save_artifact,
    save_bundle,
)
from ml.src.training.ensemble_training_job import train_ensemble_for_symbol_timeframe
from ml.src.training.registry import load_champion, prune_versions
from tests.factories import sample_bars

KEY = "0123456789abcdef-test-key-0123456789"
RUN = "3f2b9c1e-1111-4222-8333-444455556666"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def real_bundle() -> dict:
    """A format-1 bundle whose payload is real bars (enough bytes that a flip lands inside compressed data)."""
    bars = sample_bars("IBM", "d1", last=600)
    return {
        "models": {},
        "weights": {},
        "feature_names": ["open", "high", "low", "close", "volume"],
        "classes": ["BEARISH", "NEUTRAL", "BULLISH"],
        "payload": bars[["open", "high", "low", "close", "volume"]].to_numpy(),
    }


class Payload:
    """What an attacker would put in a file: unpickling it runs code (here: creates a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


# ---- 4. paths ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "timeframe"), [("../../../X", "d1"), ("A/../../B", "d1"), ("AAPL", "../d1")]
)
def test_the_seed_api_refuses_paths_out_of_the_models_dir(
    embedded_store: SqliteStore, ml_env: Path, symbol: str, timeframe: str
) -> None:
    before = set(ml_env.parent.rglob("*.joblib"))  # other tests' models live beside this one's
    with pytest.raises(IdentifierError):
        train_ensemble_for_symbol_timeframe(db=embedded_store, symbol=symbol, timeframe=timeframe)
    assert set(ml_env.parent.rglob("*.joblib")) == before
    assert embedded_store._query("select count(*) from training_runs")[0][0] == 0


def test_artifact_paths_stay_inside_the_models_dir(tmp_path: Path) -> None:
    models = tmp_path / "models"
    ok = artifact_path(models, "BRK.B", "d1", RUN, T0)
    assert ok == (models / "BRK.B" / "d1" / "BRK.B_d1_20260102T030405Z_3f2b9c1e.joblib").resolve()
    for bad in ("../X", "X/Y", "..", ".X", ""):
        with pytest.raises(ArtifactError, match="invalid symbol"):
            artifact_path(models, bad, "d1", RUN, T0)
    with pytest.raises(ArtifactError, match="invalid run id"):
        artifact_path(models, "IBM", "d1", "../../../../x", T0)
    assert resolve_artifact(models, "IBM/d1/a.joblib") == (models / "IBM/d1/a.joblib").resolve()
    for stored in (
        "../outside.joblib",
        "IBM/../../outside.joblib",
        "/etc/passwd",
        str(tmp_path / "x.joblib"),
        "",
    ):
        with pytest.raises(ArtifactError):
            resolve_artifact(models, stored)
    (models / "IBM").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (models / "IBM" / "d1").symlink_to(tmp_path / "elsewhere")  # a link that leads out
    with pytest.raises(ArtifactError, match="outside ML_MODELS_DIR"):
        resolve_artifact(models, "IBM/d1/a.joblib")


def test_retention_never_deletes_outside_the_models_dir(embedded_store: SqliteStore, ml_env: Path) -> None:
    victim = ml_env / "victim.joblib"
    victim.write_bytes(b"someone else's file")
    embedded_store.start_run(RunRecord(run_id=RUN, started_at=T0))
    for i, path in enumerate(["../victim.joblib", str(victim), "IBM/d1/kept.joblib"]):
        embedded_store.record_result(
            ResultRecord(run_id=RUN, symbol="IBM", timeframe=("d1", "h1", "h4")[i], status="skipped")
        )
        embedded_store._write(
            "insert into model_versions (symbol, timeframe, run_id, artifact_path, artifact_sha256,"
            " feature_version, trained_at, is_champion, created_at) values ('IBM','d1',?,?,?, 'v', ?, 0, ?)",
            (RUN, path, "ab" * 32, "2026-01-02T00:00:00.000000Z", "2026-01-02T00:00:00.000000Z"),
        )
    retention = prune_versions(embedded_store, "IBM", "d1", keep=1, models_dir=ml_env / "models")
    assert retention.pruned == 2
    assert victim.read_bytes() == b"someone else's file"
    assert len(retention.errors) == 2 and all("outside ML_MODELS_DIR" in e for e in retention.errors)


# ---- 5. loading ----------------------------------------------------------------------------------------------------------


def test_nothing_is_unpickled_without_an_expected_sha256(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.joblib"
    joblib.dump(Payload(marker), path)
    for call in (lambda: load_ensemble(path), lambda: load_bundle(path), lambda: load_ensemble(path, None)):
        with pytest.raises(ArtifactError, match="without an expected sha256"):
            call()
    with pytest.raises(ArtifactError, match="sha256"):
        load_ensemble(path, expected_sha256="0" * 64)
    assert not marker.exists()


def flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


CORRUPTIONS = {
    "flipped byte": flip,
    "truncated": lambda data: data[: len(data) // 2],
    "zlib garbage": lambda data: b"\x78\x9c" + bytes(range(256)) * 4,
    "not a pickle": lambda data: b"ts,open,high,low,close,volume\n",
    "empty": lambda data: b"",
    "pickle of something else": lambda data: __import__("pickle").dumps([1, 2, 3]),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_every_corrupt_file_is_an_artifact_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "IBM_d1.joblib"
    save_bundle(real_bundle(), path)
    path.write_bytes(CORRUPTIONS[kind](path.read_bytes()))
    sha = hashlib.sha256(
        path.read_bytes()
    ).hexdigest()  # the ledger recorded the damaged file: it gets unpickled
    with pytest.raises(ArtifactError) as info:
        load_ensemble(path, expected_sha256=sha, key=None)
    assert str(info.value).startswith(f"artifact {path} is ") and "\n" not in str(info.value)


def test_a_bundle_loads_from_the_bytes_it_verified(tmp_path: Path) -> None:
    path = tmp_path / "IBM_d1.joblib"
    sha = save_bundle(real_bundle(), path)
    bundle = load_bundle(path, sha, key=None)
    assert bundle["format"] == 1 and bundle["payload"].shape == (600, 5)


def test_with_a_key_a_signature_from_the_ledger_is_required(tmp_path: Path, monkeypatch) -> None:
    models = tmp_path / "models"
    saved = save_artifact(real_bundle(), models, models / "IBM" / "d1" / "a.joblib", KEY)
    assert saved.relative == "IBM/d1/a.joblib" and saved.signature and len(saved.signature) == 64
    assert load_bundle(saved.path, saved.sha256, signature=saved.signature, key=KEY)["format"] == 1
    with pytest.raises(ArtifactError, match="no recorded signature"):
        load_bundle(saved.path, saved.sha256, key=KEY)
    with pytest.raises(ArtifactError, match="invalid signature"):
        load_bundle(saved.path, saved.sha256, signature="ab" * 32, key=KEY)
    with pytest.raises(ArtifactError, match="invalid signature"):
        load_bundle(saved.path, saved.sha256, signature=saved.signature, key="another-key-0123456789")
    # the key comes from the settings by default
    monkeypatch.setenv("ML_ARTIFACT_KEY", KEY)
    with pytest.raises(ArtifactError, match="no recorded signature"):
        load_ensemble(saved.path, saved.sha256)
    assert load_ensemble(saved.path, saved.sha256, signature=saved.signature).classes[0] == "BEARISH"
    monkeypatch.setenv("ML_ARTIFACT_KEY", "short")
    with pytest.raises(ArtifactError, match="ML_ARTIFACT_KEY: Value error, must be at least 16"):
        load_ensemble(saved.path, saved.sha256, signature=saved.signature)


@pytest.mark.slow
def test_a_run_with_a_key_signs_and_load_champion_verifies(
    embedded_store: SqliteStore, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("ML_ARTIFACT_KEY", KEY)
    embedded_store.upsert_bars("GOOG", "w1", sample_bars("GOOG", "w1"))
    assert main(["--pairs", "GOOG:w1", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    row = embedded_store.get_champion("GOOG", "w1")
    assert row is not None and row["artifact_signature"] == result["artifact_signature"]
    assert load_champion("GOOG", "w1", store=embedded_store).metadata["symbol"] == "GOOG"
    with sqlite3.connect(embedded_store.path) as conn:  # someone with write access to the ledger, not the key
        conn.execute("update model_versions set artifact_signature = ? where id = ?", ("cd" * 32, row["id"]))
    with pytest.raises(ArtifactError, match="invalid signature"):
        load_champion("GOOG", "w1", store=embedded_store)
    assert os.path.isfile(result["artifact_file"])


def test_model_version_rows_carry_the_signature(embedded_store: SqliteStore) -> None:
    embedded_store.start_run(RunRecord(run_id=RUN, started_at=T0))
    version = ModelVersionRecord(
        symbol="IBM",
        timeframe="d1",
        run_id=RUN,
        artifact_path="IBM/d1/a.joblib",
        artifact_sha256="ab" * 32,
        artifact_signature="cd" * 32,
        feature_version="v",
        trained_at=T0,
    )
    embedded_store.record_result(
        ResultRecord(
            run_id=RUN, symbol="IBM", timeframe="d1", status="succeeded", artifact_signature="cd" * 32
        ),
        version,
    )
    assert embedded_store.list_model_versions("IBM", "d1")[0]["artifact_signature"] == "cd" * 32
    assert embedded_store.find_result(RUN, "IBM", "d1")["artifact_signature"] == "cd" * 32


# ---- issue 21 case 8: a signature vouches for one pair and run; a signed row needs the key ---------------------------
def copy_artifact(store: SqliteStore, source: dict, into: dict, columns: tuple[str, ...]) -> None:
    """Someone with write access to the ledger (not the key) points one pair's row at another pair's file."""
    sets = ", ".join(f"{c} = ?" for c in columns)
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            f"update model_versions set {sets} where id = ?", (*[source[c] for c in columns], into["id"])
        )


@pytest.mark.slow
def test_a_signature_covers_the_pair_and_run_and_a_signed_row_needs_the_key(
    embedded_store: SqliteStore, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("ML_ARTIFACT_KEY", KEY)
    for symbol in ("GOOG", "IBM"):
        embedded_store.upsert_bars(symbol, "w1", sample_bars(symbol, "w1", last=600))
    assert main(["--pairs", "GOOG:w1", "IBM:w1", "--target-bars", "400", "--quiet"]) == 0
    goog, ibm = embedded_store.get_champion("GOOG", "w1"), embedded_store.get_champion("IBM", "w1")
    assert goog["run_id"] == ibm["run_id"]  # one run: only the pair tells them apart
    assert load_champion("GOOG", "w1", store=embedded_store).metadata["symbol"] == "GOOG"

    # without the key: a row that carries a signature is refused, in one line naming the key
    monkeypatch.delenv("ML_ARTIFACT_KEY")
    with pytest.raises(ArtifactError, match="has a recorded signature but ML_ARTIFACT_KEY is not set") as err:
        load_champion("GOOG", "w1", store=embedded_store)
    assert "\n" not in str(err.value)

    # with the key: IBM's path, sha256 and signature copied into GOOG's row are refused before unpickling
    monkeypatch.setenv("ML_ARTIFACT_KEY", KEY)
    copy_artifact(embedded_store, ibm, goog, ("artifact_path", "artifact_sha256", "artifact_signature"))
    with pytest.raises(ArtifactError, match="invalid signature for GOOG/w1"):
        load_champion("GOOG", "w1", store=embedded_store)
    # and the forecast job fails that pair (it does not forecast GOOG with IBM's model)
    from ml.src.cli import forecast as forecast_job

    assert forecast_job.main(["--pairs", "GOOG:w1", "--json", "--quiet"]) == 1
    capsys.readouterr()


@pytest.mark.slow
def test_without_a_key_a_copied_row_is_refused_by_the_bundles_own_pair(embedded_store: SqliteStore) -> None:
    for symbol in ("GOOG", "IBM"):
        embedded_store.upsert_bars(symbol, "w1", sample_bars(symbol, "w1", last=600))
    assert main(["--pairs", "GOOG:w1", "IBM:w1", "--target-bars", "400", "--quiet"]) == 0
    goog, ibm = embedded_store.get_champion("GOOG", "w1"), embedded_store.get_champion("IBM", "w1")
    copy_artifact(embedded_store, ibm, goog, ("artifact_path", "artifact_sha256"))
    with pytest.raises(ArtifactError, match="holds symbol 'IBM', not the requested 'GOOG'"):
        load_champion("GOOG", "w1", store=embedded_store)


def test_a_bundle_signed_for_one_identity_does_not_verify_for_another(tmp_path: Path) -> None:
    models = tmp_path / "models"
    bundle = {**real_bundle(), "symbol": "IBM", "timeframe": "d1", "run_id": RUN}
    saved = save_artifact(bundle, models, models / "IBM" / "d1" / "a.joblib", KEY)
    mine = ArtifactIdentity("IBM", "d1", RUN)
    assert (
        load_bundle(saved.path, saved.sha256, signature=saved.signature, key=KEY, identity=mine)["symbol"]
        == "IBM"
    )
    for other in (
        ArtifactIdentity("GOOG", "d1", RUN),
        ArtifactIdentity("IBM", "w1", RUN),
        ArtifactIdentity("IBM", "d1", "x" * 36),
    ):
        with pytest.raises(ArtifactError, match="invalid signature"):
            load_bundle(saved.path, saved.sha256, signature=saved.signature, key=KEY, identity=other)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_bundles_get_the_mode_the_umask_gives(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        path = tmp_path / "IBM_d1.joblib"
        save_bundle(real_bundle(), path)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode
