"""Standard errors and p-values for overlapping-horizon rows, and false-discovery control across pairs.
Pure functions.

Consecutive rows share h - 1 bars of their label's future, so row-level errors are not independent and a
plain s.e. is too small. Both tools here work on consecutive blocks of rows at least the horizon long: the
standard error of a sum treats blocks (not rows) as independent, and the IC's permutation test shuffles
blocks of the score against the realised returns, keeping each block's serial dependence.

A run judges many pairs at once; `benjamini_hochberg` turns their p-values into q-values so that calling
every pair with q <= alpha "skill" keeps the expected share of false calls among them at alpha or below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def block_length(horizon: int) -> int:
    """Rows per block: twice the label horizon (rows further apart than h share no future bar)."""
    return max(2 * int(horizon), 2)


def _block_sums(contrib: np.ndarray, block: int) -> np.ndarray:
    c = np.asarray(contrib, dtype="float64")
    n_blocks = len(c) // block
    if n_blocks == 0:
        return np.zeros(0)
    # the oldest rows that do not fill a block join the first block
    head = len(c) - n_blocks * block
    sums = c[head:].reshape(n_blocks, block).sum(axis=1)
    sums[0] += c[:head].sum()
    return sums


def block_se(contrib: np.ndarray, block: int) -> float | None:
    """Standard error of sum(contrib), blocks of `block` consecutive rows taken as independent.

    None with fewer than 3 blocks (too little to estimate a spread).
    """
    sums = _block_sums(contrib, block)
    j = len(sums)
    if j < 3:
        return None
    return float(math.sqrt(j / (j - 1) * float(((sums - sums.mean()) ** 2).sum())))


# Below this a paired difference is arithmetic noise, not evidence: a calibrated model that collapsed onto the
# training class mix differs from the prior baseline by ~1e-16 with a standard error ~1e-17, and must not be
# called better or worse than it. Real differences of these scores (sums of per-row contributions) are >= 1e-4.
_NOISE = 1e-9


@dataclass(frozen=True)
class PairedDifference:
    """sum of a row-wise difference (a minus b; positive = a better) and its block standard error."""

    diff: float
    se: float | None
    n: int
    block: int

    def beats(self, z: float) -> bool:
        """a is better than b by more than z standard errors (never when the s.e. is unknown, never by a
        difference that is only floating-point noise)."""
        return self.se is not None and self.diff > max(z * self.se, _NOISE)

    def loses(self, z: float) -> bool:
        return self.se is not None and self.diff < -max(z * self.se, _NOISE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def p_value(self) -> float:
        """One-sided p-value of "a is better than b" (normal approximation of diff / s.e.).

        1 when the s.e. is unknown (too few rows for 3 blocks: no evidence at all); 0.5 for a difference that
        is only floating-point noise (no difference either way). Consistent with beats(): beats(z) holds
        exactly when p < 1 - Phi(z) (for differences above the noise).
        """
        if self.se is None:
            return 1.0
        if abs(self.diff) <= _NOISE:
            return 0.5
        if self.se <= 0.0:  # every block the same: the sign is the evidence
            return 0.0 if self.diff > 0 else 1.0
        return float(0.5 * math.erfc(self.diff / self.se / math.sqrt(2.0)))


def paired_difference(contrib_a: np.ndarray, contrib_b: np.ndarray, block: int) -> PairedDifference:
    """a and b are per-row contributions to the same additive score (e.g. metrics.balanced_accuracy_rows)."""
    d = np.asarray(contrib_a, dtype="float64") - np.asarray(contrib_b, dtype="float64")
    return PairedDifference(float(d.sum()), block_se(d, block), int(d.size), int(block))


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg q-values, in the order of `p_values`.

    With the m p-values sorted ascending, q_(i) = min over j >= i of m * p_(j) / j (the step-up: a q-value is
    never below the one of a smaller p-value), capped at 1. Calling "discovery" every test with q <= alpha
    controls the false discovery rate at alpha (independent or positively dependent tests). Empty in, empty out.
    """
    p = np.asarray(list(p_values), dtype="float64")
    if p.size == 0:
        return []
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError(f"p-values must lie in [0, 1]: {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(stepped, 1.0)
    return [float(v) for v in q]


def _unit_ranks(score: np.ndarray, realised: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Centred, unit-length average ranks of the finite pairs (their dot product is Spearman's rho, ties
    handled like scipy.stats.spearmanr); None when the correlation is undefined (< 3 pairs, a constant side)."""
    s = np.asarray(score, dtype="float64").ravel()
    r = np.asarray(realised, dtype="float64").ravel()
    if s.shape != r.shape:
        raise ValueError(f"score and realised lengths differ: {s.size} != {r.size}")
    keep = np.isfinite(s) & np.isfinite(r)
    s, r = s[keep], r[keep]
    if s.size < 3 or np.all(s == s[0]) or np.all(r == r[0]):
        return None
    from scipy.stats import rankdata  # on first use: scipy costs ~0.5 s of CPU to import

    rs, rr = rankdata(s), rankdata(r)
    rs = (rs - rs.mean()) / np.linalg.norm(rs - rs.mean())
    rr = (rr - rr.mean()) / np.linalg.norm(rr - rr.mean())
    return rs, rr


def information_coefficient(score: np.ndarray, realised: np.ndarray) -> float | None:
    """Spearman rank correlation of a direction score with the realised horizon return.

    Pairs where either side is non-finite are dropped; None with fewer than 3 pairs or a constant side, where the
    correlation is undefined rather than zero.
    """
    ranks = _unit_ranks(score, realised)
    return None if ranks is None else float(np.clip(ranks[0] @ ranks[1], -1.0, 1.0))


def ic_with_pvalue(
    score: np.ndarray, realised: np.ndarray, block: int, n_perm: int = 1000, seed: int = 0
) -> tuple[float | None, float | None]:
    """Spearman IC of score vs realised return, and its two-sided block-permutation p-value.

    Blocks of `block` consecutive scores are shuffled against the fixed returns n_perm times; p = (1 + #perms
    with |IC| >= observed) / (1 + n_perm). (None, None) when the IC is undefined; p None with < 4 blocks.
    """
    ranks = _unit_ranks(score, realised)
    if ranks is None:
        return None, None
    rs, rr = ranks
    ic = float(np.clip(rs @ rr, -1.0, 1.0))
    n_blocks = rs.size // block
    if n_blocks < 4 or n_perm < 1:
        return ic, None
    # permute whole blocks of the newest n_blocks * block rows (the oldest remainder stays in place)
    head = rs.size - n_blocks * block
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((n_perm, n_blocks)), axis=1)
    idx = head + (order[:, :, None] * block + np.arange(block)).reshape(n_perm, -1)
    perm = rs[idx] @ rr[head:] + rs[:head] @ rr[:head]
    p = (1 + int((np.abs(perm) >= abs(ic) - 1e-12).sum())) / (1 + n_perm)
    return ic, float(p)
