"""The feature cache inside the whole job on the local Supabase stack: a night with the cache on beside one with
it off (every feature recomputed), at nightly scale (issue 17).

    ML_TEST_DATA=../shared/data .venv/bin/python scripts/bench_cache_job.py --pairs 40 --bars 2000 --repeats 3

40 pairs of real bars (bench_common.plan_windows: the latest 2,000 bars + the 120-bar warm-up of each file,
cycled) are loaded into a fresh local stack; one run with the cache on fills it; then each repeat runs the job
twice on the same bars, `--all --force --json`, with ML_FEATURE_CACHE=on (every window already cached: one read
a pair, no row computed) and =off (every row recomputed, the cache untouched), in alternating order. Reported:
wall and CPU of the job's process tree, the stack's CPU (PostgreSQL, PostgREST, nginx), and the per-pair
`features` step the job records (median over pairs), medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_common import (
    DEFAULT_DATA_DIR,
    REPO,
    git_state,
    load_windows,
    log,
    median,
    plan_windows,
    run_metered,
    start_local_stack,
    stop_local_stack,
)


def server_pids(stack: dict[str, str]) -> list[int]:
    pids = []
    for name in ("postgres.pid", "postgrest.pid", "nginx.pid"):
        path = Path(stack["STACK_DIR"]) / name
        if path.exists():
            pids.append(int(path.read_text().split()[0]))
    return pids


def feature_step_s(out: dict[str, Any]) -> float:
    steps = [
        r["timings"]["features"]
        for r in out.get("results", [])
        if r.get("status") == "succeeded" and "features" in (r.get("timings") or {})
    ]
    return statistics.median(steps) if steps else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=40, help="pairs trained per run (default 40)")
    p.add_argument(
        "--bars", type=int, default=2000, help="bars in each pair's training window (default 2000)"
    )
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (default 3)")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ML_TEST_DATA", DEFAULT_DATA_DIR)))
    p.add_argument("--out", type=Path, default=REPO / "bench_results" / "bench_cache_job.json")
    args = p.parse_args(argv)

    from ml.src.data.supabase_db import SupabaseStore

    files = sorted(args.data_dir.glob("*_*.csv"))
    windows = plan_windows(files, args.pairs, args.bars + 120)
    stack = start_local_stack()
    try:
        with SupabaseStore(stack["SUPABASE_URL"], stack["SUPABASE_SERVICE_ROLE_KEY"]) as store:
            load_windows(store, windows)
        tmp = Path(tempfile.mkdtemp(prefix="bench_cache_job."))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "SUPABASE_"))}
        env.update(
            SUPABASE_URL=stack["SUPABASE_URL"],
            SUPABASE_SERVICE_ROLE_KEY=stack["SUPABASE_SERVICE_ROLE_KEY"],
            ML_MODELS_DIR=str(tmp / "models"),
        )
        cmd = [
            sys.executable,
            "-m",
            "ml.src.training.ensemble_training_job",
            "--all",
            "--force",
            "--target-bars",
            str(args.bars),
            "--json",
            "-q",
        ]
        extra = server_pids(stack)
        warm = run_metered(cmd, env={**env, "ML_FEATURE_CACHE": "on"}, cwd=REPO, extra_pids=extra)
        if warm.returncode != 0:
            raise RuntimeError(f"the run that fills the cache failed: {warm.stderr[-2000:]}")
        log(f"cache filled: {warm.wall_s:.1f}s wall")
        samples: dict[str, dict[str, list[float]]] = {"on": {}, "off": {}}
        for i in range(args.repeats):
            for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
                m = run_metered(cmd, env={**env, "ML_FEATURE_CACHE": mode}, cwd=REPO, extra_pids=extra)
                if m.returncode != 0:
                    raise RuntimeError(f"cache {mode}: exit {m.returncode}: {m.stderr[-2000:]}")
                out = json.loads(m.stdout)
                s = samples[mode]
                s.setdefault("wall_s", []).append(m.wall_s)
                s.setdefault("job_cpu_s", []).append(m.cpu_s - m.cpu_extra_s)
                s.setdefault("server_cpu_s", []).append(m.cpu_extra_s)
                s.setdefault("feature_step_s", []).append(feature_step_s(out))
                log(
                    f"repeat {i + 1} cache {mode}: {m.wall_s:.1f}s wall, {m.cpu_s - m.cpu_extra_s:.1f}s job CPU"
                )
    finally:
        stop_local_stack(stack)
    result = {
        "git": git_state(),
        "load_avg": os.getloadavg(),
        "pairs": args.pairs,
        "bars": args.bars,
        "repeats": args.repeats,
        "medians": {mode: {k: median(v) for k, v in s.items()} for mode, s in samples.items()},
        "samples": samples,
    }
    on, off = result["medians"]["on"], result["medians"]["off"]
    result["on_vs_off"] = {k: round(on[k] / off[k], 3) for k in on if off.get(k)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({"medians": result["medians"], "on_vs_off": result["on_vs_off"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
