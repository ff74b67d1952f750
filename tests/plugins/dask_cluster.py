"""A real Dask cluster on localhost: one `dask scheduler` and N `dask worker` processes (subprocesses).

Used by tests/test_dask_cluster.py and scripts/bench_throughput.py. Workers run without a nanny, so a killed
worker stays dead (the test of a worker dying mid-run), one thread each, and preload the learners
(`--preload ml.src.training.worker`), as the README recommends for a real cluster. Every process is stopped
when the context exits, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).parent / "dask"


@dataclass
class LocalCluster:
    address: str
    scheduler: subprocess.Popen[bytes]
    workers: dict[str, subprocess.Popen[bytes]]  # worker name -> process
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def logs(self) -> str:
        """Everything the scheduler and the workers wrote so far."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def kill_worker(self, name: str) -> None:
        proc = self.workers[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def _clean_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    # Cluster processes get no store address and no key: they must not need one.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "ML_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


@contextmanager
def local_cluster(
    log_dir: Path,
    n_workers: int = 2,
    *,
    scheduler_env: Mapping[str, str] | None = None,
    worker_env: Mapping[str, str] | None = None,
    start_timeout_s: float = 120.0,
) -> Iterator[LocalCluster]:
    """Start a scheduler and `n_workers` workers on 127.0.0.1; yield once every worker is connected."""
    log_dir.mkdir(parents=True, exist_ok=True)
    sched_file = log_dir / "scheduler.json"
    sched_file.unlink(missing_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(log_dir / "scheduler.log", "wb") as out:
            scheduler = subprocess.Popen(
                [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(sched_file)],
                stdout=out, stderr=subprocess.STDOUT, env=_clean_env(scheduler_env), cwd=log_dir,
            )  # fmt: skip
        procs.append(scheduler)
        deadline = time.monotonic() + start_timeout_s
        while not sched_file.exists() or not sched_file.read_text().strip():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"dask scheduler did not start:\n{(log_dir / 'scheduler.log').read_text()}"
                )
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        workers: dict[str, subprocess.Popen[bytes]] = {}
        for k in range(n_workers):
            name = f"w{k}"
            with open(log_dir / f"worker-{name}.log", "wb") as out:
                workers[name] = subprocess.Popen(
                    [str(DASK), "worker", address, "--name", name, "--nthreads", "1", "--no-nanny",
                     "--no-dashboard", "--host", "127.0.0.1", "--preload", "ml.src.training.worker",
                     "--local-directory", str(log_dir / f"space-{name}")],
                    stdout=out, stderr=subprocess.STDOUT, env=_clean_env(worker_env), cwd=log_dir,
                )  # fmt: skip
            procs.append(workers[name])
        cluster = LocalCluster(address, scheduler, workers, log_dir)
        from distributed import Client

        with Client(address, timeout=start_timeout_s, set_as_default=False) as client:
            client.wait_for_workers(n_workers, timeout=start_timeout_s)
        yield cluster
    finally:
        for proc in reversed(procs):
            _stop(proc)
