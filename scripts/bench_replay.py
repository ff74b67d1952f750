"""The replay's cost beside the training runs it stands for (docs/benchmarks.md, "Replay").

    .venv/bin/python scripts/bench_replay.py [--repeat 3] [--pairs10]

1. One pair (GOOG d1 of ml/sample_data, 2,148 bars): `python -m ml.src.training.replay --last 500
   --retrain-every 21` (24 retrain points), in-process and with --workers 2, each `--repeat` times (medians).
2. The same 24 retrain points as 24 separate runs of the training job with `--as-of <the point's bar> --force`
   (each its own process, as a nightly loop would start it), measured one by one: their sum is what the replay
   replaces (the job also writes an artifact and a ledger row per run; the replay writes neither).
3. With --pairs10: ten d1 pairs of ML_TEST_DATA (../shared/data) replayed at once with --workers 2.

Wall and CPU of each process tree (bench_common.run_metered). The machine is shared: medians, and the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench_common import REPO, median, run_metered

PY = str(REPO / ".venv" / "bin" / "python")
LAST, EVERY = 500, 21
D1_PAIRS10 = ("AAPL", "DIS", "MSFT", "NVDA", "PG", "QQQ", "SPY", "TSLA", "GOOG", "IBM")


def _env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "SUPABASE_"))}
    env.update(
        {
            "SUPABASE_URL": "",
            "ML_LOCAL_DB": str(base / "store.sqlite3"),
            "ML_MODELS_DIR": str(base / "models"),
        }
    )
    return env


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    m = run_metered(cmd, env=env, cwd=REPO)
    if m.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {m.returncode}\n{m.stderr[-2000:]}")
    return m.wall_s, m.cpu_s, m.stdout


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pairs10", action="store_true", help="also replay ten d1 pairs of ML_TEST_DATA")
    args = ap.parse_args()
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        env = _env(base)
        _run([PY, "-m", "ml.src.data.load_bars", "--quiet", str(REPO / "ml/sample_data/GOOG_d1.csv")], env)
        replay = [PY, "-m", "ml.src.training.replay", "--pairs", "GOOG:d1", "--last", str(LAST)]
        replay += ["--retrain-every", str(EVERY), "--json", "-q"]
        for workers in (1, 2):
            walls, cpus = [], []
            for _ in range(args.repeat):
                wall, cpu, stdout = _run([*replay, "--workers", str(workers)], env)
                walls.append(wall)
                cpus.append(cpu)
            pair = json.loads(stdout)["pairs"][0]
            out[f"replay_workers{workers}"] = {
                "wall_s": _summary(walls),
                "cpu_s": _summary(cpus),
                "retrains": pair["retrains"],
                "n_forecasts": pair["n_forecasts"],
            }
            print(
                f"replay --workers {workers}: {out[f'replay_workers{workers}']}", file=sys.stderr, flush=True
            )
        points = [s["trained_through"] for s in pair["steps"]]
        walls, cpus = [], []
        for ts in points:
            cmd = [PY, "-m", "ml.src.training.ensemble_training_job", "--pairs", "GOOG:d1", "--as-of", ts]
            wall, cpu, _ = _run([*cmd, "--force", "--workers", "1", "-q"], env)
            walls.append(wall)
            cpus.append(cpu)
        out["as_of_runs"] = {
            "runs": len(points),
            "wall_s_total": round(sum(walls), 2),
            "cpu_s_total": round(sum(cpus), 2),
            "wall_s_per_run": _summary(walls),
            "cpu_s_per_run": _summary(cpus),
        }
        print(f"{len(points)} --as-of runs: {out['as_of_runs']}", file=sys.stderr, flush=True)
        if args.pairs10:
            data = Path(os.environ.get("ML_TEST_DATA") or REPO.parent / "shared" / "data")
            files = [str(data / f"{s}_d1.csv") for s in D1_PAIRS10]
            base10 = base / "ten"
            base10.mkdir()
            env10 = _env(base10)
            _run([PY, "-m", "ml.src.data.load_bars", "--quiet", *files], env10)
            cmd = [PY, "-m", "ml.src.training.replay", "--all", "--timeframes", "d1", "--last", str(LAST)]
            wall, cpu, stdout = _run(
                [*cmd, "--retrain-every", str(EVERY), "--workers", "2", "--json", "-q"], env10
            )
            res = json.loads(stdout)
            out["replay_10_pairs_workers2"] = {
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "pairs": len(res["pairs"]),
                "succeeded": sum(p["status"] == "succeeded" for p in res["pairs"]),
                "retrains": sum(p["retrains"] for p in res["pairs"]),
            }
            print(f"10 pairs: {out['replay_10_pairs_workers2']}", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
