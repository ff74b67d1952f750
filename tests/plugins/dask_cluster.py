"""A real Dask cluster on localhost: one `dask scheduler` and N `dask worker` processes (subprocesses).

Used by tests/test_dask_cluster.py and scripts/bench_throughput.py. Workers run without a nanny, so a killed
worker stays dead (the test of a worker dying mid-run), one thread each, and preload the learners
(`--preload ml.src.training.worker`), as the README recommends for a real cluster. Every process is stopped
when the context exits, whatever happened.

By default the cluster speaks mutual TLS, as the README says to run one: `make_certs` makes a CA and a
certificate each for the scheduler, the workers and the job (client); every process requires encryption and a
peer certificate signed by that CA. `LocalCluster.client_env` / `client_config` are the job's Dask settings.
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


def _write_key_and_cert(out: Path, name: str, ca: tuple[object, object] | None) -> tuple[object, object]:
    """A key and a certificate (signed by `ca`, or self-signed CA when None) as out/name.key, out/name.pem."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"swiftbolt-test-{name}")])
    issuer_key, issuer_cert = ca if ca is not None else (key, None)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)  # type: ignore[attr-defined]
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is not None:
        import ipaddress

        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    (out / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def make_certs(out: Path, names: tuple[str, ...] = ("scheduler", "worker", "client")) -> Path:
    """A throwaway CA (out/ca.pem) and, signed by it, a key + certificate per name (out/NAME.key, NAME.pem)."""
    out.mkdir(parents=True, exist_ok=True)
    ca = _write_key_and_cert(out, "ca", None)
    for name in names:
        _write_key_and_cert(out, name, ca)
    return out


def tls_env(certs: Path, role: str) -> dict[str, str]:
    """Dask's own settings, as environment variables, for mutual TLS as `role` (scheduler, worker, client)."""
    return {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(certs / "ca.pem"),
        f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__CERT": str(certs / f"{role}.pem"),
        f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}__KEY": str(certs / f"{role}.key"),
    }


def tls_config(certs: Path, role: str = "client") -> dict[str, object]:
    """The same settings as a dask.config mapping (for `dask.config.set` in this process)."""
    return {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": str(certs / "ca.pem"),
        f"distributed.comm.tls.{role}.cert": str(certs / f"{role}.pem"),
        f"distributed.comm.tls.{role}.key": str(certs / f"{role}.key"),
    }


@dataclass
class LocalCluster:
    address: str
    scheduler: subprocess.Popen[bytes]
    workers: dict[str, subprocess.Popen[bytes]]  # worker name -> process
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    certs: Path | None = None  # None: plain TCP

    @property
    def client_env(self) -> dict[str, str]:
        """Environment for a job process that uses this cluster (the TLS settings; nothing for plain TCP)."""
        return tls_env(self.certs, "client") if self.certs else {"ML_DASK_ALLOW_INSECURE": "1"}

    @property
    def client_config(self) -> dict[str, object]:
        return tls_config(self.certs) if self.certs else {}

    def security(self) -> object:
        from distributed.security import Security

        if self.certs is None:
            return Security()
        return Security(
            tls_ca_file=str(self.certs / "ca.pem"),
            tls_client_cert=str(self.certs / "client.pem"),
            tls_client_key=str(self.certs / "client.key"),
            require_encryption=True,
        )

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
    tls: bool = True,
) -> Iterator[LocalCluster]:
    """Start a scheduler and `n_workers` workers on 127.0.0.1 (mutual TLS unless tls=False); yield once every
    worker is connected."""
    log_dir.mkdir(parents=True, exist_ok=True)
    sched_file = log_dir / "scheduler.json"
    sched_file.unlink(missing_ok=True)
    certs = make_certs(log_dir / "certs") if tls else None
    sched_tls = {**tls_env(certs, "scheduler")} if certs else {}
    worker_tls = {**tls_env(certs, "worker")} if certs else {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(log_dir / "scheduler.log", "wb") as out:
            scheduler = subprocess.Popen(
                [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--protocol", "tls" if certs else "tcp", "--scheduler-file", str(sched_file)],
                stdout=out, stderr=subprocess.STDOUT, env=_clean_env({**sched_tls, **(scheduler_env or {})}),
                cwd=log_dir,
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
                    stdout=out, stderr=subprocess.STDOUT, env=_clean_env({**worker_tls, **(worker_env or {})}),
                    cwd=log_dir,
                )  # fmt: skip
            procs.append(workers[name])
        cluster = LocalCluster(address, scheduler, workers, log_dir, certs=certs)
        from distributed import Client

        with Client(
            address, timeout=start_timeout_s, set_as_default=False, security=cluster.security()
        ) as client:
            client.wait_for_workers(n_workers, timeout=start_timeout_s)
        yield cluster
    finally:
        for proc in reversed(procs):
            _stop(proc)
