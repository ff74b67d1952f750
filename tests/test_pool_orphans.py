"""Issue 21 case 7: kill -9 of a job with a local pool leaves nothing behind (fork server, workers, tracker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ml.src.training.orphan_guard import process_alive

pytestmark = pytest.mark.skipif(
    not Path("/proc").is_dir(), reason="needs /proc to find a process's descendants"
)
REPO = Path(__file__).resolve().parents[1]

JOB = """
from ml.src.training.executors import ProcessPoolPairExecutor
from ml.src.training.worker import warm_up
pool = ProcessPoolPairExecutor(2)
ids = {pool.submit(warm_up).result() for _ in range(4)}
print("ready", flush=True)
import time
time.sleep(600)
"""


def descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def test_a_killed_job_leaves_no_pool_process_behind() -> None:
    job = subprocess.Popen(
        [sys.executable, "-c", JOB],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    pool: set[int] = set()
    try:
        assert job.stdout is not None and job.stdout.readline().strip() == "ready"
        pool = descendants(job.pid)
        # the fork server, two workers (forked from it) and the resource tracker
        assert len(pool) >= 4, pool
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(process_alive(p) for p in pool):
            time.sleep(0.1)
        left = sorted(p for p in pool if process_alive(p))
        assert left == [], f"still alive after the job was killed: {left}"
    finally:
        # whatever this test started and is still alive (the pool was re-parented when the job died)
        if job.poll() is None:
            pool |= descendants(job.pid)
            job.kill()
        for pid in pool:
            try:  # only this test's pool processes (a pid could have been reused since)
                if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue
