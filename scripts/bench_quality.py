"""Model quality by walk-forward, and member fit time, before and after, on the shared real bars.

    .venv/bin/python scripts/bench_quality.py --out bench_results/quality.json          # everything
    .venv/bin/python scripts/bench_quality.py --configs chosen fixed_labels --no-before  # a subset
    .venv/bin/python scripts/bench_quality.py --pairs SPY/d1 AAPL/h4 --quick             # smoke run

Quality. Every shared pair (one SYMBOL_TF.csv each) is prepared once at --target-bars (2,000) and evaluated by
the product's own walk_forward() with --folds (4) expanding-window folds, once per configuration (a few
Settings overrides, CONFIGS below). Every fold's test block is scored by scoring.score_slice: balanced accuracy,
log loss and IC of the ensemble, the equal-weight blend and each member, beside the majority, persistence and
prior baselines. Per pair the fold scores are averaged; the tables give the mean over pairs and paired
differences between configurations with their standard errors over pairs.

"before" is the code at --before REF (default: the commit before issue 9), run in a temporary git worktree
in a child process: its own features (200-bar warm-up), labels, members and weights, exactly as its
walk_forward fitted them (checked against its own walk_forward on the first pairs); the child saves each
fold's test probabilities and this script scores them with the same functions as the other configurations
(classes by argmax, as that code decided them). Same windows, same fold rows: paired row for row.

Fit time. The members of a 500-bar pair (fit on train, predict valid and test, fit the weights), today's
(REF's parameters, rebuilt here with the same library calls) and the chosen defaults' (pipeline.fit_ensemble,
refit included if configured), interleaved in one process, one thread, --timing-repeats times; medians.

Nothing is written inside the repository except --out. ML_* / SUPABASE_* variables are ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_common import (
    DEFAULT_DATA_DIR,
    REPO,
    build_sqlite_template,
    csv_path,
    isolate_environment,
    label_free,
    machine_info,
    make_settings,
    mean_se,
    median,
    parse_pair,
)

BEFORE_REF = "6ee7925"  # main before issue 9: seed-style members, direction-score Ridge, fixed labels
TIMING_PAIRS = ("MSFT/m15", "QQQ/m15", "SPY/h1", "IBM/h1", "AAPL/h4", "SPY/d1")
NAMES = ("ensemble", "equal_weight", "rf", "gb", "majority", "persistence", "prior")
MODELS = ("ensemble", "equal_weight", "rf", "gb")

# Today's members (REF): the parameters its Settings defaulted to.
TODAY_MEMBERS: dict[str, Any] = {
    "class_weight": "none",  # one weighting for both here (today: balanced forest, unweighted boosting)
    "rf_n_estimators": 100,
    "rf_max_depth": 15,
    "rf_min_samples_split": 10,
    "rf_min_samples_leaf": 5,
    "gb_n_estimators": 100,
    "gb_learning_rate": 0.05,
    "gb_max_depth": 7,
    "gb_min_samples_leaf": 5,
}

# Settings overrides per configuration; "chosen" is the shipped defaults, the others change one thing.
CONFIGS: dict[str, dict[str, Any]] = {
    "chosen": {},
    # labels
    "fixed_labels": {"threshold_mode": "fixed"},
    "quantile_labels": {"threshold_mode": "quantile"},
    "vol_k0.3": {"threshold_mode": "vol", "threshold_k": 0.3},
    "vol_k0.7": {"threshold_mode": "vol", "threshold_k": 0.7},
    # weights and calibration
    "weights_argmin": {"ridge_se_rule": 0.0},
    "weights_se2": {"ridge_se_rule": 2.0},
    "weights_plain_brier": {"ridge_balanced": False},
    "no_calibration": {"calibrate": False},
    "refit_on_valid": {"refit_on_valid": True},
    # members
    "class_weight_balanced": {"class_weight": "balanced"},
    "rf100": {"rf_n_estimators": 100},
    "gb_depth2": {"gb_max_depth": 2},
    "gb_200_lr0.025": {"gb_n_estimators": 200, "gb_learning_rate": 0.025},
    "leaf20": {"rf_min_samples_leaf": 20, "gb_min_samples_leaf": 20},
    "leaf100": {"rf_min_samples_leaf": 100, "gb_min_samples_leaf": 100},
    "today_members_fixed": {**TODAY_MEMBERS, "threshold_mode": "fixed"},
    # issue 20: labels against ex-ante volatility, volatility features, market context (and combinations)
    "baseline": {},
    "ex_ante_vol": {"threshold_mode": "ex_ante_vol"},
    "vol_features": {"vol_features": True},
    "context_gspc": {"context_symbols": ["GSPC"]},
    "context_spy": {"context_symbols": ["SPY"]},
    "ex_ante_vol+vol_features": {"threshold_mode": "ex_ante_vol", "vol_features": True},
    "vol_features+context_gspc": {"vol_features": True, "context_symbols": ["GSPC"]},
    "vol_features+context_spy": {"vol_features": True, "context_symbols": ["SPY"]},
    "ex_ante_vol+vol_features+context_gspc": {
        "threshold_mode": "ex_ante_vol",
        "vol_features": True,
        "context_symbols": ["GSPC"],
    },
}
SKILL_CONFIGS = tuple(
    k for k in CONFIGS if k == "baseline" or "ex_ante" in k or "vol_f" in k or "context" in k
)
# Settings that change what prepare_pair builds (the columns of x); the others only change the fit.
PREP_KEYS = ("vol_features", "context_symbols")


# --------------------------------------------------------------------------------------------- after (HEAD)
def prep_key(overrides: dict[str, Any]) -> tuple:
    return tuple((k, json.dumps(overrides.get(k))) for k in PREP_KEYS)


def prepare_all(
    pairs: Sequence[tuple[str, str]],
    store: Any,
    tmp: Path,
    target: int,
    log: Callable,
    overrides: dict[str, Any] | None = None,
    as_of: Any = None,
) -> dict:
    from ml.src.training.pipeline import PairFailure, PairRequest, PairSkipped, prepare_pair

    # the window's x / returns / ts do not depend on the label mode; ex_ante_vol also gives each row's scale
    extra = {k: v for k, v in (overrides or {}).items() if k in PREP_KEYS}
    settings = make_settings(tmp, threshold_mode="ex_ante_vol", **extra)
    preps: dict[str, Any] = {}
    for symbol, tf in pairs:
        try:
            preps[f"{symbol}/{tf}"] = prepare_pair(
                store, PairRequest(symbol, tf, target_bars=target, as_of=as_of), settings
            )
        except (PairFailure, PairSkipped) as exc:
            log(f"{symbol}/{tf}: not prepared: {exc}")
            continue
        for note in preps[f"{symbol}/{tf}"].notes:
            log(note)
    return preps


def pair_summary(folds: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per name: mean over ok folds of balanced accuracy, log loss, IC."""
    ok = [f for f in folds if "error" not in f]
    out: dict[str, dict[str, float | None]] = {}
    for name in NAMES:
        out[name] = {
            key: mean_se([f["metrics"][name].get(key) for f in ok])[0]
            for key in ("balanced_accuracy", "log_loss", "ic")
        }
    return out


def settle(rows: dict[str, Any], fdr: float) -> None:
    """The verdicts of one configuration's pairs under false-discovery control, as a run settles them: BH
    q-values across the pairs, skill needs q <= fdr (ml.src.training.verdict.apply_fdr)."""
    from ml.src.training.verdict import apply_fdr_dicts

    judged = {label: e["verdict"] for label, e in rows.items() if isinstance(e.get("verdict"), dict)}
    for label, verdict in apply_fdr_dicts(judged, fdr).items():
        rows[label]["verdict"] = verdict


def evaluate_config(
    preps: dict[str, Any], name: str, overrides: dict, folds: int, tmp: Path, log: Callable
) -> dict:
    from ml.src.training.scoring import concat
    from ml.src.training.verdict import judge
    from ml.src.training.walk_forward import walk_forward

    settings = make_settings(tmp, **overrides)
    ex_ante = settings.threshold_mode == "ex_ante_vol"
    rows: dict[str, Any] = {}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for label, prep in preps.items():
        h = prep.spec.horizon_bars
        c0 = time.process_time()
        try:
            wf = walk_forward(
                prep.x,
                prep.returns,
                prep.ts,
                folds=folds,
                horizon=h,
                threshold=prep.spec.threshold,
                settings=settings,
                scale=prep.scale if ex_ante else None,
            )
        except ValueError as exc:
            rows[label] = {"ok": False, "error": str(exc)}
            continue
        folds_out = wf.report["folds"]
        ok_folds = [f for f in folds_out if "error" not in f]
        entry: dict[str, Any] = {
            "ok": bool(wf.pooled),
            "n_folds_ok": len(wf.pooled),
            "cpu_s": time.process_time() - c0,
            "summary": pair_summary(folds_out),
            "alphas": [f.get("alpha") for f in folds_out if "error" not in f],
            "weights_rf": [f["weights"]["rf"] for f in folds_out if "error" not in f],
            "test_class_shares": [f["class_shares"]["test"] for f in ok_folds],
            # how far each test block's class mix is from its fit rows' (mean absolute share difference)
            "share_drift": mean_se(
                [
                    statistics.fmean(
                        abs(f["class_shares"]["test"][c] - f["class_shares"]["fit"][c])
                        for c in f["class_shares"]["fit"]
                    )
                    for f in ok_folds
                ]
            )[0],
            "features": len(prep.feature_names),
            "context": list(prep.context),
        }
        if wf.pooled:
            entry["pooled"] = label_free(concat(wf.pooled), h)
            entry["verdict"] = judge(
                concat(wf.pooled), horizon=h, z=settings.verdict_z, basis="walk_forward"
            ).to_dict()
        rows[label] = entry
    settle(rows, settings.verdict_fdr)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    log(f"config {name}: {len(preps)} pairs in {wall:.0f}s wall, {cpu:.0f}s CPU")
    return {"overrides": overrides, "pairs": rows, "wall_s": wall, "cpu_s": cpu}


def evaluate_pooled(preps: dict[str, Any], folds: int, tmp: Path, log: Callable) -> dict:
    """Issue 20 item 3: per timeframe one model on the pooled rows of every pair known by each fold's fit end,
    scored per pair on its own test blocks (the same rows and labels as its local walk-forward)."""
    from ml.src.training.pooled import PoolMember, pooled_walk_forward
    from ml.src.training.scoring import concat

    settings = make_settings(tmp)
    members = {
        label: PoolMember(label, p.x, p.returns, p.ts, p.spec.horizon_bars, p.spec.threshold, p.scale)
        for label, p in preps.items()
    }
    rows: dict[str, Any] = {}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for label, target in members.items():
        tf = label.split("/")[1]
        others = [m for k, m in members.items() if k != label and k.split("/")[1] == tf]
        pooled, info = pooled_walk_forward(target, others, folds, settings)
        ok = [i for i in info if "error" not in i]
        entry: dict[str, Any] = {
            "ok": bool(pooled),
            "n_folds_ok": len(pooled),
            "folds": info,
            "n_fit_other": [i["n_fit_other"] for i in ok],
        }
        if pooled:
            entry["pooled"] = label_free(concat(pooled), target.horizon)
        rows[label] = entry
        log(f"pooled {label}: {len(pooled)} folds, other rows per fold {entry['n_fit_other']}")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    log(f"config pooled: {len(preps)} pairs in {wall:.0f}s wall, {cpu:.0f}s CPU")
    return {"overrides": {"pooled": True}, "pairs": rows, "wall_s": wall, "cpu_s": cpu}


# ------------------------------------------------------------------------------------------- before (REF)
CHILD = textwrap.dedent(
    r"""
    import os, pickle, sys, time
    from pathlib import Path
    import numpy as np
    from config.settings import Settings
    from ml.src.data.local_db import SqliteStore
    from ml.src.data.load_bars import load_file
    from ml.src.training.labels import label_codes, thresholds_for
    from ml.src.training.metrics import empty_classes, label_metrics, majority_class
    from ml.src.training.models import fit_ensemble
    from ml.src.training.pipeline import PairFailure, PairRequest, prepare_pair
    from ml.src.training.walk_forward import fold_bounds, walk_forward
    from ml.src.training.weights import blend

    args = pickle.loads(bytes.fromhex(sys.argv[1]))
    tmp = Path(args["tmp"])
    settings = Settings(_env_file=None, local_db=tmp / "x.sqlite3", models_dir=tmp / "m")
    store = SqliteStore(tmp / "before.sqlite3")
    for path in args["csvs"]:
        load_file(store, Path(path), None, None)
    out = {}
    t_start = time.process_time()
    for k, (symbol, tf) in enumerate(args["pairs"]):
        label = f"{symbol}/{tf}"
        try:
            prep = prepare_pair(store, PairRequest(symbol, tf, target_bars=args["target"]), settings)
        except PairFailure as exc:
            out[label] = {"error": str(exc)}
            continue
        h, x, returns = prep.spec.horizon_bars, prep.x, prep.returns
        try:
            bounds = fold_bounds(len(returns), args["folds"], h, settings.min_rows_per_split)
        except ValueError as exc:
            out[label] = {"error": str(exc)}
            continue
        folds = []
        for start, stop in bounds:  # walk_forward.run_fold of this commit, keeping the probabilities
            history = start - h
            n_fit = int((history - h) * 0.75)
            fit, valid, test = slice(0, n_fit), slice(n_fit + h, history), slice(start, stop)
            if min(n_fit, history - n_fit - h) < settings.min_rows_per_split:
                folds.append({"error": "short history"})
                continue
            thr = thresholds_for(settings.threshold_mode, returns[fit], prep.spec.threshold)
            codes = label_codes(returns, thr)
            if empty_classes(codes[fit]):
                folds.append({"error": "empty class in fit rows"})
                continue
            res = fit_ensemble(x, codes, fit, valid, {"valid": valid, "test": test}, settings, 1)
            p = res.probas["test"]
            counts = np.bincount(codes[fit], minlength=3).astype(float)
            folds.append({
                "start": start, "stop": stop,
                "codes": codes[: stop].astype(np.int8),
                "rf": p["rf"], "gb": p["gb"],
                "ensemble": blend(p, res.weights),
                "equal_weight": blend(p, {"rf": 0.5, "gb": 0.5}),
                "prior": counts / counts.sum(),
                "majority": majority_class(codes[fit]),
                "weights": res.weights,
                "own_balanced_accuracy": label_metrics(codes[test], blend(p, res.weights).argmax(axis=1))["balanced_accuracy"],
            })
        entry = {"h": h, "returns": returns, "folds": folds, "n_rows": len(returns), "ts_end": prep.ts.iloc[-1].isoformat()}
        if k < args["check"]:  # this replica of run_fold gives what the commit's own walk_forward reports
            own = walk_forward(x, returns, prep.ts, folds=args["folds"], horizon=h, threshold=prep.spec.threshold, settings=settings)
            mine = [f.get("own_balanced_accuracy") for f in folds]
            theirs = [f.get("test_balanced_accuracy") for f in own["folds"]]
            entry["check"] = {"replica": mine, "walk_forward": theirs, "equal": mine == theirs}
        out[label] = entry
        print(f"before {label}: {len(folds)} folds", file=sys.stderr, flush=True)
    out["_cpu_s"] = time.process_time() - t_start
    Path(args["out"]).write_bytes(pickle.dumps(out))
    """
)


def run_before(
    ref: str,
    pairs: Sequence[tuple[str, str]],
    data_dir: Path,
    target: int,
    folds: int,
    tmp: Path,
    log: Callable,
) -> dict:
    worktree = tmp / "before_src"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), ref],
        check=True,
        capture_output=True,
    )
    try:
        out = tmp / "before.pkl"
        args = {
            "tmp": str(tmp),
            "csvs": [str(csv_path(data_dir, s, t)) for s, t in pairs],
            "pairs": list(pairs),
            "target": target,
            "folds": folds,
            "out": str(out),
            "check": 3,
        }
        script = tmp / "before_child.py"
        script.write_text(CHILD)
        wall0 = time.perf_counter()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "SUPABASE_"))}
        env["PYTHONPATH"] = str(worktree)  # REF's own code first, not this checkout's (installed editable)
        subprocess.run(
            [sys.executable, str(script), pickle.dumps(args).hex()], cwd=worktree, env=env, check=True
        )
        result = pickle.loads(out.read_bytes())
        result["_wall_s"] = time.perf_counter() - wall0
        log(
            f"before ({ref}): {len(pairs)} pairs in {result['_wall_s']:.0f}s wall, {result['_cpu_s']:.0f}s CPU"
        )
        return result
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], capture_output=True
        )


def score_before(raw: dict) -> dict:
    """The REF folds scored by this code's scoring functions (classes by argmax, as REF decided them)."""
    import numpy as np

    from ml.src.training.metrics import persistence_predictions
    from ml.src.training.scoring import SlicePredictions, concat, score_slice
    from ml.src.training.verdict import judge

    rows: dict[str, Any] = {}
    for label, entry in raw.items():
        if label.startswith("_"):
            continue
        if "error" in entry:
            rows[label] = {"ok": False, "error": entry["error"]}
            continue
        h, folds_out, pooled = entry["h"], [], []
        for f in entry["folds"]:
            if "error" in f:
                folds_out.append(f)
                continue
            test = slice(f["start"], f["stop"])
            n = f["stop"] - f["start"]
            probas = {k: f[k] for k in MODELS}
            probas["prior"] = np.tile(f["prior"], (n, 1))
            preds = {k: p.argmax(axis=1) for k, p in probas.items()}
            preds["prior"] = preds["majority"] = np.full(n, f["majority"])
            preds["persistence"] = persistence_predictions(f["codes"], test, h)
            sp = SlicePredictions(
                rows=np.arange(f["start"], f["stop"]),
                codes=f["codes"][test].astype(np.int64),
                returns=entry["returns"][test],
                probas=probas,
                preds=preds,
            )
            pooled.append(sp)
            folds_out.append(
                {
                    "metrics": score_slice(sp, horizon=h),
                    "weights": f["weights"],
                    "alpha": None,
                }
            )
        rows[label] = {
            "ok": bool(pooled),
            "n_folds_ok": len(pooled),
            "summary": pair_summary(folds_out),
            "weights_rf": [f["weights"]["rf"] for f in folds_out if "error" not in f],
            "check": entry.get("check"),
        }
        if pooled:
            rows[label]["verdict"] = judge(concat(pooled), horizon=h, z=2.0, basis="walk_forward").to_dict()
    settle(rows, 0.1)
    return {
        "overrides": {"ref": "before"},
        "pairs": rows,
        "wall_s": raw.get("_wall_s"),
        "cpu_s": raw.get("_cpu_s"),
    }


# ------------------------------------------------------------------------------------------------ fit time
def today_fit(prep: Any) -> None:
    """REF's fit_ensemble for one pair, with REF's default parameters (same library calls)."""
    import numpy as np
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import Ridge

    s = prep.split
    x, y = prep.x, prep.codes
    models = {
        "rf": RandomForestClassifier(
            n_estimators=100,
            max_depth=15,
            min_samples_split=10,
            min_samples_leaf=5,
            class_weight="balanced",
            random_state=42,
            n_jobs=1,
        ),
        "gb": LGBMClassifier(
            n_estimators=100,
            learning_rate=0.05,
            max_depth=7,
            num_leaves=128,
            min_child_samples=5,
            random_state=42,
            n_jobs=1,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        ),
    }
    direction = np.array([-1.0, 0.0, 1.0])
    scores = {}
    for name, m in models.items():
        m.fit(x[s.train], y[s.train])
        scores[name] = m.predict_proba(x[s.valid]) @ direction
        m.predict_proba(x[s.test])
    Ridge(alpha=1.0, positive=True).fit(np.column_stack(list(scores.values())), direction[y[s.valid]])


def time_fits(store: Any, tmp: Path, repeats: int, log: Callable) -> dict:
    from threadpoolctl import threadpool_limits

    from ml.src.training.models import fit_ensemble
    from ml.src.training.pipeline import PairRequest, prepare_pair

    settings = make_settings(tmp)
    # the other refit choice, timed beside the chosen one (the default counts whichever it is)
    other = make_settings(tmp, refit_on_valid=not settings.refit_on_valid)
    variants = {"chosen": settings, "refit" if not settings.refit_on_valid else "no_refit": other}
    cells = []
    for text in TIMING_PAIRS:
        symbol, tf = parse_pair(text)
        prep = prepare_pair(store, PairRequest(symbol, tf, target_bars=500), settings)
        s = prep.split
        samples: dict[str, list[float]] = {"today": [], **{k: [] for k in variants}}
        for _ in range(repeats):
            with threadpool_limits(limits=1):
                t0 = time.perf_counter()
                today_fit(prep)
                samples["today"].append(time.perf_counter() - t0)
            for name, st in variants.items():
                t0 = time.perf_counter()
                fit_ensemble(
                    prep.x, prep.codes, s.train, s.valid, {"test": s.test}, st, purge=prep.spec.horizon_bars
                )
                samples[name].append(time.perf_counter() - t0)
        cell = {
            "pair": text,
            "n_train": s.n_train,
            **{f"{k}_s": median(v) for k, v in samples.items()},
            "samples_s": samples,
        }
        cells.append(cell)
        log(f"fit time {text}: " + ", ".join(f"{k} {median(v):.3f}s" for k, v in samples.items()))
    totals = {k: sum(c[f"{k}_s"] for c in cells) for k in samples}
    return {
        "cells": cells,
        "today_total_s": totals["today"],
        "chosen_total_s": totals["chosen"],
        "totals_s": totals,
        "ratio": totals["chosen"] / totals["today"],
        "refit_on_valid": settings.refit_on_valid,
    }


# --------------------------------------------------------------------------------------------- reporting
def aggregate(results: dict[str, dict], reference: str | None) -> dict:
    """Means over pairs, and paired differences (ensemble vs equal weights, config vs reference)."""
    out: dict[str, Any] = {}
    for cfg, res in results.items():
        pairs = {k: v for k, v in res["pairs"].items() if v.get("ok")}
        agg: dict[str, Any] = {"n_pairs": len(pairs)}
        for name in NAMES:
            for key in ("balanced_accuracy", "log_loss", "ic"):
                m, se, n = mean_se([p["summary"][name][key] for p in pairs.values()])
                agg[f"{name}.{key}"] = {"mean": m, "se": se, "n": n}

        def paired(a: str, b: str, key: str, pairs: dict = pairs) -> dict[str, Any]:
            d = [
                p["summary"][a][key] - p["summary"][b][key]
                for p in pairs.values()
                if p["summary"][a][key] is not None and p["summary"][b][key] is not None
            ]
            m, se, n = mean_se(d)
            return {"mean": m, "se": se, "n": n, "wins": sum(x > 0 for x in d)}

        agg["ensemble_minus_equal.balanced_accuracy"] = paired(
            "ensemble", "equal_weight", "balanced_accuracy"
        )
        agg["ensemble_minus_equal.log_loss"] = paired("ensemble", "equal_weight", "log_loss")
        agg["ensemble_minus_equal.ic"] = paired("ensemble", "equal_weight", "ic")
        agg["ensemble_minus_prior.log_loss"] = paired("ensemble", "prior", "log_loss")
        agg["pairs_ll_below_prior"] = sum(
            1
            for p in pairs.values()
            if p["summary"]["ensemble"]["log_loss"] is not None
            and p["summary"]["ensemble"]["log_loss"] < p["summary"]["prior"]["log_loss"]
        )
        best = [
            p["summary"]["ensemble"]["balanced_accuracy"]
            - max(
                p["summary"]["majority"]["balanced_accuracy"],
                p["summary"]["persistence"]["balanced_accuracy"],
            )
            for p in pairs.values()
        ]
        m, se, n = mean_se(best)
        agg["ensemble_minus_best_baseline.balanced_accuracy"] = {"mean": m, "se": se, "n": n}
        # log-loss skill vs the prior: comparable across label definitions
        m, se, n = mean_se(
            [
                1 - p["summary"]["ensemble"]["log_loss"] / p["summary"]["prior"]["log_loss"]
                for p in pairs.values()
            ]
        )
        agg["ensemble.log_loss_skill"] = {"mean": m, "se": se, "n": n}
        verdicts = [p.get("verdict", {}).get("verdict") for p in pairs.values()]
        agg["verdicts"] = {v: verdicts.count(v) for v in ("skill", "no-skill", "worse")}
        agg["wall_s"], agg["cpu_s"] = res.get("wall_s"), res.get("cpu_s")
        out[cfg] = agg
    if reference and reference in results:
        ref_pairs = results[reference]["pairs"]
        for cfg, res in results.items():
            if cfg == reference:
                continue
            diffs: dict[str, Any] = {}
            for name in (*MODELS, "prior"):
                for key in ("balanced_accuracy", "log_loss", "ic"):
                    d = []
                    for label, p in res["pairs"].items():
                        q = ref_pairs.get(label)
                        if not (p.get("ok") and q and q.get("ok")):
                            continue
                        a, b = p["summary"][name][key], q["summary"][name][key]
                        if a is not None and b is not None:
                            d.append(a - b)
                    m, se, n = mean_se(d)
                    diffs[f"{name}.{key}"] = {"mean": m, "se": se, "n": n}
            out[cfg][f"minus_{reference}"] = diffs
    return out


SKILL_KEYS = ("ic", "hit_sign", "ll_gain")


def aggregate_skill(results: dict[str, dict], reference: str) -> dict[str, Any]:
    """Issue 20's reading per configuration, over pairs: pooled walk-forward IC of the ensemble's direction
    score, hit rate of its directional calls against the realised sign, log-loss gain over the prior of the same
    labels (mean, s.e., n); the same for the equal-weight blend; the ensemble minus equal weights and minus the
    reference configuration, paired over pairs; and the mean class-share drift between fit and test rows."""
    out: dict[str, Any] = {}
    ref = results.get(reference, {}).get("pairs", {})
    for cfg, res in results.items():
        pairs = {k: v for k, v in res["pairs"].items() if v.get("ok") and "pooled" in v}
        a: dict[str, Any] = {"n_pairs": len(pairs)}
        for name in ("ensemble", "equal_weight"):
            for key in SKILL_KEYS:
                m, se, n = mean_se([p["pooled"][name][key] for p in pairs.values()])
                a[f"{name}.{key}"] = {"mean": m, "se": se, "n": n}
        for key in SKILL_KEYS:
            d = [
                p["pooled"]["ensemble"][key] - p["pooled"]["equal_weight"][key]
                for p in pairs.values()
                if p["pooled"]["ensemble"][key] is not None and p["pooled"]["equal_weight"][key] is not None
            ]
            m, se, n = mean_se(d)
            a[f"ens_minus_equal.{key}"] = {"mean": m, "se": se, "n": n, "wins": sum(x > 0 for x in d)}
            if cfg != reference and ref:
                d = [
                    p["pooled"]["ensemble"][key] - ref[lab]["pooled"]["ensemble"][key]
                    for lab, p in pairs.items()
                    if lab in ref
                    and "pooled" in ref[lab]
                    and p["pooled"]["ensemble"][key] is not None
                    and ref[lab]["pooled"]["ensemble"][key] is not None
                ]
                m, se, n = mean_se(d)
                a[f"minus_{reference}.{key}"] = {"mean": m, "se": se, "n": n, "wins": sum(x > 0 for x in d)}
        m, se, n = mean_se([p.get("share_drift") for p in pairs.values()])
        a["share_drift"] = {"mean": m, "se": se, "n": n}
        with_ctx = [lab for lab, p in pairs.items() if p.get("context")]
        a["n_context"] = len(with_ctx)
        if with_ctx and cfg != reference and ref:  # the context variants on the pairs that had context
            for key in SKILL_KEYS:
                d = [
                    pairs[lab]["pooled"]["ensemble"][key] - ref[lab]["pooled"]["ensemble"][key]
                    for lab in with_ctx
                    if lab in ref
                    and "pooled" in ref[lab]
                    and pairs[lab]["pooled"]["ensemble"][key] is not None
                    and ref[lab]["pooled"]["ensemble"][key] is not None
                ]
                m, se, n = mean_se(d)
                a[f"context_pairs_minus_{reference}.{key}"] = {
                    "mean": m,
                    "se": se,
                    "n": n,
                    "wins": sum(x > 0 for x in d),
                }
        a["per_pair"] = {lab: {k: p["pooled"]["ensemble"][k] for k in SKILL_KEYS} for lab, p in pairs.items()}
        a["wall_s"], a["cpu_s"] = res.get("wall_s"), res.get("cpu_s")
        out[cfg] = a
    return out


def format_skill(skill: dict[str, Any], reference: str = "baseline") -> str:
    def ms(d: dict[str, Any], fmt: str = "+.4f") -> str:
        return f"{_f(d.get('mean'), fmt)} +/- {_f(d.get('se'))}"

    lines = [
        "Pooled walk-forward reading per configuration (mean +/- s.e. over pairs): ensemble IC, hit rate of its "
        "directional calls vs the realised sign, log-loss gain over the prior; ensemble minus equal weights; "
        f"minus {reference} (paired; wins); class-share drift fit->test",
    ]
    for cfg, a in skill.items():
        cells = [f"{cfg:<38} n={a['n_pairs']:>2}"]
        cells.append(
            f"IC {ms(a['ensemble.ic'])} hit {ms(a['ensemble.hit_sign'], '.4f')} gain {ms(a['ensemble.ll_gain'])}"
        )
        cells.append(f"ens-eq IC {ms(a['ens_minus_equal.ic'])} gain {ms(a['ens_minus_equal.ll_gain'])}")
        if f"minus_{reference}.ic" in a:
            d = {k: a[f"minus_{reference}.{k}"] for k in SKILL_KEYS}
            cells.append(" ".join(f"d{k} {ms(v)} ({v['wins']}/{v['n']})" for k, v in d.items()))
        cells.append(f"drift {_f(a['share_drift']['mean'], '.4f')}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def skill_markdown(skill: dict[str, Any], reference: str = "baseline") -> str:
    """The docs/benchmarks.md table of a --skill run (mean +/- s.e. over pairs; paired differences with wins)."""

    def ms(d: dict[str, Any] | None, fmt: str = "+.4f") -> str:
        if not d or d.get("mean") is None:
            return "–"
        se = f" ± {d['se']:.4f}" if d.get("se") is not None else ""
        wins = f" ({d['wins']}/{d['n']})" if "wins" in d else ""
        return f"{d['mean']:{fmt}}{se}{wins}"

    head = (
        "| variant | pairs | IC | hit rate | log-loss gain | ens − equal: IC | ens − equal: gain | "
        f"− {reference}: IC | − {reference}: hit | − {reference}: gain | class-share drift | pairs with context |"
    )
    lines = [head, "|" + "---|" * 12]
    for cfg, a in skill.items():
        d = {k: a.get(f"minus_{reference}.{k}") for k in SKILL_KEYS}
        lines.append(
            f"| {cfg} | {a['n_pairs']} | {ms(a['ensemble.ic'])} | {ms(a['ensemble.hit_sign'], '.4f')} | "
            f"{ms(a['ensemble.ll_gain'])} | {ms(a['ens_minus_equal.ic'])} | {ms(a['ens_minus_equal.ll_gain'])} | "
            f"{ms(d['ic'])} | {ms(d['hit_sign'])} | {ms(d['ll_gain'])} | {_f(a['share_drift']['mean'], '.3f')} | "
            f"{a.get('n_context', 0)} |"
        )
    ctx = [(cfg, a) for cfg, a in skill.items() if f"context_pairs_minus_{reference}.ic" in a]
    if ctx:
        lines += [
            "",
            f"Context variants on the pairs that had context only (− {reference}, paired):",
            "",
            "| variant | pairs | IC | hit rate | log-loss gain |",
            "|---|---|---|---|---|",
        ]
        for cfg, a in ctx:
            d = {k: a[f"context_pairs_minus_{reference}.{k}"] for k in SKILL_KEYS}
            lines.append(
                f"| {cfg} | {a['n_context']} | {ms(d['ic'])} | {ms(d['hit_sign'])} | {ms(d['ll_gain'])} |"
            )
    return "\n".join(lines)


def _f(x: Any, fmt: str = ".4f") -> str:
    return format(x, fmt) if isinstance(x, int | float) else "-"


def format_tables(agg: dict, reference: str | None) -> str:
    lines = ["Mean over pairs of the per-pair walk-forward means (balanced accuracy / log loss / IC):"]
    head = f"{'config':<22} {'pairs':>5} " + " ".join(f"{n[:9]:>22}" for n in NAMES)
    lines += [head, "-" * len(head)]
    for cfg, a in agg.items():
        cells = []
        for n in NAMES:
            ba, ll, ic = (a[f"{n}.{k}"]["mean"] for k in ("balanced_accuracy", "log_loss", "ic"))
            cells.append(f"{_f(ba, '.3f')}/{_f(ll, '.3f')}/{_f(ic, '+.3f')}".rjust(22))
        lines.append(f"{cfg:<22} {a['n_pairs']:>5} " + " ".join(cells))
    lines.append("")
    lines.append("Ensemble against equal weights and the baselines (paired over pairs: mean +/- s.e., wins):")
    for cfg, a in agg.items():
        e = a["ensemble_minus_equal.balanced_accuracy"]
        ll = a["ensemble_minus_equal.log_loss"]
        b = a["ensemble_minus_best_baseline.balanced_accuracy"]
        s = a["ensemble.log_loss_skill"]
        lines.append(
            f"{cfg:<22} ens-eq bal {_f(e['mean'], '+.4f')} +/- {_f(e['se'])} ({e['wins']}/{e['n']}) "
            f"ll {_f(ll['mean'], '+.4f')} +/- {_f(ll['se'])} | ens-best baseline bal {_f(b['mean'], '+.4f')} "
            f"+/- {_f(b['se'])} | ll < prior in {a['pairs_ll_below_prior']}/{a['n_pairs']}, ll skill "
            f"{_f(s['mean'], '+.4f')} +/- {_f(s['se'])} | verdicts {a['verdicts']} | "
            f"{_f(a['wall_s'], '.0f')}s wall {_f(a['cpu_s'], '.0f')}s CPU"
        )
    if reference:
        lines.append("")
        lines.append(f"Paired differences against {reference} (mean +/- s.e. over pairs):")
        for cfg, a in agg.items():
            d = a.get(f"minus_{reference}")
            if not d:
                continue
            cells = [
                f"{n} bal {_f(d[n + '.balanced_accuracy']['mean'], '+.4f')}+/-{_f(d[n + '.balanced_accuracy']['se'])}"
                f" ll {_f(d[n + '.log_loss']['mean'], '+.4f')}+/-{_f(d[n + '.log_loss']['se'])}"
                f" ic {_f(d[n + '.ic']['mean'], '+.4f')}+/-{_f(d[n + '.ic']['se'])}"
                for n in ("ensemble", "equal_weight", "rf", "gb")
            ]
            lines.append(f"{cfg:<22} " + " | ".join(cells))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench_quality.py", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument(
        "--pairs", nargs="+", type=parse_pair, metavar="SYMBOL/TF", help="default: every shared CSV"
    )
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument(
        "--before", default=BEFORE_REF, help=f"git ref of the 'before' code (default {BEFORE_REF})"
    )
    p.add_argument("--no-before", action="store_true", help="skip the 'before' child process")
    p.add_argument("--target-bars", type=int, default=2000)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--timing-repeats", type=int, default=5, help="0 = no fit-time comparison")
    p.add_argument(
        "--reference", default="before", help="configuration the paired differences are taken against"
    )
    p.add_argument("--out", type=Path, default=REPO / "bench_results" / "quality.json")
    p.add_argument(
        "--as-of",
        type=lambda t: datetime.fromisoformat(t).replace(tzinfo=UTC),
        help="windows end at this UTC date (e.g. 2017-11-10, inside every context symbol's bars)",
    )
    p.add_argument(
        "--skill",
        action="store_true",
        help="issue 20: the label / volatility-feature / context variants against today's defaults "
        "(implies --no-before --timing-repeats 0 --reference baseline unless --configs is given)",
    )
    p.add_argument(
        "--pooled",
        action="store_true",
        help="with --skill: also one model per timeframe on every pair's rows known by each fold (item 3)",
    )
    p.add_argument(
        "--markdown-from", type=Path, metavar="JSON", help="print the --skill table of a saved run and exit"
    )
    args = p.parse_args(argv)
    if args.markdown_from:
        saved = json.loads(args.markdown_from.read_text())
        print(skill_markdown(aggregate_skill(saved["results"], "baseline")))
        return 0
    if args.skill:
        if args.configs == list(CONFIGS):
            args.configs = list(SKILL_CONFIGS)
        args.no_before, args.timing_repeats, args.reference = True, 0, "baseline"
    data_dir = args.data_dir.resolve()
    pairs = args.pairs or [tuple(f.stem.rsplit("_", 1)) for f in sorted(data_dir.glob("*_*.csv"))]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp_name:
        tmp = Path(tmp_name)
        removed = isolate_environment(tmp)
        if removed:
            log(f"note: ignoring {', '.join(removed)} from the environment")
        info = machine_info()
        from ml.src.data.local_db import SqliteStore

        context = {sym for name in args.configs for sym in CONFIGS[name].get("context_symbols", [])}
        paths = sorted(
            {csv_path(data_dir, s, t) for s, t in pairs}
            | {csv_path(data_dir, *parse_pair(t)) for t in (TIMING_PAIRS if args.timing_repeats > 0 else ())}
            | {f for sym in context for f in data_dir.glob(f"{sym}_*.csv")}
        )
        build_sqlite_template(paths, tmp / "bars.sqlite3")
        store = SqliteStore(tmp / "bars.sqlite3")
        results: dict[str, dict] = {}
        timing = None
        try:
            if args.timing_repeats > 0:
                timing = time_fits(store, tmp, args.timing_repeats, log)
            if not args.no_before:
                raw = run_before(args.before, pairs, data_dir, args.target_bars, args.folds, tmp, log)
                results["before"] = score_before(raw)
            prepared: dict[tuple, dict] = {}
            for name in args.configs:
                key = prep_key(CONFIGS[name])
                if key not in prepared:
                    prepared[key] = prepare_all(
                        pairs, store, tmp, args.target_bars, log, CONFIGS[name], as_of=args.as_of
                    )
                results[name] = evaluate_config(prepared[key], name, CONFIGS[name], args.folds, tmp, log)
                if args.skill:  # a partial table survives a run cut short
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    partial = {"partial": True, "skill": aggregate_skill(results, "baseline")}
                    args.out.with_suffix(".partial.json").write_text(json.dumps(partial, indent=1) + "\n")
                    print(format_skill(aggregate_skill(results, "baseline")), file=sys.stderr, flush=True)
            if args.pooled:
                key = prep_key(CONFIGS["baseline"])
                if key not in prepared:
                    prepared[key] = prepare_all(
                        pairs, store, tmp, args.target_bars, log, {}, as_of=args.as_of
                    )
                results["pooled"] = evaluate_pooled(prepared[key], args.folds, tmp, log)
        finally:
            store.close()
    reference = args.reference if args.reference in results else None
    agg = aggregate({k: v for k, v in results.items() if k != "pooled"}, reference)
    print(format_tables(agg, reference))
    skill = aggregate_skill(results, "baseline") if args.skill else None
    if skill:
        print()
        print(format_skill(skill))
        print()
        print(skill_markdown(skill))
    if timing:
        totals = ", ".join(f"{k} {v:.3f}s" for k, v in timing["totals_s"].items())
        print(
            f"\nFit time, 500-bar pairs ({', '.join(TIMING_PAIRS)}), sum of medians: {totals}; "
            f"chosen / today = {timing['ratio']:.2f}"
        )
    payload = {
        "benchmark": "quality",
        "started_at_unix": started,
        "elapsed_s": round(time.time() - started, 1),
        "machine": info,
        "target_bars": args.target_bars,
        "folds": args.folds,
        "before_ref": None if args.no_before else args.before,
        "as_of": args.as_of.isoformat() if args.as_of else None,
        "configs": {k: CONFIGS.get(k, {}) for k in results},
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "aggregate": agg,
        "skill": skill,
        "timing": timing,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    log(f"wrote {args.out} ({time.time() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
