"""Identifiers on the command line (issue 21): a timeframe is read the same way in every flag, and the symbols the
identifiers module documents as valid are the ones it accepts."""

from __future__ import annotations

import re

import pytest

from ml.src.cli import forecast as forecast_job
from ml.src.cli import train as job_cli
from ml.src.data import identifiers, load_bars
from ml.src.data.identifiers import IdentifierError, normalise_symbol, parse_pair


def test_timeframes_flags_accept_what_pairs_accepts() -> None:
    """`--pairs IBM:D1` was accepted while `--timeframes D1` was refused (exit 2)."""
    assert parse_pair("IBM:D1") == ("IBM", "d1")
    train = job_cli.build_parser().parse_args(["--symbol", "IBM", "--timeframes", "D1", " w1"])
    assert train.timeframes == ["d1", "w1"]
    forecast = forecast_job.build_parser().parse_args(["--all", "--timeframes", "H4"])
    assert forecast.timeframes == ["h4"]
    assert load_bars.build_parser().parse_args(["x.csv", "--timeframe", "M15"]).timeframe == "m15"
    assert job_cli.build_parser().parse_or_exit_code(["--symbol", "IBM", "--timeframes", "D2"]) == 2


def test_the_documented_examples_are_what_the_pattern_accepts() -> None:
    doc = identifiers.__doc__ or ""
    valid = re.search(r"at most\s+20 characters \(([^;]*);", doc)
    assert valid is not None
    examples = re.findall(r"`([^`]+)`", valid.group(1))
    assert examples == ["AAPL", "BRK.B", "EURUSD=X", "GSPC"]
    assert [normalise_symbol(s) for s in examples] == examples
    assert normalise_symbol("x^y") == "X^Y"  # inside a symbol, ^ is fine
    for refused in ("^GSPC", ".HIDDEN", "-RF", "A/B"):  # the docstring names these refused
        with pytest.raises(IdentifierError):
            normalise_symbol(refused)
