"""`make bench`: the whole training job as its own process, against the source design, side by side.

    .venv/bin/python scripts/bench_throughput.py                 # everything (~40 min on 2 busy cores)
    .venv/bin/python scripts/bench_throughput.py --quick         # smoke run (1 repeat, small sets)
    .venv/bin/python scripts/bench_throughput.py --sections pairs ratio

Every measurement runs `python -m ml.src.training.ensemble_training_job ... --json --force` as a separate
process (bench_common.run_metered: wall time, CPU time of the whole process tree, peak memory per process) on a
fresh copy of a store holding bars only (cold feature cache, empty ledger). Configurations are interleaved in
every repeat (A B A B) so a shared machine's noise hits them alike; figures are medians over --repeats.

Configurations:
  source   the source design's pipeline: sklearn GradientBoosting (100 trees, depth 7, lr 0.05, 5 per leaf)
           + RandomForest (200 trees, depth 15, min split 10, min leaf 5, every row per tree), pairs one after
           another (--workers 1). Set explicitly, so changes to the product's defaults do not move it.
  product  the product's Settings defaults, untouched, --workers 0 (one process per core).

Sections (--sections):
  artifact size and CPU of a 500-bar pair's bundle: joblib compress=3 (before) against a plain pickle and zlib
           levels 1 and 3, and the time to write + fdatasync each.
  forest   CPU of the product's forest alone on SPY/h1 windows of 2,000 to 20,000 bars, every row per tree
           (the seed) against the per-tree cap (ML_RF_SAMPLE_CAP), with test balanced accuracy.
  pairs    1, 10, 40, 100 pairs of 500 target bars on the embedded store: time and CPU per pair (flat?);
           source beside product up to --source-max-pairs.
  ratio    the 10 pairs with --walk-forward K (the accuracy the done-when compares is walk-forward balanced
           accuracy): source vs product, time ratio and mean walk-forward balanced accuracy.
  sizes    one pair (SPY/h1) from 500 to 20,000 target bars: source vs product.
  line     where a local pool starts to pay: product fits in-process vs in a pool for 1..8 pairs.
  dask     the 10 pairs through a two-worker Dask cluster on this machine vs the local pool: identical
           results, wall ratio.
  supabase the pairs section against the local Supabase stack (scripts/local_supabase.sh).
  help     CPU time of `ensemble_training_job --help`.
  stages   CPU time (thread_time, immune to other processes' load) of each step of the 10 pairs, in this
           process: the work around the fit (prepare = bars + features + labels + split; metrics; packing the
           bundle; promotion; persist) against the member fits.

Pairs are real: distinct, non-overlapping 700-bar windows of the shared CSVs (bench_common.plan_windows), each
loaded unchanged under its own symbol (`AAPL.0`, `AAPL.1`, ...). Nothing is invented.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import (
    DEFAULT_DATA_DIR,
    REPO,
    Metered,
    Window,
    copy_sqlite,
    load_windows,
    log,
    machine_info,
    make_settings,
    median,
    plan_windows,
    run_metered,
    start_local_stack,
    stop_local_stack,
)

JOB = "ml.src.training.ensemble_training_job"
WINDOW_BARS = 700  # 500 target bars + 200 warm-up
TARGET_BARS = 500
SIZES = (500, 2000, 5000, 10000, 20000)
SIZE_PAIR = ("SPY", "h1")
PAIR_COUNTS = (1, 10, 40, 100)
SECTIONS = ("help", "stages", "artifact", "forest", "pairs", "ratio", "sizes", "line", "dask", "supabase")
ML_TABLES = ("training_results", "model_versions", "training_runs", "job_leases")


@dataclass(frozen=True)
class Config:
    name: str
    description: str
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 0


SOURCE = Config(
    "source",
    "source design: sklearn GradientBoosting + RandomForest 200 (seed parameters), --workers 1",
    {
        "ML_GB_BACKEND": "sklearn_gb",
        "ML_GB_N_ESTIMATORS": "100",
        "ML_GB_LEARNING_RATE": "0.05",
        "ML_GB_MAX_DEPTH": "7",
        "ML_GB_MIN_SAMPLES_LEAF": "5",
        "ML_GB_SUBSAMPLE": "1.0",
        "ML_GB_COLSAMPLE": "1.0",
        "ML_RF_N_ESTIMATORS": "200",
        "ML_RF_MAX_DEPTH": "15",
        "ML_RF_MIN_SAMPLES_SPLIT": "10",
        "ML_RF_MIN_SAMPLES_LEAF": "5",
        "ML_RF_MAX_FEATURES": "sqrt",
        "ML_RF_SAMPLE_CAP": "0",
        # the seed weighted the forest's classes (not the boosting's); one setting covers both members now
        "ML_CLASS_WEIGHT": "balanced",
        "ML_CALIBRATE": "false",
        "ML_RIDGE_ALPHAS": "[1.0]",
        "ML_RIDGE_SE_RULE": "0",
        "ML_RIDGE_BALANCED": "false",
        "ML_REFIT_ON_VALID": "false",
        "ML_THRESHOLD_MODE": "fixed",
        "ML_TIMEFRAMES": json.dumps({tf: {"warmup_bars": 200} for tf in ("m15", "h1", "h4", "d1", "w1")}),
    },
    workers=1,
)
PRODUCT = Config("product", "product defaults, --workers 0 (one process per core)", {}, workers=0)


# ------------------------------------------------------------------------------------------- running a job
@dataclass
class Job:
    """How to run the job against a store: the environment and the pair selection flags."""

    env: dict[str, str]
    workdir: Path
    prepare: Callable[[], None]  # resets the store to bars only before each run
    extra_pids: tuple[int, ...] = ()


def cli_supports_pairs() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", JOB, "--help"], capture_output=True, text=True, cwd=REPO, check=False
    )
    return "--pairs" in out.stdout


def selection_args(pairs: Sequence[tuple[str, str]], use_pairs_flag: bool) -> list[str]:
    if use_pairs_flag:
        return ["--pairs", *(f"{s}:{tf}" for s, tf in pairs)]
    # older CLI: symbols x timeframes; pairs without bars fail at once and are left out of the figures
    symbols = list(dict.fromkeys(s for s, _ in pairs))
    tfs = [tf for tf in ("m15", "h1", "h4", "d1", "w1") if any(t == tf for _, t in pairs)]
    return ["--symbols", *symbols, "--timeframes", *tfs]


def run_job(
    job: Job, config: Config, pairs: Sequence[tuple[str, str]], args: Sequence[str], use_pairs_flag: bool
) -> dict[str, Any]:
    job.prepare()
    env = {**job.env, **config.env}
    cmd = [
        sys.executable, "-m", JOB, *selection_args(pairs, use_pairs_flag), "--json", "--quiet", "--force",
        "--workers", str(config.workers), *args,
    ]  # fmt: skip
    m: Metered = run_metered(cmd, env=env, cwd=job.workdir, extra_pids=job.extra_pids)
    try:
        report = json.loads(m.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"{' '.join(cmd)} exited {m.returncode}:\n{m.stderr[-3000:]}") from exc
    wanted = {f"{s}/{tf}" for s, tf in pairs}
    results = {f"{r['symbol']}/{r['timeframe']}": r for r in report["results"]}
    missing = [p for p in wanted if results.get(p, {}).get("status") != "succeeded"]
    if missing:
        raise RuntimeError(f"pairs did not train: {[(p, results.get(p, {}).get('error')) for p in missing]}")
    ok = [results[p] for p in sorted(wanted)]
    wf = [wf_balanced_accuracy(r["walk_forward"]) for r in ok if r.get("walk_forward")]
    wf = [v for v in wf if v is not None]
    return {
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
        "cpu_main_s": m.cpu_main_s,
        "cpu_cluster_s": m.cpu_extra_s,
        "job_duration_s": report.get("duration_s"),
        "store_io_s": report.get("store_io_s"),
        "executor": report.get("executor", {}),
        "peak_rss_mb": m.peak_rss_mb,
        "worker_peak_rss_mb": report.get("executor", {}).get("worker_peak_rss_mb", {}),
        "n_pairs": len(ok),
        "mean_test_balanced_accuracy": statistics.fmean(
            r["metrics"]["ensemble"]["test_balanced_accuracy"] for r in ok
        ),
        "mean_walk_forward_balanced_accuracy": statistics.fmean(wf) if wf else None,
        "fingerprint": {p: [results[p]["weights"], results[p]["metrics"]] for p in sorted(wanted)},
        "stage_sums_s": _stage_sums(ok),
    }


def wf_balanced_accuracy(wf: Mapping[str, Any]) -> float | None:
    """The ensemble's mean walk-forward balanced accuracy, in either summary layout."""
    summary = wf.get("summary") or {}
    if "ensemble" in summary:  # walk_forward.summary.<name>.balanced_accuracy_mean
        return summary["ensemble"].get("balanced_accuracy_mean")
    old = summary.get("test_balanced_accuracy")  # before: summary.test_balanced_accuracy.mean
    return old.get("mean") if isinstance(old, Mapping) else None


def _stage_sums(results: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in results:
        for k, v in (r.get("timings") or {}).items():
            out[k] = out.get(k, 0.0) + float(v)
    return {k: round(v, 3) for k, v in out.items()}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    n = runs[-1]["n_pairs"]
    wall, cpu = median(r["wall_s"] for r in runs), median(r["cpu_s"] for r in runs)
    workers: dict[str, float] = {}
    for r in runs:
        for wid, mb in r["worker_peak_rss_mb"].items():
            workers[wid] = max(workers.get(wid, 0.0), mb)
    return {
        "n_pairs": n,
        "wall_median_s": round(wall, 3),
        "cpu_median_s": round(cpu, 3),
        "wall_per_pair_s": round(wall / n, 4),
        "cpu_per_pair_s": round(cpu / n, 4),
        "wall_s": [round(r["wall_s"], 2) for r in runs],
        "cpu_s": [round(r["cpu_s"], 2) for r in runs],
        "store_io_median_s": median(float(r["store_io_s"] or 0) for r in runs),
        "main_peak_rss_mb": max(r["peak_rss_mb"].get("main", 0.0) for r in runs),
        "worker_peak_rss_mb_max": max(workers.values()) if workers else None,
        "n_worker_processes": len(workers),
        "executor": runs[-1]["executor"].get("kind"),
        "mean_test_balanced_accuracy": runs[-1]["mean_test_balanced_accuracy"],
        "mean_walk_forward_balanced_accuracy": runs[-1]["mean_walk_forward_balanced_accuracy"],
        "identical_across_repeats": all(r["fingerprint"] == runs[-1]["fingerprint"] for r in runs),
        "stage_sums_median_s": {
            k: round(median(r["stage_sums_s"].get(k, 0.0) for r in runs), 3) for k in runs[-1]["stage_sums_s"]
        },
    }


def interleaved(
    cells: Sequence[tuple[str, Config, Sequence[tuple[str, str]], Sequence[str]]],
    job: Job,
    repeats: int,
    use_pairs_flag: bool,
    label: str,
) -> dict[str, dict[str, Any]]:
    """Each repeat runs every cell once, in order; medians per cell."""
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in cells}
    for rep in range(repeats):
        for name, config, pairs, args in cells:
            run = run_job(job, config, pairs, args, use_pairs_flag)
            raw[name].append(run)
            log(
                f"{label} {name} repeat {rep + 1}/{repeats}: wall {run['wall_s']:.2f}s cpu {run['cpu_s']:.2f}s "
                f"({run['n_pairs']} pairs, {run['executor'].get('kind')}, load {os.getloadavg()[0]:.1f})"
            )
    return {name: {**summarise(runs), "raw": [_strip(r) for r in runs]} for name, runs in raw.items()}


def _strip(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "fingerprint"}


# ------------------------------------------------------------------------------------------------ stores
def sqlite_job(template: Path, tmp: Path) -> Job:
    workdir = tmp / "job"
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "store.sqlite3"
    env = base_env()
    env.update(ML_LOCAL_DB=str(db), ML_MODELS_DIR=str(workdir / "models"), SUPABASE_URL="")

    def prepare() -> None:
        for side in ("", "-wal", "-shm"):
            Path(str(db) + side).unlink(missing_ok=True)
        shutil.rmtree(workdir / "models", ignore_errors=True)
        copy_sqlite(template, db)

    return Job(env, workdir, prepare)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "SUPABASE_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def build_template(
    windows: Sequence[Window], extra_files: Sequence[Path], target: Path
) -> list[dict[str, Any]]:
    from ml.src.data.load_bars import load_file
    from ml.src.data.local_db import SqliteStore

    store = SqliteStore(target)
    try:
        described = load_windows(store, windows)
        for path in extra_files:
            load_file(store, path, None, None)
    finally:
        store.close()
    return described


# ------------------------------------------------------------------------------------------------ checks
def done_when(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    h = payload.get("help")
    if h:
        out["--help under 1 s of CPU"] = (
            f"{h['cpu_median_s']:.3f} s ({'PASS' if h['cpu_median_s'] < 1 else 'FAIL'})"
        )
    r = payload.get("ratio")
    if r:
        s, p = r["source"], r["product"]
        ratio = s["wall_median_s"] / p["wall_median_s"]
        a_s, a_p = s["mean_walk_forward_balanced_accuracy"], p["mean_walk_forward_balanced_accuracy"]
        verdict = "PASS" if ratio >= 8 else "FAIL"
        out["10 pairs, walk-forward, whole process: >= 8x the source (goal 10x)"] = (
            f"{ratio:.2f}x wall, {s['cpu_median_s'] / p['cpu_median_s']:.2f}x CPU ({verdict})"
        )
        out["... at equal or better mean walk-forward balanced accuracy"] = (
            f"{100 * a_p:.2f} vs {100 * a_s:.2f} ({'PASS' if a_p >= a_s else 'FAIL'})"
        )
    st = payload.get("stages")
    if st:
        share = st["around_fit_share_of_fit"]
        out["work around the fit < 10% of the fit (CPU)"] = (
            f"{100 * share:.1f}% ({'PASS' if share < 0.10 else 'FAIL'}): {st['cpu_median_s']}"
        )
    pr = payload.get("pairs")
    if pr and "source@10" in pr and "product@10" in pr:
        out["10 pairs, no walk-forward (the nightly default): speed-up"] = (
            f"{pr['source@10']['wall_median_s'] / pr['product@10']['wall_median_s']:.2f}x wall, "
            f"{pr['source@10']['cpu_median_s'] / pr['product@10']['cpu_median_s']:.2f}x CPU"
        )
    if pr and "product@100" in pr and "product@10" in pr:
        f = pr["product@100"]["wall_per_pair_s"] / pr["product@10"]["wall_per_pair_s"]
        out["100 pairs: time per pair <= 1.2x that at 10 pairs"] = (
            f"{f:.2f}x ({'PASS' if f <= 1.2 else 'FAIL'})"
        )
    sz = payload.get("sizes")
    if sz and f"source@{max(SIZES)}" in sz and f"product@{max(SIZES)}" in sz:
        k = max(SIZES)
        ratio = sz[f"source@{k}"]["wall_median_s"] / sz[f"product@{k}"]["wall_median_s"]
        out[f"one pair at {k:,} bars: >= 10x"] = f"{ratio:.2f}x ({'PASS' if ratio >= 10 else 'FAIL'})"
    d = payload.get("dask")
    if d:
        ratio = d["dask"]["wall_median_s"] / d["pool"]["wall_median_s"]
        out["10 pairs on a two-worker Dask cluster: identical results"] = "PASS" if d["identical"] else "FAIL"
        out["... wall within 1.3x of the local pool"] = f"{ratio:.2f}x ({'PASS' if ratio <= 1.3 else 'FAIL'})"
    return out


def table(section: dict[str, dict[str, Any]], title: str) -> str:
    lines = [
        f"\n{title}",
        "| cell | executor | wall (median) | CPU (median) | wall/pair | CPU/pair | worker peak RSS | "
        "test bal. acc | wf bal. acc | runs (wall) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in section.items():
        if not isinstance(s, dict) or "wall_median_s" not in s:
            continue
        wf = s["mean_walk_forward_balanced_accuracy"]
        rss = s["worker_peak_rss_mb_max"]
        lines.append(
            f"| {name} | {s['executor']} | {s['wall_median_s']:.2f} s | {s['cpu_median_s']:.2f} s | "
            f"{s['wall_per_pair_s']:.3f} s | {s['cpu_per_pair_s']:.3f} s | "
            f"{f'{rss:.0f} MiB' if rss else '-'} | {100 * s['mean_test_balanced_accuracy']:.2f} | "
            f"{f'{100 * wf:.2f}' if wf is not None else '-'} | {', '.join(f'{w:.1f}' for w in s['wall_s'])} |"
        )
    return "\n".join(lines)


def render_markdown(payload: dict[str, Any]) -> str:
    """The tables docs/benchmarks.md shows, from a results file (`--render PATH`)."""
    parts: list[str] = []
    m = payload.get("machine", {})
    parts.append(
        f"commit {m.get('git', {}).get('commit', '?')[:10]} (dirty: {m.get('git', {}).get('dirty')}), "
        f"load average at start {m.get('loadavg_at_start')}, at end {payload.get('loadavg_at_end')}, "
        f"{payload.get('repeats')} repeat(s), pairs selected by {payload.get('pair_selection')}"
    )
    titles = {
        "pairs": "Pairs of 500 bars, embedded store",
        "ratio": "10 pairs with walk-forward",
        "sizes": f"One pair ({SIZE_PAIR[0]}/{SIZE_PAIR[1]}) by window size",
        "line": "Where a local pool starts to pay (product)",
        "supabase": "Pairs of 500 bars, local Supabase stack",
    }
    for key, title in titles.items():
        if payload.get(key):
            parts.append(table(payload[key], title))
    d = payload.get("dask")
    if d:
        parts.append(
            table({k: v for k, v in d.items() if k in ("pool", "dask")}, "10 pairs: local pool vs Dask")
        )
        parts.append(f"identical weights and metrics on every pair: {d['identical']}")
    for key in ("stages", "artifact", "forest", "help"):
        if payload.get(key):
            parts.append(f"\n{key}: `{json.dumps({k: v for k, v in payload[key].items() if k != 'raw'})}`")
    parts.append("\n| done when | measured |\n|---|---|")
    parts += [f"| {k} | {v} |" for k, v in done_when(payload).items()]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--quick", action="store_true", help="1 repeat, pairs 1/10, sizes 500/2000, no line section"
    )
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--pair-counts", nargs="+", type=int, default=list(PAIR_COUNTS))
    p.add_argument("--source-max-pairs", type=int, default=10, help="largest pair count run with the source")
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    p.add_argument("--walk-forward", type=int, default=4, help="folds of the ratio section (default 4)")
    p.add_argument("--out", type=Path, default=REPO / "bench_results" / "throughput.json")
    p.add_argument("--render", type=Path, metavar="JSON", help="print the markdown tables of a results file")
    args = p.parse_args(argv)
    if args.render:
        print(render_markdown(json.loads(args.render.read_text())))
        return 0
    if args.quick:
        args.repeats, args.pair_counts, args.sizes = 1, [1, 10], [500, 2000]
        args.sections = [s for s in args.sections if s != "line"]
    files = sorted(args.data_dir.glob("*_*.csv"))
    if not files:
        print(f"error: no SYMBOL_TF.csv files in {args.data_dir}", file=sys.stderr)
        return 2

    started = time.time()
    payload: dict[str, Any] = {
        "benchmark": "throughput",
        "repeats": args.repeats,
        "machine": machine_info(),
        "configs": {
            c.name: {"description": c.description, "env": c.env, "workers": c.workers}
            for c in (SOURCE, PRODUCT)
        },
    }
    use_pairs_flag = cli_supports_pairs()
    payload["pair_selection"] = (
        "--pairs" if use_pairs_flag else "--symbols x --timeframes (absent pairs ignored)"
    )
    n_max = max([*args.pair_counts, 10])
    windows = plan_windows(files, n_max, WINDOW_BARS)
    plan = [(w.symbol, w.timeframe) for w in windows]
    size_file = args.data_dir / f"{SIZE_PAIR[0]}_{SIZE_PAIR[1]}.csv"
    tmp = Path(tempfile.mkdtemp(prefix="bench_throughput."))
    try:
        template = tmp / "bars.sqlite3"
        payload["windows"] = build_template(windows, [size_file], template)
        log(f"{len(windows)} windows of {WINDOW_BARS} real bars + {size_file.name} in {template}")
        job = sqlite_job(template, tmp)
        ten = plan[:10]

        if "help" in args.sections:
            runs = [
                run_metered([sys.executable, "-m", JOB, "--help"], env=base_env(), cwd=REPO) for _ in range(5)
            ]
            payload["help"] = {
                "cpu_median_s": median(r.cpu_s for r in runs),
                "wall_median_s": median(r.wall_s for r in runs),
            }
            log(f"--help: {payload['help']}")

        if "stages" in args.sections:
            payload["stages"] = bench_stages(template, tmp, ten, args.repeats)
            log(json.dumps({k: v for k, v in payload["stages"].items() if k != "raw"}, indent=1))

        if "artifact" in args.sections:
            payload["artifact"] = bench_artifact(template, tmp, ten[:3], args.repeats)
            log(json.dumps(payload["artifact"], indent=1))

        if "forest" in args.sections:
            payload["forest"] = bench_forest(
                template, tmp, [n for n in args.sizes if n >= 2000], args.repeats
            )
            log(json.dumps(payload["forest"], indent=1))

        if "pairs" in args.sections:
            cells = []
            for n in args.pair_counts:
                if n <= args.source_max_pairs:
                    cells.append((f"source@{n}", SOURCE, plan[:n], ["--target-bars", str(TARGET_BARS)]))
                cells.append((f"product@{n}", PRODUCT, plan[:n], ["--target-bars", str(TARGET_BARS)]))
            payload["pairs"] = interleaved(cells, job, args.repeats, use_pairs_flag, "pairs")
            log(table(payload["pairs"], "pairs (embedded)"))

        if "ratio" in args.sections:
            wf = ["--target-bars", str(TARGET_BARS), "--walk-forward", str(args.walk_forward)]
            cells = [("source", SOURCE, ten, wf), ("product", PRODUCT, ten, wf)]
            payload["ratio"] = interleaved(cells, job, args.repeats, use_pairs_flag, "ratio")
            log(table(payload["ratio"], f"10 pairs, --walk-forward {args.walk_forward}"))

        if "sizes" in args.sections:
            cells = []
            for n in args.sizes:
                for c in (SOURCE, PRODUCT):
                    cells.append((f"{c.name}@{n}", c, [SIZE_PAIR], ["--target-bars", str(n)]))
            payload["sizes"] = interleaved(cells, job, args.repeats, use_pairs_flag, "sizes")
            log(table(payload["sizes"], f"one pair {SIZE_PAIR[0]}/{SIZE_PAIR[1]}"))

        if "line" in args.sections:
            cells = []
            for n in (1, 2, 3, 4, 6):
                for mode, floor in (("in-process", "1000000"), ("pool", "1")):
                    c = Config(f"product-{mode}", "", {"ML_POOL_MIN_PAIRS": floor}, workers=0)
                    cells.append((f"{mode}@{n}", c, plan[:n], ["--target-bars", str(TARGET_BARS)]))
            payload["line"] = interleaved(cells, job, args.repeats, use_pairs_flag, "line")
            log(table(payload["line"], "in-process vs pool"))

        if "dask" in args.sections:
            payload["dask"] = bench_dask(job, ten, tmp, args.repeats, use_pairs_flag)
            log(table({k: v for k, v in payload["dask"].items() if k in ("pool", "dask")}, "dask"))

        if "supabase" in args.sections:
            payload["supabase"] = bench_supabase(windows, plan, tmp, args, use_pairs_flag)
            log(table(payload["supabase"], "pairs (local Supabase stack)"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    payload["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    payload["done_when"] = done_when(payload)
    payload["elapsed_s"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    for key, value in payload["done_when"].items():
        print(f"{key}: {value}")
    log(f"wrote {args.out} ({payload['elapsed_s']} s)")
    return 0


def bench_stages(template: Path, tmp: Path, pairs: Sequence[tuple[str, str]], repeats: int) -> dict[str, Any]:
    """Per-step CPU of the product path for each pair, in this process (product defaults, one thread)."""
    from datetime import UTC, datetime

    from ml.src.data.local_db import SqliteStore
    from ml.src.training import models
    from ml.src.training.pair_result import PairRequest
    from ml.src.training.pipeline import fit_pair, persist_pair, prepare_pair
    from ml.src.training.registry import decide_promotion
    from ml.src.training.run_loop import start_run
    from ml.src.training.worker import pack_fit

    # the members' fit (fit_ensemble: members, calibration, weights, predictions) is timed inside fit_pair;
    # the rest of fit_pair (metrics, trading read, verdict, chart data) is "metrics"
    real_fit_ensemble = models.fit_ensemble
    inner = [0.0]

    def timed_fit_ensemble(*a: Any, **k: Any) -> Any:
        t = time.thread_time()
        try:
            return real_fit_ensemble(*a, **k)
        finally:
            inner[0] += time.thread_time() - t

    steps = ("prepare", "fit", "metrics", "pack", "promotion", "persist")
    raw: list[dict[str, float]] = []
    for rep in range(repeats):
        workdir = tmp / f"stages_{rep}"
        db = copy_sqlite(template, workdir / "store.sqlite3")
        settings = make_settings(workdir, local_db=db, models_dir=workdir / "models")
        totals = dict.fromkeys(steps, 0.0)
        with SqliteStore(db) as store:
            run_id = start_run(store, settings, {}, "manual").run_id
            for symbol, tf in pairs:
                clock = [time.thread_time()]

                def lap(step: str, clock: list[float] = clock, totals: dict[str, float] = totals) -> None:
                    now = time.thread_time()
                    totals[step] += now - clock[0]
                    clock[0] = now

                prep = prepare_pair(
                    store, PairRequest(symbol, tf, target_bars=TARGET_BARS, force=True), settings
                )
                lap("prepare")
                inner[0] = 0.0
                models.fit_ensemble = timed_fit_ensemble  # type: ignore[assignment]
                try:
                    fitted = fit_pair(prep, settings, n_threads=1)
                finally:
                    models.fit_ensemble = real_fit_ensemble  # type: ignore[assignment]
                now = time.thread_time()
                totals["fit"] += inner[0]
                totals["metrics"] += now - clock[0] - inner[0]
                clock[0] = now
                packed = pack_fit(prep, fitted, run_id=run_id, trained_at=datetime.now(UTC))
                lap("pack")
                decision = decide_promotion(store, prep, packed, settings)
                lap("promotion")
                persist_pair(
                    store, prep, packed, run_id=run_id, models_dir=settings.models_dir, duration_s=0.0,
                    promotion=decision,
                )  # fmt: skip
                lap("persist")
        raw.append(totals)
        shutil.rmtree(workdir, ignore_errors=True)
        log(f"stages repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {v:.3f}s" for k, v in totals.items()))
    med = {k: round(median(r[k] for r in raw), 4) for k in steps}
    around = sum(v for k, v in med.items() if k != "fit")
    return {
        "n_pairs": len(pairs),
        "cpu_median_s": med,
        "around_fit_s": round(around, 4),
        "around_fit_share_of_fit": round(around / med["fit"], 4) if med["fit"] else None,
        "raw": raw,
    }


def _prepared(template: Path, tmp: Path, pairs: Sequence[tuple[str, str]], target: int) -> list[Any]:

    from ml.src.data.local_db import SqliteStore
    from ml.src.training.pair_result import PairRequest
    from ml.src.training.pipeline import prepare_pair

    db = copy_sqlite(template, tmp / "prepared" / "store.sqlite3")
    settings = make_settings(tmp / "prepared", local_db=db)
    with SqliteStore(db) as store:
        return [
            prepare_pair(store, PairRequest(s, tf, target_bars=target, force=True), settings)
            for s, tf in pairs
        ]


def bench_artifact(
    template: Path, tmp: Path, pairs: Sequence[tuple[str, str]], repeats: int
) -> dict[str, Any]:
    """Bundle bytes and CPU: the former joblib.dump(compress=3) against pickle and zlib 1/3; write + fdatasync."""
    import io
    from datetime import UTC, datetime

    import joblib

    from ml.src.training import artifacts
    from ml.src.training.pipeline import build_bundle, fit_pair
    from ml.src.training.worker import library_versions

    settings = make_settings(tmp)
    out: dict[str, Any] = {}
    for prep in _prepared(template, tmp, pairs, TARGET_BARS):
        fitted = fit_pair(prep, settings)
        bundle = {
            "format": 1,
            **build_bundle(
                prep, fitted, run_id="r", trained_at=datetime.now(UTC), versions=library_versions()
            ),
        }

        def joblib3(b: dict[str, Any] = bundle) -> bytes:
            buf = io.BytesIO()
            joblib.dump(b, buf, compress=3)
            return buf.getvalue()

        variants: dict[str, Callable[[], bytes]] = {
            "joblib_zlib3 (before)": joblib3,
            "pickle, zlib stored (now)": lambda b=bundle: artifacts.pack_bundle(b, 0),
            "pickle, zlib 1": lambda b=bundle: artifacts.pack_bundle(b, 1),
            "pickle, zlib 3": lambda b=bundle: artifacts.pack_bundle(b, 3),
        }
        for name, fn in variants.items():
            cpu, write = [], []
            for rep in range(max(3, repeats)):
                t = time.thread_time()
                data = fn()
                cpu.append(time.thread_time() - t)
                t = time.perf_counter()
                artifacts.write_artifact(data, tmp / "artifact" / f"a{rep}.joblib")
                write.append(time.perf_counter() - t)
            cell = out.setdefault(name, {"bytes": [], "cpu_s": [], "write_fdatasync_s": []})
            cell["bytes"].append(len(data))
            cell["cpu_s"].append(median(cpu))
            cell["write_fdatasync_s"].append(median(write))
    shutil.rmtree(tmp / "artifact", ignore_errors=True)
    return {
        name: {
            "bytes_median": median(c["bytes"]),
            "cpu_median_s": round(median(c["cpu_s"]), 4),
            "write_fdatasync_median_s": round(median(c["write_fdatasync_s"]), 4),
        }
        for name, c in out.items()
    }


def bench_forest(template: Path, tmp: Path, sizes: Sequence[int], repeats: int) -> dict[str, Any]:
    """The forest alone (product settings, one thread): every row per tree against the per-tree cap."""
    import sklearn
    from sklearn.metrics import balanced_accuracy_score

    from ml.src.training.models import build_random_forest

    settings = make_settings(tmp)
    cap = settings.rf_sample_cap
    out: dict[str, Any] = {"cap": cap}
    for n in sizes:
        (prep,) = _prepared(template, tmp, [SIZE_PAIR], n)
        s = prep.split
        x, y = prep.x[s.train], prep.codes[s.train]
        cell: dict[str, Any] = {"n_train": len(y)}
        for label, max_samples in (("all_rows", None), (f"cap_{cap}", cap if 0 < cap < len(y) else None)):
            cpu = []
            for _ in range(repeats):
                model = build_random_forest(settings).set_params(max_samples=max_samples)
                t = time.thread_time()
                with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
                    model.fit(x, y)
                cpu.append(time.thread_time() - t)
            acc = balanced_accuracy_score(prep.codes[s.test], model.predict(prep.x[s.test]))
            cell[label] = {
                "cpu_median_s": round(median(cpu), 3),
                "test_balanced_accuracy": round(float(acc), 4),
            }
        out[str(n)] = cell
        log(f"forest {n}: {cell}")
    return out


def bench_dask(
    job: Job, pairs: Sequence[tuple[str, str]], tmp: Path, repeats: int, use_pairs_flag: bool
) -> dict[str, Any]:
    from tests.plugins.dask_cluster import local_cluster

    args = ["--target-bars", str(TARGET_BARS)]
    with local_cluster(tmp / "dask", 2) as cluster:
        import psutil

        pids = (cluster.scheduler.pid, *(p.pid for p in cluster.workers.values()))
        cjob = Job(job.env, job.workdir, job.prepare, extra_pids=pids)
        dask_cfg = Config(
            "dask",
            "product defaults on the cluster",
            {"ML_DASK_ADDRESS": cluster.address, **cluster.client_env},
            0,
        )
        raw: dict[str, list[dict[str, Any]]] = {"pool": [], "dask": []}
        for rep in range(repeats):
            raw["pool"].append(run_job(job, PRODUCT, pairs, args, use_pairs_flag))
            raw["dask"].append(run_job(cjob, dask_cfg, pairs, args, use_pairs_flag))
            log(
                f"dask repeat {rep + 1}/{repeats}: pool {raw['pool'][-1]['wall_s']:.2f}s, "
                f"dask {raw['dask'][-1]['wall_s']:.2f}s (cluster CPU {raw['dask'][-1]['cpu_cluster_s']:.2f}s)"
            )
        rss = {
            name: round(psutil.Process(p.pid).memory_info().rss / 2**20, 1)
            for name, p in cluster.workers.items()
            if p.poll() is None
        }
    identical = all(r["fingerprint"] == raw["pool"][0]["fingerprint"] for r in raw["pool"] + raw["dask"])
    return {
        "pool": {**summarise(raw["pool"]), "raw": [_strip(r) for r in raw["pool"]]},
        "dask": {**summarise(raw["dask"]), "raw": [_strip(r) for r in raw["dask"]]},
        "identical": identical,
        "dask_worker_rss_mb_at_end": rss,
    }


def bench_supabase(
    windows: Sequence[Window],
    plan: Sequence[tuple[str, str]],
    tmp: Path,
    args: argparse.Namespace,
    use_pairs_flag: bool,
) -> dict[str, Any]:
    import psycopg

    from ml.src.data.supabase_db import SupabaseStore

    stack = start_local_stack(REPO, timeout_s=600)
    try:
        with SupabaseStore(stack["SUPABASE_URL"], stack["SUPABASE_SERVICE_ROLE_KEY"]) as sb:
            t0 = time.perf_counter()
            load_windows(sb, windows)
            log(f"loaded {len(windows)} windows through PostgREST in {time.perf_counter() - t0:.1f}s")
        workdir = tmp / "job_sb"
        workdir.mkdir(parents=True, exist_ok=True)
        env = base_env()
        env.update(
            SUPABASE_URL=stack["SUPABASE_URL"],
            SUPABASE_SERVICE_ROLE_KEY=stack["SUPABASE_SERVICE_ROLE_KEY"],
            ML_MODELS_DIR=str(workdir / "models"),
        )

        def prepare() -> None:
            with psycopg.connect(stack["DATABASE_URL"], autocommit=True) as conn:
                tables = {
                    r[0]
                    for r in conn.execute(
                        "select tablename from pg_tables where schemaname = 'public'"
                    ).fetchall()
                }
                cache = [t for t in ("feature_cache", "feature_chunks") if t in tables]
                conn.execute(f"truncate {', '.join([*ML_TABLES, *cache])} cascade")
            shutil.rmtree(workdir / "models", ignore_errors=True)

        job = Job(env, workdir, prepare)
        cells = []
        for n in args.pair_counts:
            if n <= args.source_max_pairs:
                cells.append((f"source@{n}", SOURCE, plan[:n], ["--target-bars", str(TARGET_BARS)]))
            cells.append((f"product@{n}", PRODUCT, plan[:n], ["--target-bars", str(TARGET_BARS)]))
        return interleaved(cells, job, args.repeats, use_pairs_flag, "supabase")
    finally:
        stop_local_stack(stack, REPO)


if __name__ == "__main__":
    sys.exit(main())
