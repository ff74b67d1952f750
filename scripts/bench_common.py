"""What the benchmark scripts share: one module, imported by name (`from bench_common import ...`).

A script run as `python scripts/NAME.py` has scripts/ first on sys.path, and the project is installed
editable, so `ml` and `config` import without any sys.path edit and so does this module; no script imports
another script. Sections:

* environment and record: REPO, DEFAULT_DATA_DIR, log, machine_info, git_state, isolate_environment,
  make_settings, parse_pair;
* statistics and timing: median, medians, median_time;
* bars and stores: csv_path, load_csvs, build_sqlite_template, copy_sqlite;
* the local Supabase stack: parse_exports, start_local_stack, stop_local_stack (scripts/local_supabase.sh);
* many real pairs from few files (Window, plan_windows, load_windows), see below;
* a command measured whole (Metered, run_metered), see below.

Windows of the shared CSVs:
    Many real pairs from few files: distinct, non-overlapping windows of the shared CSVs, each its own pair.

    The throughput benchmark needs 1, 10, 40 and 100 pairs of 500 target bars; the shared data has 44 files. A
    window is `bars` consecutive rows of one file, copied unchanged (real timestamps, real prices, real volume)
    into the store under a derived symbol `SYMBOL.K` (K = 0 for the most recent window of the file, 1 for the
    one before it, ...), with the file's own timeframe. Windows of one file never overlap, so no two pairs share
    a bar. Nothing is resampled, shifted, scaled or generated.

    Order: round-robin over the files (grouped by timeframe so the first pairs mix m15, h1, h4, d1 and w1), the
    most recent window of every file first, then each file's next older window, and so on. A window whose bars
    the job would reject (a hole longer than the timeframe's max_gap_days) is passed over, so every planned pair
    is trainable by the product's own checks. The first N windows of the plan are "N pairs": the 10-pair set is
    a prefix of the 40-pair set, which is a prefix of the 100-pair set.

run_metered:
    Run a command and measure it whole: wall time, CPU time of its process tree, peak memory per process.

    On a shared machine wall time says how long a run took, CPU time how much work it was; both are reported.

    * CPU: the main process's own rusage from wait4 (it includes the children it waited for, e.g. `git`), plus the
      user+system time last seen of every other descendant (the fork server and the pool workers it reaps are not
      waited for by the main process), sampled every `interval_s`; at most one interval per descendant is lost.
    * Memory: the largest resident set seen per process, by role (main, and every other descendant).
    * Extra processes outside the tree (a Dask scheduler and its workers) are measured as CPU deltas.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"


# ---------------------------------------------------------------------------------- record and statistics
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def medians(samples: Mapping[str, Iterable[float]]) -> dict[str, float]:
    """The median of every named list of samples."""
    return {name: median(values) for name, values in samples.items()}


def median_time(fn: Callable[[], Any], repeats: int, setup: Callable[[], Any] | None = None) -> float:
    """Median wall time of `fn` over `repeats` calls, `setup` run (untimed) before each."""
    samples = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


# ------------------------------------------------------------------------------------ local Supabase stack
def parse_exports(text: str) -> dict[str, str]:
    """`export KEY='value'` lines (what scripts/local_supabase.sh start prints) as a dict."""
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value.strip("'")
    return env


def start_local_stack(repo: Path = REPO, timeout_s: float = 300) -> dict[str, str]:
    """Start `repo`'s local stack (its own script and migrations); its SUPABASE_URL, keys, DATABASE_URL and
    STACK_DIR. Raises RuntimeError with the end of the script's stderr when it does not start."""
    started = subprocess.run(
        [str(repo / "scripts" / "local_supabase.sh"), "start"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if started.returncode != 0:
        raise RuntimeError(f"local Supabase stack failed to start:\n{started.stderr[-3000:]}")
    return parse_exports(started.stdout)


def stop_local_stack(stack: Mapping[str, str], repo: Path = REPO, timeout_s: float = 120) -> None:
    """Stop the stack `start_local_stack` returned (never raises: called from `finally`)."""
    subprocess.run(
        [str(repo / "scripts" / "local_supabase.sh"), "stop", stack.get("STACK_DIR", "")],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def machine_info() -> dict[str, Any]:
    """nproc, CPU model and library versions, for the record."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "git": git_state(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        load1, load5, load15 = os.getloadavg()
        info["loadavg_at_start"] = [round(load1, 2), round(load5, 2), round(load15, 2)]
    except OSError:
        pass
    try:
        import lightgbm
        import numpy
        import sklearn

        info["versions"] = {
            "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__,
            "lightgbm": lightgbm.__version__,
        }
    except ImportError:
        pass
    return info


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the working tree had uncommitted changes (read-only git calls)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def isolate_environment(tmp: Path) -> list[str]:
    """Point ML_LOCAL_DB / ML_MODELS_DIR at `tmp` and drop other ML_* / SUPABASE_* overrides.

    The benchmark must measure the product's defaults, not whatever the caller's shell exports, and must never
    write into the repository or a real Supabase project. Returns the names of the variables removed.
    """
    removed = sorted(k for k in os.environ if k.startswith(("ML_", "SUPABASE_")))
    for key in removed:
        del os.environ[key]
    os.environ["ML_LOCAL_DB"] = str(tmp / "unused.sqlite3")
    os.environ["ML_MODELS_DIR"] = str(tmp / "models")
    return removed


def make_settings(tmp: Path, **overrides: Any) -> Any:
    """Settings with explicit overrides; no `.env` file is read, storage points into `tmp`."""
    from config.settings import Settings

    kwargs: dict[str, Any] = {"local_db": tmp / "unused.sqlite3", "models_dir": tmp / "models", **overrides}
    return Settings(_env_file=None, **kwargs)  # type: ignore[call-arg]


def parse_pair(text: str) -> tuple[str, str]:
    symbol, sep, timeframe = text.partition("/")
    if not sep or not symbol or not timeframe:
        raise argparse.ArgumentTypeError(f"pair {text!r} is not SYMBOL/TF (e.g. SPY/h1)")
    return symbol.upper(), timeframe


# ------------------------------------------------------------------------------------------- bars and stores
def csv_path(data_dir: Path, symbol: str, timeframe: str) -> Path:
    return data_dir / f"{symbol}_{timeframe}.csv"


def load_csvs(store: Any, paths: Sequence[Path]) -> dict[str, int]:
    """Validate and upsert each CSV (named SYMBOL_TF.csv) into `store`; returns rows per file name."""
    from ml.src.data.load_bars import load_file

    rows: dict[str, int] = {}
    for path in paths:
        loaded = load_file(store, path, None, None)
        rows[path.name] = loaded.rows
    return rows


def build_sqlite_template(paths: Sequence[Path], target: Path) -> dict[str, int]:
    """A SQLite store holding the bars of `paths` (no features cached), closed and checkpointed at `target`."""
    from ml.src.data.local_db import SqliteStore

    store = SqliteStore(target)
    try:
        rows = load_csvs(store, paths)
    finally:  # closing the last connection checkpoints the WAL into the main file
        store.close()
    return rows


def copy_sqlite(template: Path, target: Path) -> Path:
    """Copy a closed SQLite file (and any -wal/-shm left over) so each run starts from the same state."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    for suffix in ("-wal", "-shm"):
        side = Path(str(template) + suffix)
        if side.exists():
            shutil.copyfile(side, Path(str(target) + suffix))
    return target


# ---------------------------------------------------------------------------------------- windows (pairs)
TIMEFRAME_ORDER: tuple[str, ...] = ("m15", "h1", "h4", "d1", "w1")


@dataclass(frozen=True)
class Window:
    """Rows [start, stop) of `path`, loaded as pair `symbol`/`timeframe`."""

    path: Path
    source_symbol: str
    timeframe: str
    index: int  # 0 = the most recent window of the file
    start: int
    stop: int

    @property
    def symbol(self) -> str:
        return f"{self.source_symbol}.{self.index}"

    @property
    def pair(self) -> str:
        return f"{self.symbol}/{self.timeframe}"

    def describe(self, frame: pd.DataFrame) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "file": self.path.name,
            "rows": [self.start, self.stop],
            "first_ts": frame["ts"].iloc[self.start].isoformat(),
            "last_ts": frame["ts"].iloc[self.stop - 1].isoformat(),
        }


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, parse_dates=["ts"])


def _max_gap_ok(frame: pd.DataFrame, max_gap_days: float) -> bool:
    gaps = frame["ts"].diff().dt.total_seconds().to_numpy()[1:] / 86400.0
    return not gaps.size or float(gaps.max()) <= max_gap_days


def plan_windows(files: Sequence[Path], n_pairs: int, bars: int) -> list[Window]:
    """The first `n_pairs` windows of `bars` rows each, in the order described in the module docstring."""
    from config.settings import DEFAULT_TIMEFRAMES
    from ml.src.data.load_bars import parse_file_name

    by_file: dict[Path, tuple[str, str, pd.DataFrame]] = {}
    for path in files:
        symbol, tf = parse_file_name(path)
        by_file[path] = (symbol, tf, _read(path))
    order = sorted(by_file, key=lambda p: (TIMEFRAME_ORDER.index(by_file[p][1]), by_file[p][0]))
    # round-robin over timeframes first, so the first few pairs are not all m15
    tf_lists = {tf: [p for p in order if by_file[p][1] == tf] for tf in TIMEFRAME_ORDER}
    interleaved: list[Path] = []
    while any(tf_lists.values()):
        for tf in TIMEFRAME_ORDER:
            if tf_lists[tf]:
                interleaved.append(tf_lists[tf].pop(0))

    next_stop = {p: len(by_file[p][2]) for p in interleaved}
    next_index = dict.fromkeys(interleaved, 0)
    out: list[Window] = []
    while len(out) < n_pairs:
        progressed = False
        for path in interleaved:
            if len(out) >= n_pairs:
                break
            symbol, tf, frame = by_file[path]
            max_gap = DEFAULT_TIMEFRAMES[tf].max_gap_days
            while next_stop[path] - bars >= 0:
                stop = next_stop[path]
                start = stop - bars
                next_stop[path] = start
                if _max_gap_ok(frame.iloc[start:stop], max_gap):
                    out.append(Window(path, symbol, tf, next_index[path], start, stop))
                    next_index[path] += 1
                    progressed = True
                    break
        if not progressed:
            raise ValueError(f"the files hold only {len(out)} windows of {bars} bars; {n_pairs} requested")
    return out


def load_windows(store: Any, windows: Sequence[Window]) -> list[dict[str, Any]]:
    """Upsert every window's rows, unchanged, as its own pair; register the derived symbols as active."""
    from ml.src.data.load_bars import read_bar_file

    frames: dict[Path, pd.DataFrame] = {}
    described = []
    for w in windows:
        if w.path not in frames:
            frames[w.path] = read_bar_file(w.path)  # the product's own validation of the file
        frame = frames[w.path]
        store.upsert_bars(w.symbol, w.timeframe, frame.iloc[w.start : w.stop].reset_index(drop=True))
        described.append(w.describe(frame))
    store.upsert_symbols(sorted({w.symbol for w in windows}), active=True)
    return described


# ------------------------------------------------------------------------------------------- run_metered
@dataclass
class Metered:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float  # main + descendants (+ extra processes)
    cpu_main_s: float
    cpu_extra_s: float
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # "main" / "child:<pid>" -> MiB
    cpu_by_process: dict[str, float] = field(default_factory=dict)  # "main" / "child:<pid>" -> s


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def run_metered(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout_s: float = 3600.0,
    interval_s: float = 0.02,
    extra_pids: Sequence[int] = (),
) -> Metered:
    extra = [psutil.Process(pid) for pid in extra_pids]
    extra_before = {p.pid: _cpu(p) for p in extra}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=dict(env), cwd=cwd, stdout=out, stderr=err)
        main = psutil.Process(proc.pid)
        cpu_seen: dict[int, float] = {}
        rss_seen: dict[int, float] = {}
        deadline = time.monotonic() + timeout_s
        rusage = None
        while True:
            try:
                tree = [main, *main.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for p in tree:
                try:
                    with p.oneshot():
                        if p.pid != proc.pid:
                            cpu_seen[p.pid] = _cpu(p)
                        rss_seen[p.pid] = max(rss_seen.get(p.pid, 0.0), p.memory_info().rss / 2**20)
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    pass
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                rusage = ru
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(list(cmd), timeout_s)
            time.sleep(interval_s)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    cpu_main = float(rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0
    cpu_extra = sum(max(0.0, _cpu(p) - extra_before[p.pid]) for p in extra if p.is_running())
    peaks = {("main" if pid == proc.pid else f"child:{pid}"): round(mb, 1) for pid, mb in rss_seen.items()}
    return Metered(
        returncode=int(proc.returncode or 0),
        stdout=stdout,
        stderr=stderr,
        wall_s=wall,
        cpu_s=cpu_main + sum(cpu_seen.values()) + cpu_extra,
        cpu_main_s=cpu_main,
        cpu_extra_s=cpu_extra,
        peak_rss_mb=peaks,
        cpu_by_process={
            "main": round(cpu_main, 3),
            **{f"child:{pid}": round(c, 3) for pid, c in cpu_seen.items()},
        },
    )


# ------------------------------------------------------------------------- readings over pairs (issue 20)
def mean_se(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None, 0
    m = statistics.fmean(vals)
    se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else None
    return m, se, len(vals)


def label_free(sp: Any, horizon: int) -> dict[str, Any]:
    """Pooled out-of-sample reading of one pair that does not depend on the label definition (but log loss,
    which is against the prior of the same labels): IC of the direction score with the realised return, hit
    rate of the directional calls against the sign of the realised return, log loss and its gain over the prior."""
    import numpy as np

    from ml.src.training.scoring import score_slice

    scores = score_slice(sp, horizon=horizon)
    out: dict[str, Any] = {}
    move = np.sign(sp.returns)
    for name in ("ensemble", "equal_weight", "rf", "gb"):
        calls = sp.preds[name] != 1
        call_sign = np.where(sp.preds[name] == 2, 1.0, -1.0)
        rows = calls & (move != 0)
        out[name] = {
            "ic": scores[name]["ic"],
            "hit_sign": float((call_sign[rows] == move[rows]).mean()) if rows.any() else None,
            "n_calls": int(rows.sum()),
            "log_loss": scores[name]["log_loss"],
            "ll_gain": scores["prior"]["log_loss"] - scores[name]["log_loss"],
        }
    out["prior"] = {"log_loss": scores["prior"]["log_loss"]}
    out["n_rows"] = len(sp.returns)
    return out
