"""pytest plugin: the local Supabase-compatible stack (scripts/local_supabase.sh) as session fixtures.

Registered by tests/conftest.py (``pytest_plugins = ["tests.plugins.supabase_stack"]``).

* ``supabase_stack`` (session): dict of the variables ``local_supabase.sh start`` exports (SUPABASE_URL,
  SUPABASE_SERVICE_ROLE_KEY, SUPABASE_ANON_KEY, SUPABASE_JWT_SECRET, DATABASE_URL, STACK_DIR, ...). A stack that is
  already running (``eval "$(scripts/local_supabase.sh start)"`` in CI or a dev shell: STACK_DIR and SUPABASE_URL in
  the environment) is reused and left running; otherwise one is started for the session and ALWAYS stopped at its
  end. A stack that cannot start fails the tests (``pytest.fail``): they are never skipped, as CI counts a skip as a
  failure.
* ``service_client`` / ``anon_client`` / ``authenticated_client`` (session): supabase clients with their own
  ``httpx.Client`` (closed at teardown; avoids supabase-py's DeprecationWarnings under ``-W error``) and
  ``postgrest_client_retry=False`` (no hidden 1+2+4 s retry sleeps on 503/520).
* ``pg`` (function): psycopg autocommit connection to DATABASE_URL as the ``postgres`` superuser.
* ``gateway_fault_503`` (function): switch that makes the real ``/rest/v1/`` gateway path answer 503; always switched
  off at teardown.

Every test using one of these fixtures (directly or through another fixture) gets the ``supabase`` marker, so
``pytest -m "not supabase"`` runs the rest without starting anything. ``supabase`` is imported lazily (~0.4 s).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import httpx
    import psycopg
    from supabase import Client

REPO = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO / "scripts" / "local_supabase.sh"

# Everything `local_supabase.sh start` exports; the first five are required when reusing a running stack.
REQUIRED_KEYS = (
    "STACK_DIR",
    "SUPABASE_URL",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_ANON_KEY",
    "DATABASE_URL",
)
STACK_KEYS = (
    *REQUIRED_KEYS,
    "SUPABASE_JWT_SECRET",
    "SUPABASE_PUBLISHABLE_KEY",
    "SUPABASE_SECRET_KEY",
    "PGRST_URL",
    "PGRST_ADMIN_URL",
    "STACK_FAULT_503_FILE",
    "STACK_STARTUP_MS",
)
# Fixtures that need the stack; tests using any of them (transitively) are marked `supabase`.
SUPABASE_FIXTURES = frozenset(
    {"supabase_stack", "service_client", "anon_client", "authenticated_client", "pg", "gateway_fault_503"}
)

START_TIMEOUT_S = float(
    os.environ.get("SUPABASE_STACK_START_TIMEOUT", "180")
)  # includes a first-time dep install
STOP_TIMEOUT_S = 60.0


# ---- helpers -------------------------------------------------------------------------------------------------------


def parse_exports(text: str) -> dict[str, str]:
    """Parse the ``export NAME='value'`` lines printed by ``local_supabase.sh start``."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"export ([A-Za-z_][A-Za-z0-9_]*)='([^']*)'", line.strip())
        if m:
            env[m.group(1)] = m.group(2)
    return env


def mint_jwt(secret: str, role: str = "authenticated", ttl_s: int = 3600, **claims: Any) -> str:
    """An HS256 JWT PostgREST accepts (stdlib only), e.g. a signed-in user's token with role ``authenticated``."""
    now = int(time.time())
    payload = {"iss": "supabase-local", "role": role, "aud": "authenticated", "iat": now, "exp": now + ttl_s}
    payload.update(claims)

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}"
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


class _OwnedStack:
    """A stack this session started: stopped exactly once (fixture teardown, also after SIGTERM/Ctrl-C)."""

    def __init__(self, stack_dir: str) -> None:
        self.stack_dir = stack_dir
        self.stopped = False

    def stop(self) -> subprocess.CompletedProcess[str] | None:
        if self.stopped:
            return None
        self.stopped = True
        return subprocess.run(
            [str(STACK_SCRIPT), "stop", self.stack_dir],
            capture_output=True,
            text=True,
            timeout=STOP_TIMEOUT_S,
            check=False,
        )


def _start_stack() -> tuple[dict[str, str], _OwnedStack]:
    if not STACK_SCRIPT.is_file():
        pytest.fail(f"{STACK_SCRIPT} not found", pytrace=False)
    proc = subprocess.Popen(
        [str(STACK_SCRIPT), "start"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    try:
        out, err = proc.communicate(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the script's trap stops whatever it already started
        try:
            out, err = proc.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        _stop_leftover(err)
        pytest.fail(
            f"local_supabase.sh start timed out after {START_TIMEOUT_S:.0f}s:\n{err[-4000:]}", pytrace=False
        )
    if proc.returncode != 0:
        _stop_leftover(err)
        pytest.fail(
            f"local_supabase.sh start failed (rc={proc.returncode}):\n{err[-4000:]}",
            pytrace=False,
        )
    env = parse_exports(out)
    missing = [k for k in REQUIRED_KEYS if not env.get(k)]
    if missing:
        _stop_leftover(err)
        pytest.fail(f"local_supabase.sh start did not export {missing}:\n{out}\n{err[-4000:]}", pytrace=False)
    return env, _OwnedStack(env["STACK_DIR"])


def _stop_leftover(stderr: str) -> None:
    """After a failed/killed start: stop the half-started stack named in the script's log, if it is still there."""
    m = re.search(r"starting stack in (\S+/sbstack\.\w+)", stderr or "")
    if m and Path(m.group(1)).is_dir():
        _OwnedStack(m.group(1)).stop()


def _stack_from_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in STACK_KEYS if os.environ.get(k)}
    missing = [k for k in REQUIRED_KEYS if not env.get(k)]
    if missing:
        pytest.fail(
            f"STACK_DIR/SUPABASE_URL are set (reusing a running stack) but {missing} are not: "
            'eval "$(scripts/local_supabase.sh start)" exports all of them',
            pytrace=False,
        )
    return env


# ---- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def supabase_stack() -> Iterator[dict[str, str]]:
    if os.environ.get("STACK_DIR") and os.environ.get("SUPABASE_URL"):
        yield _stack_from_env()  # started outside pytest: whoever started it stops it
        return

    stack, owned = _start_stack()

    # A SIGTERM (CI job cancelled, `timeout`) would otherwise kill pytest without teardown and leak the daemons:
    # turn it into KeyboardInterrupt so that pytest unwinds and the `finally` below stops the stack.
    previous = None
    try:
        previous = signal.getsignal(signal.SIGTERM)
        if previous in (signal.SIG_DFL, None):

            def _on_sigterm(signum: int, frame: object) -> None:
                raise KeyboardInterrupt(f"signal {signum}")

            signal.signal(signal.SIGTERM, _on_sigterm)
        else:
            previous = None
    except ValueError:  # not in the main thread: leave signal handling alone
        previous = None

    try:
        yield stack
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        result = owned.stop()
        if result is not None and result.returncode != 0:
            raise RuntimeError(f"local_supabase.sh stop {owned.stack_dir} failed:\n{result.stderr[-4000:]}")


@pytest.fixture()
def supabase_env(
    supabase_stack: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    monkeypatch.setenv("SUPABASE_URL", supabase_stack["SUPABASE_URL"])
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", supabase_stack["SUPABASE_SERVICE_ROLE_KEY"])
    monkeypatch.setenv("ML_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ML_LOCAL_DB", str(tmp_path / "must-not-be-used.sqlite3"))
    monkeypatch.setenv("ML_WORKERS", "1")
    monkeypatch.setenv("ML_DB_BACKOFF_S", "0.01")
    return supabase_stack


def _client(url: str, key: str, headers: dict[str, str] | None = None) -> tuple[Client, httpx.Client]:
    import httpx
    from supabase import ClientOptions, create_client

    http = httpx.Client(timeout=30)
    options = ClientOptions(httpx_client=http, postgrest_client_retry=False)
    if headers:
        options.headers = {**options.headers, **headers}
    try:
        return create_client(url, key, options), http
    except BaseException:
        http.close()
        raise


@pytest.fixture(scope="session")
def service_client(supabase_stack: dict[str, str]) -> Iterator[Client]:
    """supabase client with the service_role key (bypasses RLS, like the nightly job)."""
    client, http = _client(supabase_stack["SUPABASE_URL"], supabase_stack["SUPABASE_SERVICE_ROLE_KEY"])
    try:
        yield client
    finally:
        http.close()


@pytest.fixture(scope="session")
def anon_client(supabase_stack: dict[str, str]) -> Iterator[Client]:
    """supabase client with the anon (publishable) key and no user."""
    client, http = _client(supabase_stack["SUPABASE_URL"], supabase_stack["SUPABASE_ANON_KEY"])
    try:
        yield client
    finally:
        http.close()


@pytest.fixture(scope="session")
def authenticated_client(supabase_stack: dict[str, str]) -> Iterator[Client]:
    """A signed-in user's client: anon key as apikey, an ``authenticated`` JWT as bearer token."""
    secret = supabase_stack.get("SUPABASE_JWT_SECRET")
    if not secret:
        pytest.fail("SUPABASE_JWT_SECRET is not set: cannot mint an authenticated JWT", pytrace=False)
    token = mint_jwt(secret, "authenticated", sub="00000000-0000-4000-8000-000000000001")
    client, http = _client(
        supabase_stack["SUPABASE_URL"],
        supabase_stack["SUPABASE_ANON_KEY"],
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        yield client
    finally:
        http.close()


@pytest.fixture()
def pg(supabase_stack: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    """psycopg autocommit connection to the stack's database as the postgres superuser."""
    import psycopg

    with psycopg.connect(supabase_stack["DATABASE_URL"], autocommit=True, connect_timeout=10) as conn:
        yield conn


class GatewayFault:
    """File switch read by the stack's nginx on every request: while on, ``/rest/v1/`` answers 503."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on(self) -> None:
        self.path.touch()

    def off(self) -> None:
        self.path.unlink(missing_ok=True)

    @property
    def is_on(self) -> bool:
        return self.path.exists()

    def __enter__(self) -> GatewayFault:
        self.on()
        return self

    def __exit__(self, *exc: object) -> None:
        self.off()


@pytest.fixture()
def gateway_fault_503(supabase_stack: dict[str, str]) -> Iterator[GatewayFault]:
    path = Path(supabase_stack.get("STACK_FAULT_503_FILE") or Path(supabase_stack["STACK_DIR"]) / "fault_503")
    fault = GatewayFault(path)
    try:
        yield fault
    finally:
        fault.off()


# ---- hooks ---------------------------------------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    supabase = pytest.mark.supabase
    for item in items:
        if SUPABASE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(supabase)
