"""The one validation of symbols and timeframes, used by every entry point and by both stores.

A symbol names folders and files under ML_MODELS_DIR (`SYMBOL/TF/SYMBOL_TF_....joblib`), so it must never be
able to climb out of it: upper-case letters, digits and `. - ^ =` only, starting with a letter or digit, at most
20 characters (`AAPL`, `BRK.B`, `EURUSD=X`, `GSPC`; a `^` may appear inside, but a vendor's index name such as
`^GSPC` is refused: load it as `GSPC`, as the shipped sample bars are). No `/`, `\\`, spaces, control characters or
a leading dot, `-` or `^`.
"""

from __future__ import annotations

import re

from config.timeframes import TIMEFRAMES

SYMBOL_PATTERN = r"^[A-Z0-9][A-Z0-9.\-^=]{0,19}$"
SYMBOL_RE = re.compile(SYMBOL_PATTERN)


class IdentifierError(ValueError):
    """An invalid symbol or timeframe; str() is a one-line reason."""


def normalise_symbol(text: object) -> str:
    """`text` stripped and upper-cased if it is a valid symbol; else IdentifierError."""
    if not isinstance(text, str):
        raise IdentifierError(f"invalid symbol {text!r}: not a string")
    symbol = text.strip().upper()
    if not SYMBOL_RE.fullmatch(symbol):
        raise IdentifierError(
            f"invalid symbol {text!r}: use 1-20 of A-Z 0-9 . - ^ =, starting with a letter or digit"
        )
    return symbol


def check_symbol(symbol: object) -> str:
    """`symbol` itself if it is already a valid, normalised symbol (what a store accepts); else IdentifierError."""
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
        raise IdentifierError(
            f"invalid symbol {symbol!r}: use 1-20 of A-Z 0-9 . - ^ =, starting with a letter or digit"
        )
    return symbol


def check_timeframe(timeframe: object) -> str:
    if timeframe not in TIMEFRAMES:
        raise IdentifierError(f"invalid timeframe {timeframe!r}: expected one of {', '.join(TIMEFRAMES)}")
    return str(timeframe)


def check_pair(symbol: object, timeframe: object) -> tuple[str, str]:
    return check_symbol(symbol), check_timeframe(timeframe)


def parse_pair(text: str) -> tuple[str, str]:
    """`SYMBOL:TF` (as in `--pairs AAPL:d1`) -> (normalised symbol, timeframe); else IdentifierError."""
    symbol, sep, timeframe = str(text).rpartition(":")
    if not sep:
        raise IdentifierError(f"invalid pair {text!r}: expected SYMBOL:TF, e.g. AAPL:d1")
    return normalise_symbol(symbol), check_timeframe(timeframe.strip().lower())
