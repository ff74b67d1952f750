"""Pick the gradient-boosting backend (and the forest size) by measurement, on the shared real bars.

    .venv/bin/python scripts/bench_models.py                      # full: 6 pairs x 500/2,000/5,000 bars
    .venv/bin/python scripts/bench_models.py --quick --repeats 3  # smoke run

For every pair and window size the features are prepared once (`prepare_pair` on a temporary SQLite store
loaded from the CSVs); then, `--repeats` times, `fit_pair(prep, settings, n_threads=1)` is run for each
model configuration (the seed's hyper-parameters; only the backend / the forest size change):

    sklearn_gb  GradientBoostingClassifier (the seed) + RF 200
    hist_gb     HistGradientBoostingClassifier        + RF 200
    lightgbm    LGBMClassifier                        + RF 200
    lightgbm    LGBMClassifier                        + RF 100   ("rf100")
    lightgbm    as above with RF 200, but n_threads = os.cpu_count() (a check of the job's sequential path,
                which fits with every core; not a candidate)

Configurations are interleaved inside each repeat so machine noise hits them alike. Fit times are medians
over the repeats; accuracies are on the pair's test slice (every model is seeded, so they are identical
across repeats, which the script checks). Nothing is written inside the repository except --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_common import (
    DEFAULT_DATA_DIR,
    REPO,
    build_sqlite_template,
    copy_sqlite,
    csv_path,
    isolate_environment,
    machine_info,
    make_settings,
    median,
    parse_pair,
)

DEFAULT_SIZES: tuple[int, ...] = (500, 2000, 5000)
# Pairs with >= 5,200 bars (5,000 + 200 warm-up) covering m15, h1, h4 and d1.
DEFAULT_PAIRS: tuple[str, ...] = ("MSFT/m15", "QQQ/m15", "SPY/h1", "IBM/h1", "AAPL/h4", "SPY/d1")
QUICK_PAIRS: tuple[str, ...] = ("SPY/h1", "MSFT/m15")
QUICK_SIZES: tuple[int, ...] = (500, 2000)
BACKENDS: tuple[str, ...] = ("sklearn_gb", "hist_gb", "lightgbm")
SEED_GB = "sklearn_gb"


# ---------------------------------------------------------------------------------------------- benchmark
@dataclass(frozen=True)
class ModelConfig:
    name: str
    gb_backend: str
    rf_n_estimators: int
    n_threads: int = 1  # 0 = os.cpu_count(), what the job uses when it fits pairs one after another


# The seed's member hyper-parameters (the product's defaults are regularised since issue 9; see
# scripts/bench_quality.py): this benchmark compares backends at the seed's settings.
SEED_PARAMS: dict[str, Any] = {
    "gb_max_depth": 7,
    "gb_min_samples_leaf": 5,
    "rf_max_depth": 15,
    "rf_min_samples_split": 10,
    "rf_min_samples_leaf": 5,
    "class_weight": "none",
    "calibrate": False,
    "threshold_mode": "fixed",
}
ALL_CORES = "lightgbm_all_cores"
CONFIGS: tuple[ModelConfig, ...] = (
    ModelConfig("sklearn_gb", "sklearn_gb", 200),
    ModelConfig("hist_gb", "hist_gb", 200),
    ModelConfig("lightgbm", "lightgbm", 200),
    ModelConfig("lightgbm+rf100", "lightgbm", 100),
    # Not a candidate: checks what n_threads=os.cpu_count() (the job's sequential path) does to the same fit.
    ModelConfig(ALL_CORES, "lightgbm", 200, n_threads=0),
)


def bench_cell(prep: Any, tmp: Path, repeats: int) -> dict[str, Any]:
    """Fit every configuration `repeats` times on one prepared pair; raw samples, medians and accuracies."""
    from ml.src.training.pipeline import fit_pair

    settings = {
        c.name: make_settings(tmp, gb_backend=c.gb_backend, rf_n_estimators=c.rf_n_estimators, **SEED_PARAMS)
        for c in CONFIGS
    }
    samples: dict[str, dict[str, list[float]]] = {c.name: {"fit_rf": [], "fit_gb": []} for c in CONFIGS}
    acc: dict[str, dict[str, float]] = {}
    stable = True
    for _ in range(repeats):
        for c in CONFIGS:
            fitted = fit_pair(prep, settings[c.name], n_threads=c.n_threads or os.cpu_count() or 1)
            samples[c.name]["fit_rf"].append(fitted.timings["fit_rf"])
            samples[c.name]["fit_gb"].append(fitted.timings["fit_gb"])
            m = fitted.metrics
            now = {
                "rf": m["rf"]["test_balanced_accuracy"],
                "gb": m["gb"]["test_balanced_accuracy"],
                "ensemble": m["ensemble"]["test_balanced_accuracy"],
                "ensemble_valid": m["ensemble"]["valid_balanced_accuracy"],
                "majority": m["majority"]["test_balanced_accuracy"],
            }
            if c.name in acc and acc[c.name] != now:
                stable = False
            acc[c.name] = now
    rf200 = [
        t for c in CONFIGS if c.rf_n_estimators == 200 and c.n_threads == 1 for t in samples[c.name]["fit_rf"]
    ]
    return {
        "n_train": prep.split.n_train,
        "n_valid": prep.split.n_valid,
        "n_test": prep.split.n_test,
        "fit_gb_median_s": {b: median(samples[b]["fit_gb"]) for b in (*BACKENDS, ALL_CORES)},
        "fit_rf_median_s": {"200": median(rf200), "100": median(samples["lightgbm+rf100"]["fit_rf"])},
        "test_balanced_accuracy": {
            **{f"gb_{b}": acc[b]["gb"] for b in BACKENDS},
            **{f"ensemble_{b}": acc[b]["ensemble"] for b in BACKENDS},
            "rf_200": acc["lightgbm"]["rf"],
            "rf_100": acc["lightgbm+rf100"]["rf"],
            "ensemble_lightgbm_rf100": acc["lightgbm+rf100"]["ensemble"],
            "majority_baseline": acc["lightgbm"]["majority"],
        },
        "accuracy_identical_across_repeats": stable,
        "samples_s": samples,
    }


def summarise(cells: list[dict[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """Per window size: total-time speed-ups (sum of per-pair medians) and paired accuracy differences."""
    out: dict[str, Any] = {}
    for size in [*sizes, "all"]:
        rows = [c for c in cells if c.get("ok") and (size == "all" or c["target_bars"] == size)]
        if not rows:
            continue
        gb_total = {b: sum(r["fit_gb_median_s"][b] for r in rows) for b in BACKENDS}
        rf_total = {n: sum(r["fit_rf_median_s"][n] for r in rows) for n in ("200", "100")}

        def diffs(key: str, ref: str, rows: list[dict[str, Any]] = rows) -> dict[str, float]:
            d = [100 * (r["test_balanced_accuracy"][key] - r["test_balanced_accuracy"][ref]) for r in rows]
            return {"mean_pts": statistics.fmean(d), "min_pts": min(d), "max_pts": max(d)}

        def mean_acc(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return statistics.fmean(r["test_balanced_accuracy"][key] for r in rows)

        per_pair_speedup = {
            b: [r["fit_gb_median_s"][SEED_GB] / r["fit_gb_median_s"][b] for r in rows] for b in BACKENDS
        }
        out[str(size)] = {
            "n_cells": len(rows),
            "fit_gb_total_s": gb_total,
            "gb_speedup_vs_sklearn_gb": {b: gb_total[SEED_GB] / gb_total[b] for b in BACKENDS},
            "gb_speedup_per_pair_range": {b: [min(v), max(v)] for b, v in per_pair_speedup.items()},
            "fit_rf_total_s": rf_total,
            "rf100_speedup": rf_total["200"] / rf_total["100"],
            "lightgbm_all_cores_total_s": sum(r["fit_gb_median_s"][ALL_CORES] for r in rows),
            "lightgbm_all_cores_vs_one_thread": sum(r["fit_gb_median_s"][ALL_CORES] for r in rows)
            / gb_total["lightgbm"],
            "mean_test_balanced_accuracy": {
                **{f"gb_{b}": mean_acc(f"gb_{b}") for b in BACKENDS},
                **{f"ensemble_{b}": mean_acc(f"ensemble_{b}") for b in BACKENDS},
                "rf_200": mean_acc("rf_200"),
                "rf_100": mean_acc("rf_100"),
                "ensemble_lightgbm_rf100": mean_acc("ensemble_lightgbm_rf100"),
                "majority_baseline": mean_acc("majority_baseline"),
            },
            "accuracy_diff_vs_seed": {
                **{f"gb_{b}": diffs(f"gb_{b}", f"gb_{SEED_GB}") for b in BACKENDS if b != SEED_GB},
                **{
                    f"ensemble_{b}": diffs(f"ensemble_{b}", f"ensemble_{SEED_GB}")
                    for b in BACKENDS
                    if b != SEED_GB
                },
                "rf_100_vs_rf_200": diffs("rf_100", "rf_200"),
                "ensemble_lightgbm_rf100_vs_lightgbm_rf200": diffs(
                    "ensemble_lightgbm_rf100", "ensemble_lightgbm"
                ),
                "ensemble_lightgbm_rf100_vs_seed": diffs("ensemble_lightgbm_rf100", f"ensemble_{SEED_GB}"),
            },
        }
    return out


def run(
    pairs: Sequence[tuple[str, str]],
    sizes: Sequence[int],
    repeats: int,
    data_dir: Path,
    tmp: Path,
    log: Any = print,
) -> dict[str, Any]:
    from ml.src.data.local_db import SqliteStore
    from ml.src.training.pair_result import PairRequest
    from ml.src.training.pipeline import PairFailure, prepare_pair

    paths = sorted({csv_path(data_dir, s, tf) for s, tf in pairs})
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such bar file(s): {', '.join(missing)}")
    template = tmp / "bars.sqlite3"
    t0 = time.perf_counter()
    rows = build_sqlite_template(paths, template)
    log(f"loaded {len(paths)} CSV file(s) into a temporary SQLite store in {time.perf_counter() - t0:.1f}s")
    store = SqliteStore(copy_sqlite(template, tmp / "store.sqlite3"))
    prep_settings = make_settings(tmp)
    cells: list[dict[str, Any]] = []
    try:
        for size in sizes:
            for symbol, timeframe in pairs:
                label = f"{symbol}/{timeframe}@{size}"
                cell: dict[str, Any] = {"pair": f"{symbol}/{timeframe}", "target_bars": size}
                try:
                    prep = prepare_pair(
                        store, PairRequest(symbol, timeframe, target_bars=size), prep_settings
                    )
                except PairFailure as exc:
                    cell.update(ok=False, error=str(exc))
                    cells.append(cell)
                    log(f"{label}: skipped: {exc}")
                    continue
                t0 = time.perf_counter()
                cell.update(ok=True, n_bars=prep.n_bars, **bench_cell(prep, tmp, repeats))
                cells.append(cell)
                g, a = cell["fit_gb_median_s"], cell["test_balanced_accuracy"]
                log(
                    f"{label}: n_train={cell['n_train']} gb fit median sklearn {g['sklearn_gb']:.3f}s "
                    f"hist {g['hist_gb']:.3f}s lgbm {g['lightgbm']:.3f}s | ens bal.acc "
                    f"{a['ensemble_sklearn_gb']:.3f}/{a['ensemble_hist_gb']:.3f}/{a['ensemble_lightgbm']:.3f} "
                    f"({time.perf_counter() - t0:.0f}s)"
                )
    finally:
        store.close()
    return {"rows_loaded": rows, "cells": cells, "summary": summarise(cells, sizes)}


# ---------------------------------------------------------------------------------------------- reporting
def format_tables(result: dict[str, Any]) -> str:
    lines: list[str] = []
    lines.append(
        "Per pair: gb fit time, median of repeats (s), n_threads=1 (lgbm* = lightgbm with n_threads="
        f"{os.cpu_count()}); test balanced accuracy (%)"
    )
    header = (
        f"{'pair':<10} {'bars':>5} {'n_tr':>5} | {'skl_gb':>7} {'hist':>7} {'lgbm':>7} | "
        f"{'lgbm*':>7} | {'rf200':>6} {'rf100':>6} | {'gb:skl':>6} {'hist':>6} {'lgbm':>6} | "
        f"{'ens:skl':>7} {'hist':>6} {'lgbm':>6} {'lg+rf100':>8} | {'rf200':>6} {'rf100':>6} {'major':>6}"
    )
    lines += [header, "-" * len(header)]
    for c in result["cells"]:
        if not c.get("ok"):
            lines.append(f"{c['pair']:<10} {c['target_bars']:>5} skipped: {c.get('error')}")
            continue
        g, r, a = c["fit_gb_median_s"], c["fit_rf_median_s"], c["test_balanced_accuracy"]
        lines.append(
            f"{c['pair']:<10} {c['target_bars']:>5} {c['n_train']:>5} | {g['sklearn_gb']:7.3f} {g['hist_gb']:7.3f} "
            f"{g['lightgbm']:7.3f} {g[ALL_CORES]:7.3f} | {r['200']:6.3f} {r['100']:6.3f} | {100 * a['gb_sklearn_gb']:6.1f} "
            f"{100 * a['gb_hist_gb']:6.1f} {100 * a['gb_lightgbm']:6.1f} | {100 * a['ensemble_sklearn_gb']:7.1f} "
            f"{100 * a['ensemble_hist_gb']:6.1f} {100 * a['ensemble_lightgbm']:6.1f} "
            f"{100 * a['ensemble_lightgbm_rf100']:8.1f} | {100 * a['rf_200']:6.1f} {100 * a['rf_100']:6.1f} "
            f"{100 * a['majority_baseline']:6.1f}"
        )
    lines.append("")
    lines.append(
        "Summary per window size (speed-up = sum over pairs of median fit times, sklearn_gb / backend;"
    )
    lines.append("accuracy deltas = mean over pairs of (x - seed) in points, [min, max])")
    for size, s in result["summary"].items():
        sp, d, m = s["gb_speedup_vs_sklearn_gb"], s["accuracy_diff_vs_seed"], s["mean_test_balanced_accuracy"]
        rng = s["gb_speedup_per_pair_range"]

        def fmt(x: dict[str, float]) -> str:
            return f"{x['mean_pts']:+5.1f} [{x['min_pts']:+5.1f}, {x['max_pts']:+5.1f}]"

        lines.append(f"-- target_bars={size} ({s['n_cells']} pair(s))")
        lines.append(
            f"   gb fit total: sklearn_gb {s['fit_gb_total_s']['sklearn_gb']:.2f}s, hist_gb "
            f"{s['fit_gb_total_s']['hist_gb']:.2f}s ({sp['hist_gb']:.1f}x, per pair {rng['hist_gb'][0]:.1f}-"
            f"{rng['hist_gb'][1]:.1f}x), lightgbm {s['fit_gb_total_s']['lightgbm']:.2f}s ({sp['lightgbm']:.1f}x, "
            f"per pair {rng['lightgbm'][0]:.1f}-{rng['lightgbm'][1]:.1f}x)"
        )
        lines.append(
            f"   rf fit total: 200 trees {s['fit_rf_total_s']['200']:.2f}s, 100 trees "
            f"{s['fit_rf_total_s']['100']:.2f}s ({s['rf100_speedup']:.2f}x); lightgbm with n_threads="
            f"{os.cpu_count()} {s['lightgbm_all_cores_total_s']:.2f}s = {s['lightgbm_all_cores_vs_one_thread']:.2f}x "
            "its one-thread time"
        )
        lines.append(
            f"   mean test bal.acc: gb skl {100 * m['gb_sklearn_gb']:.1f} hist {100 * m['gb_hist_gb']:.1f} "
            f"lgbm {100 * m['gb_lightgbm']:.1f} | ensemble skl {100 * m['ensemble_sklearn_gb']:.1f} hist "
            f"{100 * m['ensemble_hist_gb']:.1f} lgbm {100 * m['ensemble_lightgbm']:.1f} lgbm+rf100 "
            f"{100 * m['ensemble_lightgbm_rf100']:.1f} | rf200 {100 * m['rf_200']:.1f} rf100 "
            f"{100 * m['rf_100']:.1f} | majority {100 * m['majority_baseline']:.1f}"
        )
        lines.append(f"   gb  hist - skl {fmt(d['gb_hist_gb'])}   lgbm - skl {fmt(d['gb_lightgbm'])}")
        lines.append(
            f"   ens hist - skl {fmt(d['ensemble_hist_gb'])}   lgbm - skl {fmt(d['ensemble_lightgbm'])}"
        )
        lines.append(
            f"   rf100 - rf200 {fmt(d['rf_100_vs_rf_200'])}   ens lgbm+rf100 - lgbm+rf200 "
            f"{fmt(d['ensemble_lightgbm_rf100_vs_lightgbm_rf200'])}   ens lgbm+rf100 - seed "
            f"{fmt(d['ensemble_lightgbm_rf100_vs_seed'])}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench_models.py",
        description=(
            "Compare the gradient-boosting backends (sklearn_gb = the seed, hist_gb, lightgbm) and RandomForest "
            "200 vs 100 trees on real bars: median fit time (one thread) and test balanced accuracy of each "
            "member and of the ensemble. Features are prepared once per pair and window; the fits are repeated."
        ),
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder with the shared SYMBOL_TF.csv bar files (default: <repo>/../shared/data)",
    )
    p.add_argument(
        "--pairs",
        nargs="+",
        type=parse_pair,
        metavar="SYMBOL/TF",
        help=f"pairs to benchmark (default: {' '.join(DEFAULT_PAIRS)}; --quick: {' '.join(QUICK_PAIRS)})",
    )
    p.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        metavar="N",
        help="target bars per training window (default: 500 2000 5000; --quick: 500 2000)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="fits per configuration and pair; times are the median (default: 3, minimum 1)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 2 pairs, 500 and 2,000 bars")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench_results" / "models.json",
        help="where to write the JSON results (default: bench_results/models.json)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    pairs = args.pairs or [parse_pair(p) for p in (QUICK_PAIRS if args.quick else DEFAULT_PAIRS)]
    sizes = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    data_dir: Path = args.data_dir.resolve()
    if not data_dir.is_dir():
        print(f"error: --data-dir {data_dir} is not a folder", file=sys.stderr)
        return 2
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_models_") as tmp_name:
        tmp = Path(tmp_name)
        removed = isolate_environment(tmp)
        if removed:
            print(f"note: ignoring {', '.join(removed)} from the environment", file=sys.stderr)
        info = machine_info()
        print(
            f"machine: {info['nproc']} core(s), {info['cpu_model']}; repeats={args.repeats}; "
            f"pairs={' '.join(f'{s}/{t}' for s, t in pairs)}; sizes={sizes}",
            file=sys.stderr,
        )
        try:
            result = run(
                pairs,
                sizes,
                args.repeats,
                data_dir,
                tmp,
                log=lambda msg: print(msg, file=sys.stderr, flush=True),
            )
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    payload = {
        "benchmark": "models",
        "started_at_unix": started,
        "elapsed_s": round(time.time() - started, 1),
        "machine": info,
        "repeats": args.repeats,
        "n_threads": 1,
        "pairs": [f"{s}/{t}" for s, t in pairs],
        "sizes": sizes,
        "data_dir": str(data_dir),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        **result,
    }
    print(format_tables(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0 if all(c.get("ok") for c in result["cells"]) else 1


if __name__ == "__main__":
    sys.exit(main())
