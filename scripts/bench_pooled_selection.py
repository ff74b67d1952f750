"""What the job's local-vs-pooled choice (ML_POOLED_MODELS) buys, measured without selection bias.

The job chooses on the rows it then reports, so its own numbers cannot say whether choosing helps. Here the
choice is nested in walk-forward: for each pair, the local walk-forward (the product's walk_forward) and the
pooled one (pooled.pooled_walk_forward: every other pair of the timeframe's rows known by each fold's fit end)
run on the same fold blocks; for fold k >= 1 the pooled model is chosen iff the promotion gate's rule
(registry.promotion_rule: pooled - local > promotion_z block s.e., majority and persistence beaten) says so on
folds < k, and the chosen model's fold-k predictions are scored. Per pair, folds 1.. pooled give the issue's
label-free reading (IC of the direction score, hit rate of directional calls) and the log-loss gain over the
prior, for always-local, always-pooled and selected; over pairs mean +/- s.e. and paired differences.

    .venv/bin/python scripts/bench_pooled_selection.py --target-bars 2000 --folds 4 --out bench_results/pooled_selection.json
"""

from __future__ import annotations

import argparse
import json
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
    csv_path,
    isolate_environment,
    label_free,
    machine_info,
    make_settings,
    mean_se,
    parse_pair,
)

KEYS = ("ic", "hit_sign", "ll_gain")
VARIANTS = ("local", "pooled", "selected")


@dataclass
class NestedSelection:
    """Per fold k >= 1 with both models: whether pooled was chosen (on folds < k), and the fold-k blocks."""

    folds: list[int]
    chosen_pooled: list[bool]
    local: list[Any]  # SlicePredictions of fold k, per variant
    pooled: list[Any]
    selected: list[Any]


def nested_selection(
    local: Sequence[Any], pooled: Sequence[Any], horizon: int, settings: Any
) -> NestedSelection:
    """Choose for fold k on folds < k only (None = a fold that could not be fitted), by the gate's rule."""
    from ml.src.training.registry import promotion_rule, row_scores
    from ml.src.training.scoring import concat
    from ml.src.training.stats import block_length

    metric = settings.promotion_metric
    out = NestedSelection([], [], [], [], [])
    for k in range(1, len(local)):
        if local[k] is None or pooled[k] is None:
            continue
        past = [(a, b) for a, b in zip(local[:k], pooled[:k], strict=True) if a is not None and b is not None]
        if not past:
            continue
        a, b = concat([x for x, _ in past]), concat([y for _, y in past])
        y = a.codes  # local and pooled folds share their labels (the fold's own thresholds)
        promote, _, _ = promotion_rule(
            row_scores(metric, y, b.preds["ensemble"]),
            row_scores(metric, y, a.preds["ensemble"]),
            {
                "majority": row_scores(metric, y, a.preds["majority"]),
                "persistence": row_scores(metric, y, a.preds["persistence"]),
            },
            block=block_length(horizon),
            z=settings.promotion_z,
            baseline_margin=settings.promotion_baseline_margin,
        )
        out.folds.append(k)
        out.chosen_pooled.append(bool(promote))
        out.local.append(local[k])
        out.pooled.append(pooled[k])
        out.selected.append(pooled[k] if promote else local[k])
    return out


def _by_fold(report_folds: list[dict[str, Any]], blocks: list[Any]) -> list[Any]:
    """The ok folds' blocks in fold order, None where a fold has an error."""
    it = iter(blocks)
    return [None if "error" in f else next(it) for f in report_folds]


def evaluate_pair(prep: Any, others: list[Any], folds: int, settings: Any) -> dict[str, Any]:
    from ml.src.training.pooled import pooled_walk_forward
    from ml.src.training.pooled_pair import pool_member
    from ml.src.training.scoring import concat
    from ml.src.training.walk_forward import walk_forward

    h = prep.spec.horizon_bars
    wf = walk_forward(
        prep.x,
        prep.returns,
        prep.ts,
        folds=folds,
        horizon=h,
        threshold=prep.spec.threshold,
        settings=settings,
    )
    local = _by_fold(wf.report["folds"], wf.pooled)
    blocks, info = pooled_walk_forward(pool_member(prep), others, folds, settings)
    pooled = _by_fold(info, blocks)
    sel = nested_selection(local, pooled, h, settings)
    if not sel.folds:
        return {"ok": False, "error": "no fold k >= 1 with both models and an earlier fold"}
    entry: dict[str, Any] = {
        "ok": True,
        "folds": sel.folds,
        "chosen_pooled": sel.chosen_pooled,
        "n_rows": int(sum(len(b.rows) for b in sel.local)),
    }
    for name in VARIANTS:
        reading = label_free(concat(getattr(sel, name)), h)["ensemble"]
        entry[name] = {k: reading[k] for k in KEYS}
    return entry


def aggregate(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ok = {k: v for k, v in rows.items() if v.get("ok")}
    out: dict[str, Any] = {"pairs": len(ok)}
    for name in VARIANTS:
        out[name] = {key: mean_se([p[name][key] for p in ok.values()]) for key in KEYS}
    for name in ("selected", "pooled"):
        diffs: dict[str, Any] = {}
        for key in KEYS:
            d = [
                p[name][key] - p["local"][key]
                for p in ok.values()
                if p[name][key] is not None and p["local"][key] is not None
            ]
            m, se, n = mean_se(d)
            diffs[key] = {"mean": m, "se": se, "n": n, "higher": sum(x > 0 for x in d)}
        out[f"{name}_minus_local"] = diffs
    chosen = [c for p in ok.values() for c in p["chosen_pooled"]]
    out["pooled_chosen"] = {"pair_folds": len(chosen), "pooled": sum(chosen)}
    out["pairs_ever_pooled"] = sum(any(p["chosen_pooled"]) for p in ok.values())
    return out


def _ms(t: tuple[float | None, float | None, int], fmt: str = "+.4f") -> str:
    m, se, _ = t
    if m is None:
        return "-"
    return f"{m:{fmt}} ± {se:.4f}" if se is not None else f"{m:{fmt}}"


def _diff(d: dict[str, Any]) -> str:
    if d["mean"] is None:
        return "-"
    se = f" ± {d['se']:.4f}" if d["se"] is not None else ""
    return f"{d['mean']:+.4f}{se} ({d['higher']}/{d['n']})"


def markdown(by_group: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| pairs | n | local: IC | local: hit | local: gain | selected − local: IC | selected − local: hit "
        "| selected − local: gain | pooled − local: IC | pooled − local: gain | pooled chosen (pair-folds) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group, a in by_group.items():
        s, p = a["selected_minus_local"], a["pooled_minus_local"]
        c = a["pooled_chosen"]
        lines.append(
            f"| {group} | {a['pairs']} | {_ms(a['local']['ic'])} | {_ms(a['local']['hit_sign'], '.4f')} | "
            f"{_ms(a['local']['ll_gain'])} | {_diff(s['ic'])} | {_diff(s['hit_sign'])} | {_diff(s['ll_gain'])} | "
            f"{_diff(p['ic'])} | {_diff(p['ll_gain'])} | {c['pooled']} of {c['pair_folds']} |"
        )
    return "\n".join(lines)


def prepare(
    pairs: Sequence[tuple[str, str]], store: Any, settings: Any, target: int, log: Any
) -> dict[str, Any]:
    """Each pair's window as the job prepares it (a pair without enough bars is left out, with one line)."""
    from ml.src.training.pipeline import PairFailure, PairRequest, PairSkipped, prepare_pair

    preps: dict[str, Any] = {}
    for symbol, tf in pairs:
        try:
            preps[f"{symbol}/{tf}"] = prepare_pair(
                store, PairRequest(symbol, tf, target_bars=target), settings
            )
        except (PairFailure, PairSkipped) as exc:
            log(f"{symbol}/{tf}: not prepared: {exc}")
    return preps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench_pooled_selection.py", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--pairs", nargs="+", type=parse_pair, metavar="SYMBOL/TF", help="default: every CSV")
    p.add_argument("--target-bars", type=int, default=2000)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--out", type=Path, default=REPO / "bench_results" / "pooled_selection.json")
    args = p.parse_args(argv)
    data_dir = args.data_dir.resolve()
    pairs = args.pairs or [tuple(f.stem.rsplit("_", 1)) for f in sorted(data_dir.glob("*_*.csv"))]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_pooled_selection_") as tmp_name:
        tmp = Path(tmp_name)
        isolate_environment(tmp)
        info = machine_info()
        from ml.src.data.local_db import SqliteStore
        from ml.src.training.pooled_pair import pool_member

        build_sqlite_template(sorted({csv_path(data_dir, s, t) for s, t in pairs}), tmp / "bars.sqlite3")
        store = SqliteStore(tmp / "bars.sqlite3")
        settings = make_settings(tmp)
        try:
            preps = prepare(pairs, store, settings, args.target_bars, log)
        finally:
            store.close()
        rows: dict[str, dict[str, Any]] = {}
        for label, prep in preps.items():
            tf = label.split("/")[1]
            others = [pool_member(q) for k, q in preps.items() if k != label and k.split("/")[1] == tf]
            try:
                rows[label] = evaluate_pair(prep, others, args.folds, settings)
            except ValueError as exc:
                rows[label] = {"ok": False, "error": str(exc)}
            log(f"{label}: {json.dumps({k: v for k, v in rows[label].items() if k != 'ok'})}")
    groups = {"all": aggregate(rows)}
    for tf in ("m15", "h1", "h4", "d1", "w1"):
        sub = {k: v for k, v in rows.items() if k.endswith(f"/{tf}")}
        if any(v.get("ok") for v in sub.values()):
            groups[tf] = aggregate(sub)
    table = markdown(groups)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": info,
        "args": {
            "target_bars": args.target_bars,
            "folds": args.folds,
            "pairs": [f"{s}/{t}" for s, t in pairs],
        },
        "wall_s": time.time() - started,
        "pairs": rows,
        "aggregate": groups,
        "markdown": table,
    }
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(f"wrote {args.out} in {result['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
