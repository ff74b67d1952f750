"""Time-ordered train | purge | valid | purge | test split.

A label at row t looks h bars ahead, so the last h training rows' labels overlap the first validation rows'
future. Dropping h rows at each boundary (the purge) keeps every label of one slice out of the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd


class SplitError(ValueError):
    """Too few rows for a usable split."""


@dataclass(frozen=True)
class PurgedSplit:
    train: slice
    valid: slice
    test: slice
    purge_bars: int

    @property
    def n_train(self) -> int:
        return self.train.stop - self.train.start

    @property
    def n_valid(self) -> int:
        return self.valid.stop - self.valid.start

    @property
    def n_test(self) -> int:
        return self.test.stop - self.test.start

    def boundaries(self, ts: pd.Series) -> dict[str, Any]:
        """First and last timestamp of each slice, as ISO strings, plus the purge size."""
        t = pd.to_datetime(ts, utc=True).reset_index(drop=True)

        def iso(i: int) -> str:
            return t.iloc[i].isoformat()

        return {
            "train_start": iso(self.train.start),
            "train_end": iso(self.train.stop - 1),
            "valid_start": iso(self.valid.start),
            "valid_end": iso(self.valid.stop - 1),
            "test_start": iso(self.test.start),
            "test_end": iso(self.test.stop - 1),
            "purge_bars": self.purge_bars,
            "n_train": self.n_train,
            "n_valid": self.n_valid,
            "n_test": self.n_test,
        }


def purged_split(
    n_rows: int, purge: int, train_fraction: float = 0.6, valid_fraction: float = 0.2, min_rows: int = 1
) -> PurgedSplit:
    """Split n_rows labelled rows in time order; the fractions apply to the rows left after both purges."""
    if purge < 0:
        raise ValueError("purge must be >= 0")
    if not (0 < train_fraction < 1 and 0 < valid_fraction < 1 and train_fraction + valid_fraction < 1):
        raise ValueError("fractions must be in (0, 1) and leave room for a test slice")
    usable = n_rows - 2 * purge
    n_train = int(usable * train_fraction)
    n_valid = int(usable * valid_fraction)
    n_test = usable - n_train - n_valid
    if min(n_train, n_valid, n_test) < min_rows:
        raise SplitError(
            f"{n_rows} labelled rows give train/valid/test = {max(n_train, 0)}/{max(n_valid, 0)}/{max(n_test, 0)}"
            f" after 2 purges of {purge}; need at least {min_rows} rows per split"
        )
    v0 = n_train + purge
    t0 = v0 + n_valid + purge
    return PurgedSplit(
        train=slice(0, n_train), valid=slice(v0, v0 + n_valid), test=slice(t0, n_rows), purge_bars=purge
    )


def min_usable_rows(train_fraction: float, valid_fraction: float, min_rows: int) -> int:
    """The fewest rows (after both purges) that purged_split turns into >= min_rows per slice."""
    u = 3 * min_rows
    while True:
        n_train, n_valid = int(u * train_fraction), int(u * valid_fraction)
        if min(n_train, n_valid, u - n_train - n_valid) >= min_rows:
            return u
        u += 1
