"""The interface every place a fit can run implements (executors: here and a local pool; dask_executor: a
cluster). Its own module so the executors and the Dask one depend on it, not on each other."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class ExecutorError(RuntimeError):
    """The executor could not be started (e.g. no Dask scheduler at the address); one line."""


class PairExecutor(ABC):
    """Runs fit tasks somewhere and hands back futures."""

    kind: str = "executor"

    @property
    @abstractmethod
    def slots(self) -> int:
        """How many tasks run at once; the run loop keeps at most twice as many prepared pairs in flight."""

    @abstractmethod
    def submit(self, fn: Callable[..., T], /, *args: Any, key: str | None = None) -> Future[T]:
        """Run fn(*args) somewhere; `key` names the task where the executor shows names (Dask)."""

    def close(self, cancel: bool = False) -> None:  # noqa: B027 - optional hook
        """Release the workers; with cancel, drop tasks not started yet."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "slots": self.slots}

    def __enter__(self) -> PairExecutor:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(cancel=exc_type is not None)
