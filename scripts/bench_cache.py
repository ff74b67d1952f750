"""Does the feature cache pay for itself? Time to compute features vs. to write and read them, and the space.

    .venv/bin/python scripts/bench_cache.py                          # this checkout, both stores
    .venv/bin/python scripts/bench_cache.py --repo /tmp/before       # another checkout's code (e.g. the old cache)

For N pairs (real daily bars: ML_TEST_DATA's d1 files when present, else the shipped ml/sample_data) of
`--bars` bars each (plus the 200-bar warm-up), per store (a fresh embedded SQLite file; a fresh local Supabase
stack started from the checkout's own scripts/local_supabase.sh and migrations), median over `--repeats`:

- compute: add_technical_features over each pair's bars (what the cache saves),
- write:   upsert_feature_cache of every pair's rows into an empty cache (a first night),
- read:    read_feature_cache of every pair's window (a fully cached night),
- append:  upsert_feature_cache of one more row per pair (a night's new bar),
- size:    bytes the cache takes per cached bar (SQLite: file growth after a checkpoint; Postgres:
           pg_total_relation_size of the cache table, TOAST and indexes included).

Only the public store API is used (read_feature_cache / upsert_feature_cache with the signature both versions
share), so the same script measures the code before and after a change.

`--night` measures instead what a nightly run pays for its features, through the product's own
`features_for_window` on `--pairs` pairs of `--bars` bars (real bars of every timeframe from ML_TEST_DATA /
../shared/data, files with enough rows): *recompute* (ML_FEATURE_CACHE=off: every row computed), *first night*
(an empty cache: every row computed and written), *cached night* (last night's window cached, one new bar: one
read, the new row computed over its own warm-up, one append). Wall time, this process's CPU time and, for
Supabase, the CPU time of the stack's processes (PostgreSQL, PostgREST, nginx) for all pairs together.
Results go to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import median, median_time, start_local_stack, stop_local_stack

HERE = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=HERE, help="checkout whose code and migrations to measure")
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--bars", type=int, default=500, help="cached bars per pair (the training window)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--stores", nargs="+", default=["embedded", "supabase"], choices=["embedded", "supabase"])
    p.add_argument("--night", action="store_true", help="measure a night's features_for_window (see above)")
    p.add_argument("--out", type=Path, default=HERE / "bench_results" / "cache.json")
    return p.parse_args(argv)


def data_files(n: int) -> list[Path]:
    shared = Path(os.environ.get("ML_TEST_DATA") or HERE.parent / "shared" / "data")
    files = sorted(shared.glob("*_d1.csv")) if shared.is_dir() else []
    if len(files) < n:
        files = sorted((HERE / "ml" / "sample_data").glob("*_d1.csv"))
    if not files:
        raise SystemExit("no daily bars found (ML_TEST_DATA or ml/sample_data)")
    return [files[i % len(files)] for i in range(n)]


def night_files(n: int, rows: int) -> list[Path]:
    """n data files (cycled) of any timeframe with at least `rows` bars."""
    shared = Path(os.environ.get("ML_TEST_DATA") or HERE.parent / "shared" / "data")
    files = sorted(shared.glob("*.csv")) if shared.is_dir() else []
    files = files or sorted((HERE / "ml" / "sample_data").glob("*.csv"))
    with_rows = [f for f in files if sum(1 for _ in f.open()) - 1 >= rows]
    if not with_rows:
        raise SystemExit(f"no bar file with {rows} rows (ML_TEST_DATA or ml/sample_data)")
    return [with_rows[i % len(with_rows)] for i in range(n)]


def tree_cpu_s(root_pids: list[int]) -> float:
    """CPU seconds (user + system, reaped children included) of these processes and all their descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        stats[int(d.name)] = (ppid, sum(int(x) for x in fields[11:15]) / tick)
    keep = set(root_pids)
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                grew = True
    return sum(cpu for pid, (_, cpu) in stats.items() if pid in keep)


def stack_pids(stack_dir: str) -> list[int]:
    out = []
    for name in ("postgres.pid", "postgrest.pid", "nginx.pid"):
        path = Path(stack_dir) / name
        if path.exists():
            out.append(int(path.read_text().split()[0]))
    return out


def night(args: argparse.Namespace, repo: Path) -> dict[str, Any]:
    import pandas as pd

    from ml.src.data.local_db import SqliteStore
    from ml.src.features.feature_cache import features_for_window
    from ml.src.features.technical_indicators import FEATURE_SET_VERSION, WARMUP_BARS

    files = night_files(args.pairs, args.bars + WARMUP_BARS + 1)
    pairs = []
    for i, path in enumerate(files):
        raw = pd.read_csv(path)
        raw["ts"] = pd.to_datetime(raw["ts"], utc=True, format="ISO8601")
        sym, tf = path.stem.split("_")
        pairs.append(
            (f"N{i:02d}{sym[:6]}", tf, raw.iloc[-(args.bars + WARMUP_BARS + 1) :].reset_index(drop=True))
        )

    def timed(fn: Callable[[], Any], setup: Callable[[], Any], server: list[int]) -> dict[str, float]:
        walls, cpus, servers = [], [], []
        for _ in range(args.repeats):
            setup()
            s0, c0, t0 = tree_cpu_s(server) if server else 0.0, time.process_time(), time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            servers.append((tree_cpu_s(server) - s0) if server else 0.0)
        out = {"wall_s": median(walls), "cpu_s": median(cpus)}
        if server:
            out["server_cpu_s"] = median(servers)
        return out

    def measure(store: Any, clear: Callable[[], None], server: list[int]) -> dict[str, Any]:
        for symbol, tf, bars in pairs:
            store.upsert_bars(symbol, tf, bars)

        def run(use_cache: bool, last_night: bool = False) -> Callable[[], None]:
            def go() -> None:
                for symbol, tf, bars in pairs:
                    got = features_for_window(
                        store, symbol, tf, bars.iloc[:-1] if last_night else bars, use_cache=use_cache
                    )
                    assert len(got.frame) == len(bars) - WARMUP_BARS - (1 if last_night else 0)

            return go

        def yesterday() -> None:
            clear()
            run(True, last_night=True)()

        out = {
            "recompute": timed(run(False), clear, server),
            "first_night": timed(run(True), clear, server),
            "cached_night": timed(run(True), yesterday, server),
        }
        base = out["recompute"]
        for key in ("first_night", "cached_night"):
            out[key]["wall_vs_recompute"] = round(out[key]["wall_s"] / base["wall_s"], 3)
            out[key]["cpu_vs_recompute"] = round(out[key]["cpu_s"] / base["cpu_s"], 3)
            if server:
                out[key]["cpu_incl_server_vs_recompute"] = round(
                    (out[key]["cpu_s"] + out[key]["server_cpu_s"]) / (base["cpu_s"] + base["server_cpu_s"]), 3
                )
        return out

    result: dict[str, Any] = {
        "mode": "night",
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip(),
        "pairs": len(pairs),
        "bars_per_pair": args.bars,
        "repeats": args.repeats,
        "feature_version": FEATURE_SET_VERSION,
        "data": [str(p) for p in files],
        "load_avg_start": os.getloadavg(),
        "stores": {},
    }
    if "embedded" in args.stores:
        with tempfile.TemporaryDirectory() as tmp:
            store = SqliteStore(Path(tmp) / "bench.sqlite3")
            result["stores"]["embedded"] = measure(
                store, lambda: store._write("delete from feature_chunks"), []
            )
            store.close()
    if "supabase" in args.stores:
        import psycopg

        from ml.src.data.supabase_db import SupabaseStore

        env = start_local_stack(repo)
        try:
            with (
                psycopg.connect(env["DATABASE_URL"], autocommit=True) as pg,
                SupabaseStore(env["SUPABASE_URL"], env["SUPABASE_SERVICE_ROLE_KEY"]) as store,
            ):
                result["stores"]["supabase"] = measure(
                    store, lambda: pg.execute("truncate public.feature_chunks"), stack_pids(env["STACK_DIR"])
                )
        finally:
            stop_local_stack(env, repo)
    result["load_avg_end"] = os.getloadavg()
    return result


def rerun_with_code_of(repo: Path, argv: list[str] | None) -> int | None:
    """--repo: that checkout's code, not this one's: this script again with `repo` first on PYTHONPATH (it wins
    over the editable install), once. None when this process already imports `repo`'s code."""
    if repo == HERE or os.environ.get("BENCH_CACHE_REPO") == str(repo):
        return None
    paths = [str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "BENCH_CACHE_REPO": str(repo)}
    cmd = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)]
    return subprocess.run(cmd, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repo = args.repo.resolve()
    code = rerun_with_code_of(repo, argv)
    if code is not None:
        return code
    if args.night:
        result = night(args, repo)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return 0
    import pandas as pd

    from ml.src.data.local_db import SqliteStore
    from ml.src.features.technical_indicators import FEATURE_SET_VERSION, WARMUP_BARS, add_technical_features

    files = data_files(args.pairs)
    pairs = []
    for i, path in enumerate(files):
        raw = pd.read_csv(path)
        raw["ts"] = pd.to_datetime(raw["ts"], utc=True, format="ISO8601")
        bars = raw.iloc[-(args.bars + WARMUP_BARS + 1) :].reset_index(drop=True)
        symbol = f"B{i:02d}{path.stem.split('_')[0][:6]}"
        feats = add_technical_features(bars).iloc[WARMUP_BARS:].reset_index(drop=True)
        cols = [c for c in feats.columns if c not in ("ts", "open", "high", "low", "close", "volume")]
        feats = feats[["ts", *cols]]
        pairs.append((symbol, bars, feats.iloc[:-1], feats.iloc[-1:]))
    version = f"{FEATURE_SET_VERSION}-bench"
    n_rows = args.bars * len(pairs)

    def compute() -> None:
        for _, bars, _, _ in pairs:
            add_technical_features(bars.iloc[:-1])

    result: dict[str, Any] = {
        "repo": str(repo),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip(),
        "pairs": len(pairs),
        "bars_per_pair": args.bars,
        "features": pairs[0][2].shape[1] - 1,
        "repeats": args.repeats,
        "data": [str(p) for p in files],
        "compute_s": median_time(compute, args.repeats),
        "stores": {},
    }

    def measure(store: Any, clear: Callable[[], None], size: Callable[[], int]) -> dict[str, Any]:
        for symbol, bars, _, _ in pairs:
            store.upsert_bars(symbol, "d1", bars)
        clear()
        base = size()

        def write() -> None:
            for symbol, _, feats, _ in pairs:
                store.upsert_feature_cache(symbol, "d1", version, feats)

        def read() -> None:
            for symbol, _, feats, _ in pairs:
                got = store.read_feature_cache(
                    symbol, "d1", version, feats["ts"].iloc[0], feats["ts"].iloc[-1]
                )
                assert len(got) == len(feats), (symbol, len(got))

        def append() -> None:
            for symbol, _, _, last in pairs:
                store.upsert_feature_cache(symbol, "d1", version, last)

        out = {
            "write_s": median_time(write, args.repeats, setup=clear),
            "read_s": median_time(read, args.repeats),
        }
        out["append_s"] = median_time(append, args.repeats, setup=lambda: (clear(), write()))
        clear()
        write()
        out["size_bytes"] = size() - base
        out["bytes_per_cached_bar"] = round(out["size_bytes"] / n_rows, 1)
        return out

    if "embedded" in args.stores:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.sqlite3"
            store = SqliteStore(db)
            table = (
                "feature_chunks"
                if store._query("select 1 from sqlite_master where name = 'feature_chunks'")
                else "feature_cache"
            )

            def clear_sqlite() -> None:
                store._write(f"delete from {table}")
                store._conn.execute("vacuum")

            def size_sqlite() -> int:
                store._conn.execute("pragma wal_checkpoint(TRUNCATE)")
                return db.stat().st_size

            result["stores"]["embedded"] = {"table": table, **measure(store, clear_sqlite, size_sqlite)}
            store.close()

    if "supabase" in args.stores:
        import psycopg

        from ml.src.data.supabase_db import SupabaseStore

        env = start_local_stack(repo)
        try:
            with psycopg.connect(env["DATABASE_URL"], autocommit=True) as pg:
                table = pg.execute(
                    "select case when to_regclass('public.feature_chunks') is null then 'feature_cache'"
                    " else 'feature_chunks' end"
                ).fetchone()[0]

                def clear_pg() -> None:
                    pg.execute(f"truncate public.{table}")

                def size_pg() -> int:
                    pg.execute(f"vacuum public.{table}")
                    return int(pg.execute(f"select pg_total_relation_size('public.{table}')").fetchone()[0])

                with SupabaseStore(env["SUPABASE_URL"], env["SUPABASE_SERVICE_ROLE_KEY"]) as store:
                    result["stores"]["supabase"] = {"table": table, **measure(store, clear_pg, size_pg)}
        finally:
            stop_local_stack(env, repo)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
