"""Pool processes that outlive the job exit: a kill -9 of the job must not leave its pool behind.

A `ProcessPoolExecutor` worker blocks on its call queue, whose write end it holds itself, so it never sees EOF
when the job dies; the resource tracker waits for every holder of its pipe, workers included, and the fork
server for its own children. Under cron, each killed job would leave ~500 MB behind. So:

* each worker polls the job's pid (`watch_process`) and, on Linux, also gets SIGKILL when the fork server it was
  forked from dies (PR_SET_PDEATHSIG: the fork server is single-threaded, so "parent thread" = the process);
* the fork server polls its own parent (this module, imported only through the fork server's preload list,
  starts that watchdog when it finds itself inside a fork server);
* once workers and fork server are gone, the resource tracker sees EOF and exits on its own.

Polling costs one `kill(pid, 0)` every half second per process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


def process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a killed process its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we know
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _exit_when(gone: Callable[[], bool], name: str) -> None:
    def loop() -> None:
        while True:
            time.sleep(POLL_S)
            if gone():
                os._exit(1)

    threading.Thread(target=loop, name=name, daemon=True).start()


def watch_process(pid: int) -> None:
    """Exit this process (os._exit) within ~POLL_S of process `pid` ending."""
    _exit_when(lambda: not process_alive(pid), "orphan-guard")


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the thread that forked it ends (best effort; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return


def watch_parent() -> None:
    """Exit this process once its parent is gone (it is re-parented: getppid changes)."""
    parent = os.getppid()
    _exit_when(lambda: os.getppid() != parent, "orphan-guard")


def _in_fork_server() -> bool:
    # the fork server runs `python -c 'from multiprocessing.forkserver import main; main(...)'`
    return sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules


if _in_fork_server():
    watch_parent()
