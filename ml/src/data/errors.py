"""The store's one error type, in a module of its own so the chunk format and the stores share it."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A store operation failed; the message is one line, safe to log (no secrets)."""
