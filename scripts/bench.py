"""`make bench`: where the time of a training run goes, and how the defaults compare with the seed.

    .venv/bin/python scripts/bench.py                  # full (several minutes; the seed configuration is slow)
    .venv/bin/python scripts/bench.py --quick          # smoke run
    .venv/bin/python scripts/bench.py --skip-whole-run # per-stage part only
    .venv/bin/python scripts/bench.py --supabase       # part 3 only (the local Supabase stack; was bench_supabase.py)

Two parts, both on the real shared bars (--data-dir), both in temporary folders (nothing is written inside the
repository except --out):

1. Per-stage medians for one pair (default SPY/h1) at 500, 2,000 and 5,000 target bars, through the product's
   own path (`run_job` on a SQLite store). Each repeat starts from a fresh copy of a store holding only bars, so
   its first run is COLD (features computed and written to the feature cache); a second run right after on
   the same store is WARM (features read from the cache). Both are reported.
2. A whole run over every CSV in --data-dir (`python -m ml.src.training.ensemble_training_job --all --json
   --workers N` as a separate process, timeframes' default target bars), each repeat on a fresh copy of one
   prepared store, so every repeat starts with the same cold feature cache. Wall time, succeeded pairs and the
   mean ensemble test balanced accuracy per configuration.
3. `--supabase` (instead of 1 and 2): that whole run with the defaults against the local Supabase stack
   (scripts/local_supabase.sh), beside an embedded store holding the same bars: wall time, the job's store I/O
   time and its share, mean ensemble test balanced accuracy, and whether both stores give the same models.

Configurations: "seed" = gb_backend=sklearn_gb, rf_n_estimators=200, workers=1 (pairs one after another);
"defaults" = the product's Settings defaults, untouched; candidates (--candidates, default "lgbm_rf100" =
lightgbm, 100 trees, one worker per core; also "hist_rf100", "hist_rf200"). Configurations are interleaved inside every repeat so the
noise of a shared machine hits them alike; every figure is a median over --repeats.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import (
    DEFAULT_DATA_DIR,
    REPO,
    build_sqlite_template,
    copy_sqlite,
    isolate_environment,
    load_csvs,
    log,
    machine_info,
    make_settings,
    median,
    parse_pair,
    start_local_stack,
    stop_local_stack,
)

STAGES: tuple[str, ...] = ("load", "features", "fit_rf", "fit_gb", "predict", "weights", "evaluate", "save")
DEFAULT_SIZES: tuple[int, ...] = (500, 2000, 5000)
QUICK_SIZES: tuple[int, ...] = (500, 2000)
QUICK_SYMBOLS: tuple[str, ...] = ("SPY", "AAPL", "QQQ")
TIMEFRAME_ORDER: tuple[str, ...] = ("m15", "h1", "h4", "d1", "w1")
JOB_MODULE = "ml.src.training.ensemble_training_job"


@dataclass(frozen=True)
class BenchConfig:
    """One configuration, as Settings overrides (in-process) and as ML_* variables plus --workers (whole run)."""

    name: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    workers: int = 0

    @property
    def env(self) -> dict[str, str]:
        return {f"ML_{k.upper()}": str(v) for k, v in self.overrides.items()}


# The seed's members as far as Settings can express them (its balanced forest + unweighted boosting and its
# direction-score weights are not settings any more; for timing, calibration and weights cost ~1 ms).
SEED = BenchConfig(
    "seed",
    "sklearn_gb depth 7, rf 200 trees depth 15, fixed labels, --workers 1",
    {
        "gb_backend": "sklearn_gb",
        "gb_max_depth": 7,
        "gb_min_samples_leaf": 5,
        "rf_n_estimators": 200,
        "rf_max_depth": 15,
        "rf_min_samples_split": 10,
        "rf_min_samples_leaf": 5,
        "class_weight": "none",
        "calibrate": False,
        "threshold_mode": "fixed",
        "workers": 1,
    },
    workers=1,
)
DEFAULTS = BenchConfig("defaults", "product Settings defaults, --workers 0 (one per core)", {}, workers=0)
# Candidate defaults measured beside the seed and the current defaults (choose with --candidates).
CANDIDATES: dict[str, BenchConfig] = {
    c.name: c
    for c in (
        BenchConfig(
            "lgbm_rf100",
            "lightgbm, rf 100 trees, --workers 0",
            {"gb_backend": "lightgbm", "rf_n_estimators": 100, "workers": 0},
            workers=0,
        ),
        BenchConfig(
            "hist_rf100",
            "hist_gb, rf 100 trees, --workers 0",
            {"gb_backend": "hist_gb", "rf_n_estimators": 100, "workers": 0},
            workers=0,
        ),
        BenchConfig(
            "hist_rf200",
            "hist_gb, rf 200 trees, --workers 0",
            {"gb_backend": "hist_gb", "rf_n_estimators": 200, "workers": 0},
            workers=0,
        ),
    )
}
DEFAULT_CANDIDATES: tuple[str, ...] = ("lgbm_rf100",)


# ------------------------------------------------------------------------------------ part 1: per stage
def stage_run(store: Any, settings: Any, symbol: str, timeframe: str, size: int) -> dict[str, Any]:
    """One run_job over one pair; its stage timings, its compute (sum of stages) and the call's wall time."""
    from ml.src.training.run_loop import run_job

    # The warm run trains the same window again: it must not be skipped as "no new bars".
    kwargs: dict[str, Any] = {"force": True} if "force" in inspect.signature(run_job).parameters else {}
    t0 = time.perf_counter()
    report = run_job(store, settings, [symbol], [timeframe], target_bars=size, **kwargs)
    wall = time.perf_counter() - t0
    (result,) = report.results
    if result.status != "succeeded":
        raise RuntimeError(f"{symbol}/{timeframe}@{size}: {result.status}: {result.error}")
    # The named stages, then any stage the pipeline adds later (e.g. walk_forward when enabled).
    timings = {k: float(result.timings.get(k, 0.0)) for k in STAGES}
    timings.update({k: float(v) for k, v in result.timings.items() if k not in timings})
    return {
        "timings": timings,
        "compute_s": sum(timings.values()),
        "wall_s": wall,
        "ensemble_test_balanced_accuracy": result.metrics["ensemble"]["test_balanced_accuracy"]
        if result.metrics
        else None,
    }


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = list(dict.fromkeys(k for r in runs for k in r["timings"]))
    return {
        "n": len(runs),
        "stages_median_s": {k: median(r["timings"].get(k, 0.0) for r in runs) for k in keys},
        "compute_median_s": median(r["compute_s"] for r in runs),
        "wall_median_s": median(r["wall_s"] for r in runs),
        "ensemble_test_balanced_accuracy": runs[-1]["ensemble_test_balanced_accuracy"],
    }


def bench_stages(
    template: Path,
    tmp: Path,
    pair: tuple[str, str],
    sizes: Sequence[int],
    configs: Sequence[BenchConfig],
    repeats: int,
) -> dict[str, Any]:
    """Per size and configuration: `repeats` x (fresh store copy -> cold run -> warm run)."""
    from ml.src.data.local_db import SqliteStore

    symbol, timeframe = pair
    raw: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    for size in sizes:
        raw[str(size)] = {c.name: {"cold": [], "warm": []} for c in configs}
        for rep in range(repeats):
            for c in configs:
                run_dir = tmp / f"stage_{size}_{c.name}_{rep}"
                settings = make_settings(
                    run_dir,
                    **{
                        **c.overrides,
                        "local_db": run_dir / "store.sqlite3",
                        "models_dir": run_dir / "models",
                    },
                )
                store = SqliteStore(copy_sqlite(template, run_dir / "store.sqlite3"))
                try:
                    for phase in ("cold", "warm"):
                        raw[str(size)][c.name][phase].append(
                            stage_run(store, settings, symbol, timeframe, size)
                        )
                finally:
                    store.close()
                    shutil.rmtree(run_dir, ignore_errors=True)
            cold = {c.name: raw[str(size)][c.name]["cold"][-1]["compute_s"] for c in configs}
            log(
                f"stages {symbol}/{timeframe}@{size} repeat {rep + 1}/{repeats}: cold compute "
                + ", ".join(f"{k} {v:.2f}s" for k, v in cold.items())
            )
    summary = {
        size: {
            name: {phase: summarise_runs(runs) for phase, runs in phases.items()}
            for name, phases in by_cfg.items()
        }
        for size, by_cfg in raw.items()
    }
    return {"pair": f"{symbol}/{timeframe}", "sizes": list(sizes), "summary": summary, "raw": raw}


# ------------------------------------------------------------------------------------ part 2: whole run
def whole_run_env(
    env_overrides: Mapping[str, str], *, local_db: Path | None, models_dir: Path
) -> dict[str, str]:
    """The child's environment: ours without any ML_* / SUPABASE_* variable, plus the given overrides.

    With `local_db` the job uses that SQLite file. A Supabase-backed variant passes local_db=None and
    SUPABASE_URL / SUPABASE_SERVICE_ROLE_KEY in `env_overrides`; nothing else changes.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "SUPABASE_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["ML_MODELS_DIR"] = str(models_dir)
    if local_db is not None:
        env["ML_LOCAL_DB"] = str(local_db)
    env.update(env_overrides)
    return env


def run_whole_once(
    env_overrides: Mapping[str, str],
    workers: int,
    *,
    workdir: Path,
    db_template: Path | None,
    timeframes: Sequence[str],
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """One `ensemble_training_job --all --json --workers N` process; wall time and what its JSON says.

    `db_template`: a prepared SQLite store, copied to `workdir` first so every run starts from the same state
    (None: the environment names the store, e.g. SUPABASE_URL in `env_overrides`).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    local_db = copy_sqlite(db_template, workdir / "store.sqlite3") if db_template is not None else None
    env = whole_run_env(env_overrides, local_db=local_db, models_dir=workdir / "models")
    cmd = [
        sys.executable,
        "-m",
        JOB_MODULE,
        "--all",
        "--json",
        "--workers",
        str(workers),
        "--timeframes",
        *timeframes,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    wall = time.perf_counter() - t0
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} without JSON:\n{tail}") from exc
    results = report.get("results", [])
    ok = [r for r in results if r.get("status") == "succeeded"]
    accs = {f"{r['symbol']}/{r['timeframe']}": r["metrics"]["ensemble"]["test_balanced_accuracy"] for r in ok}
    return {
        "cmd": cmd[1:],
        "env_overrides": {k: ("***" if "KEY" in k else v) for k, v in env_overrides.items()},
        "exit_code": proc.returncode,
        "wall_s": wall,
        "job_duration_s": report.get("duration_s"),
        "store_io_s": report.get("store_io_s"),
        "status": report.get("status"),
        "n_pairs": len(results),
        "n_succeeded": len(ok),
        "failed": {
            f"{r['symbol']}/{r['timeframe']}": r.get("error")
            for r in results
            if r.get("status") != "succeeded"
        },
        "ensemble_test_balanced_accuracy": accs,
        "mean_ensemble_test_balanced_accuracy": statistics.fmean(accs.values()) if accs else None,
        "sum_pair_duration_s": sum(float(r.get("duration_s") or 0) for r in results),
    }


def bench_whole_runs(
    configs: Sequence[BenchConfig],
    *,
    repeats: int,
    db_template: Path | None,
    tmp: Path,
    timeframes: Sequence[str],
    available: set[str],
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`repeats` rounds, each running every configuration once (interleaved); medians per configuration.

    `extra_env` is added to every configuration's environment (e.g. SUPABASE_URL + key, with db_template=None).
    `available` = the "SYMBOL/TF" pairs that have a CSV: the other failures are absent pairs, not errors.
    """
    raw: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    for rep in range(repeats):
        for c in configs:
            workdir = tmp / f"whole_{c.name}_{rep}"
            run = run_whole_once(
                {**c.env, **(extra_env or {})},
                c.workers,
                workdir=workdir,
                db_template=db_template,
                timeframes=timeframes,
            )
            shutil.rmtree(workdir, ignore_errors=True)
            raw[c.name].append(run)
            log(
                f"whole run {c.name} repeat {rep + 1}/{repeats}: wall {run['wall_s']:.1f}s, "
                f"{run['n_succeeded']}/{run['n_pairs']} succeeded, mean ens bal.acc "
                f"{run['mean_ensemble_test_balanced_accuracy'] or float('nan'):.4f}"
            )
    summary: dict[str, Any] = {}
    common: set[str] | None = None
    for runs in raw.values():
        pairs = set(runs[-1]["ensemble_test_balanced_accuracy"])
        common = pairs if common is None else common & pairs
    for c in configs:
        runs = raw[c.name]
        last = runs[-1]
        unexpected = {k: v for k, v in last["failed"].items() if k in available}
        accs_stable = all(
            r["ensemble_test_balanced_accuracy"] == last["ensemble_test_balanced_accuracy"] for r in runs
        )
        summary[c.name] = {
            "description": c.description,
            "workers_flag": c.workers,
            "env": c.env,
            "wall_median_s": median(r["wall_s"] for r in runs),
            "wall_s": [round(r["wall_s"], 2) for r in runs],
            "job_duration_median_s": median(float(r["job_duration_s"] or 0) for r in runs),
            "store_io_median_s": median(float(r["store_io_s"] or 0) for r in runs)
            if all(r.get("store_io_s") is not None for r in runs)
            else None,
            "n_pairs": last["n_pairs"],
            "n_succeeded": last["n_succeeded"],
            "n_absent": len(last["failed"]) - len(unexpected),
            "failed_with_csv": unexpected,
            "mean_ensemble_test_balanced_accuracy": last["mean_ensemble_test_balanced_accuracy"],
            "mean_ensemble_test_balanced_accuracy_common_pairs": statistics.fmean(
                last["ensemble_test_balanced_accuracy"][p] for p in common
            )
            if common
            else None,
            "accuracy_identical_across_repeats": accs_stable,
        }
        ref = raw[configs[0].name][-1]["ensemble_test_balanced_accuracy"]
        if c is not configs[0] and common and len(common) > 1:
            d = [100 * (last["ensemble_test_balanced_accuracy"][p] - ref[p]) for p in sorted(common)]
            summary[c.name][f"paired_diff_vs_{configs[0].name}_pts"] = {
                "mean": statistics.fmean(d),
                "stderr": statistics.stdev(d) / len(d) ** 0.5,
                "min": min(d),
                "max": max(d),
                "better": sum(x > 0 for x in d),
                "worse": sum(x < 0 for x in d),
                "equal": sum(x == 0 for x in d),
            }
    return {"n_common_pairs": len(common or ()), "summary": summary, "raw": raw}


# ----------------------------------------------------------------------------------------------- report
def format_report(payload: dict[str, Any]) -> str:
    lines: list[str] = []
    st = payload.get("stages")
    if st:
        cols = list(
            dict.fromkeys(
                [*STAGES]
                + [
                    k
                    for by_cfg in st["summary"].values()
                    for phases in by_cfg.values()
                    for s in phases.values()
                    for k in s["stages_median_s"]
                ]
            )
        )
        lines.append(
            f"Per-stage medians, {st['pair']}, {payload['repeats']} repeat(s) (seconds; compute = sum of "
            "stages; wall = run_job call)"
        )
        header = (
            f"{'bars':>5} {'config':<11} {'cache':<5} "
            + " ".join(f"{c[:8]:>8}" for c in cols)
            + f" {'compute':>8} {'wall':>7} {'ens.bal':>7}"
        )
        lines += [header, "-" * len(header)]
        for size, by_cfg in st["summary"].items():
            for name, phases in by_cfg.items():
                for phase, s in phases.items():
                    acc = s["ensemble_test_balanced_accuracy"]
                    lines.append(
                        f"{size:>5} {name:<11} {phase:<5} "
                        + " ".join(f"{s['stages_median_s'].get(k, 0.0):8.3f}" for k in cols)
                        + f" {s['compute_median_s']:8.3f} {s['wall_median_s']:7.3f} "
                        + (f"{100 * acc:7.1f}" if acc is not None else f"{'-':>7}")
                    )
        lines.append("")
    wr = payload.get("whole_run")
    if wr:
        lines.append(
            f"Whole run over {payload['whole_run_scope']}, {payload['repeats']} repeat(s), separate process "
            f"each (mean accuracy also over the {wr['n_common_pairs']} pairs every configuration trained)"
        )
        header = (
            f"{'config':<11} {'workers':>7} {'wall med':>9} {'runs (s)':<22} {'ok/pairs':>8} "
            f"{'mean ens.bal':>12} {'common':>7}  description"
        )
        lines += [header, "-" * len(header)]
        for name, s in wr["summary"].items():
            acc, accc = (
                s["mean_ensemble_test_balanced_accuracy"],
                s["mean_ensemble_test_balanced_accuracy_common_pairs"],
            )
            lines.append(
                f"{name:<11} {s['workers_flag']:>7} {s['wall_median_s']:8.1f}s {' '.join(f'{w:.1f}' for w in s['wall_s']):<22} "
                f"{s['n_succeeded']:>3}/{s['n_pairs']:<4} {100 * acc if acc is not None else float('nan'):12.2f} "
                f"{100 * accc if accc is not None else float('nan'):7.2f}  {s['description']}"
            )
            pd_ = s.get(f"paired_diff_vs_{SEED.name}_pts")
            if pd_:
                lines.append(
                    f"    per pair vs {SEED.name}: {pd_['mean']:+.2f} pts (stderr {pd_['stderr']:.2f}, range "
                    f"{pd_['min']:+.1f}..{pd_['max']:+.1f}; better {pd_['better']}, worse {pd_['worse']}, "
                    f"equal {pd_['equal']})"
                )
            if s["failed_with_csv"]:
                for pair, err in s["failed_with_csv"].items():
                    lines.append(f"    failed although its CSV exists: {pair}: {err}")
        lines.append("")
    t = payload.get("targets", {})
    if t:
        lines.append("Targets")
        for key, value in t.items():
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def check_targets(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    st = payload.get("stages")
    if st and "500" in st["summary"] and DEFAULTS.name in st["summary"]["500"]:
        d = st["summary"]["500"][DEFAULTS.name]
        cold, warm = d["cold"]["compute_median_s"], d["warm"]["compute_median_s"]
        out["500-bar pair under 1 s of compute with defaults"] = (
            f"cold {cold:.3f}s ({'PASS' if cold < 1 else 'FAIL'}), warm {warm:.3f}s ({'PASS' if warm < 1 else 'FAIL'})"
        )
    wr = payload.get("whole_run")
    if wr and SEED.name in wr["summary"] and DEFAULTS.name in wr["summary"]:
        seed, dflt = wr["summary"][SEED.name], wr["summary"][DEFAULTS.name]
        ratio = seed["wall_median_s"] / dflt["wall_median_s"]
        a_seed = seed["mean_ensemble_test_balanced_accuracy_common_pairs"]
        a_dflt = dflt["mean_ensemble_test_balanced_accuracy_common_pairs"]
        out["whole run >= 5x faster (seed / defaults, median wall)"] = (
            f"{ratio:.2f}x ({'PASS' if ratio >= 5 else 'FAIL'})"
        )
        if a_seed is not None and a_dflt is not None:
            pd_ = dflt.get(f"paired_diff_vs_{SEED.name}_pts")
            noise = f"; paired stderr {pd_['stderr']:.2f} pts" if pd_ else ""
            out["mean ensemble test balanced accuracy, defaults vs seed"] = (
                f"{100 * a_dflt:.2f} vs {100 * a_seed:.2f} ({100 * (a_dflt - a_seed):+.2f} pts{noise}; "
                f"{'PASS' if a_dflt >= a_seed else 'FAIL'})"
            )
        for name, s in wr["summary"].items():
            if name not in (SEED.name, DEFAULTS.name):
                out[f"{name}: speed-up vs seed, accuracy"] = (
                    f"{seed['wall_median_s'] / s['wall_median_s']:.2f}x, "
                    f"{100 * s['mean_ensemble_test_balanced_accuracy_common_pairs']:.2f} pts"
                )
    return out


# -------------------------------------------------------------------------------------------------- CLI
# ------------------------------------------------------------------- part 3: the whole run on Supabase
ML_TABLES = "feature_chunks, training_results, model_versions, training_runs, job_leases"


def csv_pairs(data_dir: Path, quick: bool) -> list[Path]:
    files = sorted(data_dir.glob("*_*.csv"))
    if quick:
        files = [f for f in files if f.stem.endswith(("_d1", "_w1"))][:8]
    return files


def supabase_job(env: dict[str, str], timeframes: list[str], workers: int) -> tuple[float, dict[str, Any]]:
    argv = [
        sys.executable,
        "-m",
        "ml.src.training.ensemble_training_job",
        "--all",
        "--timeframes",
        *timeframes,
        "--workers",
        str(workers),
        "--force",
        "--json",
        "--quiet",
    ]
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 1):
        raise RuntimeError(f"job exited {p.returncode}: {p.stderr[-2000:]}")
    return wall, json.loads(p.stdout)


def supabase_summary(runs: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    walls = [w for w, _ in runs]
    durations = [o["duration_s"] for _, o in runs]
    io = [o["store_io_s"] for _, o in runs]
    share = [o["store_io_s"] / o["duration_s"] for _, o in runs if o["duration_s"]]
    last = runs[-1][1]
    ok = [r for r in last["results"] if r["status"] == "succeeded"]
    bal = [r["metrics"]["ensemble"]["test_balanced_accuracy"] for r in ok]
    return {
        "wall_median_s": median(walls),
        "wall_s": [round(w, 2) for w in walls],
        "job_duration_median_s": median(durations),
        "store_io_median_s": median(io),
        "store_io_share_median": median(share) if share else None,
        "n_succeeded": len(ok),
        "n_failed": sum(r["status"] == "failed" for r in last["results"]),
        "mean_ensemble_test_balanced_accuracy": sum(bal) / len(bal) if bal else None,
        "accuracy_by_pair": {
            f"{r['symbol']}/{r['timeframe']}": r["metrics"]["ensemble"]["test_balanced_accuracy"] for r in ok
        },
    }


def bench_supabase(args: argparse.Namespace) -> int:
    """Part 3 (`--supabase`): the whole run against the local Supabase stack beside an embedded store holding
    the same bars, the job as its own process per repeat (cold feature cache and empty ledger each time).
    Medians of wall time, of the job's store I/O time (`store_io_s`) and its share of the job's duration, and the
    mean ensemble test balanced accuracy (the same bars must give the same models). Was scripts/bench_supabase.py."""
    out_path: Path = args.out or REPO / "bench_results" / "bench_supabase.json"

    from ml.src.data.supabase_db import SupabaseStore

    files = csv_pairs(args.data_dir, args.quick)
    if not files:
        print(f"no CSV files in {args.data_dir}", file=sys.stderr)
        return 1
    timeframes = sorted({f.stem.rsplit("_", 1)[1] for f in files}, key=["m15", "h1", "h4", "d1", "w1"].index)
    tmp = Path(tempfile.mkdtemp(prefix="bench_supabase."))
    try:
        stack = start_local_stack(REPO, timeout_s=300)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        import psycopg

        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "ML_"))}
        sb_env = {
            **base_env,
            "SUPABASE_URL": stack["SUPABASE_URL"],
            "SUPABASE_SERVICE_ROLE_KEY": stack["SUPABASE_SERVICE_ROLE_KEY"],
            "ML_MODELS_DIR": str(tmp / "models_sb"),
        }
        with SupabaseStore(stack["SUPABASE_URL"], stack["SUPABASE_SERVICE_ROLE_KEY"]) as sb:
            t0 = time.perf_counter()
            rows = load_csvs(sb, files)
            load_sb = time.perf_counter() - t0
        template = tmp / "template.sqlite3"
        t0 = time.perf_counter()
        build_sqlite_template(files, template)
        load_lite = time.perf_counter() - t0
        n_rows = sum(rows.values())
        print(
            f"loaded {len(files)} files ({n_rows} bars): supabase {load_sb:.1f}s, embedded {load_lite:.1f}s",
            file=sys.stderr,
        )

        results: dict[str, list[tuple[float, dict[str, Any]]]] = {"supabase": [], "embedded": []}
        for i in range(args.repeats):
            with psycopg.connect(stack["DATABASE_URL"], autocommit=True) as conn:
                conn.execute(f"truncate {ML_TABLES} cascade")
            shutil.rmtree(tmp / "models_sb", ignore_errors=True)
            results["supabase"].append(supabase_job(sb_env, timeframes, args.workers))
            db = tmp / f"embedded_{i}.sqlite3"
            copy_sqlite(template, db)
            lite_env = {
                **base_env,
                "SUPABASE_URL": "",
                "ML_LOCAL_DB": str(db),
                "ML_MODELS_DIR": str(tmp / f"models_lite_{i}"),
            }
            results["embedded"].append(supabase_job(lite_env, timeframes, args.workers))
            print(
                f"repeat {i + 1}/{args.repeats}: supabase {results['supabase'][-1][0]:.1f}s, "
                f"embedded {results['embedded'][-1][0]:.1f}s",
                file=sys.stderr,
            )
    finally:
        stop_local_stack(stack, REPO)
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {name: supabase_summary(runs) for name, runs in results.items()}
    sb, lite = summary["supabase"], summary["embedded"]
    same = sb["accuracy_by_pair"] == lite["accuracy_by_pair"]
    out = {
        "benchmark": "bench_supabase",
        "files": len(files),
        "bars": n_rows,
        "timeframes": timeframes,
        "repeats": args.repeats,
        "workers": args.workers,
        "load_s": {"supabase": load_sb, "embedded": load_lite},
        "summary": summary,
        "supabase_over_embedded_wall": sb["wall_median_s"] / lite["wall_median_s"],
        "identical_accuracy_by_pair": same,
        "loadavg_at_end": os.getloadavg(),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1))
    print(
        f"{'store':<10} {'wall (median)':>14} {'job':>8} {'store I/O':>10} {'I/O share':>10} {'pairs':>6} "
        f"{'mean bal.acc':>13}"
    )
    for name in ("embedded", "supabase"):
        s = summary[name]
        share = s["store_io_share_median"]
        print(
            f"{name:<10} {s['wall_median_s']:>13.1f}s {s['job_duration_median_s']:>7.1f}s "
            f"{s['store_io_median_s']:>9.1f}s {100 * share if share is not None else float('nan'):>9.1f}% "
            f"{s['n_succeeded']:>6} {100 * (s['mean_ensemble_test_balanced_accuracy'] or 0):>12.2f}"
        )
    print(
        f"supabase / embedded wall: {out['supabase_over_embedded_wall']:.2f}x; "
        f"same accuracy on every pair: {same}; bar load {load_sb:.1f}s vs {load_lite:.1f}s; results in {out_path}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description=(
            "Benchmark training on the shared real bars: (1) per-stage medians (load, features, fit_rf, fit_gb, "
            "weights, save) for one pair at several window sizes, cold and warm feature cache; (2) wall time and "
            "mean ensemble test balanced accuracy of a whole run over every CSV, as a separate process. Compares "
            "the seed configuration (sklearn_gb, 200 trees, pairs one after another) with the product defaults "
            "and with candidate defaults (--candidates). Everything runs in temporary folders; only --out is written."
        ),
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="repeats of every measurement; the figures reported are medians (default: 3; use >= 3)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: stage sizes {' '.join(map(str, QUICK_SIZES))} and a whole run over the CSVs of "
        f"{', '.join(QUICK_SYMBOLS)} only",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the JSON results, raw samples and medians (default: bench_results/bench.json; "
        "with --supabase bench_results/bench_supabase.json)",
    )
    p.add_argument(
        "--supabase",
        action="store_true",
        help="part 3 only (was scripts/bench_supabase.py): the whole run against the local Supabase stack beside "
        "the embedded store on the same bars; --quick there means 8 daily/weekly files",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="--supabase: --workers for the job (default 0 = one per core)"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder with the shared SYMBOL_TF.csv bar files (default: <repo>/../shared/data)",
    )
    p.add_argument(
        "--skip-whole-run",
        action="store_true",
        help="only the per-stage part; the whole run costs about 1.5 min per repeat for the seed configuration",
    )
    p.add_argument("--skip-stages", action="store_true", help="only the whole run (skip the per-stage part)")
    p.add_argument(
        "--candidates",
        nargs="*",
        choices=sorted(CANDIDATES),
        default=list(DEFAULT_CANDIDATES),
        metavar="NAME",
        help="candidate configurations measured beside 'seed' and 'defaults': "
        + "; ".join(f"{c.name} = {c.description}" for c in CANDIDATES.values())
        + f" (default: {' '.join(DEFAULT_CANDIDATES)}; none: --candidates with no name)",
    )
    p.add_argument(
        "--pair",
        type=parse_pair,
        default=("SPY", "h1"),
        metavar="SYMBOL/TF",
        help="the pair of the per-stage part (default: SPY/h1)",
    )
    p.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        metavar="N",
        help="target bars of the per-stage part (default: 500 2000 5000; --quick: 500 2000)",
    )
    return p


def data_files(data_dir: Path, symbols: Sequence[str] | None = None) -> list[Path]:
    from ml.src.data.load_bars import FILE_RE

    files = []
    for path in sorted(data_dir.glob("*.csv")):
        m = FILE_RE.match(path.stem)
        if m and (symbols is None or m["symbol"].upper() in symbols):
            files.append(path)
    return files


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    if args.supabase:
        return bench_supabase(args)
    args.out = args.out or REPO / "bench_results" / "bench.json"
    data_dir: Path = args.data_dir.resolve()
    if not data_dir.is_dir():
        print(f"error: --data-dir {data_dir} is not a folder", file=sys.stderr)
        return 2
    sizes = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    files = data_files(data_dir, QUICK_SYMBOLS if args.quick else None)
    if not files:
        print(f"error: no SYMBOL_TF.csv files in {data_dir}", file=sys.stderr)
        return 2
    from ml.src.data.load_bars import parse_file_name

    available = {"/".join(parse_file_name(f)) for f in files}
    pair_label = "/".join(args.pair)
    if pair_label not in available:
        print(
            f"error: --pair {pair_label}: no {args.pair[0]}_{args.pair[1]}.csv in {data_dir}", file=sys.stderr
        )
        return 2
    timeframes = [tf for tf in TIMEFRAME_ORDER if any(p.endswith("/" + tf) for p in available)]
    configs = (SEED, DEFAULTS, *(CANDIDATES[n] for n in dict.fromkeys(args.candidates)))
    started = time.time()
    payload: dict[str, Any] = {
        "benchmark": "bench",
        "started_at_unix": started,
        "repeats": args.repeats,
        "data_dir": str(data_dir),
        "quick": args.quick,
        "configs": {
            c.name: {"description": c.description, "overrides": c.overrides, "workers_flag": c.workers}
            for c in configs
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp_name:
        tmp = Path(tmp_name)
        removed = isolate_environment(tmp)
        if removed:
            log(f"note: ignoring {', '.join(removed)} from the environment")
        payload["machine"] = info = machine_info()
        payload["product_defaults"] = {
            k: v
            for k, v in make_settings(tmp).public_dict().items()
            if k.startswith(("gb_", "rf_", "workers"))
        }
        log(f"machine: {info['nproc']} core(s), {info['cpu_model']}; defaults {payload['product_defaults']}")
        template = tmp / "bars.sqlite3"
        t0 = time.perf_counter()
        rows = build_sqlite_template(files, template)
        payload["load_template_s"] = round(time.perf_counter() - t0, 2)
        payload["rows_loaded"] = rows
        log(
            f"loaded {len(files)} CSV file(s), {sum(rows.values())} bars, into a template store in "
            f"{payload['load_template_s']}s"
        )
        try:
            if not args.skip_stages:
                payload["stages"] = bench_stages(template, tmp, args.pair, sizes, configs, args.repeats)
            if not args.skip_whole_run:
                payload["whole_run_scope"] = (
                    f"{len({p.split('/')[0] for p in available})} symbols x "
                    f"{len(timeframes)} timeframes ({len(available)} CSVs)"
                )
                payload["whole_run"] = bench_whole_runs(
                    configs,
                    repeats=args.repeats,
                    db_template=template,
                    tmp=tmp,
                    timeframes=timeframes,
                    available=available,
                )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    payload["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    payload["targets"] = check_targets(payload)
    payload["elapsed_s"] = round(time.time() - started, 1)
    print(format_report(payload))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    log(f"\nwrote {args.out} ({payload['elapsed_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
