"""`swiftbolt-ml COMMAND [FLAGS]`: one console command that only dispatches (freqtrade's main.py manner).

Every command keeps its own `--help` and exit codes; `swiftbolt-ml train ...` is exactly
`python -m ml.src.training.ensemble_training_job ...`, and so on for each command below.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ml.src.common.exit_codes import EXIT_OK, EXIT_USAGE


@dataclass(frozen=True)
class Command:
    module: str  # a module with main(argv) -> int
    summary: str
    python_m: str  # the equivalent `python -m` entry point


COMMANDS: dict[str, Command] = {
    "train": Command(
        "ml.src.cli.train",
        "train the ensembles of the selected pairs and record the run",
        "ml.src.training.ensemble_training_job",
    ),
    "forecast": Command(
        "ml.src.cli.forecast",
        "each champion forecasts its pair's latest closed bar",
        "ml.src.inference.forecast_job",
    ),
    "schedule": Command(
        "ml.src.cli.schedule", "run the nightly training and forecasts on a schedule", "ml.src.scheduler"
    ),
    "report": Command(
        "ml.src.cli.report",
        "model health per pair (RETRAIN / DISABLE / LIVE flags); --html DIR writes the static report",
        "ml.src.monitoring.report",
    ),
    "replay": Command(
        "ml.src.cli.replay",
        "the nightly loop re-run over each pair's last N bars: forecasts, outcomes and their record",
        "ml.src.training.replay",
    ),
    "load-bars": Command(
        "ml.src.data.load_bars", "load OHLCV bars from CSV files into the store", "ml.src.data.load_bars"
    ),
}
COMMANDS["monitor"] = COMMANDS["report"]  # the health table is what `monitor` means to most users


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: swiftbolt-ml COMMAND [FLAGS]   (swiftbolt-ml COMMAND --help for its flags)",
        "",
        "commands:",
    ]
    for name, command in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {command.summary} (python -m {command.python_m})")
    return "\n".join(lines)


def command_main(name: str) -> Callable[[list[str] | None], int]:
    module = importlib.import_module(COMMANDS[name].module)  # only the chosen command's imports are paid for
    entry: Callable[[list[str] | None], int] = module.main
    return entry


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return EXIT_OK if args else EXIT_USAGE
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; one of: {', '.join(COMMANDS)} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    return command_main(name)(rest)


if __name__ == "__main__":
    sys.exit(main())
