"""Logging shared by the entry points: quiet HTTP clients, one format."""

from __future__ import annotations

import logging
import sys

# The Supabase client's HTTP stack logs every request at INFO ("HTTP Request: GET ... 200 OK"): a night's run
# would print thousands of lines. Its warnings and errors still come through; the store logs its own retries.
CHATTY_LOGGERS = ("httpx", "httpcore", "hpack", "postgrest", "supabase")


def quiet_http_clients(level: int = logging.WARNING) -> None:
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Root logging to stderr: INFO by default, WARNING with quiet, DEBUG with verbose; HTTP clients at
    WARNING unless verbose."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    quiet_http_clients(logging.DEBUG if verbose else logging.WARNING)
