"""The timeframes the product trains, in a module with no dependencies: command lines import it to build their
`--help` without loading pydantic, pandas or the learners."""

from __future__ import annotations

TIMEFRAMES: tuple[str, ...] = ("m15", "h1", "h4", "d1", "w1")
