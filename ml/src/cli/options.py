"""Options every command spells the same way, declared once: which pairs, where fits run, how much it says."""

from __future__ import annotations

import argparse

from config.timeframes import TIMEFRAMES
from ml.src.common.cli_parser import timeframe_arg


def add_pair_selection(p: argparse.ArgumentParser, verb: str, all_help: str, pair_example: str) -> None:
    """--symbol / --symbols / --all / --pairs (one of them) and --timeframes; `verb` is what the command does."""
    who = p.add_mutually_exclusive_group()
    who.add_argument("--symbol", help=f"{verb} one symbol (x --timeframes)")
    who.add_argument("--symbols", nargs="+", metavar="SYMBOL", help=f"{verb} these symbols (x --timeframes)")
    who.add_argument("--all", action="store_true", help=all_help)
    who.add_argument(
        "--pairs",
        nargs="+",
        metavar="SYMBOL:TF",
        help=f"{verb} exactly these pairs, e.g. --pairs {pair_example} (not with --timeframes)",
    )
    p.add_argument(
        "--timeframes",
        nargs="+",
        type=timeframe_arg,
        choices=TIMEFRAMES,
        default=None,
        metavar="TF",
        help=f"timeframes to {verb} (default: all of {' '.join(TIMEFRAMES)})",
    )


def add_execution(p: argparse.ArgumentParser, what: str) -> None:
    """--workers and --dask: where the fits of `what` run."""
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help=f"{what} fitted in N parallel processes (default: ML_WORKERS, 0 = one per core; 1 = here)",
    )
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="fit on the Dask cluster whose scheduler is at ADDRESS (tls://host:8786, mutual TLS from Dask's "
        "distributed.comm.tls.* settings; plain tcp:// is refused unless ML_DASK_ALLOW_INSECURE=1); default: "
        "ML_DASK_ADDRESS, else local processes",
    )


def add_output(p: argparse.ArgumentParser, json_help: str) -> None:
    """--json, -q and -v."""
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
