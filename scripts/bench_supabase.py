"""Whole-run benchmark against the local Supabase stack, beside the embedded store, on the same pairs.

    .venv/bin/python scripts/bench_supabase.py [--repeats 3] [--quick]

Starts scripts/local_supabase.sh (PostgreSQL + PostgREST + nginx), loads every shared CSV through the
Supabase store, then runs the training job as its own process per repeat (cold feature cache and empty
ledger each time) against Supabase and against an embedded store holding the same bars. Reports medians of
wall time, the job's store I/O time (`store_io_s`, time inside store calls in the job process) and its share
of the job's duration, and mean ensemble test balanced accuracy (the same bars must give the same models).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_models import (  # noqa: E402  (needs the sys.path lines above)
    DEFAULT_DATA_DIR,
    build_sqlite_template,
    copy_sqlite,
    load_csvs,
    median,
)

ML_TABLES = "feature_chunks, training_results, model_versions, training_runs, job_leases"


def parse_exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, value = line[len("export ") :].split("=", 1)
            env[key] = value.strip("'")
    return env


def csv_pairs(data_dir: Path, quick: bool) -> list[Path]:
    files = sorted(data_dir.glob("*_*.csv"))
    if quick:
        files = [f for f in files if f.stem.endswith(("_d1", "_w1"))][:8]
    return files


def run_job(env: dict[str, str], timeframes: list[str], workers: int) -> tuple[float, dict[str, Any]]:
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


def summarise(runs: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder of SYMBOL_TF.csv bars (default: ../shared/data beside the repo)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="job runs per store; medians are reported (default 3)"
    )
    p.add_argument("--workers", type=int, default=0, help="--workers for the job (default 0 = one per core)")
    p.add_argument("--quick", action="store_true", help="8 daily/weekly files only, for a smoke run")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench_results" / "bench_supabase.json",
        help="where the JSON results go (default bench_results/bench_supabase.json)",
    )
    args = p.parse_args(argv)

    from ml.src.data.supabase_db import SupabaseStore

    files = csv_pairs(args.data_dir, args.quick)
    if not files:
        print(f"no CSV files in {args.data_dir}", file=sys.stderr)
        return 1
    timeframes = sorted({f.stem.rsplit("_", 1)[1] for f in files}, key=["m15", "h1", "h4", "d1", "w1"].index)
    tmp = Path(tempfile.mkdtemp(prefix="bench_supabase."))
    started = subprocess.run(
        [str(REPO / "scripts" / "local_supabase.sh"), "start"], capture_output=True, text=True, timeout=300
    )
    if started.returncode != 0:
        print(f"local stack failed to start:\n{started.stderr}", file=sys.stderr)
        return 1
    stack = parse_exports(started.stdout)
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
            results["supabase"].append(run_job(sb_env, timeframes, args.workers))
            db = tmp / f"embedded_{i}.sqlite3"
            copy_sqlite(template, db)
            lite_env = {
                **base_env,
                "SUPABASE_URL": "",
                "ML_LOCAL_DB": str(db),
                "ML_MODELS_DIR": str(tmp / f"models_lite_{i}"),
            }
            results["embedded"].append(run_job(lite_env, timeframes, args.workers))
            print(
                f"repeat {i + 1}/{args.repeats}: supabase {results['supabase'][-1][0]:.1f}s, "
                f"embedded {results['embedded'][-1][0]:.1f}s",
                file=sys.stderr,
            )
    finally:
        subprocess.run(
            [str(REPO / "scripts" / "local_supabase.sh"), "stop", stack["STACK_DIR"]],
            capture_output=True,
            text=True,
            timeout=120,
        )
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {name: summarise(runs) for name, runs in results.items()}
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
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
        f"same accuracy on every pair: {same}; bar load {load_sb:.1f}s vs {load_lite:.1f}s; results in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
