"""Cooperative stop for a training run: SIGTERM / first Ctrl-C finish the pair in progress, then stop.

A process-wide flag rather than an exception, so a pair is never cut off half-written; the run loop checks it
between pairs and the scheduler sets it from its own signal handlers.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("ml.training")

_STOP = threading.Event()


def request_stop() -> None:
    """Ask the running job to finish the pair in progress and stop (SIGTERM / Ctrl-C handlers call this)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    _STOP.clear()


def install_stop_handlers() -> Callable[[], None]:
    """SIGTERM / first Ctrl-C: finish the pair in progress, then stop; a second Ctrl-C aborts at once.

    Returns a function that restores the previous handlers (only the main thread can install them).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    clear_stop()

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and stop_requested():
            raise KeyboardInterrupt
        log.warning("%s: finishing the pair in progress, then stopping", signal.Signals(signum).name)
        request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
