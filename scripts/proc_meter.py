"""Run a command and measure it whole: wall time, CPU time of its process tree, peak memory per process.

On a shared machine wall time says how long a run took, CPU time how much work it was; both are reported.

* CPU: the main process's own rusage from wait4 (it includes the children it waited for, e.g. `git`), plus the
  user+system time last seen of every other descendant (the fork server and the pool workers it reaps are not
  waited for by the main process), sampled every `interval_s`; at most one interval per descendant is lost.
* Memory: the largest resident set seen per process, by role (main, and every other descendant).
* Extra processes outside the tree (a Dask scheduler and its workers) are measured as CPU deltas.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil


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
